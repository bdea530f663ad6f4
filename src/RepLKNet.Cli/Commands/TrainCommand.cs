using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet train</c>: the main job. With no arguments it trains RepLKNet-FMNIST on Fashion-MNIST.</summary>
public sealed class TrainCommand(IAnsiConsole console) : Command<TrainCommand.Settings>
{
    /// <summary>Options of <c>train</c>.</summary>
    public sealed class Settings : DatasetSettings
    {
        /// <inheritdoc />
        protected override bool WeightsRequired => false;

        /// <summary>Augmentation preset.</summary>
        [CommandOption("--aug <PRESET>")]
        [Description("default (per dataset), none, or official (RandomResizedCrop, flip, RandAugment, RandomErasing, Mixup/CutMix); the options below override it.")]
        [DefaultValue("default")]
        public string Aug { get; init; } = "default";

        /// <summary>RandomResizedCrop scale.</summary>
        [CommandOption("--crop-scale <MIN,MAX>")]
        [Description("RandomResizedCrop area range, e.g. 0.08,1 (bicubic); 'none' turns random crops off.")]
        public string? CropScale { get; init; }

        /// <summary>Flip probability.</summary>
        [CommandOption("--hflip <P>")]
        [Description("Horizontal flip probability.")]
        public double? HFlip { get; init; }

        /// <summary>RandAugment.</summary>
        [CommandOption("--randaug <SPEC>")]
        [Description("RandAugment string (timm's), e.g. rand-m9-mstd0.5-inc1; 'none' turns it off.")]
        public string? RandAug { get; init; }

        /// <summary>RandomErasing.</summary>
        [CommandOption("--reprob <P>")]
        [Description("RandomErasing probability (pixel mode).")]
        public double? ReProb { get; init; }

        /// <summary>Mixup α.</summary>
        [CommandOption("--mixup <ALPHA>")]
        [Description("Mixup α (0 off; official 0.8).")]
        public double? Mixup { get; init; }

        /// <summary>CutMix α.</summary>
        [CommandOption("--cutmix <ALPHA>")]
        [Description("CutMix α (0 off; official 1.0).")]
        public double? CutMix { get; init; }

        /// <summary>Label smoothing.</summary>
        [CommandOption("--smoothing <S>")]
        [Description("Label smoothing (default 0.1).")]
        public double? Smoothing { get; init; }

        /// <summary>Eval crop.</summary>
        [CommandOption("--crop-pct <F>")]
        [Description("Eval: resize the short side to size / F, centre crop (default 0.875).")]
        public double? CropPct { get; init; }

        /// <summary>Drop path.</summary>
        [CommandOption("--drop-path <RATE>")]
        [Description("Stochastic depth rate (default: the architecture's).")]
        public double? DropPath { get; init; }

        /// <summary>Gradient accumulation.</summary>
        [CommandOption("--accum-steps <N>")]
        [DefaultValue(1)]
        [Description("Micro-batches per optimizer step (official update_freq); effective batch = batch size × N.")]
        public int AccumSteps { get; init; } = 1;

        /// <summary>Gradient clipping.</summary>
        [CommandOption("--clip-grad <NORM>")]
        [Description("Clip the global gradient norm (off by default, as in the official recipe).")]
        public double? ClipGrad { get; init; }

        /// <summary>Layer-wise lr decay.</summary>
        [CommandOption("--layer-decay <D>")]
        [Description("Layer-wise learning-rate decay for fine-tuning (official: 0.7).")]
        public double? LayerDecay { get; init; }

        /// <summary>Epochs.</summary>
        [CommandOption("--epochs <E>")]
        [DefaultValue(TrainOptions.DefaultEpochs)]
        [Description("Epochs.")]
        public int Epochs { get; init; } = TrainOptions.DefaultEpochs;

        /// <summary>Batch size.</summary>
        [CommandOption("--batch-size <B>")]
        [DefaultValue(TrainOptions.DefaultBatchSize)]
        [Description("Batch size (per process under mpiexec: the global batch is this × processes, and --lr is not rescaled).")]
        public int BatchSize { get; init; } = TrainOptions.DefaultBatchSize;

        /// <summary>Peak learning rate.</summary>
        [CommandOption("--lr <LR>")]
        [DefaultValue(TrainOptions.DefaultLearningRate)]
        [Description("Peak learning rate (AdamW), reached after the warm-up.")]
        public double Lr { get; init; } = TrainOptions.DefaultLearningRate;

        /// <summary>Final learning rate.</summary>
        [CommandOption("--min-lr <LR>")]
        [DefaultValue(TrainOptions.DefaultMinLearningRate)]
        [Description("Learning rate at the end of the cosine.")]
        public double MinLr { get; init; } = TrainOptions.DefaultMinLearningRate;

        /// <summary>Warm-up epochs.</summary>
        [CommandOption("--warmup-epochs <E>")]
        [DefaultValue(TrainOptions.DefaultWarmupEpochs)]
        [Description("Linear warm-up epochs.")]
        public int WarmupEpochs { get; init; } = TrainOptions.DefaultWarmupEpochs;

        /// <summary>Weight decay.</summary>
        [CommandOption("--weight-decay <WD>")]
        [DefaultValue(TrainOptions.DefaultWeightDecay)]
        [Description("AdamW weight decay (biases and 1-D parameters excluded).")]
        public double WeightDecay { get; init; } = TrainOptions.DefaultWeightDecay;

        /// <summary>EMA decay.</summary>
        [CommandOption("--ema-decay <D>")]
        [DefaultValue(TrainOptions.DefaultEmaDecay)]
        [Description("Decay of the weight EMA (0 disables it).")]
        public double EmaDecay { get; init; } = TrainOptions.DefaultEmaDecay;

        /// <summary>Seed.</summary>
        [CommandOption("--seed <SEED>")]
        [DefaultValue(0L)]
        [Description("Seed of initialization and data order.")]
        public long Seed { get; init; }

        /// <summary>Run folder.</summary>
        [CommandOption("--out <DIR>")]
        [DefaultValue("runs/fmnist")]
        [Description("Run folder for checkpoints and metrics.")]
        public string Out { get; init; } = "runs/fmnist";

        /// <summary>Resume.</summary>
        [CommandOption("--resume")]
        [Description("Continue the run in --out from its last checkpoint.")]
        public bool Resume { get; init; }

        /// <summary>Step limit.</summary>
        [CommandOption("--max-steps <N>")]
        [Description("Stop after N optimizer steps (smoke runs).")]
        public long? MaxSteps { get; init; }

        /// <summary>Subset.</summary>
        [CommandOption("--train-subset <N>")]
        [Description("Use only the first N training images (smoke runs).")]
        public int? TrainSubset { get; init; }

        /// <summary>Save interval.</summary>
        [CommandOption("--save-every <N>")]
        [Description("Also checkpoint every N steps (always at each epoch end).")]
        public long? SaveEvery { get; init; }

        /// <summary>Training dtype.</summary>
        [CommandOption("--dtype <TYPE>")]
        [DefaultValue("float32")]
        [Description("float32 (default) or float64: train in double precision for numerical verification (slower).")]
        public string Dtype { get; init; } = "float32";

        /// <summary>SyncBN.</summary>
        [CommandOption("--sync-bn")]
        [Description("Under mpiexec: BatchNorm statistics over the global batch of all processes (SyncBN); plain per-process BN otherwise.")]
        public bool SyncBn { get; init; }

        /// <summary>World-size change on resume.</summary>
        [CommandOption("--allow-world-size-change")]
        [Description("With --resume: continue a run written by another number of processes (the global batch, --batch-size × processes, must be the same).")]
        public bool AllowWorldSizeChange { get; init; }

        /// <summary>Collective timeout.</summary>
        [CommandOption("--collective-timeout <SECONDS>")]
        [Description("Under mpiexec: end the job when a collective waits longer than this (another process died or hangs); default 1800.")]
        public double? CollectiveTimeout { get; init; }

        /// <summary>Soak mode.</summary>
        [CommandOption("--gc-stress")]
        [Description("Soak mode: force garbage collections and finalizer runs continuously during the run (finds objects freed while libtorch uses them; slower, same results).")]
        public bool GcStress { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            // The recipe's ranges are the library's (TrainOptions.Validate, reported with these flags); the model's is here.
            if (DropPath is < 0 or >= 1)
            {
                return ValidationResult.Error($"--drop-path must be in [0, 1), got {DropPath}");
            }

            if (Dtype is not ("float32" or "float64"))
            {
                return ValidationResult.Error($"--dtype '{Dtype}': use float32 or float64");
            }

            if (Aug is not ("default" or "none" or "official"))
            {
                return ValidationResult.Error($"--aug '{Aug}': use default, none or official");
            }

            if (DataParallel.CheckTimeout(CollectiveTimeout) is { } timeout)
            {
                return timeout;
            }

            if (AllowWorldSizeChange && !Resume)
            {
                return ValidationResult.Error("--allow-world-size-change does not apply without --resume: it lets a resumed run have another number of processes");
            }

            return Inapplicable("train fine-tunes from the train-form 'model' weights of --weights, skipping a classifier of another size", (Ema, "--ema"), (!Strict, "--strict"))
                ?? base.ValidateOptions();
        }
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

        if (group.IsMain)
        {
            RunFolder.EnsureWritable(settings.Out);
        }

        var (name, config) = ModelRegistry.Resolve(settings.Arch ?? "RepLKNet-FMNIST");
        using var data = settings.OpenData(settings.Seed);
        var train = data.Train;
        config = ModelFactory.Fit(config, new ModelFit(train.ClassNames.Count, train.Channels, settings.DropPath));

        var augment = Augmentation(settings, data);
        var options = new TrainOptions
        {
            Arch = name, Config = config, OutDir = settings.Out, Epochs = settings.Epochs, BatchSize = settings.BatchSize,
            LearningRate = settings.Lr, MinLearningRate = settings.MinLr, WarmupEpochs = settings.WarmupEpochs,
            WeightDecay = settings.WeightDecay, EmaDecay = settings.EmaDecay, Seed = settings.Seed, MaxSteps = settings.MaxSteps,
            SaveEvery = settings.SaveEvery, Resume = settings.Resume, Normalization = data.Normalization, Device = device,
            Augment = augment, AccumulationSteps = settings.AccumSteps, ClipGradNorm = settings.ClipGrad, LayerDecay = settings.LayerDecay,
            InitialWeights = settings.Weights, Workers = DataParallel.Workers(settings.Workers), GcStress = settings.GcStress,
            TrainSubset = settings.TrainSubset, Group = group, SyncBatchNorm = settings.SyncBn, AllowWorldSizeChange = settings.AllowWorldSizeChange,
            Precision = settings.Dtype == "float64" ? ScalarType.Float64 : ScalarType.Float32,
        };
        Trainer trainer;
        try
        {
            trainer = new Trainer(options, train, data.Test);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(OptionNames.Rewrite(e, e.Message), e);
        }

        var output = console.Profile.Out.Writer;
        using var signals = new StopSignals(group.IsMain ? Console.Error : TextWriter.Null, cancellationToken);
        string resumeCommand = DataParallel.LaunchPrefix(group) + ResumeCommand(context.Arguments);
        long scheduledSteps = (long)settings.Epochs * trainer.StepsPerEpoch;
        BoldLead("train", string.Format(CultureInfo.InvariantCulture, " {0} on {1}: {2:N0} training / {3:N0} test images, {4} × {5} steps{13}, batch {6}{7}, {8}, {9} threads, {10} loader workers{11} → {12}",
            name, data.Name, Math.Min(train.Count, settings.TrainSubset ?? long.MaxValue), data.Test.Count, settings.Epochs == 1 ? "1 epoch" : $"{settings.Epochs} epochs", trainer.StepsPerEpoch, settings.BatchSize,
            settings.AccumSteps > 1 ? $" × {settings.AccumSteps} accumulated" : "", device, torch.get_num_threads(), options.Workers, DescribeJob(group, settings.BatchSize * settings.AccumSteps, settings.SyncBn),
            settings.Out, settings.MaxSteps is long max && max < scheduledSteps ? $" (stopping at step {max:N0} of {scheduledSteps:N0}, --max-steps)" : ""));
        console.MarkupLine($"  data: {Markup.Escape(augment.Describe(trainer.Pipeline.Size))}; {Markup.Escape(data.Normalization.ToString())}");
        var history = new List<EpochMetrics>();
        var started = DateTime.UtcNow;
        void EpochLine(EpochMetrics m) => output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"epoch {m.Epoch,3}/{settings.Epochs}: loss {m.TrainLoss:F4}  lr {m.LearningRate:0.00e+00}  test top-1 {m.Top1:P2}  EMA {m.EmaTop1:P2}  {m.ImagesPerSecond:F0} images/s{PeakRss(m.PeakResidentBytes)}  {m.Seconds:F0} s{(m.Skipped > 0 ? $"  ({m.Skipped} unreadable skipped)" : "")}"));
        void Notice(string text) => output.WriteLine(text);
        try
        {
            if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
            {
                // Logs and pipes get plain lines: one every 100 steps and one per epoch.
                history = trainer.Run(EpochLine, p =>
                {
                    if (p.Step % 100 == 0)
                    {
                        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}  lr {p.LearningRate:0.00e+00}  {p.ImagesPerSecond:F0} images/s{PeakRss(PeakMemory.ProcessPeak()?.Bytes)}  ETA {Eta(p.Remaining)}"));
                    }
                }, Notice, signals.Token);
            }
            else
            {
                console.Progress().AutoClear(true).Columns(
                    new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                    .Start(ctx =>
                    {
                        var epochTask = ctx.AddTask("epoch", maxValue: trainer.StepsPerEpoch);
                        var runTask = ctx.AddTask("run", maxValue: trainer.TotalSteps);
                        history = trainer.Run(
                            m =>
                            {
                                EpochLine(m);
                                epochTask.Value = 0;
                            },
                            p =>
                            {
                                epochTask.Value = p.StepInEpoch;
                                epochTask.Description = string.Create(CultureInfo.InvariantCulture,
                                    $"epoch {p.Epoch}/{settings.Epochs}  loss {p.Loss:F3}  lr {p.LearningRate:0.0e+00}  {p.ImagesPerSecond:F0} img/s");
                                runTask.Value = p.Step;
                                runTask.Description = $"run (ETA {Eta(p.Remaining)})";
                            },
                            Notice,
                            signals.Token);
                    });
            }
        }
        catch (TrainingFailedException e)
        {
            string? log = group.IsMain ? CrashReport.Write(settings.Out, e, DataParallel.LaunchPrefix(group) + "./replknet " + string.Join(" ", context.Arguments), options, runtime, CpuFeatures.Describe()) : null;
            string state = e.LastSavedStep is long saved ? $"the resume state of step {saved} is intact; continue with: {resumeCommand}" : "no resume state was written yet; start again";
            throw new InvalidOperationException($"{e.Message}; {state}{(log is null ? "" : $"; details: {log}")}", e);
        }

        // A signal after the last step changes nothing: the run is complete and goes on to finish.
        if ((signals.Received ?? DataParallel.StopOfOthers(group, trainer.StepsDone, trainer.TotalSteps)) is { } signal && trainer.StepsDone < trainer.TotalSteps)
        {
            console.Profile.Out.Writer.WriteLine($"stopped by {(signal == System.Runtime.InteropServices.PosixSignal.SIGTERM ? "SIGTERM" : "SIGINT")} after step {trainer.StepsDone}; the resume state is saved in {settings.Out}. Continue with: {resumeCommand}");
            return StopSignals.ExitCode(signal);
        }

        if (!group.IsMain)
        {
            return ExitCodes.Success; // rank 0 writes the plots and the deploy checkpoint
        }

        // Ended by --max-steps before the schedule's end: resuming with the same limit would stop again at once, so the
        // command printed below drops it.
        bool byMaxSteps = settings.MaxSteps is not null && trainer.StepsDone < scheduledSteps;
        string resume = byMaxSteps ? DataParallel.LaunchPrefix(group) + ResumeCommand(context.Arguments, withoutMaxSteps: true) : resumeCommand;

        if (history.Count > 0)
        {
            TrainPlots.Curves(history, Path.Combine(settings.Out, "curves.png"), name);
            // Stopped by --max-steps, the summary says so instead of "done" (its best and deploy checkpoints are of the run so
            // far), and the command that goes on comes last.
            Finish(trainer, history, settings, started, byMaxSteps ? $"stopped by --max-steps {settings.MaxSteps} at step {trainer.StepsDone} of {scheduledSteps}" : null);
            if (byMaxSteps)
            {
                console.Profile.Out.Writer.WriteLine($"Continue with: {resume}");
            }
        }
        else
        {
            string why = byMaxSteps ? $"stopped by --max-steps {settings.MaxSteps} inside the first epoch" : "stopped inside the first epoch";
            console.Profile.Out.Writer.WriteLine($"{why} (no evaluation, no best checkpoint yet; the weights so far are {Path.Combine(settings.Out, "last.safetensors")}). Continue with: {resume}");
        }

        return ExitCodes.Success;
    }

    /// <summary>The header's description of a data-parallel job ("; 2 processes (mpi …), global batch 64, SyncBN"), empty for one process.</summary>
    internal static string DescribeJob(RepLKNet.Distributed.ProcessGroup group, int perProcessBatch, bool syncBn) =>
        group.IsDistributed
            ? $"; {group.WorldSize} processes ({group.Backend}), global batch {(long)perProcessBatch * group.WorldSize} = {perProcessBatch} per process × {group.WorldSize}{(syncBn ? ", SyncBN" : "")}"
            : "";

    /// <summary>
    /// The command that continues this run: the same arguments with --resume (shell-quoted where needed); with
    /// <paramref name="withoutMaxSteps"/> also without <c>--max-steps N</c> (a run that stopped at its limit would stop again).
    /// </summary>
    internal static string ResumeCommand(IEnumerable<string> arguments, bool withoutMaxSteps = false)
    {
        var args = arguments.ToList();
        for (int i = args.Count - 1; withoutMaxSteps && i >= 0; i--)
        {
            if (args[i] == "--max-steps")
            {
                args.RemoveRange(i, Math.Min(2, args.Count - i));
            }
            else if (args[i].StartsWith("--max-steps=", StringComparison.Ordinal) || args[i].StartsWith("--max-steps:", StringComparison.Ordinal))
            {
                args.RemoveAt(i);
            }
        }

        if (args.Count == 0 || args[0] != "train")
        {
            args.Insert(0, "train");
        }

        if (!args.Contains("--resume"))
        {
            args.Add("--resume");
        }

        return "./replknet " + string.Join(" ", args.Select(Quote));
    }

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "_./:=,+-@%".Contains(c)) ? arg : "'" + arg.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    /// <summary>
    /// "peak RSS 812 MiB" after <paramref name="prefix"/> for a peak of the process in bytes
    /// (<see cref="EpochMetrics.PeakResidentBytes"/>, <see cref="PeakMemory.ProcessPeak"/>); empty when there is none.
    /// </summary>
    internal static string PeakRss(long? bytes, string prefix = "  ") =>
        bytes is long b ? string.Create(CultureInfo.InvariantCulture, $"{prefix}peak RSS {b / 1048576.0:F0} MiB") : "";

    private static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";

    /// <summary>The dataset's defaults (or a preset), with every option the user gave applied on top.</summary>
    private static AugmentOptions Augmentation(Settings settings, DatasetSplits data)
    {
        var a = Recipes.Augmentation(settings.Aug, data.Name, data.Train.FixedSize?.Height);

        if (settings.InputSize is int size)
        {
            a = a with { InputSize = size };
        }

        if (settings.CropScale is { } crop)
        {
            a = a with { CropScale = crop.Equals("none", StringComparison.OrdinalIgnoreCase) ? null : ParsePair("--crop-scale", crop) };
        }

        if (settings.HFlip is double flip)
        {
            a = a with { HorizontalFlip = flip };
        }

        if (settings.RandAug is { } ra)
        {
            a = a with { RandAugment = ra.Equals("none", StringComparison.OrdinalIgnoreCase) ? null : ra };
        }

        a = a with
        {
            EraseProbability = settings.ReProb ?? a.EraseProbability, Mixup = settings.Mixup ?? a.Mixup, CutMix = settings.CutMix ?? a.CutMix,
            LabelSmoothing = settings.Smoothing ?? a.LabelSmoothing, CropPct = settings.CropPct ?? a.CropPct,
        };
        try
        {
            a.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(OptionNames.Rewrite(e, e.Message));
        }

        return a;
    }

    private static (double, double) ParsePair(string option, string text)
    {
        var parts = text.Split(',');
        if (parts.Length == 2 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double lo) &&
            double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double hi))
        {
            return (lo, hi);
        }

        throw new UsageException($"{option} '{text}': expected MIN,MAX (e.g. 0.08,1) or none");
    }

    /// <summary>
    /// One line whose first words are bold on a terminal. Written as plain text when the output goes to a file or pipe:
    /// Spectre wraps markup at its assumed width there, and the run's header (paths, --max-steps) is longer than that.
    /// </summary>
    private void BoldLead(string lead, string rest)
    {
        if (Console.IsOutputRedirected || !console.Profile.Capabilities.Ansi)
        {
            console.Profile.Out.Writer.WriteLine(lead + rest);
        }
        else
        {
            console.MarkupLine($"[bold]{Markup.Escape(lead)}[/]{Markup.Escape(rest)}");
        }
    }

    private void Finish(Trainer trainer, List<EpochMetrics> history, Settings settings, DateTime started, string? stopped)
    {
        // Re-parameterize the best model, verify it, and save the deploy checkpoint beside the training one.
        var deploy = trainer.WriteDeploy();
        var last = history[^1];
        double bestTop1 = history.Max(h => Math.Max(h.Top1, double.IsNaN(h.EmaTop1) ? 0 : h.EmaTop1));
        BoldLead(stopped ?? "done", string.Format(CultureInfo.InvariantCulture, " in {0:F1} min: best test top-1 {1:P2} (last epoch: {2:P2}, EMA {3:P2}); deploy form verified (max rel. diff {4:E1}){5}",
            (DateTime.UtcNow - started).TotalMinutes, bestTop1, last.Top1, last.EmaTop1, deploy.RelativeEndToEnd, PeakRss(PeakMemory.ProcessPeak()?.Bytes, "; ")));
        foreach (var (what, file) in new[]
        {
            ("best (train form)", trainer.BestCheckpoint), ("best (deploy form)", trainer.DeployCheckpoint), ("last", trainer.LastCheckpoint),
            ("metrics", Path.Combine(settings.Out, "metrics.csv")), ("curves", Path.Combine(settings.Out, "curves.png")),
        })
        {
            console.MarkupLine($"  {what,-20} {Markup.Escape(file)}");
        }
    }
}
