using System.ComponentModel;
using System.Globalization;
using RepLKNet.Erf;
using RepLKNet.Data;
using RepLKNet.IO;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet erf</c>: the paper's effective-receptive-field maps and area ratios, one model or several side by side.</summary>
public sealed class ErfCommand(IAnsiConsole console) : Command<ErfCommand.Settings>
{
    /// <summary>Options of <c>erf</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Architecture.</summary>
        [CommandOption("--model|--arch <NAME>")]
        [Description("RepLKNet variant (or JSON configuration), resnet18/resnet50/resnet101 (TorchVision), or mobilenetv2[[-kN]]. Optional when --weights records it.")]
        public string? Model { get; init; }

        /// <summary>Weights.</summary>
        [CommandOption("--weights <FILE>")]
        [Description("Checkpoint: the project's (RepLKNet or MobileNetV2), official RepLKNet, or torchvision-format ResNet (.pth or safetensors). None: random weights.")]
        public string? Weights { get; init; }

        /// <summary>Models to compare.</summary>
        [CommandOption("--compare <SPEC>")]
        [Description("Repeatable: MODEL, MODEL@WEIGHTS, @WEIGHTS, or a saved map FILE.npy (LABEL@FILE.npy). Draws all side by side.")]
        public string[] Compare { get; init; } = [];

        /// <summary>Image folder.</summary>
        [CommandOption("--data <DIR>")]
        [Description("Folder of images (searched recursively, sorted: ImageFolder order); with --dataset, the dataset's files. Default: --dataset.")]
        public string? Data { get; init; }

        /// <summary>Dataset.</summary>
        [CommandOption("--dataset <NAME>")]
        [Description("fashion-mnist or cifar10: their test images in order (default fashion-mnist when --data is not given).")]
        public string? Dataset { get; init; }

        /// <summary>Images.</summary>
        [CommandOption("--num-images <N>")]
        [DefaultValue(50)]
        [Description("Maps to average (images with NaN maps are skipped and not counted), as the official 50.")]
        public int NumImages { get; init; } = 50;

        /// <summary>Input size.</summary>
        [CommandOption("--size <PX>")]
        [DefaultValue(1024)]
        [Description("Images are resized (bicubic, aspect ratio not kept) to PX×PX, the official 1024.")]
        public int Size { get; init; } = 1024;

        /// <summary>PNG.</summary>
        [CommandOption("--out <FILE>")]
        [DefaultValue("erf.png")]
        [Description("The heatmap PNG (with colour bar and area ratios).")]
        public string Out { get; init; } = "erf.png";

        /// <summary>Score matrix.</summary>
        [CommandOption("--npy <FILE>")]
        [Description("Also write each computed mean score matrix (float32 .npy, the official format); with several models FILE gets -1, -2 … before .npy.")]
        public string? Npy { get; init; }

        /// <summary>Figure caption.</summary>
        [CommandOption("--title <TEXT>")]
        [Description("Caption at the top of the figure.")]
        public string? Title { get; init; }
    }

    private sealed record Spec(string? Model, string? Weights, string? Npy, string? Label);

    private sealed record Outcome(string Label, string Weights, bool Trained, ErfMap Map, IReadOnlyList<AreaRatio?> Areas, string Normalization, double Seconds);

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.NumImages <= 0 || settings.Size < 32)
        {
            throw new UsageException($"--num-images must be positive and --size at least 32 (got {settings.NumImages}, {settings.Size})");
        }

        var specs = new List<Spec>();
        if (settings.Model is not null || settings.Weights is not null)
        {
            specs.Add(new Spec(settings.Model, settings.Weights, null, null));
        }

        specs.AddRange(settings.Compare.Select(ParseSpec));
        if (specs.Count == 0)
        {
            throw new UsageException("name a model (--model, --weights) or models to compare (--compare MODEL[@WEIGHTS] …)");
        }

        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var outcomes = new List<Outcome>();
        DatasetSplits? splits = null;
        IImageDataset? folder = null;
        try
        {
            int index = 0;
            foreach (var spec in specs)
            {
                index++;
                if (spec.Npy is not null)
                {
                    var saved = FromNpy(spec);
                    outcomes.Add(saved);
                    console.WriteLine($"  {saved.Label}: score matrix {spec.Npy} ({saved.Map.Height}×{saved.Map.Width}); area ratio {EffectiveReceptiveField.Describe(saved.Areas)}");
                    continue;
                }

                using var subject = CreateSubject(spec, runtime.Device);
                IImageDataset images;
                Normalization normalization;
                if (settings.Data is not null && settings.Dataset is null)
                {
                    folder ??= ImageFileList.Open(settings.Data);
                    images = folder;
                    normalization = subject.Normalization ?? Normalization.ImageNet;
                }
                else
                {
                    string name = settings.Dataset ?? "fashion-mnist";
                    if (Datasets.Canonical(name) is not ("fashion-mnist" or "cifar10"))
                    {
                        throw new UsageException($"--dataset '{name}': use fashion-mnist or cifar10, or --data DIR for a folder of images");
                    }

                    splits ??= Datasets.Open(name, settings.Data);
                    images = splits.Test;
                    normalization = subject.Normalization ?? splits.Normalization;
                }

                console.MarkupLine(CultureInfo.InvariantCulture, "[bold]erf[/] {0} ({1}): {2} image(s) of {3} at {4}×{4}, {5}, {6}",
                    Markup.Escape(subject.Label), Markup.Escape(subject.Weights is null ? "random weights" : $"weights {subject.Weights}"),
                    settings.NumImages, Markup.Escape(settings.Data ?? settings.Dataset ?? "fashion-mnist"), settings.Size, Markup.Escape(normalization.ToString()), runtime.Device);
                var clock = System.Diagnostics.Stopwatch.StartNew();
                var stream = ErfImages.From(images, settings.Size, subject.InChannels, normalization, runtime.Device,
                    skipped => console.MarkupLine($"  skipped unreadable image {Markup.Escape(skipped)}"));
                ErfMap map = Run(subject, stream, settings.NumImages, cancellationToken);
                var areas = EffectiveReceptiveField.Areas(EffectiveReceptiveField.Normalize(map.Mean), map.Height, map.Width);
                if (map.Images < settings.NumImages)
                {
                    console.MarkupLine(CultureInfo.InvariantCulture, "  [yellow]only {0} usable image(s) were available (asked for {1})[/]", map.Images, settings.NumImages);
                }

                var outcome = new Outcome(subject.Label, subject.Weights ?? "random", subject.Trained, map, areas, normalization.ToString(), clock.Elapsed.TotalSeconds);
                outcomes.Add(outcome);
                console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {outcome.Label}: {map.Images} map(s){(map.SkippedNaN > 0 ? $", {map.SkippedNaN} skipped (NaN)" : "")}, {outcome.Seconds:F1} s; area ratio {EffectiveReceptiveField.Describe(areas)}"));
                if (settings.Npy is not null)
                {
                    string path = specs.Count(s => s.Npy is null) == 1 ? settings.Npy : Path.ChangeExtension(settings.Npy, null) + $"-{index}.npy";
                    NpyFile.Write(path, map.Mean, map.Height, map.Width);
                    console.WriteLine($"  score matrix: {path}");
                }
            }
        }
        finally
        {
            splits?.Dispose();
        }

        var panels = outcomes.Select(o => new ErfPanel(o.Label, Subtitle(o), EffectiveReceptiveField.Normalize(o.Map.Mean), o.Map.Height, o.Map.Width, o.Areas)).ToList();
        ErfFigure.Write(settings.Out, panels, settings.Title);
        console.WriteLine($"heatmap: {settings.Out}");
        if (settings.Json is not null)
        {
            var doc = new
            {
                size = settings.Size,
                images_requested = settings.NumImages,
                data = settings.Data ?? settings.Dataset ?? "fashion-mnist",
                thresholds = EffectiveReceptiveField.Thresholds,
                models = outcomes.Select(o => new
                {
                    label = o.Label,
                    weights = o.Weights,
                    trained = o.Trained,
                    images = o.Map.Images,
                    skipped_nan = o.Map.SkippedNaN,
                    normalization = o.Normalization,
                    seconds = Math.Round(o.Seconds, 2),
                    areas = o.Areas.Select((a, i) => new { threshold = EffectiveReceptiveField.Thresholds[i], side = a?.Side, ratio = a?.Ratio }),
                }),
            };
            settings.WriteJson(doc);
            console.WriteLine($"ratios: {settings.Json}");
        }

        return ExitCodes.Success;
    }

    private static string Subtitle(Outcome o) => o.Normalization == "from file"
        ? $"score matrix {Path.GetFileName(o.Weights)}"
        : o.Weights == "random"
        ? string.Create(CultureInfo.InvariantCulture, $"random weights (untrained), {o.Map.Images} images")
        : string.Create(CultureInfo.InvariantCulture, $"trained: {Path.GetFileName(o.Weights)}, {o.Map.Images} images");

    private ErfMap Run(ErfSubject subject, IEnumerable<TorchSharp.torch.Tensor> images, int count, CancellationToken cancel)
    {
        var guarded = images.TakeWhile(_ => !cancel.IsCancellationRequested);
        if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
        {
            int every = Math.Max(1, count / 10);
            return EffectiveReceptiveField.Accumulate(subject.Features, guarded, count, (accepted, skipped) =>
            {
                if ((accepted + skipped) % every == 0)
                {
                    console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  image {accepted + skipped}: {accepted}/{count} maps"));
                }
            });
        }

        ErfMap? result = null;
        console.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(subject.Label), maxValue: count);
                result = EffectiveReceptiveField.Accumulate(subject.Features, guarded, count, (accepted, _) => task.Value = accepted);
            });
        return result!;
    }

    private static ErfSubject CreateSubject(Spec spec, torch.Device device)
    {
        try
        {
            return ErfSubject.Create(spec.Model, spec.Weights, device);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message, e);
        }
    }

    private static Outcome FromNpy(Spec spec)
    {
        (double[] values, int h, int w) = NpyFile.Read(spec.Npy!);
        var map = new ErfMap(values, h, w, 0, 0);
        return new Outcome(spec.Label ?? Path.GetFileNameWithoutExtension(spec.Npy!), spec.Npy!, true, map, EffectiveReceptiveField.Areas(EffectiveReceptiveField.Normalize(values), h, w), "from file", 0);
    }

    private static Spec ParseSpec(string text)
    {
        // "@" alone names neither a model nor weights.
        if (string.IsNullOrWhiteSpace(text) || text == "@")
        {
            throw new UsageException("--compare needs MODEL, MODEL@WEIGHTS, @WEIGHTS or FILE.npy");
        }

        int at = text.IndexOf('@', StringComparison.Ordinal);
        string head = at < 0 ? text : text[..at];
        string? tail = at < 0 ? null : text[(at + 1)..];
        if ((tail ?? head).EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            return new Spec(null, null, tail ?? head, tail is null ? null : head);
        }

        return new Spec(head.Length == 0 ? null : head, string.IsNullOrEmpty(tail) ? null : tail, null, null);
    }
}
