using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>
/// Image classification for the <see cref="TrainingLoop"/>: batches from an <see cref="IImageDataset"/> through the sample
/// pipeline and the augmentation (Mixup/CutMix included, prepared on background threads), label-smoothed or soft-target
/// cross-entropy, test-set top-1 as the score, and the project's checkpoint format.
/// </summary>
public sealed class ClassificationTask : ITrainingTask
{
    private readonly IImageDataset _train;
    private readonly IImageDataset _test;
    private readonly AugmentOptions _augment;

    /// <summary>Creates the task.</summary>
    /// <param name="train">Training set.</param>
    /// <param name="test">Held-out set (same classes and channels).</param>
    /// <param name="pipeline">Sample pipeline (size, channels, normalization) of both sets.</param>
    /// <param name="augment">Training augmentation and label smoothing.</param>
    /// <param name="pool">Training indices to use (null: all).</param>
    /// <param name="evalBatchSize">Evaluation batch size.</param>
    /// <param name="workers">Background threads preparing batches.</param>
    /// <param name="device">Where evaluation runs.</param>
    /// <param name="metadata">Written into every checkpoint (architecture, class names, preprocessing); null: plain safetensors.</param>
    /// <exception cref="DatasetException">A set is empty, or the sets disagree on classes or channels.</exception>
    public ClassificationTask(IImageDataset train, IImageDataset test, SamplePipeline pipeline, AugmentOptions augment, long[]? pool, int evalBatchSize,
        int workers, Device device, CheckpointMetadata? metadata)
    {
        _train = train ?? throw new ArgumentNullException(nameof(train));
        _test = test ?? throw new ArgumentNullException(nameof(test));
        Pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        _augment = augment ?? throw new ArgumentNullException(nameof(augment));
        CheckSets(train, test);
        Pool = Array.AsReadOnly((long[]?)pool?.Clone() ?? TrainingPool.All(train.Count));
        EvalBatchSize = Math.Max(1, evalBatchSize);
        Workers = workers;
        Device = device;
        Metadata = metadata;
    }

    /// <summary>The sample pipeline both splits go through.</summary>
    public SamplePipeline Pipeline { get; }

    /// <summary>Evaluation batch size.</summary>
    public int EvalBatchSize { get; }

    /// <summary>Loader threads.</summary>
    public int Workers { get; }

    /// <summary>Evaluation device.</summary>
    public Device Device { get; }

    /// <summary>Checkpoint metadata, or null.</summary>
    public CheckpointMetadata? Metadata { get; }

    /// <inheritdoc />
    public IReadOnlyList<long> Pool { get; }

    /// <summary>Classes of both sets.</summary>
    public IReadOnlyList<string> ClassNames => _train.ClassNames;

    /// <summary>
    /// The sample pipeline of a recipe on <paramref name="train"/>: its augmentation and normalization at the augmentation's
    /// input size, else the images' own (fixed) size.
    /// </summary>
    /// <exception cref="DatasetException">The images have varying sizes and no input size is given (ParamName <c>InputSize</c>).</exception>
    public static SamplePipeline CreatePipeline(RecipeOptions recipe, IImageDataset train)
    {
        ArgumentNullException.ThrowIfNull(recipe);
        ArgumentNullException.ThrowIfNull(train);
        int size = recipe.Augment.InputSize ?? train.FixedSize?.Height
            ?? throw new DatasetException("InputSize is needed: the images have varying sizes", nameof(AugmentOptions.InputSize));
        return new SamplePipeline(recipe.Augment, recipe.Normalization, train.Channels, size);
    }

    /// <summary>Fails unless both sets hold images of the same classes and channels.</summary>
    /// <exception cref="DatasetException">They do not.</exception>
    public static void CheckSets(IImageDataset train, IImageDataset test)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(test);
        if (train.Count == 0 || test.Count == 0)
        {
            throw new DatasetException("the training or test set holds no images");
        }

        if (!train.ClassNames.SequenceEqual(test.ClassNames) || train.Channels != test.Channels)
        {
            throw new DatasetException("the training and test sets have different classes or channels");
        }
    }

    /// <inheritdoc />
    public ITrainingEpoch OpenEpoch(long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, DataShard shard)
    {
        var plan = new LoaderPlan
        {
            Order = order, BatchSize = batchSize, FirstBatch = firstBatch, BatchCount = batchCount, Train = true, Key = (seed, epoch), Workers = Workers,
            Shard = shard,
        };
        return new Epoch(new BatchLoader(_train, Pipeline, _augment, plan), _augment.LabelSmoothing);
    }

    /// <inheritdoc />
    /// <exception cref="InvalidOperationException"><paramref name="model"/> is a backbone (no classifier).</exception>
    /// <exception cref="DatasetException">Its classifier's size differs from the test set's classes.</exception>
    public double Evaluate(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel)
    {
        int classes = Evaluation.OutputClasses(model, _test.ClassNames.Count);
        using var frozen = Frozen(model);
        return Notify(Evaluation.Run(frozen ?? model, classes, _test, Pipeline, EvalBatchSize, Device, Workers, cancel), onNotice).Top1;
    }

    /// <summary>
    /// Test top-1 in a data-parallel job: each process of <paramref name="group"/> scores its block of whole evaluation
    /// batches and the counts are summed (<see cref="Evaluation.Run(Module{Tensor, Tensor}, int, IImageDataset, SamplePipeline, int, Device, int?, Distributed.ProcessGroup, CancellationToken)"/>),
    /// so every process returns the one-process score, and the same skipped-image notice; a one-process group is
    /// <see cref="Evaluate"/>. A cancellation or failure on one process is passed to all at the reduction (<see cref="ShardedEvaluation"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException"><paramref name="model"/> is a backbone (no classifier).</exception>
    /// <exception cref="DatasetException">Its classifier's size differs from the test set's classes, or no test image could be read.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled (on this or another process).</exception>
    /// <exception cref="Distributed.CollectiveException">Another process failed, or a collective failed.</exception>
    public TaskScore Score(Module<Tensor, Tensor> model, Distributed.ProcessGroup group, Action<string>? onNotice, CancellationToken cancel)
    {
        int classes = Evaluation.OutputClasses(model, _test.ClassNames.Count);
        using var frozen = Frozen(model);
        return new(Notify(Evaluation.Run(frozen ?? model, classes, _test, Pipeline, EvalBatchSize, Device, Workers, group, cancel), onNotice).Top1);
    }

    /// <summary>
    /// Whether evaluation runs a frozen copy of the model (<see cref="FrozenRepLKNet"/>: every BatchNorm folded, the large
    /// kernels merged, 1×1 convs on the fused product) rather than the model in eval mode; true unless
    /// <c>REPLKNET_EVAL_FROZEN=0</c>. The copy computes the eval-mode function to float rounding (its logits within ~1e-6
    /// of the model's; a top-1 can differ only where two logits tie to that precision), about twice as fast on the
    /// default model (docs/perf-notes.md, 2026-12-01 (later), "Evaluation on the frozen copy").
    /// </summary>
    internal static bool UseFrozen { get; set; } = Environment.GetEnvironmentVariable("REPLKNET_EVAL_FROZEN") != "0";

    private static long _frozenCopies;

    /// <summary>Frozen copies built for evaluation in this process so far (a diagnostic; the tests read it).</summary>
    internal static long FrozenCopies => Interlocked.Read(ref _frozenCopies);

    /// <summary>
    /// A frozen copy of <paramref name="model"/> in eval mode when it is a float32 CPU RepLKNet with running statistics
    /// (built afresh for each evaluation: ~2 ms on the default model), else null (the model itself is evaluated).
    /// </summary>
    private FrozenRepLKNet? Frozen(Module<Tensor, Tensor> model)
    {
        if (!UseFrozen || model is not RepLKNetModel rep || Device.type != DeviceType.CPU || rep.StemLayers[0].Conv.weight!.dtype != ScalarType.Float32 ||
            rep.modules().OfType<Layers.BatchNorm2d>().Any(bn => !bn.track_running_stats))
        {
            return null;
        }

        rep.eval();
        Interlocked.Increment(ref _frozenCopies);
        return FrozenRepLKNet.Freeze(rep, inputSize: Pipeline.Size);
    }

    private static EvaluationResult Notify(EvaluationResult result, Action<string>? onNotice)
    {
        if (result.Skipped.Count > 0)
        {
            onNotice?.Invoke($"evaluation skipped {result.Skipped.Count} unreadable image(s), e.g. {result.Skipped[0].Source}: {result.Skipped[0].Reason}");
        }

        return result;
    }

    /// <inheritdoc />
    public void SaveWeights(string path, Module model, string? trainingState = null)
    {
        if (Metadata is { } metadata)
        {
            CheckpointFile.WriteRepLKNet(path, StateDicts.Ordered(model), metadata with { TrainingState = trainingState });
        }
        else
        {
            SafetensorsFile.Write(path, StateDicts.Ordered(model), null);
        }
    }

    /// <inheritdoc />
    public void LoadWeights(string path, Module model)
    {
        using var checkpoint = CheckpointFile.Read(path);
        StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, $"'{path}'");
    }

    /// <summary>
    /// The classification loss of <paramref name="logits"/> [N, classes]: cross-entropy with label smoothing
    /// <paramref name="smoothing"/> against <paramref name="labels"/> [N] (int64), or, when <paramref name="softTargets"/>
    /// [N, classes] is given (Mixup/CutMix), the soft-target cross-entropy −Σ t·log_softmax(logits), averaged over the batch
    /// (timm's <c>SoftTargetCrossEntropy</c>; the targets already carry the smoothing).
    /// </summary>
    /// <exception cref="ArgumentNullException">Neither <paramref name="labels"/> nor <paramref name="softTargets"/> is given.</exception>
    public static Tensor Loss(Tensor logits, Tensor? labels, Tensor? softTargets, double smoothing)
    {
        ArgumentNullException.ThrowIfNull(logits);
        return softTargets is not null
            ? (-softTargets * nn.functional.log_softmax(logits, 1)).sum(1).mean()
            : nn.functional.cross_entropy(logits, labels ?? throw new ArgumentNullException(nameof(labels)), label_smoothing: smoothing);
    }

    /// <summary>
    /// The part of <see cref="Loss"/> that samples [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>)
    /// of a batch of <paramref name="batchSize"/> contribute, given their <paramref name="logits"/> [count, classes]: the sum of
    /// their per-sample losses / <paramref name="batchSize"/> (the parts of a batch add up to its mean). <paramref name="labels"/>
    /// [N] or <paramref name="softTargets"/> [N, classes] are the whole batch's.
    /// </summary>
    /// <exception cref="ArgumentNullException">Neither <paramref name="labels"/> nor <paramref name="softTargets"/> is given.</exception>
    public static Tensor PartLoss(Tensor logits, Tensor? labels, Tensor? softTargets, double smoothing, long start, long count, long batchSize)
    {
        ArgumentNullException.ThrowIfNull(logits);
        using var scope = NewDisposeScope();
        var sum = softTargets is not null
            ? (-softTargets.narrow(0, start, count) * nn.functional.log_softmax(logits, 1)).sum()
            : nn.functional.cross_entropy(logits, (labels ?? throw new ArgumentNullException(nameof(labels))).narrow(0, start, count),
                reduction: Reduction.Sum, label_smoothing: smoothing);
        return Runtime.Scalars.Div(sum, batchSize).MoveToOuterDisposeScope();
    }

    private sealed class Epoch(BatchLoader loader, double smoothing) : ISplittableEpoch
    {
        private readonly IEnumerator<LoadedBatch> _batches = loader.Batches().GetEnumerator();
        private (Tensor? Labels, Tensor? Soft, long Count) _targets;

        public int Count => _batches.Current.Count;

        public IReadOnlyList<SkippedImage> Skipped => _batches.Current.Skipped;

        public TimeSpan WaitTime => loader.WaitTime;

        public bool MoveNext() => _batches.MoveNext();

        public Tensor Loss(Module<Tensor, Tensor> model, Device device)
        {
            var b = _batches.Current;
            var x = ModelInputs.Batch(b.Images, b.Count, b.Channels, b.Size, ModelInputs.FloatType(model), device);
            var logits = model.call(x);
            return b.Targets is { } soft
                ? ClassificationTask.Loss(logits, null, tensor(soft, [b.Count, soft.Length / b.Count]).to(device), smoothing)
                : ClassificationTask.Loss(logits, tensor(b.Labels).to(device), null, smoothing);
        }

        public Tensor Input(Module<Tensor, Tensor> model, Device device)
        {
            var b = _batches.Current;
            _targets = b.Targets is { } soft
                ? (null, tensor(soft, [b.Count, soft.Length / b.Count]).to(device), b.Count)
                : (tensor(b.Labels).to(device), null, b.Count);
            return ModelInputs.Batch(b.Images, b.Count, b.Channels, b.Size, ModelInputs.FloatType(model), device);
        }

        public Tensor PartLoss(Tensor output, long start, long count) =>
            ClassificationTask.PartLoss(output, _targets.Labels, _targets.Soft, smoothing, start, count, _targets.Count);

        public void Dispose()
        {
            _batches.Dispose();
            loader.Dispose();
        }
    }
}

/// <summary>Which training samples a run draws from.</summary>
public static class TrainingPool
{
    /// <summary>All <paramref name="count"/> indices, in order.</summary>
    public static long[] All(long count)
    {
        var all = new long[count];
        for (long i = 0; i < count; i++)
        {
            all[i] = i;
        }

        return all;
    }

    /// <summary>The first <paramref name="subset"/> of <paramref name="count"/> indices (all when null or larger).</summary>
    /// <exception cref="ArgumentException"><paramref name="subset"/> &lt; 1.</exception>
    public static long[] First(long count, long? subset) =>
        subset is not long n || n >= count ? All(count) : n < 1 ? throw Small(n) : All(n);

    /// <summary>A seeded random <paramref name="subset"/> of <paramref name="count"/> indices (all, in order, when null or larger).</summary>
    /// <exception cref="ArgumentException"><paramref name="subset"/> &lt; 1.</exception>
    public static long[] Random(long count, long? subset, long seed)
    {
        var all = All(count);
        if (subset is not long n || n >= count)
        {
            return all;
        }

        if (n < 1)
        {
            throw Small(n);
        }

        new SampleRandom((ulong)seed, 0x5B5E7, 0).Shuffle(all);
        return all[..(int)n];
    }

    private static ArgumentException Small(long n) => new($"TrainSubset must hold at least one image, got {n}", "TrainSubset");
}
