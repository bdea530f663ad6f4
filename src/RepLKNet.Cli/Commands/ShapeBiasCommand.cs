using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Erf;
using RepLKNet.Experiments.ShapeBias;
using RepLKNet.Export;
using RepLKNet.Models;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary>
/// <c>replknet shape-bias</c>: the cue-conflict evaluation (Geirhos et al., ICLR 2019) behind the paper's "large kernels
/// are more shape-biased" — any ImageNet-1k classifier the toolkit runs (RepLKNet, ResNet, MobileNetV2, or an ONNX
/// export) decides each stimulus among 16 categories (docs/shape-bias.md).
/// </summary>
public sealed class ShapeBiasCommand(IAnsiConsole console) : Command<ShapeBiasCommand.Settings>
{
    /// <summary>Options of <c>shape-bias</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Stimuli.</summary>
        [CommandOption("--data <DIR>")]
        [Description("The cue-conflict stimuli: 16 category folders (airplane … truck) of <shape><n>-<texture><m>.png (texture-vs-shape's style-transfer-preprocessed-512).")]
        public string? Data { get; init; }

        /// <summary>Model.</summary>
        [CommandOption("--arch|--model <NAME>")]
        [Description("The model: a RepLKNet variant or JSON, resnet18/50/101, mobilenetv2[[-kN]]; may be left out for the project's checkpoints, which record it.")]
        public string? Arch { get; init; }

        /// <summary>Weights.</summary>
        [CommandOption("--weights <FILE>")]
        [Description("Its ImageNet-1k weights (official RepLKNet .pth, torchvision ResNet, the project's checkpoints); without them the model keeps random weights (a smoke test, not a figure).")]
        public string? Weights { get; init; }

        /// <summary>ONNX export.</summary>
        [CommandOption("--onnx <FILE>")]
        [Description("Run an ONNX export (replknet export onnx) on ONNX Runtime instead, with the preprocessing it records.")]
        public string? Onnx { get; init; }

        /// <summary>Label.</summary>
        [CommandOption("--label <NAME>")]
        [Description("The model's name in the table, JSON and figure (default: its architecture).")]
        public string? Label { get; init; }

        /// <summary>Batch size.</summary>
        [CommandOption("--batch-size <N>")]
        [DefaultValue(16)]
        [Description("Images per forward pass.")]
        public int BatchSize { get; init; } = 16;

        /// <summary>How images reach the model.</summary>
        [CommandOption("--eval-transform <MODE>")]
        [DefaultValue("reference")]
        [Description("reference (default: model-vs-human's, the toolbox behind published shape-bias figures: the 224-pixel stimuli as they are, normalized) or recorded (the checkpoint's eval transform: resize to size / crop_pct, centre crop).")]
        public string EvalTransform { get; init; } = "reference";

        /// <summary>Figure.</summary>
        [CommandOption("--plot <FILE>")]
        [Description("Write the per-category figure (shape vs texture decisions, the paper's style) as PNG.")]
        public string? Plot { get; init; }

        /// <summary>Other models' results.</summary>
        [CommandOption("--compare <FILE>")]
        [Description("A previous shape-bias --json result to show beside this model (repeatable), e.g. ResNet-50 beside RepLKNet-31B.")]
        public string[] Compare { get; init; } = [];

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (Data is null)
            {
                return ValidationResult.Error("--data is required: the folder of cue-conflict stimuli");
            }

            if (Onnx is not null && (Arch is not null || Weights is not null))
            {
                return ValidationResult.Error("--onnx runs an export on its own: leave out --arch and --weights");
            }

            if (Onnx is null && Arch is null && Weights is null)
            {
                return ValidationResult.Error("name a model: --arch (with --weights for trained weights), --weights of a checkpoint that records it, or --onnx");
            }

            if (EvalTransform is not ("reference" or "recorded"))
            {
                return ValidationResult.Error($"--eval-transform '{EvalTransform}': use reference or recorded");
            }

            return BatchSize < 1 ? ValidationResult.Error($"--batch-size {BatchSize} must be positive") : base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var stimuli = CueConflictSet.Read(settings.Data!);
        var compared = settings.Compare.Select(ShapeBiasJson.Read).ToList();
        CheckWritable("--json", settings.Json);
        CheckWritable("--plot", settings.Plot);

        var report = settings.Onnx is { } onnx ? RunOnnx(settings, stimuli, onnx) : RunTorch(settings, stimuli);
        PrintTable(report);
        foreach (var other in compared)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "  compared: {0}: shape bias {1}", Markup.Escape(other.Model), Format(other.ShapeBias));
        }

        var document = ShapeBiasJson.ToJson(report, settings.Data);
        document["eval_transform"] = settings.EvalTransform;
        if (settings.WriteJson(document))
        {
            console.MarkupLine($"  JSON    {Markup.Escape(settings.Json!)}");
        }

        if (settings.Plot is { } plot)
        {
            try
            {
                ShapeBiasPlot.Write([report, .. compared], plot);
            }
            catch (ArgumentException e) when (e.ParamName == "path")
            {
                throw new IOException($"--plot '{plot}': cannot write the figure ({(e.InnerException ?? e).Message.TrimEnd('.')})", e);
            }
            console.MarkupLine($"  figure  {Markup.Escape(plot)}");
        }

        return ExitCodes.Success;
    }

    private ShapeBiasReport RunTorch(Settings settings, IReadOnlyList<CueConflictStimulus> stimuli)
    {
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        nn.Module<Tensor, Tensor> module;
        IDisposable owner;
        string label;
        EvalPreprocessing? recorded = null;
        Normalization? normalization = null;
        int channels = 3;
        var family = settings.Arch is null ? null : ModelFactory.FamilyOf(settings.Arch);
        if (settings.Weights is { } weights && (family is null || family == ModelFamily.RepLKNet))
        {
            // RepLKNet checkpoints (official or the project's): the recorded eval transform or the variant's pretrained one.
            var loaded = ModelLoader.Load(weights, new ModelLoadOptions { Arch = settings.Arch });
            recorded = EvalPreprocessing.From(loaded);
            loaded.Model.to(runtime.Device);
            module = loaded.Model;
            owner = loaded.Model;
            label = loaded.Arch;
        }
        else
        {
            var subject = ErfSubject.Create(settings.Arch, settings.Weights, runtime.Device);
            module = subject.Module;
            owner = subject;
            label = subject.Label;
            normalization = subject.Normalization;
            channels = subject.InChannels;
        }

        using (owner)
        {
            var pre = recorded ?? new EvalPreprocessing(224, channels, normalization ?? Normalization.ImageNet, 0.875);
            if (pre.Channels != 3)
            {
                string what = settings.Arch is null ? $"--weights '{settings.Weights}'" : $"--arch {settings.Arch}";
                throw new UsageException($"{what}: the model takes {pre.Channels}-channel images; the stimuli are RGB and need an ImageNet-1k classifier");
            }

            string? note = settings.Weights is null ? "random initialization: no --weights, so the decisions (and the shape bias) mean nothing" : null;
            label = settings.Label ?? label;
            var transform = Transform(settings);
            Header(label, settings.Weights ?? "random weights", stimuli, pre.InputSize, pre.CropPct, pre.Normalization, runtime.Device.ToString(), note, transform);
            module.eval();
            string source = settings.Arch is null ? $"--weights '{settings.Weights}'" : $"--arch {settings.Arch}";
            return Evaluate(stimuli, label, pre.InputSize, pre.CropPct, pre.Normalization, settings.BatchSize, note, transform, (samples, n, logits) =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                var x = tensor(samples, [n, 3, pre.InputSize, pre.InputSize]).to(runtime.Device);
                var y = module.call(x);
                CheckClasses(source, y.size(-1));
                y.to(ScalarType.Float32).cpu().contiguous().data<float>().CopyTo(logits);
            });
        }
    }

    private ShapeBiasReport RunOnnx(Settings settings, IReadOnlyList<CueConflictStimulus> stimuli, string path)
    {
        using var onnx = new OnnxClassifier(path, GlobalThreads(settings));
        var info = onnx.Info;
        CheckClasses($"--onnx '{path}'", onnx.Classes);
        if (info.Channels != 3)
        {
            throw new UsageException($"--onnx '{path}': the model takes {info.Channels}-channel images; the stimuli are RGB and need an ImageNet-1k classifier");
        }

        var normalization = new Normalization(info.Mean, info.Std);
        string label = settings.Label ?? $"{info.Arch} (ONNX)";
        var transform = Transform(settings);
        Header(label, path, stimuli, onnx.InputSize, info.CropPct, normalization, "ONNX Runtime (CPU)", null, transform);
        int batch = onnx.FixedBatch ?? settings.BatchSize;
        int length = 3 * onnx.InputSize * onnx.InputSize;
        return Evaluate(stimuli, label, onnx.InputSize, info.CropPct, normalization, batch, null, transform, (samples, n, logits) =>
        {
            if (onnx.FixedBatch is int fixedBatch && n < fixedBatch)
            {
                // A graph exported with a fixed batch: pad the last batch and keep the first n results.
                var padded = new float[fixedBatch * length];
                samples.AsSpan(0, n * length).CopyTo(padded);
                var all = new float[fixedBatch * onnx.Classes];
                onnx.Run(padded, fixedBatch, all);
                all.AsSpan(0, n * onnx.Classes).CopyTo(logits);
            }
            else
            {
                onnx.Run(samples, n, logits);
            }
        });
    }

    private static ShapeBiasTransform Transform(Settings settings) =>
        settings.EvalTransform == "recorded" ? ShapeBiasTransform.Recorded : ShapeBiasTransform.Reference;

    private ShapeBiasReport Evaluate(IReadOnlyList<CueConflictStimulus> stimuli, string label, int size, double cropPct, Normalization normalization, int batch,
        string? note, ShapeBiasTransform transform, Action<float[], int, float[]> logits)
    {
        ShapeBiasReport? report = null;
        if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
        {
            return ShapeBiasEvaluation.Run(stimuli, label, size, cropPct, normalization, logits, batch, null, note, transform);
        }

        console.Progress().AutoClear(true).Start(ctx =>
        {
            var task = ctx.AddTask("cue-conflict images", maxValue: stimuli.Count);
            report = ShapeBiasEvaluation.Run(stimuli, label, size, cropPct, normalization, logits, batch, done => task.Value = done, note, transform);
        });
        return report!;
    }

    private void Header(string label, string weights, IReadOnlyList<CueConflictStimulus> stimuli, int size, double cropPct, Normalization normalization, string device, string? note,
        ShapeBiasTransform transform)
    {
        string how = transform == ShapeBiasTransform.Recorded
            ? string.Create(CultureInfo.InvariantCulture, $"recorded eval transform {size}×{size}, crop {cropPct}")
            : string.Create(CultureInfo.InvariantCulture, $"reference transform: {size}×{size} as they are (resized only if another size), no crop");
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]shape-bias[/] {0} ({1}): {2} image(s), {3} cue-conflict and {4} same-category (left out of the bias); {5}, {6}; {7}",
            Markup.Escape(label), Markup.Escape(weights), stimuli.Count, stimuli.Count(s => s.IsConflict), stimuli.Count(s => !s.IsConflict), Markup.Escape(how),
            Markup.Escape(normalization.ToString()), Markup.Escape(device));
        if (note is not null)
        {
            console.MarkupLine($"  [yellow]note[/]: {Markup.Escape(note)}");
        }
    }

    private void PrintTable(ShapeBiasReport report)
    {
        var table = new Table().AddColumns("shape category", "images", "shape decisions", "texture decisions", "shape bias");
        foreach (var c in report.PerCategory)
        {
            table.AddRow(c.Category, c.Images.ToString(CultureInfo.InvariantCulture), c.ShapeDecisions.ToString(CultureInfo.InvariantCulture),
                c.TextureDecisions.ToString(CultureInfo.InvariantCulture), Format(c.ShapeBias));
        }

        console.Write(table);
        console.MarkupLine(CultureInfo.InvariantCulture,
            "[bold]shape bias {0}[/] ({1} shape / {2} texture decisions of {3} cue-conflict images; {4} same-category image(s) left out); shape accuracy {5}, texture accuracy {6}",
            Format(report.ShapeBias), report.ShapeDecisions, report.TextureDecisions, report.Images - report.SameCategory, report.SameCategory,
            Format(report.ShapeAccuracy), Format(report.TextureAccuracy));
        if (report.Note is { } note)
        {
            console.MarkupLine($"  [yellow]note[/]: {Markup.Escape(note)}");
        }
    }

    private static string Format(double v) => double.IsFinite(v) ? v.ToString("0.000", CultureInfo.InvariantCulture) : "–";

    private static void CheckClasses(string source, long classes)
    {
        if (classes != CueConflictCategories.ImageNetClasses)
        {
            throw new UsageException($"{source}: the model predicts {classes} classes; shape bias needs an ImageNet-1k classifier ({CueConflictCategories.ImageNetClasses} logits)");
        }
    }

    private static int GlobalThreads(Settings settings) => settings.Threads ?? 0;

    private static void CheckWritable(string flag, string? path)
    {
        if (path is null)
        {
            return;
        }

        if (Directory.Exists(path))
        {
            throw new UsageException($"{flag} '{path}' is a folder; give a file");
        }

        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            throw new UsageException($"{flag} '{path}': its folder '{dir}' does not exist");
        }
    }
}
