using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>What to train and how (the official recipe's knobs, §8 of the spec).</summary>
public sealed record TrainOptions
{
    /// <summary>Display name of the architecture.</summary>
    public required string Arch { get; init; }

    /// <summary>The architecture.</summary>
    public required RepLKNetConfig Config { get; init; }

    /// <summary>Run folder (checkpoints, metrics).</summary>
    public required string OutDir { get; init; }

    /// <summary>Epochs.</summary>
    public int Epochs { get; init; } = 10;

    /// <summary>Batch size.</summary>
    public int BatchSize { get; init; } = 128;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 4e-3;

    /// <summary>Final learning rate of the cosine.</summary>
    public double MinLearningRate { get; init; } = 1e-6;

    /// <summary>Warm-up epochs.</summary>
    public int WarmupEpochs { get; init; } = 1;

    /// <summary>AdamW weight decay (not applied to biases and 1-D parameters).</summary>
    public double WeightDecay { get; init; } = 0.05;

    /// <summary>Label smoothing of the cross-entropy.</summary>
    public double LabelSmoothing { get; init; } = 0.1;

    /// <summary>EMA decay; 0 disables the EMA.</summary>
    public double EmaDecay { get; init; } = 0.999;

    /// <summary>Seed of initialization and data order.</summary>
    public long Seed { get; init; }

    /// <summary>Stop after this many optimizer steps (smoke runs); null: no limit.</summary>
    public long? MaxSteps { get; init; }

    /// <summary>Save a checkpoint every this many steps as well as at each epoch end; null: epochs only.</summary>
    public long? SaveEvery { get; init; }

    /// <summary>Continue from the run folder's last checkpoint.</summary>
    public bool Resume { get; init; }

    /// <summary>Per-channel normalization of [0, 1] inputs.</summary>
    public required (double Mean, double Std) Normalization { get; init; }

    /// <summary>Device.</summary>
    public Device Device { get; init; } = CPU;
}

/// <summary>One epoch's (or final) metrics.</summary>
/// <param name="Epoch">Epoch (1-based).</param>
/// <param name="Step">Optimizer steps so far.</param>
/// <param name="TrainLoss">Mean training loss over the epoch.</param>
/// <param name="LearningRate">Learning rate at the end of the epoch.</param>
/// <param name="Top1">Test top-1 accuracy of the model.</param>
/// <param name="EmaTop1">Test top-1 accuracy of the EMA model (NaN without EMA).</param>
/// <param name="ImagesPerSecond">Training throughput.</param>
/// <param name="Seconds">Wall time of the epoch.</param>
public sealed record EpochMetrics(int Epoch, long Step, double TrainLoss, double LearningRate, double Top1, double EmaTop1, double ImagesPerSecond, double Seconds);

/// <summary>The training loss became NaN or infinite; the last good checkpoint is intact.</summary>
public sealed class NonFiniteLossException : Exception
{
    /// <summary>Creates the exception.</summary>
    public NonFiniteLossException(string message)
        : base(message)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public NonFiniteLossException()
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public NonFiniteLossException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// Supervised training with the official recipe's core: AdamW with the no-decay groups, per-iteration warm-up + cosine
/// learning rate, label-smoothed cross-entropy, drop path, weight EMA, evaluation each epoch, atomic checkpoints
/// (model, EMA, optimizer, position) and exact resumption: the data order is a function of (seed, epoch), so a resumed
/// run skips the batches it has already seen.
/// </summary>
public sealed class Trainer
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
    private readonly TrainOptions _o;
    private readonly ImageTensorDataset _train;
    private readonly ImageTensorDataset _test;

    /// <summary>Creates a trainer over <paramref name="train"/> and <paramref name="test"/> (uint8 NCHW images).</summary>
    public Trainer(TrainOptions options, ImageTensorDataset train, ImageTensorDataset test)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        _train = train ?? throw new ArgumentNullException(nameof(train));
        _test = test ?? throw new ArgumentNullException(nameof(test));
        if (_train.Count == 0 || _test.Count == 0)
        {
            throw new DatasetException("the training or test set holds no images");
        }
    }

    /// <summary>Path of the last checkpoint (project format).</summary>
    public string LastCheckpoint => Path.Combine(_o.OutDir, "last.safetensors");

    /// <summary>Path of the best checkpoint (by test top-1, EMA or not, whichever is higher).</summary>
    public string BestCheckpoint => Path.Combine(_o.OutDir, "best.safetensors");

    private string EmaCheckpoint => Path.Combine(_o.OutDir, "last-ema.safetensors");

    private string OptimizerState => Path.Combine(_o.OutDir, "last-optimizer.bin");

    private string StateFile => Path.Combine(_o.OutDir, "state.json");

    private string RngState => Path.Combine(_o.OutDir, "last-rng.bin");

    /// <summary>Steps per epoch (the last partial batch is dropped, as the official loader does).</summary>
    public long StepsPerEpoch => Math.Max(1, _train.Count / _o.BatchSize);

    /// <summary>Trains; <paramref name="onEpoch"/> and <paramref name="onStep"/> report progress.</summary>
    public List<EpochMetrics> Run(Action<EpochMetrics>? onEpoch = null, Action<long, double, double>? onStep = null, CancellationToken cancel = default)
    {
        Directory.CreateDirectory(_o.OutDir);
        torch.manual_seed(_o.Seed);
        using var model = new RepLKNetModel(_o.Config).to(_o.Device);
        using var emaModel = new RepLKNetModel(_o.Config).to(_o.Device);
        var ema = _o.EmaDecay > 0 ? new ModelEma(model, emaModel, _o.EmaDecay, warmup: true) : null;
        var (decay, noDecay) = ParameterGroups.Split(model);
        var optimizer = optim.AdamW(
            [
                new AdamW.ParamGroup(decay.Select(p => p.Parameter), new AdamW.Options { LearningRate = _o.LearningRate, weight_decay = _o.WeightDecay }),
                new AdamW.ParamGroup(noDecay.Select(p => p.Parameter), new AdamW.Options { LearningRate = _o.LearningRate, weight_decay = 0 }),
            ],
            _o.LearningRate, 0.9, 0.999, 1e-8, _o.WeightDecay);
        var schedule = new CosineSchedule(_o.LearningRate, _o.MinLearningRate, _o.Epochs, (int)StepsPerEpoch, _o.WarmupEpochs);

        var history = new List<EpochMetrics>();
        long step = 0;
        double best = double.NegativeInfinity;
        if (_o.Resume && File.Exists(StateFile))
        {
            (step, best, history) = Restore(model, ema, optimizer);
            if (ema is not null)
            {
                ema.Updates = step;
            }
        }

        var metadata = new CheckpointMetadata(_o.Arch, _o.Config, ModelForm.Train, _train.ClassNames);
        long totalSteps = Math.Min(schedule.TotalIterations, _o.MaxSteps ?? long.MaxValue);
        while (step < totalSteps && !cancel.IsCancellationRequested)
        {
            int epoch = (int)(step / StepsPerEpoch);
            long first = step % StepsPerEpoch;
            var order = EpochOrder(epoch);
            model.train();
            var sw = Stopwatch.StartNew();
            double lossSum = 0;
            long seen = 0;
            for (long b = first; b < StepsPerEpoch && step < totalSteps && !cancel.IsCancellationRequested; b++)
            {
                using var scope = NewDisposeScope();
                double lr = schedule[step];
                foreach (var group in optimizer.ParamGroups)
                {
                    group.LearningRate = lr;
                }

                var index = order.narrow(0, b * _o.BatchSize, _o.BatchSize);
                var (x, y) = _train.Batch(index, _o.Normalization, _o.Device);
                optimizer.zero_grad();
                var loss = nn.functional.cross_entropy(model.call(x), y, label_smoothing: _o.LabelSmoothing);
                double value = loss.item<float>();
                if (!double.IsFinite(value))
                {
                    throw new NonFiniteLossException(string.Create(CultureInfo.InvariantCulture,
                        $"the training loss became {value} at step {step + 1} (epoch {epoch + 1}); the last good checkpoint '{LastCheckpoint}' is intact. Try a lower --lr."));
                }

                loss.backward();
                optimizer.step();
                ema?.Update(model);
                step++;
                lossSum += value;
                seen++;
                onStep?.Invoke(step, value, lr);
                if (_o.SaveEvery is long every && step % every == 0 && step % StepsPerEpoch != 0)
                {
                    Save(model, ema, optimizer, metadata, step, best, history);
                }
            }

            double seconds = sw.Elapsed.TotalSeconds;
            if (step % StepsPerEpoch == 0)
            {
                double top1 = Evaluate(model);
                double emaTop1 = ema is null ? double.NaN : Evaluate(emaModel);
                var metrics = new EpochMetrics(epoch + 1, step, seen == 0 ? double.NaN : lossSum / seen, schedule[step - 1], top1, emaTop1,
                    seen * _o.BatchSize / Math.Max(seconds, 1e-9), seconds);
                history.Add(metrics);
                double score = Math.Max(top1, double.IsNaN(emaTop1) ? double.NegativeInfinity : emaTop1);
                if (score > best)
                {
                    best = score;
                    var winner = ema is not null && emaTop1 >= top1 ? emaModel : model;
                    CheckpointFile.WriteRepLKNet(BestCheckpoint, StateDicts.Ordered(winner), metadata);
                }

                Save(model, ema, optimizer, metadata, step, best, history);
                WriteMetrics(history);
                onEpoch?.Invoke(metrics);
            }
            else
            {
                // Stopped inside an epoch (--max-steps or cancellation): keep the position so --resume continues here.
                Save(model, ema, optimizer, metadata, step, best, history);
            }
        }

        return history;
    }

    /// <summary>Top-1 accuracy of <paramref name="model"/> on the test set (eval mode, no gradients).</summary>
    public double Evaluate(RepLKNetModel model) => Evaluation.Run(model, _test, _o.Normalization, _o.BatchSize, _o.Device).Top1;

    /// <summary>The permutation of training indices for <paramref name="epoch"/>: a function of (seed, epoch) only.</summary>
    public Tensor EpochOrder(int epoch)
    {
        var generator = new Generator((ulong)(_o.Seed * 1_000_003 + epoch));
        return randperm(_train.Count, generator: generator);
    }

    private void Save(RepLKNetModel model, ModelEma? ema, OptimizerHelper optimizer, CheckpointMetadata metadata, long step, double best, List<EpochMetrics> history)
    {
        CheckpointFile.WriteRepLKNet(LastCheckpoint, StateDicts.Ordered(model), metadata with { TrainingState = Path.GetFileName(StateFile) });
        if (ema is not null)
        {
            CheckpointFile.WriteRepLKNet(EmaCheckpoint, StateDicts.Ordered(ema.Average), metadata);
        }

        string temp = OptimizerState + ".tmp";
        optimizer.save_state_dict(temp);
        File.Move(temp, OptimizerState, overwrite: true);
        // The global CPU generator drives drop path: saving it makes a resumed run draw the same masks.
        using (var rng = torch.get_rng_state())
        {
            byte[] bytes = rng.bytes.ToArray();
            AtomicFile.Write(RngState, s => s.Write(bytes));
        }

        var state = new JsonObject
        {
            ["step"] = step,
            ["steps_per_epoch"] = StepsPerEpoch,
            ["seed"] = _o.Seed,
            ["best_top1"] = double.IsFinite(best) ? best : null,
            ["history"] = JsonSerializer.SerializeToNode(history, JsonOptions),
        };
        // Written last: a state file always points at complete weights and optimizer state.
        AtomicFile.Write(StateFile, s => s.Write(System.Text.Encoding.UTF8.GetBytes(state.ToJsonString(JsonOptions))));
    }

    private (long Step, double Best, List<EpochMetrics> History) Restore(RepLKNetModel model, ModelEma? ema, OptimizerHelper optimizer)
    {
        var state = JsonNode.Parse(File.ReadAllText(StateFile))!.AsObject();
        long steps = (long)state["steps_per_epoch"]!;
        if (steps != StepsPerEpoch || (long)state["seed"]! != _o.Seed)
        {
            throw new CheckpointException($"'{StateFile}' was written with another batch size, dataset size or seed; resume with the same settings");
        }

        using (var last = CheckpointFile.Read(LastCheckpoint))
        {
            StateDictLoader.Load(model, last.State, strict: true, skipHead: false, $"'{LastCheckpoint}'");
        }

        if (ema is not null && File.Exists(EmaCheckpoint))
        {
            using var averaged = CheckpointFile.Read(EmaCheckpoint);
            StateDictLoader.Load(ema.Average, averaged.State, strict: true, skipHead: false, $"'{EmaCheckpoint}'");
        }

        optimizer.load_state_dict(OptimizerState);
        if (File.Exists(RngState))
        {
            byte[] bytes = File.ReadAllBytes(RngState);
            using var rng = tensor(bytes, dtype: ScalarType.Byte);
            torch.set_rng_state(rng);
        }

        var history = state["history"]!.Deserialize<List<EpochMetrics>>(JsonOptions) ?? [];
        double best = state["best_top1"] is JsonNode b ? (double)b : double.NegativeInfinity;
        return ((long)state["step"]!, best, history);
    }

    private void WriteMetrics(List<EpochMetrics> history)
    {
        var csv = new System.Text.StringBuilder("epoch,step,train_loss,lr,top1,ema_top1,images_per_s,seconds\n");
        foreach (var m in history)
        {
            csv.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{m.Epoch},{m.Step},{m.TrainLoss:R},{m.LearningRate:R},{m.Top1:R},{m.EmaTop1:R},{m.ImagesPerSecond:F1},{m.Seconds:F1}"));
        }

        AtomicFile.Write(Path.Combine(_o.OutDir, "metrics.csv"), s => s.Write(System.Text.Encoding.UTF8.GetBytes(csv.ToString())));
        AtomicFile.Write(Path.Combine(_o.OutDir, "metrics.json"), s => s.Write(JsonSerializer.SerializeToUtf8Bytes(history, JsonOptions)));
    }
}
