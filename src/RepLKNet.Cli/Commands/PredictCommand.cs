using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet predict</c>: top-5 classes of images with a checkpoint's class names and preprocessing.</summary>
public sealed class PredictCommand(IAnsiConsole console) : Command<PredictCommand.Settings>
{
    /// <summary>Options of <c>predict</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Images or folders.</summary>
        [CommandArgument(0, "<IMAGES>")]
        [Description("Image files (PNG, JPEG, WebP, BMP, GIF) or folders of them.")]
        public string[] Images { get; init; } = [];

        /// <summary>ONNX export to run instead of a checkpoint.</summary>
        [CommandOption("--onnx <FILE>")]
        [Description("Run an ONNX export (replknet export onnx) with ONNX Runtime instead of a checkpoint.")]
        public string? Onnx { get; init; }

        /// <summary>Images per ONNX Runtime run.</summary>
        [CommandOption("--batch-size <N>")]
        [Description("Images per ONNX Runtime run (with --onnx; graphs with a fixed batch use theirs).")]
        [DefaultValue(8)]
        public int BatchSize { get; init; } = 8;

        /// <inheritdoc />
        public override ValidationResult Validate()
        {
            if (Onnx is not null)
            {
                if (Weights is not null)
                {
                    return ValidationResult.Error("give --weights or --onnx, not both");
                }

                return BatchSize > 0 ? ValidationResult.Success() : ValidationResult.Error("--batch-size must be positive");
            }

            return base.Validate();
        }

        /// <summary>Input size.</summary>
        [CommandOption("--input-size <SIZE>")]
        [Description("Resize to SIZE×SIZE (default: the variant's input size, else 224).")]
        public int? InputSize { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Onnx is { } onnx)
        {
            return PredictOnnx(onnx, settings);
        }

        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var loaded = ModelLoader.Load(settings.Weights!, settings.LoadOptions);
        using var model = loaded.Model;
        model.to(runtime.Device);
        var eval = EvalPreprocessing.From(loaded, settings.InputSize);
        int size = eval.InputSize, channels = eval.Channels;
        // The checkpoint's eval transform (SamplePipeline.EvalView): short side to size / crop_pct (bicubic) and centre crop, or a
        // warp from 384 up, for every image, one already at the input size included (no resize only at 32 and below, as the official code).
        var pipeline = new SamplePipeline(new AugmentOptions { CropPct = eval.CropPct }, eval.Normalization, channels, size);
        var names = loaded.Metadata?.ClassNames;
        var files = ImageDecoder.Expand(settings.Images);
        if (files.Count == 0)
        {
            throw new UsageException("no images: give image files or folders holding some");
        }

        using var noGrad = no_grad();
        foreach (var file in files)
        {
            using var scope = NewDisposeScope();
            var sample = new float[pipeline.SampleLength];
            pipeline.Eval(ImageDecoder.Decode(file, channels), sample);
            var x = tensor(sample, [1, channels, size, size]).to(runtime.Device);
            var probabilities = nn.functional.softmax(model.call(x), 1).squeeze(0).cpu();
            int k = (int)Math.Min(5, probabilities.shape[0]);
            var (values, indexes) = probabilities.topk(k);
            console.Profile.Out.Writer.WriteLine(file);
            for (int i = 0; i < k; i++)
            {
                long c = indexes[i].item<long>();
                string label = names is not null && c < names.Count ? names[(int)c] : $"class {c}";
                console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i + 1}. {label,-24} {values[i].item<float>():P2}"));
            }
        }

        return ExitCodes.Success;
    }

    private int PredictOnnx(string path, Settings settings)
    {
        if (settings.InputSize is not null)
        {
            throw new UsageException("--input-size does not apply to --onnx: the graph's input size is fixed at export");
        }

        var files = ImageDecoder.Expand(settings.Images);
        if (files.Count == 0)
        {
            throw new UsageException("no images: give image files or folders holding some");
        }

        using var classifier = new Export.OnnxClassifier(path);
        foreach (var prediction in classifier.Predict(files, 5, settings.BatchSize))
        {
            console.Profile.Out.Writer.WriteLine(prediction.Source);
            for (int i = 0; i < prediction.Top.Count; i++)
            {
                var c = prediction.Top[i];
                console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i + 1}. {c.Label,-24} {c.Probability:P2}"));
            }
        }

        return ExitCodes.Success;
    }
}
