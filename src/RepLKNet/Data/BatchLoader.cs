using System.Collections.Concurrent;
using RepLKNet.Data.Transforms;

namespace RepLKNet.Data;

/// <summary>An image the loader could not read; the batch went on without it.</summary>
/// <param name="Index">Dataset index.</param>
/// <param name="Source">File path (or in-memory name).</param>
/// <param name="Reason">Why it failed.</param>
public sealed record SkippedImage(long Index, string Source, string Reason);

/// <summary>A prepared batch: normalized float images (N, C, S, S), labels, soft targets when mixing.</summary>
/// <param name="Number">Position of the batch in its epoch (0-based).</param>
/// <param name="Images">N·C·S·S floats.</param>
/// <param name="Labels">N labels (of the unmixed images).</param>
/// <param name="Targets">N·classes soft targets when the batch was mixed (or smoothed for mixing); otherwise null.</param>
/// <param name="Count">N, after skipping unreadable images.</param>
/// <param name="Channels">C.</param>
/// <param name="Size">S.</param>
/// <param name="Skipped">Images of this batch that could not be read.</param>
public sealed record LoadedBatch(long Number, float[] Images, long[] Labels, float[]? Targets, int Count, int Channels, int Size, IReadOnlyList<SkippedImage> Skipped);

/// <summary>What the loader reads and how.</summary>
public sealed record LoaderPlan
{
    /// <summary>Dataset indices in reading order.</summary>
    public required long[] Order { get; init; }

    /// <summary>Images per batch.</summary>
    public required int BatchSize { get; init; }

    /// <summary>First batch to produce (resuming inside an epoch).</summary>
    public long FirstBatch { get; init; }

    /// <summary>Batches to produce; null: through the end of <see cref="Order"/> (a last partial batch included).</summary>
    public long? BatchCount { get; init; }

    /// <summary>Training view (augmented, mixed) or evaluation view.</summary>
    public bool Train { get; init; }

    /// <summary>Seed and epoch that key every random draw.</summary>
    public (long Seed, long Epoch) Key { get; init; }

    /// <summary>Background threads preparing samples.</summary>
    public int Workers { get; init; } = DefaultWorkers;

    /// <summary>Default worker count: the cores, at most 4.</summary>
    public static int DefaultWorkers => Math.Max(1, Math.Min(4, Environment.ProcessorCount));

    /// <summary>Ready batches kept ahead of the consumer.</summary>
    public int Prefetch { get; init; } = 4;

    /// <summary>
    /// This process's part of each global batch in a data-parallel job (<see cref="DataShard.Whole"/>, the default: one
    /// process reads everything). With a shard of <see cref="DataShard.Count"/> = W, batch k holds the order positions
    /// <see cref="DataShard.Position"/>(k, <see cref="BatchSize"/>, i) = (k·W + Index)·B + i, every per-sample draw is keyed by
    /// that global position (so the union over the shards of batch k is, pixel for pixel, what one process with batch B·W
    /// reads at step k), and Mixup/CutMix of batch k (one λ per micro-batch, as timm under DDP) by (k·W + Index).
    /// </summary>
    public DataShard Shard { get; init; } = DataShard.Whole;

    /// <summary>
    /// Batches a loader hands out, from <see cref="FirstBatch"/> on, at most <see cref="BatchCount"/> in all: for the whole
    /// data, every batch of <see cref="Order"/> (a last partial one included); for a shard, only the full global batches
    /// (⌊|Order| / (B·W)⌋: every process gets the same number of full micro-batches, as <c>DistributedSampler</c> with
    /// <c>drop_last</c>).
    /// </summary>
    public long Batches
    {
        get
        {
            long available = Shard.IsWhole
                ? (Order.LongLength + BatchSize - 1) / BatchSize
                : Order.LongLength / ((long)BatchSize * Shard.Count);
            return Math.Max(0, Math.Min(BatchCount ?? available, available) - FirstBatch);
        }
    }

    /// <summary>
    /// The order positions of batch <paramref name="number"/>: (first position, samples); the batch holds positions
    /// Start … Start + Count − 1 (Start = <see cref="DataShard.Position"/>(number, B, 0); for the whole data number·B).
    /// </summary>
    public (long Start, int Count) Range(long number)
    {
        long start = Shard.Position(number, BatchSize, 0);
        return (start, (int)Math.Max(0, Math.Min(BatchSize, Order.LongLength - start)));
    }

    /// <summary>
    /// The key of batch <paramref name="number"/>'s batch-level draws (Mixup/CutMix): number·W + Index, the global
    /// micro-batch number (number itself for the whole data).
    /// </summary>
    public long BatchKey(long number) => number * Math.Max(1, Shard.Count) + Shard.Index;

    /// <summary>
    /// The generator of the sample at position <paramref name="position"/> of the epoch's order, keyed by (seed, epoch,
    /// position, <paramref name="stream"/>): the same sample position draws the same numbers whatever the workers or resumption.
    /// </summary>
    public SampleRandom SampleRandom(long position, ulong stream) => new((ulong)Key.Seed, (ulong)Key.Epoch, (ulong)position, stream);

    /// <summary>Checks the sizes and the shard.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="BatchSize"/>, <see cref="Workers"/> or <see cref="Prefetch"/> is not positive, or <see cref="Shard"/> does not exist.</exception>
    public void Check()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(BatchSize, nameof(BatchSize));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Workers, nameof(Workers));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Prefetch, nameof(Prefetch));
        ArgumentNullException.ThrowIfNull(Order, nameof(Order));
        Shard.Check();
    }
}

/// <summary>
/// Prepares batches on background threads and hands them out in order through a bounded queue, so the model does not wait
/// for decoding and augmentation. Every random draw is keyed by (seed, epoch, position), so the batches are the same
/// whatever the number of workers, and a run resumed inside an epoch sees the batches it would have seen.
/// Unreadable images are skipped and reported with their batch.
/// </summary>
public sealed class BatchLoader : IDisposable
{
    private readonly BackgroundBatches<LoadedBatch> _background;

    /// <summary>Starts preparing batches.</summary>
    public BatchLoader(IImageDataset data, SamplePipeline pipeline, AugmentOptions options, LoaderPlan plan)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(plan);
        plan.Check();
        if (pipeline.Channels != data.Channels)
        {
            throw new ArgumentException($"the pipeline makes {pipeline.Channels}-channel samples but the dataset has {data.Channels} channels");
        }

        _background = new BackgroundBatches<LoadedBatch>(plan.FirstBatch, plan.Batches, plan.Prefetch,
            (number, cancel) => Prepare(data, pipeline, options, plan, number, plan.Workers, cancel));
    }

    /// <summary>Batches this loader hands out.</summary>
    public long BatchCount => _background.Count;

    /// <summary>Time the consumer spent waiting for a batch (ideally close to zero).</summary>
    public TimeSpan WaitTime => _background.WaitTime;

    /// <summary>The batches, in order; rethrows a failure of the background work.</summary>
    public IEnumerable<LoadedBatch> Batches() => _background.Batches();

    /// <inheritdoc />
    public void Dispose() => _background.Dispose();

    /// <summary>
    /// Prepares batch <paramref name="number"/> of the plan on the calling thread (what the workers run): the samples at
    /// the order positions of <see cref="LoaderPlan.Range"/>, each training draw keyed by its global position.
    /// </summary>
    public static LoadedBatch Prepare(IImageDataset data, SamplePipeline pipeline, AugmentOptions options, LoaderPlan plan, long number, int workers = 1, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(plan);
        var (start, n) = plan.Range(number);
        int length = pipeline.SampleLength;
        var images = new float[(long)n * length];
        var labels = new long[n];
        var ok = new bool[n];
        var skipped = new ConcurrentBag<SkippedImage>();
        Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = workers, CancellationToken = cancel }, i =>
        {
            long index = plan.Order[start + i];
            ImageU8 image;
            try
            {
                image = data.Read(index);
            }
            catch (DatasetException e)
            {
                skipped.Add(new SkippedImage(index, data.Describe(index), e.Message));
                return;
            }

            var destination = images.AsSpan(i * length, length);
            if (plan.Train)
            {
                var rng = plan.SampleRandom(start + i, 0xA06);
                pipeline.Train(image, ref rng, destination);
            }
            else
            {
                pipeline.Eval(image, destination);
            }

            labels[i] = data.Label(index);
            ok[i] = true;
        });

        int count = ok.Count(b => b);
        if (count < n)
        {
            // Close the gaps left by unreadable images, keeping the order of the rest.
            int w = 0;
            for (int i = 0; i < n; i++)
            {
                if (!ok[i])
                {
                    continue;
                }

                if (w != i)
                {
                    Array.Copy(images, (long)i * length, images, (long)w * length, length);
                    labels[w] = labels[i];
                }

                w++;
            }

            Array.Resize(ref images, count * length);
            Array.Resize(ref labels, count);
        }

        float[]? targets = null;
        if (plan.Train && options.Mixes && count > 0)
        {
            var rng = new SampleRandom((ulong)plan.Key.Seed, (ulong)plan.Key.Epoch, (ulong)plan.BatchKey(number), 0x3117);
            targets = Mixing.Apply(images, labels, count, pipeline.Channels, pipeline.Size, data.ClassNames.Count, options, ref rng);
        }

        return new LoadedBatch(number, images, labels, targets, count, pipeline.Channels, pipeline.Size,
            [.. skipped.OrderBy(s => s.Index)]);
    }
}

/// <summary>timm's Mixup/CutMix in "batch" mode (one λ per batch, partner = the batch reversed) with smoothed soft targets.</summary>
public static class Mixing
{
    /// <summary>Mixes <paramref name="images"/> in place and returns the soft targets (count × classes).</summary>
    public static float[] Apply(float[] images, long[] labels, int count, int channels, int size, int classes, AugmentOptions options, ref SampleRandom rng)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(options);
        double lambda = 1;
        bool cutmix = false;
        if (rng.NextDouble() < options.MixProbability)
        {
            if (options.Mixup > 0 && options.CutMix > 0)
            {
                cutmix = rng.NextDouble() < options.MixSwitchProbability;
                lambda = cutmix ? rng.Beta(options.CutMix, options.CutMix) : rng.Beta(options.Mixup, options.Mixup);
            }
            else if (options.Mixup > 0)
            {
                lambda = rng.Beta(options.Mixup, options.Mixup);
            }
            else
            {
                cutmix = true;
                lambda = rng.Beta(options.CutMix, options.CutMix);
            }
        }

        int length = channels * size * size;
        if (lambda < 1)
        {
            var original = (float[])images.Clone();
            if (cutmix)
            {
                double ratio = Math.Sqrt(1 - lambda);
                int cutH = (int)(size * ratio), cutW = (int)(size * ratio);
                int cy = rng.NextInt(size), cx = rng.NextInt(size);
                int yl = Math.Clamp(cy - cutH / 2, 0, size), yh = Math.Clamp(cy + cutH / 2, 0, size);
                int xl = Math.Clamp(cx - cutW / 2, 0, size), xh = Math.Clamp(cx + cutW / 2, 0, size);
                for (int i = 0; i < count; i++)
                {
                    int partner = count - 1 - i;
                    for (int c = 0; c < channels; c++)
                    {
                        for (int y = yl; y < yh; y++)
                        {
                            int row = c * size * size + y * size;
                            Array.Copy(original, (long)partner * length + row + xl, images, (long)i * length + row + xl, xh - xl);
                        }
                    }
                }

                lambda = 1 - (double)(yh - yl) * (xh - xl) / (size * size);
            }
            else
            {
                float a = (float)lambda, b = (float)(1 - lambda);
                for (int i = 0; i < count; i++)
                {
                    int partner = count - 1 - i;
                    for (int k = 0; k < length; k++)
                    {
                        images[(long)i * length + k] = original[(long)i * length + k] * a + original[(long)partner * length + k] * b;
                    }
                }
            }
        }

        double off = options.LabelSmoothing / classes, on = 1 - options.LabelSmoothing + off;
        var targets = new float[count * classes];
        for (int i = 0; i < count; i++)
        {
            for (int k = 0; k < classes; k++)
            {
                double mine = labels[i] == k ? on : off, theirs = labels[count - 1 - i] == k ? on : off;
                targets[i * classes + k] = (float)(lambda * mine + (1 - lambda) * theirs);
            }
        }

        return targets;
    }
}
