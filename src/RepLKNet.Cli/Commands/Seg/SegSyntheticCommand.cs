using System.ComponentModel;
using RepLKNet.Segmentation;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary><c>replknet seg synthetic</c>: writes the synthetic shapes set (<see cref="SyntheticSegmentation.Write"/>) in a dataset layout.</summary>
public sealed class SegSyntheticCommand(IAnsiConsole console) : Command<SegSyntheticCommand.Settings>
{
    /// <summary>Options of <c>seg synthetic</c>.</summary>
    public sealed class Settings : GlobalSettings
    {
        /// <summary>Destination.</summary>
        [CommandOption("--out <DIR>")]
        [Description("Folder to write the dataset into (created).")]
        public string? Out { get; init; }

        /// <summary>Layout.</summary>
        [CommandOption("--layout <LAYOUT>")]
        [DefaultValue("ade20k")]
        [Description("ade20k (150 classes, 5 used, reduce_zero_label), cityscapes (19 classes, 5 used) or folder (classes.txt, palette.txt).")]
        public string Layout { get; init; } = "ade20k";

        /// <summary>Training samples.</summary>
        [CommandOption("--train <N>")]
        [DefaultValue(200)]
        [Description("Training images.")]
        public int Train { get; init; } = 200;

        /// <summary>Validation samples.</summary>
        [CommandOption("--val <N>")]
        [DefaultValue(50)]
        [Description("Validation images.")]
        public int Val { get; init; } = 50;

        /// <summary>Image height.</summary>
        [CommandOption("--size <PX>")]
        [DefaultValue(128)]
        [Description("Image height in pixels (widths 1–1.25 × it).")]
        public int Size { get; init; } = 128;

        /// <summary>Folder classes.</summary>
        [CommandOption("--classes <N>")]
        [Description("folder layout: classes including the background, 2–7 (default 5).")]
        public int? Classes { get; init; }

        /// <summary>Seed.</summary>
        [CommandOption("--seed <SEED>")]
        [DefaultValue(0L)]
        [Description("Seed of every random choice.")]
        public long Seed { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            string.IsNullOrWhiteSpace(Out) ? ValidationResult.Error("--out is required (the dataset folder to write)") : base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (File.Exists(settings.Out))
        {
            throw new UsageException($"--out '{settings.Out}' is a file; give a folder for the dataset");
        }

        if (Directory.Exists(settings.Out) && Directory.EnumerateFileSystemEntries(settings.Out!).Any())
        {
            throw new UsageException($"--out '{settings.Out}' is not empty; give a new or empty folder (a new set would mix with the files there)");
        }

        SyntheticSegmentationSet set;
        try
        {
            set = SyntheticSegmentation.Write(settings.Out!, settings.Layout, settings.Train, settings.Val, settings.Size, settings.Seed, settings.Classes);
        }
        catch (ArgumentException e) when (e.ParamName is { } name && Flag(name) is { } flag)
        {
            throw new UsageException(flag + e.Message[name.Length..].Replace($" (Parameter '{name}')", "", StringComparison.Ordinal), e);
        }

        console.MarkupLine($"wrote [bold]{set.TrainCount}[/] training and [bold]{set.ValCount}[/] validation images in the {set.Layout} layout to {Markup.Escape(set.Root)} ({set.ClassCount} classes; labels used: {string.Join(", ", set.Labels)})");
        console.MarkupLine($"  train on it: ./replknet seg train --dataset {set.Layout} --data {Markup.Escape(set.Root)} --out runs/seg-synthetic");
        return ExitCodes.Success;
    }

    private static string? Flag(string paramName) => paramName switch
    {
        "layout" => "--layout",
        "trainCount" => "--train",
        "valCount" => "--val",
        "size" => "--size",
        "classes" => "--classes",
        _ => null,
    };
}
