using RepLKNet.Data;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>
/// What a task (classification: <see cref="ClassificationTask"/>; segmentation: <c>RepLKNet.Segmentation.SegmentationTask</c>) tells the task-agnostic <see cref="TrainingLoop"/>: its training
/// samples, its batches and loss, how to score a model, and its checkpoint format. Everything else — the optimizer, the
/// schedule, accumulation, clipping, the EMA, evaluation cadence, checkpoints and exact resumption, progress events — is
/// the loop's. Called on the loop's thread only.
/// </summary>
public interface ITrainingTask
{
    /// <summary>Indices of the training samples the loop draws from (a subset keeps its chosen indices); the loop shuffles a copy each epoch.</summary>
    IReadOnlyList<long> Pool { get; }

    /// <summary>
    /// Opens the training micro-batches of one epoch: batch k of the epoch holds <c>order[k·batchSize .. (k+1)·batchSize)</c>,
    /// starting at <paramref name="firstBatch"/>, <paramref name="batchCount"/> batches in all; every random draw of batch k
    /// must be a function of (seed, <paramref name="epoch"/>, k) so that a resumed epoch sees the same batches.
    /// </summary>
    /// <param name="order">The epoch's permutation of <see cref="Pool"/>.</param>
    /// <param name="epoch">Epoch (0-based).</param>
    /// <param name="batchSize">Samples per micro-batch.</param>
    /// <param name="firstBatch">First micro-batch to produce (0 unless resuming inside the epoch).</param>
    /// <param name="batchCount">Micro-batches in the epoch.</param>
    /// <param name="seed">The run's seed.</param>
    /// <param name="shard">
    /// This process's part of each global batch in a data-parallel job (<see cref="DataShard.Whole"/> for one process):
    /// micro-batch k holds the order positions <see cref="DataShard.Position"/>(k, batchSize, i), and every draw of a sample
    /// is keyed by that global position.
    /// </param>
    ITrainingEpoch OpenEpoch(long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, DataShard shard);

    /// <summary>
    /// Scores <paramref name="model"/> on the held-out set: the task puts it in eval mode and runs without gradients (the
    /// loop sets train mode again before the next step); the loop keeps the checkpoint with the highest score. For
    /// classification: test top-1 in [0, 1].
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled (the loop saves a pending evaluation).</exception>
    double Evaluate(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel);

    /// <summary>Writes <paramref name="model"/>'s weights to <paramref name="path"/> (atomically) in the task's checkpoint format.</summary>
    /// <param name="path">Destination file.</param>
    /// <param name="model">The model (or its EMA).</param>
    /// <param name="trainingState">File name of the run's resume state recorded in the checkpoint, or null.</param>
    void SaveWeights(string path, Module model, string? trainingState = null);

    /// <summary>Loads weights written by <see cref="SaveWeights"/> into <paramref name="model"/> (strict).</summary>
    /// <exception cref="Checkpoints.CheckpointException">The file is damaged or does not match the model.</exception>
    void LoadWeights(string path, Module model);

    /// <summary>The name of classification's score, <see cref="ScoreName"/>'s default.</summary>
    const string DefaultScoreName = "top1";

    /// <summary>
    /// The score's name in reports, metrics files (CSV columns <c>&lt;name&gt;</c> and <c>ema_&lt;name&gt;</c>) and the resume
    /// state (<c>best_&lt;name&gt;</c>): <c>top1</c> (classification, the default) or e.g. <c>mIoU</c> (segmentation).
    /// </summary>
    string ScoreName => DefaultScoreName;

    /// <summary>Extension of the best and last checkpoints the run folder names (<see cref="RunFolder.WeightsExtension"/>); <c>.safetensors</c> by default.</summary>
    string WeightsExtension => RunFolder.DefaultWeightsExtension;

    /// <summary>
    /// <see cref="Evaluate"/> with the figures behind the score (e.g. aAcc, mIoU, mAcc and per-class IoU), which the loop
    /// writes into the metrics files. The default has none: <c>new TaskScore(Evaluate(…))</c>.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled.</exception>
    TaskScore Score(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel) => new(Evaluate(model, onNotice, cancel));

    /// <summary>
    /// <see cref="Score(Module{Tensor, Tensor}, Action{string}, CancellationToken)"/> in a data-parallel job: each process of <paramref name="group"/> scores its part of the held-out
    /// set and the counts behind the score are summed over the processes, so every process returns the score of the whole
    /// set (the same as one process would). The default scores the whole set on every process.
    /// </summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled.</exception>
    /// <exception cref="Distributed.CollectiveException">A collective failed.</exception>
    TaskScore Score(Module<Tensor, Tensor> model, Distributed.ProcessGroup group, Action<string>? onNotice, CancellationToken cancel) => Score(model, onNotice, cancel);
}

/// <summary>A task's score of a model and the figures behind it.</summary>
/// <param name="Value">The score the loop keeps the best checkpoint by (higher is better).</param>
/// <param name="Details">Named figures written beside it into the metrics files (in this order), or null.</param>
public sealed record TaskScore(double Value, IReadOnlyDictionary<string, double>? Details = null);

/// <summary>One epoch's training micro-batches, produced in order; owns its loader threads (dispose it).</summary>
public interface ITrainingEpoch : IDisposable
{
    /// <summary>Advances to the next micro-batch; false when the epoch has no more.</summary>
    bool MoveNext();

    /// <summary>Samples in the current micro-batch (0 when none of them could be read).</summary>
    int Count { get; }

    /// <summary>Samples of the current micro-batch that could not be read and were left out.</summary>
    IReadOnlyList<SkippedImage> Skipped { get; }

    /// <summary>
    /// Runs <paramref name="model"/> (train mode) on the current micro-batch on <paramref name="device"/> and returns the
    /// task's loss: a scalar float32 (or float64) tensor with a gradient function, the mean over the micro-batch, made in
    /// the caller's dispose scope.
    /// </summary>
    Tensor Loss(Module<Tensor, Tensor> model, Device device);

    /// <summary>Time spent waiting for micro-batches so far.</summary>
    TimeSpan WaitTime { get; }
}

/// <summary>
/// An <see cref="ITrainingEpoch"/> whose micro-batch can be cut along the batch dimension, for the batch split over threads
/// of <see cref="TrainStep"/> (<see cref="Runtime.BatchSplit"/>): the model input once, then the loss of any run of its
/// samples from their outputs. The task's loss must be a mean over samples (each sample's term independent of the others).
/// </summary>
public interface ISplittableEpoch : ITrainingEpoch
{
    /// <summary>
    /// The current micro-batch's model input [N, …] on <paramref name="device"/> in the model's float type, made in the
    /// caller's dispose scope, as are the targets <see cref="PartLoss"/> reads (kept until the next call).
    /// </summary>
    Tensor Input(Module<Tensor, Tensor> model, Device device);

    /// <summary>
    /// The loss of samples [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of the last
    /// <see cref="Input"/>, given the model's <paramref name="output"/> for them: the sum of their per-sample losses divided
    /// by the micro-batch's N, so that the parts' losses add up to <see cref="ITrainingEpoch.Loss"/>. A scalar with a
    /// gradient function, made in the caller's dispose scope; may be called from several threads at once.
    /// </summary>
    Tensor PartLoss(Tensor output, long start, long count);
}
