using RepLKNet.Data;
using RepLKNet.Models;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>Classification metrics on a labelled set.</summary>
/// <param name="Count">Images evaluated.</param>
/// <param name="Top1">Top-1 accuracy.</param>
/// <param name="Top5">Top-5 accuracy (top-k with k = min(5, classes)).</param>
/// <param name="Loss">Mean cross-entropy.</param>
/// <param name="PerClass">Accuracy of each class (NaN for a class without images).</param>
/// <param name="Confusion">Confusion matrix [true class, predicted class] of counts.</param>
public sealed record EvaluationResult(long Count, double Top1, double Top5, double Loss, double[] PerClass, long[,] Confusion);

/// <summary>Evaluates a classifier on an <see cref="ImageTensorDataset"/>.</summary>
public static class Evaluation
{
    /// <summary>Runs <paramref name="model"/> (eval mode, no gradients) over <paramref name="data"/> in batches.</summary>
    public static EvaluationResult Run(RepLKNetModel model, ImageTensorDataset data, (double Mean, double Std) normalization, int batchSize, Device device)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        int classes = model.Config.NumClasses ?? throw new InvalidOperationException("a backbone has no classifier to evaluate");
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
        for (long start = 0; start < data.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            long n = Math.Min(batchSize, data.Count - start);
            var (x, y) = data.Batch(arange(start, start + n, dtype: int64), normalization, device);
            var logits = model.call(x);
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
            var predicted = logits.argmax(1).cpu();
            var topk = logits.topk(k, 1).indexes;
            top5 += topk.eq(y.unsqueeze(1)).any(1).sum().item<long>();
            var truth = y.cpu();
            top1 += predicted.eq(truth).sum().item<long>();
            var p = predicted.data<long>().ToArray();
            var t = truth.data<long>().ToArray();
            for (int i = 0; i < p.Length; i++)
            {
                confusion[t[i], p[i]]++;
            }
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

        return new EvaluationResult(data.Count, (double)top1 / data.Count, (double)top5 / data.Count, lossSum / data.Count, perClass, confusion);
    }
}
