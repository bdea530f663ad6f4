using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
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
    public sealed class Settings : ArchSettings
    {
        /// <summary>Dataset.</summary>
        [CommandOption("--dataset <NAME>")]
        [Description("fashion-mnist or cifar10.")]
        [DefaultValue("fashion-mnist")]
        public string Dataset { get; init; } = "fashion-mnist";

        /// <summary>Data folder.</summary>
        [CommandOption("--data <DIR>")]
        [Description("Folder with the dataset files (default: $REPLKNET_DATA, then the Debian package folder).")]
        public string? Data { get; init; }

        /// <summary>Epochs.</summary>
        [CommandOption("--epochs <E>")]
        [DefaultValue(12)]
        [Description("Epochs.")]
        public int Epochs { get; init; } = 12;

        /// <summary>Batch size.</summary>
        [CommandOption("--batch-size <B>")]
        [DefaultValue(128)]
        [Description("Batch size.")]
        public int BatchSize { get; init; } = 128;

        /// <summary>Peak learning rate.</summary>
        [CommandOption("--lr <LR>")]
        [DefaultValue(4e-3)]
        [Description("Peak learning rate (AdamW), reached after the warm-up.")]
        public double Lr { get; init; } = 4e-3;

        /// <summary>Final learning rate.</summary>
        [CommandOption("--min-lr <LR>")]
        [DefaultValue(1e-6)]
        [Description("Learning rate at the end of the cosine.")]
        public double MinLr { get; init; } = 1e-6;

        /// <summary>Warm-up epochs.</summary>
        [CommandOption("--warmup-epochs <E>")]
        [DefaultValue(1)]
        [Description("Linear warm-up epochs.")]
        public int WarmupEpochs { get; init; } = 1;

        /// <summary>Weight decay.</summary>
        [CommandOption("--weight-decay <WD>")]
        [DefaultValue(0.05)]
        [Description("AdamW weight decay (biases and 1-D parameters excluded).")]
        public double WeightDecay { get; init; } = 0.05;

        /// <summary>EMA decay.</summary>
        [CommandOption("--ema-decay <D>")]
        [DefaultValue(0.999)]
        [Description("Decay of the weight EMA (0 disables it).")]
        public double EmaDecay { get; init; } = 0.999;

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

        /// <summary>Threads.</summary>
        [CommandOption("--threads <T>")]
        [Description("CPU threads.")]
        public int? Threads { get; init; }

        /// <inheritdoc />
        public override ValidationResult Validate()
        {
            if (Epochs <= 0 || BatchSize <= 0 || Lr <= 0 || MinLr < 0 || WarmupEpochs < 0 || WeightDecay < 0 || EmaDecay is < 0 or >= 1)
            {
                return ValidationResult.Error("--epochs, --batch-size and --lr must be positive; --min-lr, --warmup-epochs, --weight-decay ≥ 0; --ema-decay in [0, 1)");
            }

            if (MaxSteps is <= 0 || TrainSubset is <= 0 || SaveEvery is <= 0 || Threads is <= 0)
            {
                return ValidationResult.Error("--max-steps, --train-subset, --save-every and --threads must be positive");
            }

            return base.Validate();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        if (settings.Threads is int threads)
        {
            TorchRuntime.SetThreads(threads);
        }

        var (name, config) = ModelRegistry.Resolve(settings.Arch ?? "RepLKNet-FMNIST");
        var (train, test, normalization) = LoadData(settings);
        using (train)
        using (test)
        {
            config = config with { NumClasses = train.ClassNames.Count, OutIndices = null, InChannels = (int)train.Images.shape[1] };
            if (settings.NumClasses is int n && n != train.ClassNames.Count)
            {
                throw new UsageException($"--num-classes {n} does not match the dataset's {train.ClassNames.Count} classes");
            }

            var options = new TrainOptions
            {
                Arch = name, Config = config, OutDir = settings.Out, Epochs = settings.Epochs, BatchSize = settings.BatchSize,
                LearningRate = settings.Lr, MinLearningRate = settings.MinLr, WarmupEpochs = Math.Min(settings.WarmupEpochs, settings.Epochs),
                WeightDecay = settings.WeightDecay, EmaDecay = settings.EmaDecay, Seed = settings.Seed, MaxSteps = settings.MaxSteps,
                SaveEvery = settings.SaveEvery, Resume = settings.Resume, Normalization = normalization, Device = runtime.Device,
            };
            var trainer = new Trainer(options, train, test);
            console.MarkupLine(CultureInfo.InvariantCulture, "[bold]train[/] {0} on {1}: {2:N0} training / {3:N0} test images, {4} epochs × {5} steps, batch {6}, {7}, {8} threads → {9}",
                Markup.Escape(name), Markup.Escape(settings.Dataset), train.Count, test.Count, settings.Epochs, trainer.StepsPerEpoch, settings.BatchSize,
                runtime.Device, torch.get_num_threads(), Markup.Escape(settings.Out));
            var history = new List<EpochMetrics>();
            var started = DateTime.UtcNow;
            void EpochLine(EpochMetrics m) => console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"epoch {m.Epoch,3}/{settings.Epochs}: loss {m.TrainLoss:F4}  lr {m.LearningRate:0.00e+00}  test top-1 {m.Top1:P2}  EMA {m.EmaTop1:P2}  {m.ImagesPerSecond:F0} images/s  {m.Seconds:F0} s"));
            if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
            {
                // Logs and pipes get plain lines: one every 100 steps and one per epoch.
                history = trainer.Run(EpochLine, (step, loss, lr) =>
                {
                    if (step % 100 == 0)
                    {
                        console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  step {step}: loss {loss:F4}  lr {lr:0.00e+00}"));
                    }
                }, cancellationToken);
            }
            else
            {
                console.Progress().AutoClear(true).Start(ctx =>
                {
                    var task = ctx.AddTask("epoch 1", maxValue: trainer.StepsPerEpoch);
                    history = trainer.Run(
                        m =>
                        {
                            EpochLine(m);
                            task.Value = 0;
                            task.Description = $"epoch {m.Epoch + 1}";
                        },
                        (step, loss, lr) =>
                        {
                            task.Value = (step - 1) % trainer.StepsPerEpoch + 1;
                            task.Description = string.Create(CultureInfo.InvariantCulture, $"epoch {(step - 1) / trainer.StepsPerEpoch + 1} loss {loss:F3} lr {lr:0.0e+00}");
                        },
                        cancellationToken);
                });
            }

            if (history.Count > 0)
            {
                TrainPlots.Curves(history, Path.Combine(settings.Out, "curves.png"), name);
                Finish(trainer, history, config, name, settings, started, (int)test.Images.shape[2], (int)test.Images.shape[3]);
            }
            else
            {
                console.MarkupLine($"stopped inside the first epoch; resume with [bold]--resume --out {Markup.Escape(settings.Out)}[/]");
            }
        }

        return ExitCodes.Success;
    }

    private void Finish(Trainer trainer, List<EpochMetrics> history, RepLKNetConfig config, string name, Settings settings, DateTime started, int height, int width)
    {
        // Re-parameterize the best model, verify it, and save the deploy checkpoint beside the training one.
        using var best = ModelLoader.Load(trainer.BestCheckpoint, new ModelLoadOptions()).Model;
        using var deploy = Reparameterizer.ReparameterizedCopy(best);
        var probe = randn([4, config.InChannels, height, width], generator: new Generator(1));
        var report = EquivalenceCheck.Compare(best, deploy, probe);
        string deployPath = Path.Combine(settings.Out, "best-deploy.safetensors");
        if (report.RelativeEndToEnd > ReparamCommand.Tolerance)
        {
            throw new InvalidOperationException($"the re-parameterized model differs from the trained one by {report.RelativeEndToEnd:E2}; '{deployPath}' was not written");
        }

        using var bestCheckpoint = CheckpointFile.Read(trainer.BestCheckpoint);
        CheckpointFile.WriteRepLKNet(deployPath, StateDicts.Ordered(deploy), bestCheckpoint.Metadata! with { Form = ModelForm.Deploy });
        var last = history[^1];
        double bestTop1 = history.Max(h => Math.Max(h.Top1, double.IsNaN(h.EmaTop1) ? 0 : h.EmaTop1));
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]done[/] in {0:F1} min: best test top-1 [bold]{1:P2}[/] (last epoch: {2:P2}, EMA {3:P2}); deploy form verified (max rel. diff {4:E1})",
            (DateTime.UtcNow - started).TotalMinutes, bestTop1, last.Top1, last.EmaTop1, report.RelativeEndToEnd);
        foreach (var (what, file) in new[]
        {
            ("best (train form)", trainer.BestCheckpoint), ("best (deploy form)", deployPath), ("last", trainer.LastCheckpoint),
            ("metrics", Path.Combine(settings.Out, "metrics.csv")), ("curves", Path.Combine(settings.Out, "curves.png")),
        })
        {
            console.MarkupLine($"  {what,-20} {Markup.Escape(file)}");
        }
    }

    private static (ImageTensorDataset Train, ImageTensorDataset Test, (double Mean, double Std) Normalization) LoadData(Settings settings)
    {
        switch (settings.Dataset.ToLowerInvariant())
        {
            case "fashion-mnist" or "fmnist":
                var train = FashionMnist.Load(settings.Data, "train");
                var test = FashionMnist.Load(settings.Data, "test");
                return (Subset(train, settings.TrainSubset), test, FashionMnist.Normalization);
            case "cifar10" or "cifar-10":
                var (ctrain, ctest) = Cifar10.Load(settings.Data);
                return (Subset(ctrain, settings.TrainSubset), ctest, Cifar10.Normalization);
            default:
                throw new UsageException($"--dataset '{settings.Dataset}': use fashion-mnist or cifar10");
        }
    }

    private static ImageTensorDataset Subset(ImageTensorDataset data, int? count)
    {
        if (count is not int n || n >= data.Count)
        {
            return data;
        }

        var subset = new ImageTensorDataset(data.Images.narrow(0, 0, n).clone(), data.Labels.narrow(0, 0, n).clone(), data.ClassNames);
        data.Dispose();
        return subset;
    }
}
