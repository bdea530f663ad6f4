using System.ComponentModel;
using System.Globalization;
using RepLKNet.Data;
using RepLKNet.Inference;
using Spectre.Console;
using Spectre.Console.Cli;

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
        protected override bool WeightsRequired => Onnx is null;

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            Onnx is not null && Weights is not null ? ValidationResult.Error("give --weights or --onnx, not both")
            : Onnx is not null && BatchSize <= 0 ? ValidationResult.Error("--batch-size must be positive")
            : base.ValidateOptions();

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

        using var classifier = ImageClassifier.Load(settings.Weights!, settings.LoadOptions, settings.DeviceRequest, settings.InputSize);
        var files = ImageDecoder.Expand(settings.Images);
        if (files.Count == 0)
        {
            throw new UsageException("no images: give image files or folders holding some");
        }

        foreach (var file in files)
        {
            console.Profile.Out.Writer.WriteLine(file);
            Print(classifier.Predict(file, 5));
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
            Print(prediction.Top);
        }

        return ExitCodes.Success;
    }

    private void Print(IReadOnlyList<ClassScore> top)
    {
        for (int i = 0; i < top.Count; i++)
        {
            var c = top[i];
            console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i + 1}. {c.Label,-24} {c.Probability:P2}"));
        }
    }
}
