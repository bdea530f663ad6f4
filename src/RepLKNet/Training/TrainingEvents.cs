using System.Globalization;
using System.Text.Json.Serialization;

namespace RepLKNet.Training;

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

    /// <summary>A collective with the other processes of a data-parallel job (gradient averaging, the per-step agreement).</summary>
    Collective,
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

/// <summary>One evaluation's metrics: at an epoch end, or every N steps (<see cref="TrainingLoopOptions.EvaluateEvery"/>).</summary>
/// <param name="Epoch">Epoch (1-based).</param>
/// <param name="Step">Optimizer steps so far.</param>
/// <param name="TrainLoss">Mean training loss over the epoch.</param>
/// <param name="LearningRate">Learning rate at the end of the epoch.</param>
/// <param name="Top1">The task's score of the model (<see cref="ITrainingTask.Evaluate"/>: test top-1 for classification; the name is kept for the files it is written to).</param>
/// <param name="EmaTop1">The same score of the EMA model (NaN without EMA).</param>
/// <param name="ImagesPerSecond">Training throughput.</param>
/// <param name="Seconds">Wall time of the epoch.</param>
/// <param name="Skipped">Unreadable training images skipped in the epoch.</param>
/// <param name="DataWaitSeconds">Time the training loop waited for batches.</param>
public sealed record EpochMetrics(int Epoch, long Step, double TrainLoss, double LearningRate, double Top1, double EmaTop1, double ImagesPerSecond, double Seconds,
    long Skipped = 0, double DataWaitSeconds = 0)
{
    /// <summary>The task's score, named <see cref="Score"/> (<see cref="Top1"/> under a task-neutral name: top-1 for classification, mIoU for segmentation).</summary>
    [JsonIgnore]
    public double ScoreValue => Top1;

    /// <summary>The EMA model's score (<see cref="EmaTop1"/> under a task-neutral name; NaN without EMA).</summary>
    [JsonIgnore]
    public double EmaScoreValue => EmaTop1;

    /// <summary>
    /// The name of the score in <see cref="Top1"/> and <see cref="EmaTop1"/> (<see cref="ITrainingTask.ScoreName"/>, e.g.
    /// <c>mIoU</c>); null: <c>top1</c> (classification, whose files do not carry the name).
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? ScoreName { get; init; }

    /// <summary>The figures behind the model's score (<see cref="TaskScore.Details"/>: e.g. aAcc, mIoU, mAcc), or null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyDictionary<string, double>? Details { get; init; }

    /// <summary>
    /// Peak resident memory of the training process when this evaluation was reported, in bytes
    /// (<see cref="Runtime.PeakMemory.ProcessPeak"/>: Linux <c>VmHWM</c>, the process's peak since it started unless
    /// something reset the counter; elsewhere the peak working set). In a data-parallel job, the process that wrote the
    /// metrics (rank 0). Null where the system reports none, and in histories written before the figure existed.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? PeakResidentBytes { get; init; }

    /// <summary>The score's name: <see cref="ScoreName"/>, or <c>top1</c>.</summary>
    [JsonIgnore]
    public string Score => ScoreName ?? ITrainingTask.DefaultScoreName;
}

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
