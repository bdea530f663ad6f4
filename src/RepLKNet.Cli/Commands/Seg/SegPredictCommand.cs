using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Runtime;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary><c>replknet seg predict</c>: a class-index PNG and a colour overlay per image.</summary>
public sealed class SegPredictCommand(IAnsiConsole console) : Command<SegPredictCommand.Settings>
{
    /// <summary>Options of <c>seg predict</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Images.</summary>
        [CommandArgument(0, "<IMAGES>")]
        [Description("Image files or folders.")]
        public string[] Images { get; init; } = [];

        /// <summary>Output.</summary>
        [CommandOption("--out <PATH>")]
        [Description("mask.png for one image (the overlay goes beside it as mask-overlay.png), or a folder: <name>.png and <name>-overlay.png per image.")]
        public string? Out { get; init; }

        /// <summary>Mode.</summary>
        [CommandOption("--mode <MODE>")]
        [Description("whole or slide (default: the architecture's).")]
        public string? Mode { get; init; }

        /// <summary>Slide crop.</summary>
        [CommandOption("--crop-size <S>")]
        [Description("slide: window size S or H,W in pixels.")]
        public string? CropSize { get; init; }

        /// <summary>Slide stride.</summary>
        [CommandOption("--stride <S>")]
        [Description("slide: step between windows, S or H,W in pixels.")]
        public string? Stride { get; init; }

        /// <summary>Test scale.</summary>
        [CommandOption("--scale <LONG,SHORT>")]
        [Description("Resize images keeping their ratio to fit LONG×SHORT before inference (default: the architecture's preset).")]
        public string? Scale { get; init; }

        /// <summary>Overlay opacity.</summary>
        [CommandOption("--opacity <A>")]
        [DefaultValue(0.5)]
        [Description("Weight of the class colours in the overlay (MMSeg's 0.5).")]
        public double Opacity { get; init; } = 0.5;

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (Images.Length == 0)
            {
                return ValidationResult.Error("give at least one image");
            }

            if (string.IsNullOrWhiteSpace(Out))
            {
                return ValidationResult.Error("--out is required (mask.png or a folder)");
            }

            return Opacity is < 0 or > 1 ? ValidationResult.Error($"--opacity {Opacity} must be in [0, 1]")
                : Inapplicable("segmentation checkpoints hold one set of weights and load strictly", (Ema, "--ema"), (!Strict, "--strict")) ?? base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var files = ImageDecoder.Expand(settings.Images);
        if (files.Count == 0)
        {
            throw new UsageException($"no images found in {string.Join(", ", settings.Images)}");
        }

        // --out: a .png file for one image, else a folder (created); checked before the model is loaded.
        string output = settings.Out!;
        string extension = Path.GetExtension(output);
        bool toFolder = Directory.Exists(output) || extension.Length == 0;
        if (!toFolder && !extension.Equals(".png", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"--out '{output}': masks are written as PNG; give mask.png or a folder");
        }

        if (!toFolder && files.Count > 1)
        {
            throw new UsageException($"--out '{output}' names one file but {files.Count} images were given; give a folder");
        }

        if (toFolder)
        {
            if (File.Exists(output))
            {
                throw new UsageException($"--out '{output}' is a file; give a folder for several images");
            }

            // Every output name (<stem>.png and <stem>-overlay.png) must be written once: a.png and a-overlay.png as inputs
            // would otherwise overwrite one image's overlay with the other's mask.
            var clash = files.SelectMany(f => new[] { (Name: Path.GetFileNameWithoutExtension(f) + ".png", File: f), (Name: Path.GetFileNameWithoutExtension(f) + "-overlay.png", File: f) })
                .GroupBy(o => o.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
            if (clash is not null)
            {
                throw new UsageException($"--out '{output}': {string.Join(" and ", clash.Select(o => o.File).Distinct().Take(2))} would both write '{clash.Key}'; rename one or predict them into separate folders");
            }

            Directory.CreateDirectory(output);
        }
        else
        {
            SegOptions.CheckOutputFile("--out", output);
        }

        var (loaded, pipeline) = SegOptions.LoadForInference(settings, settings.Scale, null, runtime.Device);
        using var model = loaded.Model;
        var palette = loaded.Info.Palette is { } p && p.Count >= model.NumClasses ? p : SegmentationClasses.DefaultPalette(model.NumClasses);
        var classes = loaded.Info.Classes is { } c && c.Count == model.NumClasses ? c : [.. Enumerable.Range(0, model.NumClasses).Select(i => i.ToString(CultureInfo.InvariantCulture))];
        var predictor = new SegmentationPredictor(model, pipeline, palette, SegOptions.Test(model.Config.Test, settings.Mode, settings.CropSize, settings.Stride), runtime.Device);
        var failed = new List<string>();
        foreach (string file in files)
        {
            cancellationToken.ThrowIfCancellationRequested();
            ImageU8 image;
            try
            {
                image = ImageDecoder.Decode(file, 3);
            }
            catch (DatasetException e)
            {
                // One unreadable image does not stop the others; the exit status reports it.
                Console.Error.WriteLine($"replknet: {e.Message}");
                failed.Add(file);
                continue;
            }

            var prediction = predictor.Predict(image);
            string mask = toFolder ? Path.Combine(output, Path.GetFileNameWithoutExtension(file) + ".png") : output;
            string overlay = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(mask))!, Path.GetFileNameWithoutExtension(mask) + "-overlay.png");
            predictor.Write(prediction, image, mask, overlay, settings.Opacity);
            long total = (long)image.Height * image.Width;
            var top = prediction.PixelsPerClass.Select((n, i) => (n, i)).Where(x => x.n > 0).OrderByDescending(x => x.n).Take(5)
                .Select(x => string.Create(CultureInfo.InvariantCulture, $"{classes[x.i]} {100.0 * x.n / total:F1}%"));
            console.MarkupLine($"{Markup.Escape(file)} → {Markup.Escape(mask)} (+ overlay): {Markup.Escape(string.Join(", ", top))}");
        }

        if (failed.Count > 0)
        {
            Console.Error.WriteLine($"replknet: error: {failed.Count} of {files.Count} image(s) could not be read (listed above); the others were written");
            return ExitCodes.Failure;
        }

        return ExitCodes.Success;
    }
}
