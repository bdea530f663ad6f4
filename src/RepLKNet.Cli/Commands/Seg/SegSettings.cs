using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary>
/// Options of the segmentation commands that read a dataset (<c>seg train</c>, <c>seg eval</c>): the shared model and
/// weights options (<see cref="WeightsSettings"/>: <c>--arch</c>, <c>--num-classes</c>, <c>--weights</c>) plus the
/// segmentation layouts. Not <see cref="DatasetSettings"/>: its dataset names, <c>--val-split</c>, <c>--channels</c> and
/// <c>--input-size</c> are classification's; the flags that mean the same here keep their names (<c>--dataset</c>,
/// <c>--data</c>, <c>--workers</c>).
/// </summary>
public class SegDatasetSettings : WeightsSettings
{
    /// <summary>Layout.</summary>
    [CommandOption("--dataset <NAME>")]
    [Description("ade20k (images/ + annotations/, training/validation), cityscapes (leftImg8bit/ + gtFine/ labelTrainIds) or folder (images/ + masks/ matched by stem, classes.txt, optional palette.txt).")]
    [DefaultValue("folder")]
    public string Dataset { get; init; } = "folder";

    /// <summary>Dataset folder.</summary>
    [CommandOption("--data <DIR>")]
    [Description("The dataset folder.")]
    public string? Data { get; init; }

    /// <summary>Loader threads.</summary>
    [CommandOption("--workers <N>")]
    [Description("Threads preparing training crops (default: cores, at most 4); test images are prepared one at a time on a background thread, ahead of the model.")]
    public int? Workers { get; init; }

    /// <summary>Test scale.</summary>
    [CommandOption("--scale <LONG,SHORT>")]
    [Description("MMSeg img_scale: images are resized keeping their ratio to fit LONG×SHORT (train: the base of the random rescale). Default: the preset's (upernet-tiny 128,96; ADE20K 2048,512), scaled with --crop-size.")]
    public string? Scale { get; init; }

    /// <summary>Inapplicable shared options.</summary>
    protected override bool WeightsRequired => false;

    /// <inheritdoc />
    protected override ValidationResult ValidateOptions()
    {
        if (SegmentationDataset.Canonical(Dataset) is null)
        {
            return ValidationResult.Error($"--dataset '{Dataset}': use {string.Join(", ", SegmentationDataset.Kinds)}");
        }

        if (string.IsNullOrWhiteSpace(Data))
        {
            return ValidationResult.Error("--data is required (the dataset folder)");
        }

        if (Workers is <= 0)
        {
            return ValidationResult.Error($"--workers {Workers} must be positive");
        }

        return Inapplicable("segmentation checkpoints hold one set of weights and load strictly", (Ema, "--ema"), (!Strict, "--strict")) ?? base.ValidateOptions();
    }

    /// <summary>Opens the train and val splits (the layout's names), one line on errors.</summary>
    internal (SegmentationDataset Train, SegmentationDataset Val) Open() =>
        SegmentationDataset.OpenSplits(SegmentationDataset.Canonical(Dataset)!, Data!);
}

/// <summary>Parsing and defaults shared by the segmentation commands.</summary>
internal static class SegOptions
{
    /// <summary>
    /// Checks an output file option before any work: not a folder, and its folder exists or can be created (it is
    /// created); null does nothing.
    /// </summary>
    /// <exception cref="UsageException">The path is a folder, or its parent is a file.</exception>
    public static void CheckOutputFile(string flag, string? path)
    {
        if (path is null)
        {
            return;
        }

        if (Directory.Exists(path))
        {
            throw new UsageException($"{flag} '{path}' is a folder; give a file path");
        }

        string? parent = Path.GetDirectoryName(Path.GetFullPath(path));
        if (parent is not null && File.Exists(parent))
        {
            throw new UsageException($"{flag} '{path}': '{parent}' is a file, not a folder");
        }

        if (parent is not null)
        {
            Directory.CreateDirectory(parent);
        }
    }

    /// <summary>
    /// The segmenter of <paramref name="settings"/>' checkpoint (strict, on <paramref name="device"/>) and the test-time
    /// pipeline it was trained with: its recorded input, else its recipe's (by <paramref name="dataset"/> for a JSON
    /// architecture), with <paramref name="scale"/> overriding the test scale. Shared by <c>seg eval</c> and <c>seg predict</c>.
    /// </summary>
    public static (LoadedSegmentor Loaded, SegmentationPipeline Pipeline) LoadForInference(WeightsSettings settings, string? scale, string? dataset, TorchSharp.torch.Device device)
    {
        var loaded = SegmentorCheckpoint.Load(settings.Weights!, settings.Arch, strict: true, settings.NumClasses);
        try
        {
            loaded.Model.to(device);
            var recipe = SegmentorRegistry.RecipeFor(loaded.Arch, loaded.Model.Config, dataset);
            return (loaded, new SegmentationPipeline(Pipeline(recipe.Recipe, loaded.Info.Input, null, scale)));
        }
        catch
        {
            loaded.Model.Dispose();
            throw;
        }
    }

    /// <summary>Parses "S" or "H,W" (pixels, positive).</summary>
    public static (int H, int W) Pair(string flag, string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length is 1 or 2 && parts.All(p => int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0))
        {
            int a = int.Parse(parts[0], CultureInfo.InvariantCulture);
            return (a, parts.Length == 2 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : a);
        }

        throw new UsageException(flag == "--scale"
            ? $"{flag} '{text}': expected LONG,SHORT (or one size) in pixels, positive"
            : $"{flag} '{text}': expected a positive size S or H,W in pixels");
    }

    /// <summary>
    /// The pipeline of <paramref name="recipe"/> (crop, scale, normalization) — or of the input a checkpoint recorded,
    /// <paramref name="recorded"/>, which wins — with <paramref name="crop"/> and <paramref name="scale"/> overriding it; a
    /// crop without a scale scales the base scale by the same factor.
    /// </summary>
    public static SegmentationPipelineOptions Pipeline(SegmentationRecipe recipe, SegmentationInput? recorded, string? crop, string? scale)
    {
        var input = recorded ?? SegmentationInput.Of(recipe);
        var cropSize = crop is null ? input.CropSize : Pair("--crop-size", crop);
        (int Long, int Short) s;
        if (scale is not null)
        {
            var p = Pair("--scale", scale);
            s = (Math.Max(p.H, p.W), Math.Min(p.H, p.W));
        }
        else
        {
            double f = (double)cropSize.H / input.CropSize.H;
            s = ((int)Math.Round(input.Scale.Long * f), (int)Math.Round(input.Scale.Short * f));
        }

        var options = SegmentationPipelineOptions.FromRecipe(recipe) with { CropSize = cropSize, Scale = s, Mean = input.Mean, Std = input.Std };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(OptionNames.Rewrite(e, e.Message), e);
        }

        return options;
    }

    /// <summary>The test mode: <paramref name="mode"/> (whole/slide, with crop and stride) or the configuration's.</summary>
    public static SegmentationTestConfig Test(SegmentationTestConfig configured, string? mode, string? crop, string? stride)
    {
        string m = mode ?? configured.Mode;
        if (!SegmentationInference.Modes.Contains(m))
        {
            throw new UsageException($"--mode '{mode}': use whole or slide");
        }

        if (m == "whole")
        {
            return SegmentationTestConfig.Whole;
        }

        var c = crop is null ? configured.CropSize : Pair("--crop-size", crop);
        var s = stride is null ? configured.Stride : Pair("--stride", stride);
        if (c is null || s is null)
        {
            throw new UsageException("--mode slide needs --crop-size and --stride (the architecture does not set them)");
        }

        return new SegmentationTestConfig("slide", c, s);
    }
}
