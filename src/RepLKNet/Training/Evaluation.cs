using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>Classification metrics on a labelled set.</summary>
/// <param name="Count">Images evaluated.</param>
/// <param name="Top1">Top-1 accuracy.</param>
/// <param name="Top5">Top-5 accuracy (top-k with k = min(5, classes)).</param>
/// <param name="Loss">Mean cross-entropy.</param>
/// <param name="PerClass">Accuracy of each class (NaN for a class without images).</param>
/// <param name="Confusion">Confusion matrix [true class, predicted class] of counts.</param>
/// <param name="Skipped">Images that could not be read (not counted).</param>
public sealed record EvaluationResult(long Count, double Top1, double Top5, double Loss, double[] PerClass, long[,] Confusion, IReadOnlyList<SkippedImage> Skipped);

/// <summary>Evaluates a classifier on a labelled dataset through the eval pipeline (batches prepared in the background).</summary>
public static class Evaluation
{
    /// <summary>Runs <paramref name="model"/> (eval mode, no gradients) over <paramref name="data"/> in batches.</summary>
    public static EvaluationResult Run(RepLKNetModel model, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        int classes = model.Config.NumClasses ?? throw new InvalidOperationException("a backbone has no classifier to evaluate");
        return Run(model, classes, data, pipeline, batchSize, device, workers);
    }

    /// <summary>Runs any classifier <paramref name="model"/> with <paramref name="classes"/> outputs (eval mode, no gradients) over <paramref name="data"/>.</summary>
    public static EvaluationResult Run(Module<Tensor, Tensor> model, int classes, IImageDataset data, SamplePipeline pipeline, int batchSize, Device device, int? workers = null) =>
        Run(model, classes, data, pipeline, batchSize, device, workers, CancellationToken.None);

    /// <summary>As above; stops between batches when <paramref name="cancel"/> is cancelled (throws <see cref="OperationCanceledException"/>).</summary>
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
