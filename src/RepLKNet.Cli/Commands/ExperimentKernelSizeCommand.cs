using System.ComponentModel;
using System.Globalization;
using RepLKNet.Experiments;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands;

/// <summary>Options shared by the experiment commands: the dataset (<see cref="DatasetSettings"/>) and the one training recipe.</summary>
public class ExperimentSettings : DatasetSettings
{
    /// <summary>The training budget text (each command sets its own default).</summary>
    public virtual string Budget { get; init; } = "1";

    /// <summary>Batch size.</summary>
    [CommandOption("--batch-size <B>")]
    [DefaultValue(ClassifierTrainingOptions.DefaultBatchSize)]
    [Description("Batch size.")]
    public int BatchSize { get; init; } = ClassifierTrainingOptions.DefaultBatchSize;

    /// <summary>Peak learning rate.</summary>
    [CommandOption("--lr <LR>")]
    [DefaultValue(ClassifierTrainingOptions.DefaultLearningRate)]
    [Description("Peak AdamW learning rate (warm-up over the first 5 % of the budget, cosine to 0).")]
    public double LearningRate { get; init; } = ClassifierTrainingOptions.DefaultLearningRate;

    /// <summary>Weight decay.</summary>
    [CommandOption("--weight-decay <WD>")]
    [DefaultValue(ClassifierTrainingOptions.DefaultWeightDecay)]
    [Description("AdamW weight decay (not on biases and norms).")]
    public double WeightDecay { get; init; } = ClassifierTrainingOptions.DefaultWeightDecay;

    /// <summary>Training subset.</summary>
    [CommandOption("--train-subset <N>")]
    [Description("Train on a seeded random subset of N images (evaluation always uses the whole test split).")]
    public long? TrainSubset { get; init; }

    /// <summary>Step cap (smoke runs).</summary>
    [CommandOption("--max-steps <N>")]
    [Description("Stop each model after N steps whatever the budget (smoke runs).")]
    public long? MaxSteps { get; init; }

    /// <inheritdoc />
    protected override bool WeightsRequired => false;

    /// <inheritdoc />
    protected override ValidationResult ValidateOptions()
    {
        if (Inapplicable("the experiments build and train their own models (--model, --table)",
            (Arch is not null, "--arch"), (Weights is not null, "--weights"), (Ema, "--ema"), (!Strict, "--strict")) is { } error)
        {
            return error;
        }

        try
        {
            _ = TrainingBudget.Parse(Budget);
        }
        catch (ArgumentException e)
        {
            return ValidationResult.Error($"--budget: {e.Message}");
        }

        // The recipe's ranges are the library's (ClassifierTrainingOptions.Validate), reported with these flags.
        try
        {
            new ClassifierTrainingOptions
            {
                Budget = TrainingBudget.Parse(Budget), Normalization = Normalization.ImageNet, BatchSize = BatchSize, LearningRate = LearningRate,
                WeightDecay = WeightDecay, TrainSubset = TrainSubset, MaxSteps = MaxSteps,
            }.Validate();
        }
        catch (ArgumentException e)
        {
            return ValidationResult.Error(OptionNames.Rewrite(e, e.Message));
        }

        return base.ValidateOptions();
    }

    /// <summary>The recipe these options describe for <paramref name="data"/> (seed 0).</summary>
    internal ClassifierTrainingOptions Recipe(DatasetSplits data, torch.Device device)
    {
        var augment = Recipes.DatasetAugment(data.Name);
        if (InputSize is int size)
        {
            augment = augment with { InputSize = size };
        }

        return new ClassifierTrainingOptions
        {
            Budget = TrainingBudget.Parse(Budget), Normalization = data.Normalization, Augment = augment, BatchSize = BatchSize, LearningRate = LearningRate,
            WeightDecay = WeightDecay, TrainSubset = TrainSubset, MaxSteps = MaxSteps, Workers = Workers ?? LoaderPlan.DefaultWorkers, Device = device,
        };
    }
}

/// <summary><c>replknet experiment kernel-size</c>: the paper's MobileNetV2 kernel-size tables on a small dataset.</summary>
public sealed class ExperimentKernelSizeCommand(IAnsiConsole console) : Command<ExperimentKernelSizeCommand.Settings>
{
    /// <summary>Options of <c>experiment kernel-size</c>.</summary>
    public sealed class Settings : ExperimentSettings
    {
        /// <summary>Table.</summary>
        [CommandOption("--table <TABLE>")]
        [Description("shortcut (shortcut ✓/✗ × kernel 3/13), reparam (3 / 9 / 9+re-param / 13 / 13+re-param) or last-stage (3 / 7 / 13 on the 7×7 map).")]
        public string? Table { get; init; }

        /// <summary>Budget per cell and seed.</summary>
        [CommandOption("--budget <BUDGET>")]
        [Description("Training per model and seed: epochs (0.3, 2e) or time (90s, 5m); the schedule spans it. The default 0.3 epoch (140 steps of 128) keeps a table well under an hour on 2 CPU cores.")]
        [DefaultValue("0.3")]
        public override string Budget { get; init; } = "0.3";

        /// <summary>Seeds.</summary>
        [CommandOption("--seeds <LIST>")]
        [Description("Comma-separated seeds; each cell is trained once per seed and reported as mean ± sd.")]
        [DefaultValue("0")]
        public string Seeds { get; init; } = "0";

        /// <summary>Width multiplier.</summary>
        [CommandOption("--width <W>")]
        [DefaultValue(0.5)]
        [Description("MobileNetV2 width multiplier.")]
        public double Width { get; init; } = 0.5;

        /// <summary>Layout.</summary>
        [CommandOption("--layout <LAYOUT>")]
        [DefaultValue("small")]
        [Description("small (overall stride 4: 28×28 → 7×7 in the last stage) or imagenet (the paper's stride 32: 224×224 → 7×7).")]
        public string Layout { get; init; } = "small";

        /// <summary>Output folder.</summary>
        [CommandOption("--out <DIR>")]
        [Description("Folder for <table>.json, <table>.md and each cell's deploy weights (default runs/kernel-size).")]
        [DefaultValue("runs/kernel-size")]
        public string Out { get; init; } = "runs/kernel-size";

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            !(Width > 0) ? ValidationResult.Error("--width must be positive")
            : !MobileNetV2Config.Layouts.Contains(Layout.ToLowerInvariant()) ? ValidationResult.Error($"--layout '{Layout}': use {string.Join(" or ", MobileNetV2Config.Layouts)}")
            : base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        KernelSizeTable table;
        try
        {
            table = KernelSizeExperiment.ParseTable(settings.Table ?? throw new UsageException("--table is required: shortcut, reparam or last-stage"));
        }
        catch (ArgumentException e)
        {
            throw new UsageException(OptionNames.Rewrite(e, e.Message));
        }

        long[] seeds;
        try
        {
            seeds = [.. settings.Seeds.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => long.Parse(s, CultureInfo.InvariantCulture))];
        }
        catch (FormatException)
        {
            throw new UsageException($"--seeds '{settings.Seeds}' is not a comma-separated list of integers");
        }

        if (seeds.Length == 0 || seeds.Distinct().Count() != seeds.Length)
        {
            throw new UsageException($"--seeds '{settings.Seeds}' must list at least one seed, each once");
        }

        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        using var data = settings.OpenData();
        var recipe = settings.Recipe(data, runtime.Device);
        int size = recipe.Augment.InputSize ?? data.Train.FixedSize?.Height ?? throw new UsageException("images of varying sizes need --input-size");
        var baseConfig = MobileNetV2Config.ForLayout(settings.Layout, data.Train.Channels, data.Train.ClassNames.Count, settings.Width);
        var options = new KernelSizeExperimentOptions { Table = table, Training = recipe, Seeds = seeds, Base = baseConfig, OutDir = settings.Out };
        var cells = KernelSizeExperiment.Cells(table, baseConfig);
        console.MarkupLine(CultureInfo.InvariantCulture,
            "[bold]experiment kernel-size[/] --table {0}: {1} cells × {2} seed(s), MobileNetV2 width {3} at stride {4} ({5}×{5} → last stage {6}×{6}) on {7} ({8:N0} training{9} / {10:N0} test images), {11} per model, batch {12}, lr {13}, {14}, {15} threads → {16}",
            KernelSizeExperiment.Name(table), cells.Count, seeds.Length, settings.Width, baseConfig.TotalStride, size, (size + baseConfig.TotalStride - 1) / baseConfig.TotalStride,
            Markup.Escape(data.Name), data.Train.Count, settings.TrainSubset is long n ? $", subset {n:N0}" : "", data.Test.Count, recipe.Budget, recipe.BatchSize, recipe.LearningRate,
            runtime.Device, torch.get_num_threads(), Markup.Escape(settings.Out));
        var output = console.Profile.Out.Writer;
        var results = KernelSizeExperiment.Run(options, data.Train, data.Test,
            (cell, seed, p) =>
            {
                if (p.Step % 100 == 0)
                {
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {cell.Id} seed {seed}: step {p.Step}, {p.Fraction:P0} of the budget, loss {p.Loss:F4}, lr {p.LearningRate:0.00e+00}, {p.ImagesPerSecond:F0} images/s{TrainCommand.PeakRss(PeakMemory.ProcessPeak()?.Bytes, ", ")}"));
                }
            },
            r => output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Cell.Label}: top-1 {100 * r.Mean:F2} %{(r.Top1.Length > 1 ? $" ± {100 * r.Spread:F2}" : "")}, {r.DeployParams / 1e6:F3} M params, {r.Macs / 1e6:F1} M MACs, {r.TrainSeconds.Average():F0} s, {r.Steps.Average():F0} steps{(r.Cell.Config.SmallKernel is null ? "" : $", re-param max |Δlogit| {r.ReparamMaxDiff:0.0e+00}")}")),
            cancellationToken);
        output.WriteLine();
        output.Write(KernelSizeExperiment.Markdown(table, results));
        output.WriteLine($"written: {Path.Combine(settings.Out, KernelSizeExperiment.Name(table))}.json / .md and each cell's deploy weights");
        return ExitCodes.Success;
    }
}
