using System.ComponentModel;
using System.Globalization;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using RepLKNet.Segmentation;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary>
/// <c>replknet seg train</c>: the official UperNet recipe (AdamW, poly with warm-up, iteration-based, evaluation every N
/// iterations, best by mIoU) on the one training loop; progress, metrics CSV, curves and per-class IoU PNGs, MMSeg
/// checkpoints, exact resume, Ctrl-C safe.
/// </summary>
public sealed class SegTrainCommand(IAnsiConsole console) : Command<SegTrainCommand.Settings>
{
    /// <summary>Options of <c>seg train</c>.</summary>
    public sealed class Settings : SegDatasetSettings
    {
        /// <summary>Crop.</summary>
        [CommandOption("--crop-size <S>")]
        [Description("Random-crop size S or H,W in pixels (default: the preset's; upernet-tiny 96, the official ADE20K 512).")]
        public string? CropSize { get; init; }

        /// <summary>Batch.</summary>
        [CommandOption("--batch-size <B>")]
        [Description("Crops per iteration (≥ 2; 1 with --sync-bn under mpiexec; per process under mpiexec, the global batch is this × processes; default: the preset's, upernet-tiny 8, official 2 per GPU).")]
        public int? BatchSize { get; init; }

        /// <summary>Iterations.</summary>
        [CommandOption("--max-steps <N>")]
        [Description("Iterations of the run: the poly schedule's max_iters (default: the preset's; upernet-tiny 300).")]
        public long? MaxSteps { get; init; }

        /// <summary>Evaluation interval.</summary>
        [CommandOption("--eval-every <N>")]
        [Description("Evaluate (mIoU on the val split, best checkpoint) every N iterations and at the last (default: 2000, at most a quarter of the run).")]
        public long? EvalEvery { get; init; }

        /// <summary>Learning rate.</summary>
        [CommandOption("--lr <LR>")]
        [Description("AdamW base learning rate (default: the preset's; every official config 2e-4, upernet-tiny 1e-3 as it trains from scratch).")]
        public double? Lr { get; init; }

        /// <summary>Weight decay.</summary>
        [CommandOption("--weight-decay <WD>")]
        [DefaultValue(SegmentationTrainOptions.DefaultWeightDecay)]
        [Description("AdamW weight decay; normalization layers get none (norm_decay_mult=0).")]
        public double WeightDecay { get; init; } = SegmentationTrainOptions.DefaultWeightDecay;

        /// <summary>Warm-up.</summary>
        [CommandOption("--warmup-iters <N>")]
        [Description("Linear warm-up iterations (default: the preset's; official 400 for 31B).")]
        public long? WarmupIters { get; init; }

        /// <summary>Warm-up ratio.</summary>
        [CommandOption("--warmup-ratio <R>")]
        [DefaultValue(SegmentationTrainOptions.DefaultWarmupRatio)]
        [Description("Fraction of the rate at iteration 0 of the warm-up (official 1e-6).")]
        public double WarmupRatio { get; init; } = SegmentationTrainOptions.DefaultWarmupRatio;

        /// <summary>Auxiliary loss weight.</summary>
        [CommandOption("--aux-weight <W>")]
        [Description("Weight of the FCN auxiliary head's loss (default: the architecture's auxiliary_head.loss_decode.loss_weight, 0.4 in every preset).")]
        public double? AuxWeight { get; init; }

        /// <summary>EMA.</summary>
        [CommandOption("--ema-decay <D>")]
        [DefaultValue(0.0)]
        [Description("Decay of a weight EMA, also evaluated (0: none, as the official recipe).")]
        public double EmaDecay { get; init; }

        /// <summary>Seed.</summary>
        [CommandOption("--seed <SEED>")]
        [DefaultValue(0L)]
        [Description("Seed of initialization, data order and every augmentation draw.")]
        public long Seed { get; init; }

        /// <summary>Run folder.</summary>
        [CommandOption("--out <DIR>")]
        [DefaultValue("runs/seg")]
        [Description("Run folder: best.pth and last.pth (MMSeg layout), metrics.csv/json, curves.png, class-iou.png, the resume state.")]
        public string Out { get; init; } = "runs/seg";

        /// <summary>Resume.</summary>
        [CommandOption("--resume")]
        [Description("Continue the run in --out exactly where it stopped.")]
        public bool Resume { get; init; }

        /// <summary>Save interval.</summary>
        [CommandOption("--save-every <N>")]
        [Description("Also save the resume state every N iterations (it is saved at every evaluation and on stops).")]
        public long? SaveEvery { get; init; }

        /// <summary>Training dtype.</summary>
        [CommandOption("--dtype <TYPE>")]
        [DefaultValue("float32")]
        [Description("float32 (default) or float64: train in double precision for numerical verification (slower).")]
        public string Dtype { get; init; } = "float32";

        /// <summary>SyncBN.</summary>
        [CommandOption("--sync-bn")]
        [Description("Under mpiexec: BatchNorm statistics over the global batch of all processes (the official configs' SyncBN); plain per-process BN otherwise.")]
        public bool SyncBn { get; init; }

        /// <summary>World-size change on resume.</summary>
        [CommandOption("--allow-world-size-change")]
        [Description("With --resume: continue a run written by another number of processes (the global batch, --batch-size × processes, must be the same).")]
        public bool AllowWorldSizeChange { get; init; }

        /// <summary>Collective timeout.</summary>
        [CommandOption("--collective-timeout <SECONDS>")]
        [Description("Under mpiexec: end the job when a collective waits longer than this (another process died or hangs); default 1800.")]
        public double? CollectiveTimeout { get; init; }

        /// <summary>Evaluation subset.</summary>
        [CommandOption("--eval-limit <N>")]
        [Description("Evaluate on the first N val images only (smoke runs).")]
        public long? EvalLimit { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            NumClasses is not null ? ValidationResult.Error("--num-classes does not apply: seg train takes the dataset's classes")
            : Dtype is not ("float32" or "float64") ? ValidationResult.Error($"--dtype '{Dtype}': use float32 or float64")
            : DataParallel.CheckTimeout(CollectiveTimeout) is { } timeout ? timeout
            : AllowWorldSizeChange && !Resume ? ValidationResult.Error("--allow-world-size-change does not apply without --resume: it lets a resumed run have another number of processes")
            : base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var group = DataParallel.Open(settings.CollectiveTimeout);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var device = DataParallel.Place(runtime.Device, group, text => console.MarkupLine(Markup.Escape(text)));
        if (DataParallel.OneProcessNote(group, settings.SyncBn) is { } note)
        {
            console.MarkupLine(Markup.Escape(note));
        }

        var (name, config) = SegmentorRegistry.Resolve(settings.Arch ?? SegmentorRegistry.DefaultName);
        var (train, val) = settings.Open();
        if (config.NumClasses != train.ClassNames.Count)
        {
            config = config.WithNumClasses(train.ClassNames.Count);
        }

        var recipeSource = SegmentorRegistry.RecipeFor(name, config, train.Kind);
        var recipe = recipeSource.Recipe;
        long maxSteps = settings.MaxSteps ?? recipe.MaxIters;
        // Training needs two crops per batch (BatchNorm after the 1×1 pyramid pooling); the 31L config's one crop per
        // GPU relied on SyncBN over 64 GPUs, so one process takes two.
        int batchSize = settings.BatchSize ?? (settings.SyncBn && group.IsDistributed ? recipe.BatchSize : Math.Max(2, recipe.BatchSize));
        var options = new SegmentationTrainOptions
        {
            Arch = name, Config = config, OutDir = settings.Out, Pipeline = SegOptions.Pipeline(recipe, null, settings.CropSize, settings.Scale),
            BatchSize = batchSize, MaxSteps = maxSteps,
            EvaluateEvery = settings.EvalEvery ?? Math.Min(SegmentationTrainOptions.DefaultEvaluateEvery, Math.Max(1, maxSteps / 4)),
            LearningRate = settings.Lr ?? recipe.LearningRate, WeightDecay = settings.WeightDecay, WarmupIterations = settings.WarmupIters ?? recipe.WarmupIters,
            WarmupRatio = settings.WarmupRatio, AuxiliaryWeight = settings.AuxWeight, EmaDecay = settings.EmaDecay, Seed = settings.Seed,
            Workers = DataParallel.Workers(settings.Workers), Device = device, Resume = settings.Resume,
            InitialWeights = settings.Weights, SaveEvery = settings.SaveEvery, EvalLimit = settings.EvalLimit,
            Group = group, SyncBatchNorm = settings.SyncBn, AllowWorldSizeChange = settings.AllowWorldSizeChange,
            Precision = settings.Dtype == "float64" ? TorchSharp.torch.ScalarType.Float64 : TorchSharp.torch.ScalarType.Float32,
        };
        // After the arguments and the data were checked, so that a usage error leaves no run folder behind.
        if (File.Exists(settings.Out))
        {
            throw new UsageException($"--out '{settings.Out}' is a file; give a folder for the run");
        }

        SegmentationTrainer trainer;
        try
        {
            options.Validate();
            if (group.IsMain)
            {
                RunFolder.EnsureWritable(settings.Out);
            }

            trainer = new SegmentationTrainer(options, train, val);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(OptionNames.Rewrite(e, e.Message), e);
        }

        var output = console.Profile.Out.Writer;
        using var signals = new StopSignals(group.IsMain ? Console.Error : TextWriter.Null, cancellationToken);
        string resumeCommand = DataParallel.LaunchPrefix(group) + ResumeCommand(context.Arguments);
        var p = options.Pipeline;
        console.MarkupLine(CultureInfo.InvariantCulture,
            "[bold]seg train[/] {0} on {1} ({2} classes): {3:N0} training / {4:N0} val images, {5} iterations of batch {6} (crop {7}×{8}, scale {9}×{10}), eval every {11}, {12}, {13} threads{14} → {15}",
            Markup.Escape(name), Markup.Escape($"{train.Kind} {settings.Data}"), train.ClassNames.Count, train.Count, val.Count, maxSteps, options.BatchSize,
            p.CropSize.Height, p.CropSize.Width, p.Scale.Long, p.Scale.Short, options.EvaluateEvery, device, torch.get_num_threads(),
            Markup.Escape(TrainCommand.DescribeJob(group, options.BatchSize, settings.SyncBn)), Markup.Escape(settings.Out));
        if (options.WarmupIterations > maxSteps)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "  [yellow]note[/]: the warm-up ({0} iterations) is longer than the run ({1}): the learning rate never reaches its base value; see --warmup-iters",
                options.WarmupIterations, maxSteps);
        }

        console.MarkupLine(CultureInfo.InvariantCulture, "  recipe defaults from {0} ({1})", Markup.Escape(recipeSource.Name),
            Markup.Escape(recipeSource.Source == "project" ? "the project's small-scale recipe" : recipeSource.Source));
        console.MarkupLine(CultureInfo.InvariantCulture, "  AdamW lr {0:0.###e+00}, wd {1} (no decay on norms), poly power {2} with {3} warm-up iterations from ratio {4:0.#e+00}; aux loss × {5}",
            options.LearningRate, options.WeightDecay, options.Power, options.WarmupIterations, options.WarmupRatio, options.AuxiliaryWeight ?? config.AuxiliaryHead?.LossWeight ?? 0);

        var history = new List<EpochMetrics>();
        void EvalLine(EpochMetrics m) => output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"iter {m.Step,6}/{maxSteps}: loss {m.TrainLoss:F4}  lr {m.LearningRate:0.00e+00}  val mIoU {m.ScoreValue:P2}  aAcc {Detail(m, "aAcc"):P2}  mAcc {Detail(m, "mAcc"):P2}{(double.IsNaN(m.EmaScoreValue) ? "" : $"  EMA mIoU {m.EmaScoreValue:P2}")}  {m.ImagesPerSecond:F1} crops/s{TrainCommand.PeakRss(m.PeakResidentBytes)}"));
        void Notice(string text) => output.WriteLine(text);
        try
        {
            if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
            {
                long every = Math.Max(1, Math.Min(50, maxSteps / 20));
                history = trainer.Run(EvalLine, s =>
                {
                    if (s.Step % every == 0)
                    {
                        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  iter {s.Step}/{s.TotalSteps}: loss {s.Loss:F4}  lr {s.LearningRate:0.00e+00}  {s.ImagesPerSecond:F1} crops/s{TrainCommand.PeakRss(PeakMemory.ProcessPeak()?.Bytes)}  ETA {Eta(s.Remaining)}"));
                    }
                }, Notice, signals.Token);
            }
            else
            {
                console.Progress().AutoClear(true).Columns(
                    new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("train", maxValue: trainer.TotalSteps);
                        history = trainer.Run(EvalLine, s =>
                        {
                            task.Value = s.Step;
                            task.Description = string.Create(CultureInfo.InvariantCulture,
                                $"iter {s.Step}/{s.TotalSteps}  loss {s.Loss:F3}  lr {s.LearningRate:0.0e+00}  {s.ImagesPerSecond:F1} crops/s (ETA {Eta(s.Remaining)})");
                        }, Notice, signals.Token);
                    });
            }
        }
        catch (TrainingFailedException e)
        {
            string state = e.LastSavedStep is long saved ? $"the resume state of iteration {saved} is intact; continue with: {resumeCommand}" : "no resume state was written yet; start again";
            throw new InvalidOperationException($"{e.Message}; {state}", e);
        }

        if ((signals.Received ?? DataParallel.StopOfOthers(group, trainer.StepsDone, trainer.TotalSteps)) is { } signal && trainer.StepsDone < trainer.TotalSteps)
        {
            console.Profile.Out.Writer.WriteLine($"stopped by {(signal == System.Runtime.InteropServices.PosixSignal.SIGTERM ? "SIGTERM" : "SIGINT")} after iteration {trainer.StepsDone}; the resume state is saved in {settings.Out}. Continue with: {resumeCommand}");
            return StopSignals.ExitCode(signal);
        }

        if (!group.IsMain)
        {
            return ExitCodes.Success; // rank 0 writes the plots
        }

        if (history.Count == 0)
        {
            console.Profile.Out.Writer.WriteLine($"stopped before the first evaluation (the weights so far are {trainer.Folder.LastCheckpoint}). Continue with: {resumeCommand}");
            return ExitCodes.Success;
        }

        string curves = Path.Combine(settings.Out, "curves.png");
        SegPlots.Curves(history, curves, name);
        var best = history.MaxBy(h => Math.Max(h.ScoreValue, double.IsNaN(h.EmaScoreValue) ? double.NegativeInfinity : h.EmaScoreValue))!;
        string bars = Path.Combine(settings.Out, "class-iou.png");
        var classIou = train.ClassNames.Select(c => best.Details is { } d && d.TryGetValue($"IoU.{c}", out double v) ? v : double.NaN).ToList();
        SegPlots.ClassIoU(train.ClassNames, classIou, bars, string.Create(CultureInfo.InvariantCulture, $"{name}: val IoU per class at iteration {best.Step} (mIoU {best.ScoreValue:P2})"));
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]done[/]: best val mIoU [bold]{0:P2}[/] at iteration {1} (last: {2:P2}){3}", Math.Max(best.ScoreValue, double.IsNaN(best.EmaScoreValue) ? 0 : best.EmaScoreValue), best.Step, history[^1].ScoreValue,
            Markup.Escape(TrainCommand.PeakRss(PeakMemory.ProcessPeak()?.Bytes, "; ")));
        foreach (var (what, file) in new[]
        {
            ("best (MMSeg .pth)", trainer.Folder.BestCheckpoint), ("last", trainer.Folder.LastCheckpoint), ("metrics", trainer.Folder.MetricsCsv),
            ("curves", curves), ("IoU per class", bars),
        }.Where(f => File.Exists(f.Item2)))
        {
            console.MarkupLine($"  {what,-20} {Markup.Escape(file)}");
        }

        return ExitCodes.Success;
    }

    private static double Detail(EpochMetrics m, string key) => m.Details is { } d && d.TryGetValue(key, out double v) ? v : double.NaN;

    private static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";

    /// <summary>The command that continues this run: the same arguments with --resume.</summary>
    internal static string ResumeCommand(IEnumerable<string> arguments)
    {
        var args = arguments.ToList();
        if (args.Count < 2 || args[0] != "seg" || args[1] != "train")
        {
            args.InsertRange(0, ["seg", "train"]);
        }

        if (!args.Contains("--resume"))
        {
            args.Add("--resume");
        }

        return "./replknet " + string.Join(" ", args.Select(a =>
            a.Length > 0 && a.All(c => char.IsAsciiLetterOrDigit(c) || "_./:=,+-@%".Contains(c)) ? a : "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'"));
    }
}
