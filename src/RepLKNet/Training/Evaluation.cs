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
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        if (classes != data.ClassNames.Count)
        {
            throw new DatasetException($"the model has {classes} classes but the dataset has {data.ClassNames.Count}");
        }

        model.eval();
        using var noGrad = no_grad();
        long top1 = 0, top5 = 0;
        double lossSum = 0;
        var confusion = new long[classes, classes];
        int k = Math.Min(5, classes);
        var plan = new LoaderPlan
        {
            Order = [.. Enumerable.Range(0, checked((int)data.Count)).Select(i => (long)i)], BatchSize = batchSize,
            Workers = workers ?? LoaderPlan.DefaultWorkers,
        };
        var skipped = new List<SkippedImage>();
        long count = 0;
        using (var loader = new BatchLoader(data, pipeline, new AugmentOptions(), plan))
        {
            foreach (var batch in loader.Batches())
            {
                cancel.ThrowIfCancellationRequested();
                skipped.AddRange(batch.Skipped);
                if (batch.Count == 0)
                {
                    continue;
                }

                using var scope = NewDisposeScope();
                var x = tensor(batch.Images, [batch.Count, batch.Channels, batch.Size, batch.Size]).to(device);
                var y = tensor(batch.Labels).to(device);
                var logits = model.call(x);
                lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
                var predicted = logits.argmax(1).cpu();
                var topk = logits.topk(k, 1).indexes;
                top5 += topk.eq(y.unsqueeze(1)).any(1).sum().item<long>();
                top1 += predicted.eq(y.cpu()).sum().item<long>();
                var p = predicted.data<long>().ToArray();
                for (int i = 0; i < p.Length; i++)
                {
                    confusion[batch.Labels[i], p[i]]++;
                }

                count += batch.Count;
            }
        }

        if (count == 0)
        {
            throw new DatasetException($"none of the {data.Count} evaluation images could be read (first: {skipped.FirstOrDefault()?.Reason})");
        }

        var perClass = new double[classes];
        for (int c = 0; c < classes; c++)
        {
            long total = 0;
            for (int j = 0; j < classes; j++)
            {
                total += confusion[c, j];
            }

            perClass[c] = total == 0 ? double.NaN : (double)confusion[c, c] / total;
        }

        return new EvaluationResult(count, (double)top1 / count, (double)top5 / count, lossSum / count, perClass, confusion, skipped);
    }
}
