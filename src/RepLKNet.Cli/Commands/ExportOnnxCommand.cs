using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Export;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli.Commands;

/// <summary>
/// <c>replknet export onnx</c>: the re-parameterized model (a RepLKNet classifier or backbone, or a UperNet segmenter when
/// <c>--arch</c> names one or the checkpoint holds <c>decode_head.*</c>) as an ONNX graph, verified with ONNX Runtime.
/// </summary>
public sealed class ExportOnnxCommand(IAnsiConsole console) : Command<ExportOnnxCommand.Settings>
{
    /// <summary>Options of <c>export onnx</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Output.</summary>
        [CommandOption("--out <FILE>")]
        [Description("The ONNX file to write (written only after ONNX Runtime reproduced the model).")]
        public string? Out { get; init; }

        /// <summary>Opset.</summary>
        [CommandOption("--opset <N>")]
        [Description("ONNX opset, 13 to 21 (exact GELU: Gelu from 20, Erf-based below).")]
        [DefaultValue(17)]
        public int Opset { get; init; } = 17;

        /// <summary>Dynamic batch.</summary>
        [CommandOption("--dynamic-batch")]
        [Description("Leave the batch dimension symbolic.")]
        public bool DynamicBatch { get; init; }

        /// <summary>Fixed batch.</summary>
        [CommandOption("--batch <N>")]
        [Description("Batch size of the graph when it is not dynamic.")]
        [DefaultValue(1)]
        public int Batch { get; init; } = 1;

        /// <summary>Fuse BN.</summary>
        [CommandOption("--fuse-bn")]
        [Description("Also fold every conv+BN pair into the conv (the pre-BNs stay BatchNormalization).")]
        public bool FuseBn { get; init; }

        /// <summary>Features.</summary>
        [CommandOption("--features")]
        [Description("Export the backbone's out_indices features (features.0 …) instead of logits (classifiers and backbones; a segmenter's output is its per-pixel logits).")]
        public bool Features { get; init; }

        /// <summary>Input size: S (square) or H,W.</summary>
        [CommandOption("--input-size <SIZE>")]
        [Description("Input size of the graph: S (square) or H,W in pixels, e.g. 72,56 (default: the checkpoint's preprocessing, else the variant's, else 224; segmenters: the preset's crop size, else the project's default segmenter's, 96). With --dynamic-size: the size the file is checked at first and that its metadata records.")]
        public string? InputSize { get; init; }

        /// <summary>Dynamic height and width.</summary>
        [CommandOption("--dynamic-size")]
        [Description("Leave the height and width symbolic (\"height\", \"width\"; combinable with --dynamic-batch). The file is checked at --input-size and at a second, odd, non-square size.")]
        public bool DynamicSize { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (string.IsNullOrWhiteSpace(Out))
            {
                return ValidationResult.Error("--out is required");
            }

            if (Batch <= 0)
            {
                return ValidationResult.Error("--batch must be positive");
            }

            return base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TorchRuntime.Initialize(DeviceRequest.Parse("cpu"));
        if (settings.Opset is < 13 or > 21)
        {
            throw new UsageException($"--opset {settings.Opset}: use 13 to 21");
        }

        var (height, width) = ParseSize(settings.InputSize);
        if (SegmentorRegistry.IsSegmentor(settings.Arch) || (settings.Arch is null && SegmentorCheckpoint.IsSegmentorCheckpoint(settings.Weights!)))
        {
            return ExportSegmentor(settings, height, width);
        }

        var loaded = ModelLoader.Load(settings.Weights!, settings.LoadOptions);
        using var model = loaded.Model;
        // A square size is also the eval crop size recorded for inference; a non-square one keeps the checkpoint's.
        var eval = EvalPreprocessing.From(loaded, height == width ? height : null);
        var info = new OnnxModelInfo(loaded.Arch, model.Config.ToJson(), eval.InputSize, eval.Channels, eval.Normalization.Mean, eval.Normalization.Std,
            eval.CropPct, loaded.Metadata?.ClassNames, settings.FuseBn || loaded.Form == Models.ModelForm.Fused ? "fused" : "deploy");
        var options = new OnnxExportOptions
        {
            Opset = settings.Opset, DynamicBatch = settings.DynamicBatch, Batch = settings.Batch, Features = settings.Features,
            InputHeight = height, InputWidth = width, DynamicSize = settings.DynamicSize,
        };
        var report = OnnxExport.Run(model, info, options, settings.FuseBn, settings.Out!, Environment.TickCount64);
        var (h, w) = options.InputSizeFor(info);
        Report(console, report, settings, eval.Channels, settings.DynamicSize ? $"height×width (exported at {h}×{w})" : $"{h}×{w}");
        return ExitCodes.Success;
    }

    // The whole segmenter (MMSeg's encode_decode): input [N, 3, H, W] → logits [N, classes, H, W]; default size: the
    // architecture's crop size (its official recipe's, else the project's default), normalization from the same recipe.
    private int ExportSegmentor(Settings settings, int? height, int? width)
    {
        if (settings.Ema)
        {
            throw new UsageException("--ema applies to classification training checkpoints, not to segmenters");
        }

        var loaded = SegmentorCheckpoint.Load(settings.Weights!, settings.Arch, settings.Strict, settings.NumClasses);
        using var model = loaded.Model;
        // The input the checkpoint recorded in training, else its architecture's recipe's.
        var recipe = loaded.Info.Input ?? SegmentationInput.Of(SegmentorRegistry.RecipeFor(loaded.Arch, model.Config, null).Recipe);
        int h = height ?? recipe.CropSize.H, w = width ?? recipe.CropSize.W;
        var info = new OnnxModelInfo(loaded.Arch, model.Config.ToJson(), h, model.InChannels, [.. recipe.Mean.Select(m => m / 255)], [.. recipe.Std.Select(v => v / 255)],
            1.0, loaded.Info.Classes, settings.FuseBn || loaded.Info.Form == Models.ModelForm.Fused ? "fused" : "deploy");
        var options = new OnnxExportOptions
        {
            Opset = settings.Opset, DynamicBatch = settings.DynamicBatch, Batch = settings.Batch, Features = settings.Features,
            InputHeight = h, InputWidth = w, DynamicSize = settings.DynamicSize,
        };
        var report = OnnxExport.Run(model, info, options, settings.FuseBn, settings.Out!, Environment.TickCount64);
        console.MarkupLine(CultureInfo.InvariantCulture, "segmenter [bold]{0}[/] ({1} classes, align_corners {2}): output logits [[N, classes, H, W]] at the input size",
            Markup.Escape(loaded.Arch), model.NumClasses, model.AlignCorners ? "true" : "false");
        Report(console, report, settings, model.InChannels, settings.DynamicSize ? $"height×width (exported at {h}×{w})" : $"{h}×{w}");
        return ExitCodes.Success;
    }

    /// <summary>Prints what <paramref name="report"/> says: the file, the graph's input and the ONNX Runtime check.</summary>
    internal static void Report(IAnsiConsole console, OnnxExportReport report, Settings settings, int channels, string spatial)
    {
        console.MarkupLine(CultureInfo.InvariantCulture,
            "wrote [bold]{0}[/] ({1:F1} MB{2}): {3} nodes, {4} initializers, opset {5}, input {6}×{7}×{8}{9}",
            Markup.Escape(report.Path), report.Bytes / 1e6, report.DataPath is null ? string.Empty : $", data in {Markup.Escape(Path.GetFileName(report.DataPath))}",
            report.Nodes, report.Initializers, settings.Opset, settings.DynamicBatch ? "batch" : settings.Batch.ToString(CultureInfo.InvariantCulture), channels, spatial,
            report.Switched > 0 ? $"; re-parameterized {report.Switched} modules" : string.Empty);
        console.MarkupLine(CultureInfo.InvariantCulture, "ONNX Runtime vs TorchSharp on random input ({0}): max |diff| {1:0.00e+00} = {2:0.00e+00} of the largest output (limit {3:0e+00})",
            string.Join(", ", report.Checks.Select(c => $"N×H×W {c}")), report.MaxAbsDiff, report.Relative, OnnxExport.Tolerance);
    }

    /// <summary>"S" → (S, S), "H,W" → (H, W), nothing → (null, null); anything else is a usage error naming --input-size.</summary>
    internal static (int? Height, int? Width) ParseSize(string? text)
    {
        if (text is null)
        {
            return (null, null);
        }

        int[] sizes = CliParsing.IntList(text, "--input-size");
        return sizes.Length switch
        {
            1 => (sizes[0], sizes[0]),
            2 => (sizes[0], sizes[1]),
            _ => throw new UsageException($"--input-size '{text}': give one size (square) or two, H,W"),
        };
    }
}
