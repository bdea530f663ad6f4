using System.ComponentModel;
using System.Globalization;
using RepLKNet.Data;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>
/// Options of commands that read a dataset (train, eval, the experiments): which one, where, how a folder is split and
/// decoded, the network input size and the loader threads; <see cref="OpenData"/> opens it. It sits below
/// <see cref="WeightsSettings"/> because train and eval also build or load a model; the experiments, which build their
/// own, refuse the model options (--num-classes, checked against the dataset, applies everywhere).
/// </summary>
public class DatasetSettings : WeightsSettings
{
    /// <summary>Dataset.</summary>
    [CommandOption("--dataset <NAME>")]
    [Description("fashion-mnist, cifar10, or folder (--data DIR: one sub-folder of images per class, or train/ and val/ folders holding them). Training uses its training split, evaluation its test split (a folder's val/, or the part held out by --val-split).")]
    [DefaultValue("fashion-mnist")]
    public string Dataset { get; init; } = "fashion-mnist";

    /// <summary>Data folder.</summary>
    [CommandOption("--data <DIR>")]
    [Description("Folder with the dataset files (default: $REPLKNET_DATA, then the Debian package folder), or the image folder.")]
    public string? Data { get; init; }

    /// <summary>Held-out fraction of a folder without train/ and val/.</summary>
    [CommandOption("--val-split <FRACTION>")]
    [DefaultValue(0.1)]
    [Description("folder without train/ and val/: fraction of each class held out for validation (eval: the training run's value, with its --seed).")]
    public double ValSplit { get; init; } = 0.1;

    /// <summary>Channels of folder images.</summary>
    [CommandOption("--channels <C>")]
    [Description("folder: decode images as 3 (RGB, the default) or 1 (grey) channels; eval decodes as many as the model takes.")]
    public int? Channels { get; init; }

    /// <summary>Input size.</summary>
    [CommandOption("--input-size <PX>")]
    [Description("Square network input (default: the images' size, 28 Fashion-MNIST and 32 CIFAR-10, 224 for a folder; eval: the checkpoint's recorded size first).")]
    public int? InputSize { get; init; }

    /// <summary>Loader threads.</summary>
    [CommandOption("--workers <N>")]
    [Description("Background threads preparing batches (default: cores, at most 4).")]
    public int? Workers { get; init; }

    /// <inheritdoc />
    protected override ValidationResult ValidateOptions()
    {
        if (Datasets.Canonical(Dataset) is null)
        {
            return ValidationResult.Error($"--dataset '{Dataset}': use {string.Join(", ", Datasets.Names)}");
        }

        if (ValSplit is <= 0 or >= 1)
        {
            return ValidationResult.Error(string.Create(CultureInfo.InvariantCulture, $"--val-split {ValSplit} must be in (0, 1)"));
        }

        if (Channels is not (null or 1 or 3))
        {
            return ValidationResult.Error($"--channels {Channels} must be 1 or 3");
        }

        return InputSize is <= 0 || Workers is <= 0 ? ValidationResult.Error("--input-size and --workers must be positive") : base.ValidateOptions();
    }

    /// <summary>
    /// Opens the dataset; <paramref name="seed"/> draws a folder's split. <paramref name="modelChannels"/>, a model's input
    /// channels, decides how images are decoded (--channels, when given, must agree). Fails when --num-classes does not match
    /// the dataset's classes.
    /// </summary>
    internal DatasetSplits OpenData(long seed = 0, int? modelChannels = null)
    {
        if (modelChannels is int m && Channels is int c && c != m)
        {
            throw new UsageException($"--channels {c}: the model takes {m} input channels");
        }

        var splits = Datasets.Open(Dataset, Data, ValSplit, modelChannels ?? Channels ?? 3, seed);
        int classes = splits.Train.ClassNames.Count;
        if (NumClasses is int n && n != classes)
        {
            splits.Dispose();
            throw new UsageException($"--num-classes {n} does not match the dataset's {classes} classes");
        }

        return splits;
    }
}
