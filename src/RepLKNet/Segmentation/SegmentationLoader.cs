using System.Collections.Concurrent;
using RepLKNet.Data;
using static TorchSharp.torch;

namespace RepLKNet.Segmentation;

/// <summary>
/// A prepared segmentation batch. Training view: <c>Count</c> crops, images (Count, 3, H, W) and labels (Count, H, W) at
/// the crop size. Test view (batch size 1): the image resized to the test scale (1, 3, H, W) and the label at the image's
/// original size (1, LabelHeight, LabelWidth), which the metric compares against after resizing the logits back.
/// </summary>
/// <param name="Number">Position of the batch in its epoch (0-based).</param>
/// <param name="Images">Count·3·Height·Width normalized floats, planar RGB.</param>
/// <param name="Labels">Count·LabelHeight·LabelWidth class indices (255 = ignore).</param>
/// <param name="Count">Samples, after skipping unreadable ones (0 when none could be read; the arrays are then empty).</param>
/// <param name="Height">Image rows.</param>
/// <param name="Width">Image columns.</param>
/// <param name="LabelHeight">Label rows (= Height in the training view).</param>
/// <param name="LabelWidth">Label columns (= Width in the training view).</param>
/// <param name="Indices">Dataset index of each sample.</param>
/// <param name="Skipped">Samples of this batch that could not be read (corrupt files, mask errors), with the reason.</param>
public sealed record SegmentationBatch(long Number, float[] Images, long[] Labels, int Count, int Height, int Width, int LabelHeight, int LabelWidth,
    long[] Indices, IReadOnlyList<SkippedImage> Skipped)
{
    /// <summary>The images as a float32 tensor [Count, 3, Height, Width] on <paramref name="device"/> (in the caller's dispose scope).</summary>
    public Tensor ImageTensor(Device? device = null)
    {
        var t = tensor(Images, [Count, 3, Height, Width]);
        return device is null ? t : t.to(device);
    }

    /// <summary>The labels as an int64 tensor [Count, LabelHeight, LabelWidth] (255 = ignore) on <paramref name="device"/> (in the caller's dispose scope).</summary>
    public Tensor LabelTensor(Device? device = null)
    {
        var t = tensor(Labels, [Count, LabelHeight, LabelWidth]);
        return device is null ? t : t.to(device);
    }
}

/// <summary>
/// The segmentation batch loader: the classification loader's plan (<see cref="LoaderPlan"/>: order, batch size, first
/// batch, batch count, train/test view, (seed, epoch) key, workers, prefetch) and background machinery
/// (<see cref="BackgroundBatches{TBatch}"/>), with <see cref="SegmentationPipeline"/> samples. Sample k of the epoch's
/// order draws from <see cref="LoaderPlan.SampleRandom"/>(k, …) (k the global position, also under a <see cref="LoaderPlan.Shard"/>), so batches do not depend on the worker count and a run
/// resumed inside an epoch sees what it would have seen. Samples whose image or mask cannot be read (a
/// <see cref="DatasetException"/>: damaged files, mask of another size, labels out of range) are left out of their batch
/// and reported in <see cref="SegmentationBatch.Skipped"/>. A training task's <c>OpenEpoch(order, epoch, batchSize,
/// firstBatch, batchCount, seed, shard)</c> maps one to one onto <see cref="ForEpoch"/>.
/// </summary>
public sealed class SegmentationLoader : IDisposable
{
    private const ulong Stream = 0x5E6;
    private readonly BackgroundBatches<SegmentationBatch> _background;

    /// <summary>Starts preparing the batches of <paramref name="plan"/>.</summary>
    /// <exception cref="ArgumentException">A test-view plan (<see cref="LoaderPlan.Train"/> false) with a batch size other than 1 (test images differ in size; MMSeg tests one image per GPU).</exception>
    public SegmentationLoader(ISegmentationDataset data, SegmentationPipeline pipeline, LoaderPlan plan)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(plan);
        plan.Check();
        if (!plan.Train && plan.BatchSize != 1)
        {
            throw new ArgumentException($"BatchSize must be 1 for the test view (images keep their own aspect ratio), got {plan.BatchSize}", nameof(plan));
        }

        _background = new BackgroundBatches<SegmentationBatch>(plan.FirstBatch, plan.Batches, plan.Prefetch,
            (number, cancel) => Prepare(data, pipeline, plan, number, plan.Workers, cancel));
    }

    /// <summary>Batches this loader hands out.</summary>
    public long BatchCount => _background.Count;

    /// <summary>Time the consumer spent waiting for a batch.</summary>
    public TimeSpan WaitTime => _background.WaitTime;

    /// <summary>
    /// The training loader of one epoch, as <c>ITrainingTask.OpenEpoch</c> asks: batch k holds
    /// <c>order[k·batchSize .. (k+1)·batchSize)</c> (with a <paramref name="shard"/> of W processes, the order positions
    /// <see cref="DataShard.Position"/>(k, batchSize, i) = (k·W + Index)·batchSize + i, each crop drawn by its global position,
    /// and only full global batches), from <paramref name="firstBatch"/>, at most <paramref name="batchCount"/> batches.
    /// </summary>
    /// <param name="data">Training set.</param>
    /// <param name="pipeline">Training pipeline.</param>
    /// <param name="order">The epoch's order of dataset indices.</param>
    /// <param name="epoch">Epoch (keys the draws with <paramref name="seed"/>).</param>
    /// <param name="batchSize">Crops per (micro-)batch.</param>
    /// <param name="firstBatch">First batch to produce.</param>
    /// <param name="batchCount">Batches in the epoch.</param>
    /// <param name="seed">The run's seed.</param>
    /// <param name="workers">Threads preparing crops; null: <see cref="LoaderPlan.DefaultWorkers"/>.</param>
    /// <param name="shard">This process's part of each global batch; null: the whole data (<see cref="DataShard.Whole"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive or the shard does not exist.</exception>
    public static SegmentationLoader ForEpoch(ISegmentationDataset data, SegmentationPipeline pipeline, long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, int? workers = null,
        DataShard? shard = null) =>
        new(data, pipeline, new LoaderPlan
        {
            Order = order, BatchSize = batchSize, FirstBatch = firstBatch, BatchCount = batchCount, Train = true, Key = (seed, epoch),
            Workers = workers ?? LoaderPlan.DefaultWorkers, Shard = shard ?? DataShard.Whole,
        });

    /// <summary>The batches, in order; rethrows a failure of the background work.</summary>
    public IEnumerable<SegmentationBatch> Batches() => _background.Batches();

    /// <inheritdoc />
    public void Dispose() => _background.Dispose();

    /// <summary>Prepares batch <paramref name="number"/> of <paramref name="plan"/> on the calling thread (what the background runs).</summary>
    public static SegmentationBatch Prepare(ISegmentationDataset data, SegmentationPipeline pipeline, LoaderPlan plan, long number, int workers = 1, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(plan);
        var (start, n) = plan.Range(number);
        var skipped = new ConcurrentBag<SkippedImage>();
        if (!plan.Train)
        {
            return PrepareTest(data, pipeline, plan, number, start, n, skipped);
        }

        int h = pipeline.CropHeight, w = pipeline.CropWidth, imageLength = 3 * h * w, labelLength = h * w;
        var images = new float[(long)n * imageLength];
        var labels = new long[(long)n * labelLength];
        var ok = new bool[n];
        Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = workers, CancellationToken = cancel }, i =>
        {
            long index = plan.Order[start + i];
            SegmentationSample sample;
            try
            {
                sample = data.Read(index);
            }
            catch (DatasetException e)
            {
                skipped.Add(new SkippedImage(index, data.Describe(index), e.Message));
                return;
            }

            var rng = plan.SampleRandom(start + i, Stream);
            pipeline.Train(sample, ref rng, images.AsSpan(i * imageLength, imageLength), labels.AsSpan(i * labelLength, labelLength));
            ok[i] = true;
        });

        // Close the gaps left by unreadable samples, keeping the order of the rest.
        var indices = new List<long>(n);
        int kept = 0;
        for (int i = 0; i < n; i++)
        {
            if (!ok[i])
            {
                continue;
            }

            if (kept != i)
            {
                Array.Copy(images, (long)i * imageLength, images, (long)kept * imageLength, imageLength);
                Array.Copy(labels, (long)i * labelLength, labels, (long)kept * labelLength, labelLength);
            }

            indices.Add(plan.Order[start + i]);
            kept++;
        }

        if (kept < n)
        {
            Array.Resize(ref images, kept * imageLength);
            Array.Resize(ref labels, kept * labelLength);
        }

        return new SegmentationBatch(number, images, labels, kept, h, w, h, w, [.. indices], [.. skipped.OrderBy(s => s.Index)]);
    }

    private static SegmentationBatch PrepareTest(ISegmentationDataset data, SegmentationPipeline pipeline, LoaderPlan plan, long number, long start, int n, ConcurrentBag<SkippedImage> skipped)
    {
        if (n != 1)
        {
            throw new ArgumentException($"BatchSize must be 1 for the test view, got {plan.BatchSize}", nameof(plan));
        }

        long index = plan.Order[start];
        SegmentationSample sample;
        try
        {
            sample = data.Read(index);
        }
        catch (DatasetException e)
        {
            skipped.Add(new SkippedImage(index, data.Describe(index), e.Message));
            return new SegmentationBatch(number, [], [], 0, 0, 0, 0, 0, [], [.. skipped]);
        }

        var view = pipeline.Test(sample.Image);
        var label = sample.Label;
        var labels = new long[label.Plane];
        for (int i = 0; i < labels.Length; i++)
        {
            labels[i] = label.Pixels[i];
        }

        return new SegmentationBatch(number, view.Image, labels, 1, view.Height, view.Width, label.Height, label.Width, [index], []);
    }
}
