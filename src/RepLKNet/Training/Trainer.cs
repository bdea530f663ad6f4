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
    /// Soak mode: a background thread forces garbage collections (young generation back to back, a full one every 64th) and
    /// runs finalizers without pause for the whole run, and the training thread forces a full one between steps, so a TorchSharp object the GC could free while libtorch uses it
    /// shows up within minutes instead of once in hours (docs/training.md, "Dependable runs"). Results are unchanged; slower.
    /// </summary>
    public bool GcStress { get; init; }
}

/// <summary>An epoch whose steps are done but whose evaluation was interrupted: its figures, kept for the resumed run.</summary>
/// <param name="LossSum">Sum of the epoch's step losses.</param>
/// <param name="Steps">Steps in the sum.</param>
/// <param name="Images">Training images of the epoch (this process's part).</param>
/// <param name="Seconds">Training seconds of the epoch.</param>
/// <param name="Skipped">Unreadable images skipped.</param>
/// <param name="WaitSeconds">Time the loop waited for data.</param>
public sealed record PendingEvaluation(double LossSum, long Steps, long Images, double Seconds, int Skipped, double WaitSeconds);

/// <summary>What a training step was doing when it failed.</summary>
public enum TrainingPhase
{
    /// <summary>Waiting for or receiving a batch from the loader.</summary>
    Data,

    /// <summary>The model's forward pass and the loss.</summary>
    Forward,

    /// <summary>Back-propagation.</summary>
    Backward,

    /// <summary>Gradient clipping and the optimizer update.</summary>
    Optimizer,

    /// <summary>The weight EMA update.</summary>
    Ema,

    /// <summary>Evaluating on the test set.</summary>
    Evaluation,

    /// <summary>Writing checkpoints and the resume state.</summary>
    Checkpoint,

    /// <summary>Reporting progress (the caller's step callback).</summary>
    Progress,
}

/// <summary>
/// An unexpected error inside <see cref="TrainingLoop.Run"/> (so <see cref="Trainer.Run"/> and <see cref="ClassifierTraining.Run"/>): where it happened (step, epoch, phase) and the last resumable
/// state on disk, which the failure did not touch. <see cref="Exception.InnerException"/> is the original error.
/// </summary>
public sealed class TrainingFailedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TrainingFailedException(long step, int epoch, TrainingPhase phase, long? lastSavedStep, Exception inner)
        : base(string.Create(CultureInfo.InvariantCulture,
            $"training failed at step {step} (epoch {epoch}) in the {phase.ToString().ToLowerInvariant()} phase: {Short(inner)}"), inner)
    {
        Step = step;
        Epoch = epoch;
        Phase = phase;
        LastSavedStep = lastSavedStep;
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public TrainingFailedException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public TrainingFailedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public TrainingFailedException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>The error's message on one line, without the C++ stack libtorch appends (that stays in the crash report).</summary>
    private static string Short(Exception? e) => Runtime.LibTorchLog.WithoutNativeStack(e?.Message ?? "").TrimEnd('.');

    /// <summary>The optimizer step (1-based) that failed.</summary>
    public long Step { get; }

    /// <summary>The epoch (1-based) of that step.</summary>
    public int Epoch { get; }

    /// <summary>What the step was doing.</summary>
    public TrainingPhase Phase { get; }

    /// <summary>The step of the resume state on disk (<c>state.json</c>), or null when none was written yet.</summary>
    public long? LastSavedStep { get; }
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
/// <param name="Skipped">Unreadable training images skipped in the epoch.</param>
/// <param name="DataWaitSeconds">Time the training loop waited for batches.</param>
public sealed record EpochMetrics(int Epoch, long Step, double TrainLoss, double LearningRate, double Top1, double EmaTop1, double ImagesPerSecond, double Seconds,
    long Skipped = 0, double DataWaitSeconds = 0);

/// <summary>Progress of one optimizer step.</summary>
/// <param name="Step">Optimizer steps done (1-based).</param>
/// <param name="TotalSteps">Steps the run will take (<see cref="long.MaxValue"/> when only a time budget bounds it).</param>
/// <param name="StepInEpoch">Steps done in this epoch.</param>
/// <param name="StepsPerEpoch">Steps per epoch.</param>
/// <param name="Epoch">Epoch (1-based).</param>
/// <param name="Loss">Loss of the step.</param>
/// <param name="LearningRate">Base learning rate of the step.</param>
/// <param name="ImagesPerSecond">Throughput since the run (or resume) started.</param>
/// <param name="Remaining">Estimated time to the end of training (evaluation included at the measured rate; under a time budget, the budget left).</param>
public sealed record StepProgress(long Step, long TotalSteps, long StepInEpoch, long StepsPerEpoch, int Epoch, double Loss, double LearningRate,
    double ImagesPerSecond, TimeSpan Remaining)
{
    /// <summary>Fraction of the budget used, in [0, 1] (steps, or time for a time budget).</summary>
    public double BudgetFraction { get; init; }

    /// <summary>Samples the step trained on (0 when none of its images could be read; the step still updated the weights).</summary>
    public long Samples { get; init; }
}

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
        ClassificationTask.CheckSets(train, test);
        if (_o.Config.NumClasses is not int classes || classes != train.ClassNames.Count)
        {
            throw new ArgumentException(
                $"Config has {(_o.Config.NumClasses is int n ? $"{n} classes" : "no classifier (a backbone)")} but the data has {train.ClassNames.Count} classes; fit it with ModelFactory.Fit",
                nameof(TrainOptions.Config));
        }

        if (_o.AccumulationSteps < 1)
        {
            throw new ArgumentException($"AccumulationSteps must be ≥ 1, got {_o.AccumulationSteps}", nameof(TrainOptions.AccumulationSteps));
        }

        _o.Augment.Validate();
        int size = _o.Augment.InputSize ?? train.FixedSize?.Height
            ?? throw new DatasetException("InputSize is needed: the images have varying sizes", nameof(AugmentOptions.InputSize));
        var pipeline = new SamplePipeline(_o.Augment, _o.Normalization, train.Channels, size);
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
            Schedule = stepsPerEpoch => new CosineSchedule(_o.LearningRate, _o.MinLearningRate, _o.Epochs, (int)stepsPerEpoch, _o.WarmupEpochs),
            ParameterScale = _o.LayerDecay is double d && d != 1 ? name => LayerDecay.Scale(name, _o.Config.Layers, d) : null,
            AccumulationSteps = _o.AccumulationSteps, ClipGradNorm = _o.ClipGradNorm, EmaDecay = _o.EmaDecay, Seed = _o.Seed, MaxSteps = _o.MaxSteps,
            OutDir = _o.OutDir, SaveEvery = _o.SaveEvery, Resume = _o.Resume, GcStress = _o.GcStress, Device = _o.Device,
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
        Directory.CreateDirectory(_o.OutDir);
        torch.manual_seed(_o.Seed);
        using var model = new RepLKNetModel(_o.Config).to(_o.Device);
        using var emaModel = _o.EmaDecay > 0 ? new RepLKNetModel(_o.Config).to(_o.Device) : null;
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
        int classes = model.Config.NumClasses ?? throw new InvalidOperationException("a backbone has no classifier to evaluate");
        if (classes != _task.ClassNames.Count)
        {
            throw new DatasetException($"the model has {classes} classes but the dataset has {_task.ClassNames.Count}");
        }

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
