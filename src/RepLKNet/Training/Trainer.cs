using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.IO;
using RepLKNet.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Training;

/// <summary>
/// What to train and how: the official recipe's knobs (§8 of the spec). The property defaults are the recipe's defaults —
/// the one place they live (the CLI's option defaults are these constants).
/// </summary>
public sealed record TrainOptions : RecipeOptions
{
    /// <summary>Creates the options with the recipe's defaults.</summary>
    public TrainOptions()
        : base(DefaultBatchSize, DefaultLearningRate, DefaultWeightDecay)
    {
    }

    /// <summary>Default <see cref="Epochs"/>.</summary>
    public const int DefaultEpochs = 12;

    /// <summary>Default <see cref="RecipeOptions.BatchSize"/>.</summary>
    public const int DefaultBatchSize = 128;

    /// <summary>Default <see cref="RecipeOptions.LearningRate"/>.</summary>
    public const double DefaultLearningRate = 4e-3;

    /// <summary>Default <see cref="MinLearningRate"/>.</summary>
    public const double DefaultMinLearningRate = 1e-6;

    /// <summary>Default <see cref="WarmupEpochs"/>.</summary>
    public const int DefaultWarmupEpochs = 1;

    /// <summary>Default <see cref="RecipeOptions.WeightDecay"/> (official 0.05).</summary>
    public const double DefaultWeightDecay = 0.05;

    /// <summary>Default <see cref="EmaDecay"/>.</summary>
    public const double DefaultEmaDecay = 0.999;

    /// <summary>Display name of the architecture.</summary>
    public required string Arch { get; init; }

    /// <summary>The architecture.</summary>
    public required RepLKNetConfig Config { get; init; }

    /// <summary>Run folder (checkpoints, metrics).</summary>
    public required string OutDir { get; init; }

    /// <summary>Epochs.</summary>
    public int Epochs { get; init; } = DefaultEpochs;

    /// <summary>Final learning rate of the cosine.</summary>
    public double MinLearningRate { get; init; } = DefaultMinLearningRate;

    /// <summary>Warm-up epochs.</summary>
    public int WarmupEpochs { get; init; } = DefaultWarmupEpochs;

    /// <summary>EMA decay; 0 disables the EMA.</summary>
    public double EmaDecay { get; init; } = DefaultEmaDecay;

    /// <summary>Save a checkpoint every this many steps as well as at each epoch end; null: epochs only.</summary>
    public long? SaveEvery { get; init; }

    /// <summary>Continue from the run folder's last checkpoint.</summary>
    public bool Resume { get; init; }

    /// <summary>Micro-batches per optimizer step (the official <c>update_freq</c>); the loss is divided by it.</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>Clip the global gradient norm to this value; null: no clipping (the official default).</summary>
    public double? ClipGradNorm { get; init; }

    /// <summary>Layer-wise learning-rate decay (fine-tuning; e.g. 0.7); null or 1: off.</summary>
    public double? LayerDecay { get; init; }

    /// <summary>Initial weights for fine-tuning (any readable checkpoint; a head of another size is skipped).</summary>
    public string? InitialWeights { get; init; }

    /// <summary>
    /// The parameters' and activations' dtype: float32 (the default, the official recipe's) or float64, for numerical
    /// verification (<c>model.double()</c>): e.g. the data-parallel equivalence, where float32 rounding differences are
    /// amplified by AdamW on parameters whose gradient is only rounding noise (docs/distributed.md). Slower (libtorch's depthwise conv).
    /// </summary>
    public ScalarType Precision { get; init; } = ScalarType.Float32;

    /// <summary>
    /// Soak mode: a background thread forces garbage collections (young generation back to back, a full one every 64th) and
    /// runs finalizers without pause for the whole run, and the training thread forces a full one between steps, so a TorchSharp object the GC could free while libtorch uses it
    /// shows up within minutes instead of once in hours (docs/training.md, "Dependable runs"). Results are unchanged; slower.
    /// </summary>
    public bool GcStress { get; init; }

    /// <summary>
    /// The processes of a data-parallel job (docs/distributed.md; <see cref="Distributed.ProcessGroup.Single"/>: one process).
    /// BatchSize is per process, the global batch BatchSize × WorldSize (as in the official DDP code); only rank 0 writes.
    /// </summary>
    public Distributed.ProcessGroup Group { get; init; } = Distributed.ProcessGroup.Single;

    /// <summary>
    /// SyncBN: BatchNorm statistics over the global batch of a data-parallel job (the official segmentation configs'
    /// <c>SyncBN</c>; <c>torch.nn.SyncBatchNorm</c>); plain per-process BatchNorm otherwise. No effect in one process.
    /// </summary>
    public bool SyncBatchNorm { get; init; }

    /// <summary>Resume a state written by a job of another world size, provided the global batch is the same.</summary>
    public bool AllowWorldSizeChange { get; init; }

    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        Check(Epochs >= 1, nameof(Epochs), $"must be ≥ 1, got {Epochs}");
        Check(MinLearningRate >= 0, nameof(MinLearningRate), $"must be ≥ 0, got {MinLearningRate}");
        Check(WarmupEpochs >= 0, nameof(WarmupEpochs), $"must be ≥ 0, got {WarmupEpochs}");
        Check(EmaDecay is >= 0 and < 1, nameof(EmaDecay), $"must be in [0, 1), got {EmaDecay}");
        Check(AccumulationSteps >= 1, nameof(AccumulationSteps), $"must be ≥ 1, got {AccumulationSteps}");
        Check(ClipGradNorm is null or > 0, nameof(ClipGradNorm), $"must be positive, got {ClipGradNorm}");
        Check(LayerDecay is null or (> 0 and <= 1), nameof(LayerDecay), $"must be in (0, 1], got {LayerDecay}");
        Check(SaveEvery is null or >= 1, nameof(SaveEvery), $"must be ≥ 1, got {SaveEvery}");
        Check(Precision is ScalarType.Float32 or ScalarType.Float64, nameof(Precision), $"must be float32 or float64, got {Precision}");
    }
}

/// <summary>
/// The official classification recipe (§8 of the spec) on the <see cref="TrainingLoop"/>: a RepLKNet built from
/// <see cref="TrainOptions.Config"/> after seeding, optional fine-tuning weights, AdamW with the no-decay groups and
/// layer-wise lr decay, per-iteration warm-up + cosine, label-smoothed or Mixup/CutMix soft-target cross-entropy,
/// accumulation, clipping, drop path, weight EMA, evaluation each epoch, atomic checkpoints and exact resumption.
/// </summary>
public sealed class Trainer
{
    private readonly TrainOptions _o;
    private readonly ClassificationTask _task;
    private readonly TrainingLoop _loop;

    /// <summary>Creates a trainer over <paramref name="train"/> and <paramref name="test"/>.</summary>
    /// <exception cref="DatasetException">A set is empty, the sets disagree on classes or channels, or images of varying sizes come without an input size.</exception>
    /// <exception cref="ArgumentException">An option is out of range; <see cref="ArgumentException.ParamName"/> names the <see cref="TrainOptions"/> property.</exception>
    public Trainer(TrainOptions options, IImageDataset train, IImageDataset test)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(test);
        if (_o.Config.NumClasses is not int classes || classes != train.ClassNames.Count)
        {
            throw new ArgumentException(
                $"Config has {(_o.Config.NumClasses is int n ? $"{n} classes" : "no classifier (a backbone)")} but the data has {train.ClassNames.Count} classes; fit it with ModelFactory.Fit",
                nameof(TrainOptions.Config));
        }

        _o.Validate();
        var pipeline = ClassificationTask.CreatePipeline(_o, train);
        if (_o.Augment.Mixes && _o.BatchSize % 2 != 0)
        {
            throw new ArgumentException($"BatchSize {_o.BatchSize} must be even: Mixup/CutMix pair each image with the batch reversed", nameof(TrainOptions.BatchSize));
        }

        var preprocessing = new Preprocessing(pipeline.Size,
            [.. Enumerable.Range(0, pipeline.Channels).Select(c => _o.Normalization.At(c, pipeline.Channels).Mean)],
            [.. Enumerable.Range(0, pipeline.Channels).Select(c => _o.Normalization.At(c, pipeline.Channels).Std)],
            _o.Augment.CropPct);
        var metadata = new CheckpointMetadata(_o.Arch, _o.Config, ModelForm.Train, train.ClassNames, Preprocessing: preprocessing);
        _task = new ClassificationTask(train, test, pipeline, _o.Augment, TrainingPool.First(train.Count, _o.TrainSubset),
            Math.Max(1, _o.BatchSize * 3 / 2), _o.Workers, _o.Device, metadata);
        _loop = new TrainingLoop(_task, new TrainingLoopOptions
        {
            Budget = new TrainingBudget(_o.Epochs, null), BatchSize = _o.BatchSize, LearningRate = _o.LearningRate, WeightDecay = _o.WeightDecay,
            Schedule = stepsPerEpoch => new CosineSchedule(_o.LearningRate, _o.MinLearningRate, _o.Epochs, (int)stepsPerEpoch, Math.Min(_o.WarmupEpochs, _o.Epochs)),
            ParameterScale = _o.LayerDecay is double d && d != 1 ? name => LayerDecay.Scale(name, _o.Config.Layers, d) : null,
            AccumulationSteps = _o.AccumulationSteps, ClipGradNorm = _o.ClipGradNorm, EmaDecay = _o.EmaDecay, Seed = _o.Seed, MaxSteps = _o.MaxSteps,
            OutDir = _o.OutDir, SaveEvery = _o.SaveEvery, Resume = _o.Resume, GcStress = _o.GcStress, Device = _o.Device,
            Group = _o.Group, SyncBatchNorm = _o.SyncBatchNorm, AllowWorldSizeChange = _o.AllowWorldSizeChange,
        });
    }

    /// <summary>The sample pipeline (size, channels) both splits go through.</summary>
    public SamplePipeline Pipeline => _task.Pipeline;

    /// <summary>What predict/eval must do to inputs of a checkpoint from this run.</summary>
    public Preprocessing Preprocessing => _task.Metadata!.Preprocessing!;

    /// <summary>Path of the last checkpoint (project format).</summary>
    public string LastCheckpoint => _loop.Folder!.LastCheckpoint;

    /// <summary>Path of the best checkpoint (by test top-1, EMA or not, whichever is higher).</summary>
    public string BestCheckpoint => _loop.Folder!.BestCheckpoint;

    /// <summary>Path of the deploy form of the best checkpoint (<see cref="WriteDeploy"/>).</summary>
    public string DeployCheckpoint => _loop.Folder!.DeployCheckpoint;

    /// <summary>
    /// The finish of a run: re-parameterizes the best checkpoint, verifies it against the train form on a random batch at
    /// the run's input size and writes <see cref="DeployCheckpoint"/> (<see cref="DeployStep.Write"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The two forms differ beyond the tolerance; nothing was written.</exception>
    public Models.EquivalenceReport WriteDeploy() => DeployStep.Write(BestCheckpoint, DeployCheckpoint, Pipeline.Size);

    /// <summary>Path of the EMA weights of the last checkpoint.</summary>
    public string EmaCheckpoint => _loop.Folder!.EmaCheckpoint;

    /// <summary>Optimizer steps per epoch (the last partial batch is dropped, as the official loader does).</summary>
    public long StepsPerEpoch => _loop.StepsPerEpoch;

    /// <summary>Steps the whole run takes.</summary>
    public long TotalSteps => _loop.TotalSteps;

    /// <summary>Optimizer steps done so far (of the whole run, a resumed part included).</summary>
    public long StepsDone => _loop.StepsDone;

    /// <summary>Tensors created outside any dispose scope during the optimizer steps (see <see cref="TrainingLoop.UnscopedTensors"/>); stays 0.</summary>
    public long UnscopedTensors => _loop.UnscopedTensors;

    /// <summary>
    /// Trains: seeds libtorch's generator, builds the model (and its EMA twin), loads <see cref="TrainOptions.InitialWeights"/>
    /// unless resuming, and runs the loop. <paramref name="onEpoch"/>, <paramref name="onStep"/> and <paramref name="onNotice"/>
    /// report progress; <paramref name="cancel"/> stops after the current step with a resume state saved.
    /// Returns each evaluated epoch's metrics.
    /// </summary>
    /// <exception cref="NonFiniteLossException">The loss diverged; the last checkpoint is intact.</exception>
    /// <exception cref="TrainingFailedException">Any other failure during training.</exception>
    /// <exception cref="CheckpointException">Resuming without (or with a mismatching) resume state, or unusable initial weights.</exception>
    public List<EpochMetrics> Run(Action<EpochMetrics>? onEpoch = null, Action<StepProgress>? onStep = null, Action<string>? onNotice = null,
        CancellationToken cancel = default)
    {
        if (_o.Group.IsMain)
        {
            Directory.CreateDirectory(_o.OutDir);
        }

        torch.manual_seed(_o.Seed);
        using var model = new RepLKNetModel(_o.Config).to(_o.Precision).to(_o.Device);
        using var emaModel = _o.EmaDecay > 0 ? new RepLKNetModel(_o.Config).to(_o.Precision).to(_o.Device) : null;
        bool resuming = _o.Resume && File.Exists(_loop.Folder!.StateFile);
        if (_o.InitialWeights is { } weights && !resuming)
        {
            onNotice?.Invoke(LoadInitialWeights(model, weights));
        }

        return [.. _loop.Run(model, emaModel, onEpoch, onStep, onNotice, cancel).History];
    }

    /// <summary>Top-1 accuracy of <paramref name="model"/> on the test set (eval mode, no gradients).</summary>
    /// <exception cref="InvalidOperationException"><paramref name="model"/> is a backbone (no classifier).</exception>
    /// <exception cref="DatasetException">Its classifier's size differs from the test set's classes.</exception>
    public double Evaluate(RepLKNetModel model, Action<string>? onNotice = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        return _task.Evaluate(model, onNotice, cancel);
    }

    /// <summary>The permutation of training indices for <paramref name="epoch"/>: a function of (seed, epoch) only.</summary>
    public long[] EpochOrder(int epoch) => _loop.EpochOrder(epoch);

    private static string LoadInitialWeights(RepLKNetModel model, string weights)
    {
        using var checkpoint = CheckpointFile.Read(weights);
        if (checkpoint.Form != ModelForm.Train)
        {
            throw new CheckpointException($"InitialWeights '{weights}' is a {checkpoint.Form.Name()}-form checkpoint; fine-tuning needs the train form (before re-parameterization)",
                nameof(TrainOptions.InitialWeights));
        }

        LoadReport report;
        try
        {
            report = StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: true, $"InitialWeights '{weights}'");
        }
        catch (CheckpointException e) when (e.ParamName is null)
        {
            throw new CheckpointException(e.Message, nameof(TrainOptions.InitialWeights));
        }

        return report.SkippedHead.Count > 0
            ? $"initialized from '{weights}' ({report.Loaded.Count} tensors); its classifier ({string.Join(", ", report.SkippedHead)}) has another size and was left at random"
            : $"initialized from '{weights}' ({report.Loaded.Count} tensors)";
    }
}
