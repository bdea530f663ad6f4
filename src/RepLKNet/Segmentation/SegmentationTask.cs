using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Distributed;
using RepLKNet.Models.Segmentation;
using RepLKNet.Training;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Segmentation;

/// <summary>
/// Semantic segmentation for the <see cref="TrainingLoop"/>: training crops from an <see cref="ISegmentationDataset"/>
/// through MMSeg's training pipeline (<see cref="SegmentationLoader"/>, background threads, draws keyed by seed, epoch and
/// position), the loss of <see cref="SegmentationLoss.Total"/> (decode + weighted auxiliary pixel cross-entropy) on
/// <see cref="EncoderDecoder.ForwardTrain"/>, mIoU on the validation set as the score (<see cref="SegmentationEvaluator"/>,
/// with aAcc, mAcc and per-class IoU as details), and MMSeg-layout checkpoints (<see cref="SegmentorCheckpoint.Save"/>:
/// <c>.pth</c> = <c>{'meta': {CLASSES, PALETTE, …}, 'state_dict'}</c>). The models the loop passes must be
/// <see cref="EncoderDecoder"/>s.
/// </summary>
public sealed class SegmentationTask : ITrainingTask
{
    private readonly ISegmentationDataset _train;
    private readonly SegmentationPipeline _pipeline;
    private readonly SegmentationEvaluator _evaluator;

    /// <summary>Creates the task.</summary>
    /// <param name="train">Training set.</param>
    /// <param name="pipeline">The training pipeline (crop, rescale, flip, photometric, normalize); its scale and normalization serve the test view too.</param>
    /// <param name="evaluator">Scores a model on the validation set.</param>
    /// <param name="arch">Architecture name recorded in checkpoints.</param>
    /// <param name="classNames">Class names (MMSeg's CLASSES) recorded in checkpoints.</param>
    /// <param name="palette">Colours per class (MMSeg's PALETTE) recorded in checkpoints.</param>
    /// <param name="auxiliaryWeight">Weight of the auxiliary head's loss, overriding its config's <c>loss_weight</c> (0.4 in the
    /// official configs); null: the config's. The decode head's weight is always its config's.</param>
    /// <param name="workers">Threads preparing training crops (≥ 1).</param>
    /// <param name="pool">Training indices to use (null: all).</param>
    /// <exception cref="DatasetException">The training set is empty.</exception>
    public SegmentationTask(ISegmentationDataset train, SegmentationPipeline pipeline, SegmentationEvaluator evaluator, string arch,
        IReadOnlyList<string> classNames, IReadOnlyList<(byte R, byte G, byte B)> palette, double? auxiliaryWeight = null,
        int workers = 1, long[]? pool = null)
    {
        _train = train ?? throw new ArgumentNullException(nameof(train));
        _pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        _evaluator = evaluator ?? throw new ArgumentNullException(nameof(evaluator));
        Arch = arch ?? throw new ArgumentNullException(nameof(arch));
        ClassNames = classNames ?? throw new ArgumentNullException(nameof(classNames));
        Palette = palette ?? throw new ArgumentNullException(nameof(palette));
        if (train.Count == 0)
        {
            throw new DatasetException("the training set holds no images");
        }

        AuxiliaryWeight = auxiliaryWeight;
        Workers = Math.Max(1, workers);
        Pool = Array.AsReadOnly((long[]?)pool?.Clone() ?? TrainingPool.All(train.Count));
    }

    /// <summary>
    /// The fewest readable crops a micro-batch needs to train: 2 (BatchNorm in training mode on the pyramid pooling's 1×1
    /// branch needs two values per channel), or 1 when SyncBN normalizes over several processes' crops (the 31L config's
    /// one crop per GPU; SyncBN itself fails when the global batch holds fewer than 2).
    /// </summary>
    public int MinimumCrops { get; init; } = 2;

    // Training samples used and left out since the last evaluation (the loop's thread only): an evaluation after a
    // window that trained on nothing is an error, not a score.
    private long _usable;
    private long _unusable;
    private SkippedImage? _lastUnusable;

    /// <summary>The score's name: <c>mIoU</c>.</summary>
    public const string MeanIoU = "mIoU";

    /// <summary>Architecture name recorded in checkpoints.</summary>
    public string Arch { get; }

    /// <summary>Class names.</summary>
    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>Colours per class.</summary>
    public IReadOnlyList<(byte R, byte G, byte B)> Palette { get; }

    /// <summary>Weight of the auxiliary loss overriding the auxiliary head's <c>loss_weight</c>, or null (the config's).</summary>
    public double? AuxiliaryWeight { get; }

    /// <summary>Loader threads.</summary>
    public int Workers { get; }

    /// <summary>The scores of the last model evaluated (not the EMA's, unless it was the last), or null.</summary>
    public SegmentationScores? LastScores { get; private set; }

    /// <inheritdoc />
    public IReadOnlyList<long> Pool { get; }

    /// <inheritdoc />
    public string ScoreName => MeanIoU;

    /// <inheritdoc />
    public string WeightsExtension => ".pth";

    /// <inheritdoc />
    public ITrainingEpoch OpenEpoch(long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, DataShard shard) =>
        new Epoch(this, SegmentationLoader.ForEpoch(_train, _pipeline, order, epoch, batchSize, firstBatch, batchCount, seed, Workers, shard), AuxiliaryWeight);

    /// <inheritdoc />
    /// <exception cref="ArgumentException"><paramref name="model"/> is not an <see cref="EncoderDecoder"/>.</exception>
    public double Evaluate(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel) => Score(model, onNotice, cancel).Value;

    /// <summary>Scores <paramref name="model"/> on the validation set: mIoU, with aAcc, mAcc and per-class IoU as details.</summary>
    /// <exception cref="ArgumentException"><paramref name="model"/> is not an <see cref="EncoderDecoder"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled.</exception>
    public TaskScore Score(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel) => Score(model, ProcessGroup.Single, onNotice, cancel);

    /// <summary>
    /// <see cref="Score(Module{Tensor, Tensor}, Action{string}, CancellationToken)"/> in a data-parallel job: each process of
    /// <paramref name="group"/> scores a contiguous block of the validation images and the per-class areas are summed
    /// (<see cref="SegmentationEvaluator.Evaluate(EncoderDecoder, Action{long, long}, Action{SkippedImage}, ProcessGroup, CancellationToken)"/>),
    /// so every process returns the one-process mIoU and details (per-class IoU included) and the same skipped-sample
    /// notice. The training crops used and left out since the last evaluation are summed in the same reduction, so every
    /// process reaches the same verdict on a window that trained on nothing. A cancellation or failure on one process
    /// reaches all at the reduction (<see cref="ShardedEvaluation"/>).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="model"/> is not an <see cref="EncoderDecoder"/>.</exception>
    /// <exception cref="DatasetException">No validation sample could be used, or no training crop since the last evaluation.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled (on this or another process).</exception>
    /// <exception cref="CollectiveException">Another process failed, or a collective failed.</exception>
    public TaskScore Score(Module<Tensor, Tensor> model, ProcessGroup group, Action<string>? onNotice, CancellationToken cancel)
    {
        var segmenter = AsSegmenter(model, nameof(model));
        ArgumentNullException.ThrowIfNull(group);
        int skipped = 0;
        string? example = null;
        var (scores, training) = _evaluator.Evaluate(segmenter, null, s =>
        {
            skipped++;
            example ??= $"{s.Source}: {s.Reason}";
        }, group, [_usable, _unusable], cancel);
        if (skipped > 0)
        {
            onNotice?.Invoke($"evaluation skipped {skipped} unreadable sample(s), e.g. {example}");
        }

        LastScores = scores;
        if (scores.Images == 0)
        {
            throw new DatasetException($"the validation split has no usable sample ({skipped} skipped{(example is null ? "" : $", e.g. {example}")})");
        }

        (long usable, long unusable) = ((long)training[0], (long)training[1]);
        (_usable, _unusable) = (0, 0);
        if (usable == 0 && unusable > 0)
        {
            throw new DatasetException($"no training crop could be used since the last evaluation ({unusable} sample(s) skipped{(_lastUnusable is { } first ? $", e.g. {first.Source}: {first.Reason}" : "")})");
        }

        return new TaskScore(scores.MeanIoU, scores.Details(ClassNames));
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException"><paramref name="model"/> is not an <see cref="EncoderDecoder"/>.</exception>
    public void SaveWeights(string path, Module model, string? trainingState = null) =>
        SegmentorCheckpoint.Save(path, AsSegmenter(model, nameof(model)), Arch, ClassNames, Palette,
            trainingState is null ? null : new Dictionary<string, string> { ["training_state"] = trainingState },
            new SegmentationInput(_pipeline.Options.CropSize, _pipeline.Options.Scale, _pipeline.Options.Mean, _pipeline.Options.Std));

    /// <inheritdoc />
    public void LoadWeights(string path, Module model)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var checkpoint = CheckpointFile.Read(path, ema: false, wholeModel: true);
        StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, $"'{path}'");
    }

    private static EncoderDecoder AsSegmenter(Module model, string name)
    {
        ArgumentNullException.ThrowIfNull(model, name);
        return model as EncoderDecoder ?? throw new ArgumentException($"{name} must be an EncoderDecoder (a segmenter), got {model.GetType().Name}", name);
    }

    private sealed class Epoch(SegmentationTask task, SegmentationLoader loader, double? auxiliaryWeight) : ITrainingEpoch
    {
        private readonly IEnumerator<SegmentationBatch> _batches = loader.Batches().GetEnumerator();
        private IReadOnlyList<SkippedImage> _skipped = [];

        // A batch left with one readable crop (the others unreadable) trains nothing: BatchNorm in training mode on the
        // pyramid pooling's 1×1 branch would see a single value per channel and turn its running variance into NaN for
        // good. Its crop is reported as left out, like the unreadable ones, and the step makes no update.
        public int Count => _batches.Current.Count < task.MinimumCrops ? 0 : _batches.Current.Count;

        public IReadOnlyList<SkippedImage> Skipped => _skipped;

        public TimeSpan WaitTime => loader.WaitTime;

        public bool MoveNext()
        {
            if (!_batches.MoveNext())
            {
                return false;
            }

            var batch = _batches.Current;
            if (batch.Count >= task.MinimumCrops)
            {
                task._usable += batch.Count;
            }

            task._unusable += batch.Skipped.Count + (batch.Count > 0 && batch.Count < task.MinimumCrops ? batch.Count : 0);
            _skipped = batch.Count != 1 || task.MinimumCrops <= 1
                ? batch.Skipped
                : [.. batch.Skipped, new SkippedImage(batch.Indices[0], task._train.Describe(batch.Indices[0]),
                    "left out: the only readable crop of its batch (BatchNorm cannot train on one crop)")];
            task._lastUnusable = _skipped.Count > 0 ? _skipped[0] : task._lastUnusable;
            return true;
        }

        public Tensor Loss(Module<Tensor, Tensor> model, Device device)
        {
            var segmenter = AsSegmenter(model, nameof(model));
            var batch = _batches.Current;
            if (batch.Count < task.MinimumCrops)
            {
                // No usable sample: a zero loss that still has a graph (no update but the decay).
                return segmenter.parameters().First().sum().mul(zeros(1, device: device).squeeze());
            }

            var (decode, auxiliary) = segmenter.ForwardTrain(batch.ImageTensor(device).to(ModelInputs.FloatType(segmenter)));
            var aux = segmenter.Config.AuxiliaryHead;
            return SegmentationLoss.Weighted(decode, auxiliary, batch.LabelTensor(device), segmenter.AlignCorners, aux?.AlignCorners ?? false,
                segmenter.Config.DecodeHead.LossWeight, auxiliaryWeight ?? aux?.LossWeight ?? 0);
        }

        public void Dispose()
        {
            _batches.Dispose();
            loader.Dispose();
        }
    }
}
