using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>Classification metrics on a labelled set.</summary>
/// <param name="Count">Images evaluated (readable images only; always ≥ 1).</param>
/// <param name="Top1">Top-1 accuracy: fraction in [0, 1] of images whose arg-max logit is the label.</param>
/// <param name="Top5">Top-5 accuracy, fraction in [0, 1] (top-k with k = min(5, classes), so 1 for 5 classes or fewer).</param>
/// <param name="Loss">Mean cross-entropy of the logits against the labels, in nats per image (no label smoothing).</param>
/// <param name="PerClass">Accuracy of each class, indexed by label, in [0, 1] (NaN for a class without images).</param>
/// <param name="Confusion">Confusion matrix [true class, predicted class] of image counts, classes × classes.</param>
/// <param name="Skipped">Images that could not be read (not counted in any metric).</param>
public sealed record EvaluationResult(long Count, double Top1, double Top5, double Loss, double[] PerClass, long[,] Confusion, IReadOnlyList<SkippedImage> Skipped);

/// <summary>Evaluates a classifier on a labelled dataset through the eval pipeline (batches prepared in the background).</summary>
public static class Evaluation
{
    /// <summary>
    /// Runs the classifier <paramref name="model"/> (switched to eval mode, no gradients) over every image of
    /// <paramref name="data"/> in index order; the class count is <see cref="RepLKNetConfig.NumClasses"/>.
    /// </summary>
    /// <param name="model">A RepLKNet with a classifier head; its logits are [N, classes].</param>
    /// <param name="data">The labelled images; its class count must equal the model's.</param>
    /// <param name="pipeline">The eval view (no augmentation) turning images into [N, C, S, S] normalized float batches; its channel count must be the dataset's.</param>
    /// <param name="batchSize">Images per batch (≥ 1); the last batch may be smaller.</param>
    /// <param name="device">Where the batches go; must be the model's device.</param>
    /// <param name="workers">Background threads preparing batches (≥ 1); null: <see cref="LoaderPlan.DefaultWorkers"/>.</param>
    /// <returns>The metrics over the readable images.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/>, <paramref name="data"/> or <paramref name="pipeline"/> is null.</exception>
    /// <exception cref="InvalidOperationException"><paramref name="model"/> is a backbone (<see cref="RepLKNetConfig.NumClasses"/> is null).</exception>
    /// <exception cref="DatasetException">The model's class count differs from the dataset's, or no image of <paramref name="data"/> could be read (an empty dataset included).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> or <paramref name="workers"/> is 0 or negative.</exception>
    /// <exception cref="ArgumentException">The pipeline's channel count differs from the dataset's.</exception>
    public static EvaluationResult Run(RepLKNetModel model, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers = null)
    {
        return Run(model, OutputClasses(model, 0), data, pipeline, batchSize, device, workers);
    }

    /// <summary>
    /// The number of classes <paramref name="model"/> predicts: its classifier's size when it is an <see cref="IImageModel"/>,
    /// else <paramref name="otherwise"/> (a plain module does not say).
    /// </summary>
    /// <exception cref="InvalidOperationException">The model is a backbone (no classifier).</exception>
    public static int OutputClasses(Module model, int otherwise)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model is IImageModel image
            ? image.NumClasses ?? throw new InvalidOperationException("a backbone has no classifier to evaluate")
            : otherwise;
    }

    /// <summary>
    /// Runs any classifier <paramref name="model"/> with <paramref name="classes"/> outputs (switched to eval mode, no
    /// gradients) over every image of <paramref name="data"/> in index order.
    /// </summary>
    /// <param name="model">Maps a batch [N, C, S, S] (S = the pipeline's size, in pixels) to logits [N, <paramref name="classes"/>].</param>
    /// <param name="classes">The model's output count; must equal the dataset's class count.</param>
    /// <param name="data">The labelled images.</param>
    /// <param name="pipeline">The eval view (no augmentation) turning images into normalized float batches; its channel count must be the dataset's.</param>
    /// <param name="batchSize">Images per batch (≥ 1); the last batch may be smaller.</param>
    /// <param name="device">Where the batches go; must be the model's device.</param>
    /// <param name="workers">Background threads preparing batches (≥ 1); null: <see cref="LoaderPlan.DefaultWorkers"/>.</param>
    /// <returns>The metrics over the readable images.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/>, <paramref name="data"/> or <paramref name="pipeline"/> is null.</exception>
    /// <exception cref="DatasetException"><paramref name="classes"/> differs from the dataset's class count, or no image of <paramref name="data"/> could be read (an empty dataset included).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> or <paramref name="workers"/> is 0 or negative.</exception>
    /// <exception cref="ArgumentException">The pipeline's channel count differs from the dataset's.</exception>
    public static EvaluationResult Run(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers = null) =>
        Run(model, classes, data, pipeline, batchSize, device, workers, CancellationToken.None);

    /// <summary>
    /// As <see cref="Run(Module{Tensor, Tensor}, int, IImageDataset, SamplePipeline, int, Device, int?)"/>; stops between
    /// batches when <paramref name="cancel"/> is cancelled.
    /// </summary>
    /// <param name="model">Maps a batch [N, C, S, S] (S = the pipeline's size, in pixels) to logits [N, <paramref name="classes"/>].</param>
    /// <param name="classes">The model's output count; must equal the dataset's class count.</param>
    /// <param name="data">The labelled images.</param>
    /// <param name="pipeline">The eval view turning images into normalized float batches; its channel count must be the dataset's.</param>
    /// <param name="batchSize">Images per batch (≥ 1); the last batch may be smaller.</param>
    /// <param name="device">Where the batches go; must be the model's device.</param>
    /// <param name="workers">Background threads preparing batches (≥ 1); null: <see cref="LoaderPlan.DefaultWorkers"/>.</param>
    /// <param name="cancel">Checked before each batch.</param>
    /// <returns>The metrics over the readable images.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/>, <paramref name="data"/> or <paramref name="pipeline"/> is null.</exception>
    /// <exception cref="DatasetException"><paramref name="classes"/> differs from the dataset's class count, or no image of <paramref name="data"/> could be read (an empty dataset included).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> or <paramref name="workers"/> is 0 or negative.</exception>
    /// <exception cref="ArgumentException">The pipeline's channel count differs from the dataset's.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled.</exception>
    public static EvaluationResult Run(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers,
        CancellationToken cancel)
    {
        Validate(model, classes, data, pipeline);
        return Finish(Accumulate(model, classes, data, pipeline, batchSize, device, workers, 0, data.Count, cancel), data.Count);
    }

    /// <summary>
    /// As <see cref="Run(Module{Tensor, Tensor}, int, IImageDataset, SamplePipeline, int, Device, int?, CancellationToken)"/>
    /// in a data-parallel job: each process of <paramref name="group"/> runs its block of whole batches
    /// (<see cref="ShardedEvaluation.Block"/>), and the counts (top-1 and top-5 hits, images, the loss sum and the confusion
    /// matrix) are summed over the processes, so every process returns the whole set's metrics: the same counts, accuracies
    /// and skipped images as one process (the batches are the same; only the loss sum is added in another order, a
    /// difference of the order of 1e-16). A one-process group runs the one-process evaluation.
    /// </summary>
    /// <param name="model">Maps a batch [N, C, S, S] (S = the pipeline's size, in pixels) to logits [N, <paramref name="classes"/>].</param>
    /// <param name="classes">The model's output count; must equal the dataset's class count.</param>
    /// <param name="data">The labelled images (the same on every process).</param>
    /// <param name="pipeline">The eval view turning images into normalized float batches; its channel count must be the dataset's.</param>
    /// <param name="batchSize">Images per batch (≥ 1); the last batch may be smaller.</param>
    /// <param name="device">Where the batches go; must be the model's device.</param>
    /// <param name="workers">Background threads preparing batches (≥ 1); null: <see cref="LoaderPlan.DefaultWorkers"/>.</param>
    /// <param name="group">The job's processes (every one calls this with the same arguments).</param>
    /// <param name="cancel">Checked before each batch; see <see cref="ShardedEvaluation"/> for how a cancellation reaches the other processes.</param>
    /// <returns>The metrics over the whole set's readable images.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="DatasetException"><paramref name="classes"/> differs from the dataset's class count, or no image of <paramref name="data"/> could be read.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> or <paramref name="workers"/> is 0 or negative.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled (on this or another process).</exception>
    /// <exception cref="Distributed.CollectiveException">Another process's part failed, or a collective failed.</exception>
    public static EvaluationResult Run(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers,
        Distributed.ProcessGroup group, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(group);
        if (!group.IsDistributed)
        {
            return Run(model, classes, data, pipeline, batchSize, device, workers, cancel);
        }

        Validate(model, classes, data, pipeline);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var (first, count) = ShardedEvaluation.Block(data.Count, batchSize, ShardedEvaluation.ShardOf(group));
        var (sums, skipped) = ShardedEvaluation.Reduce(group, Tally.Length(classes), () =>
        {
            var part = Accumulate(model, classes, data, pipeline, batchSize, device, workers, first, count, cancel);
            return (part.ToCounts(), part.Skipped);
        });
        return Finish(Tally.FromCounts(classes, sums, skipped), data.Count);
    }

    private static void Validate(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        if (classes != data.ClassNames.Count)
        {
            throw new DatasetException($"the model has {classes} classes but the dataset has {data.ClassNames.Count}");
        }
    }

    // Images [first, first + count) of the set in index order.
    private static Tally Accumulate(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers,
        long first, long count, CancellationToken cancel)
    {
        model.eval();
        using var noGrad = no_grad();
        var inputType = ModelInputs.FloatType(model);
        var tally = new Tally(classes);
        int k = Math.Min(5, classes);
        var plan = new LoaderPlan
        {
            Order = [.. Enumerable.Range(0, checked((int)count)).Select(i => first + i)], BatchSize = batchSize,
            Workers = workers ?? LoaderPlan.DefaultWorkers,
        };
        using (var loader = new BatchLoader(data, pipeline, new AugmentOptions(), plan))
        {
            foreach (var batch in loader.Batches())
            {
                cancel.ThrowIfCancellationRequested();
                tally.Skipped.AddRange(batch.Skipped);
                if (batch.Count == 0)
                {
                    continue;
                }

                using var scope = NewDisposeScope();
                var x = ModelInputs.Batch(batch.Images, batch.Count, batch.Channels, batch.Size, inputType, device);
                var y = tensor(batch.Labels).to(device);
                var logits = model.call(x);
                tally.LossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
                var predicted = logits.argmax(1).cpu();
                var topk = logits.topk(k, 1).indexes;
                tally.Top5 += topk.eq(y.unsqueeze(1)).any(1).sum().item<long>();
                tally.Top1 += predicted.eq(y.cpu()).sum().item<long>();
                var p = predicted.data<long>().ToArray();
                for (int i = 0; i < p.Length; i++)
                {
                    tally.Confusion[batch.Labels[i], p[i]]++;
                }

                tally.Count += batch.Count;
            }
        }

        return tally;
    }

    private static EvaluationResult Finish(Tally tally, long setCount)
    {
        if (tally.Count == 0)
        {
            throw new DatasetException($"none of the {setCount} evaluation images could be read (first: {tally.Skipped.FirstOrDefault()?.Reason})");
        }

        int classes = tally.Classes;
        var perClass = new double[classes];
        for (int c = 0; c < classes; c++)
        {
            long total = 0;
            for (int j = 0; j < classes; j++)
            {
                total += tally.Confusion[c, j];
            }

            perClass[c] = total == 0 ? double.NaN : (double)tally.Confusion[c, c] / total;
        }

        return new EvaluationResult(tally.Count, (double)tally.Top1 / tally.Count, (double)tally.Top5 / tally.Count, tally.LossSum / tally.Count, perClass,
            tally.Confusion, tally.Skipped);
    }

    // The counts behind the metrics; as float64 values: [top1, top5, count, loss sum, confusion row by row].
    private sealed class Tally(int classes)
    {
        public int Classes => classes;

        public long Top1 { get; set; }

        public long Top5 { get; set; }

        public long Count { get; set; }

        public double LossSum { get; set; }

        public long[,] Confusion { get; } = new long[classes, classes];

        public List<SkippedImage> Skipped { get; } = [];

        public static int Length(int classes) => 4 + classes * classes;

        public static Tally FromCounts(int classes, double[] counts, IReadOnlyList<SkippedImage> skipped)
        {
            var tally = new Tally(classes) { Top1 = (long)counts[0], Top5 = (long)counts[1], Count = (long)counts[2], LossSum = counts[3] };
            for (int i = 0; i < classes * classes; i++)
            {
                tally.Confusion[i / classes, i % classes] = (long)counts[4 + i];
            }

            tally.Skipped.AddRange(skipped);
            return tally;
        }

        public double[] ToCounts()
        {
            var counts = new double[Length(classes)];
            (counts[0], counts[1], counts[2], counts[3]) = (Top1, Top5, Count, LossSum);
            for (int i = 0; i < classes * classes; i++)
            {
                counts[4 + i] = Confusion[i / classes, i % classes];
            }

            return counts;
        }
    }
}
