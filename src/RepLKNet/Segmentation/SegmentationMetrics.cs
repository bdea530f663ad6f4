using System.Globalization;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Segmentation;

/// <summary>The scores of a segmenter on a set, with MMSegmentation's definitions (<see cref="SegmentationMetrics"/>).</summary>
/// <param name="AllAccuracy">aAcc: Σ intersection / Σ label area over all classes, in [0, 1] (NaN when no pixel is labelled).</param>
/// <param name="MeanIoU">mIoU: the mean of <paramref name="IoU"/> over the classes whose IoU is not NaN (NaN when all are).</param>
/// <param name="MeanAccuracy">mAcc: the mean of <paramref name="Accuracy"/> over the classes whose accuracy is not NaN.</param>
/// <param name="IoU">Per class: intersection / union, NaN where the union is 0 (the class is neither predicted nor labelled).</param>
/// <param name="Accuracy">Per class: intersection / label area, NaN where the class is never labelled.</param>
/// <param name="Images">Images the scores cover.</param>
public sealed record SegmentationScores(double AllAccuracy, double MeanIoU, double MeanAccuracy, IReadOnlyList<double> IoU, IReadOnlyList<double> Accuracy,
    long Images)
{
    /// <summary>
    /// The figures a training run's metrics files carry: <c>aAcc</c>, <c>mIoU</c>, <c>mAcc</c>, then <c>IoU.&lt;class&gt;</c>
    /// per class (names from <paramref name="classNames"/>, else the class index).
    /// </summary>
    /// <param name="classNames">Class names in label order, or null.</param>
    public IReadOnlyDictionary<string, double> Details(IReadOnlyList<string>? classNames = null)
    {
        var details = new Dictionary<string, double> { ["aAcc"] = AllAccuracy, ["mIoU"] = MeanIoU, ["mAcc"] = MeanAccuracy };
        for (int c = 0; c < IoU.Count; c++)
        {
            string name = classNames is not null && c < classNames.Count ? classNames[c] : c.ToString(CultureInfo.InvariantCulture);
            details.TryAdd($"IoU.{name}", IoU[c]);
        }

        return details;
    }
}

/// <summary>
/// MMSegmentation 0.x's <c>eval_metrics(metrics=['mIoU'])</c> (<c>mmseg/core/evaluation/metrics.py</c>:
/// <c>intersect_and_union</c>, <c>total_intersect_and_union</c>, <c>total_area_to_metrics</c>) accumulated image by image:
/// per class, summed over the whole set, the intersection (pixels predicted as the class and labelled as it), the
/// prediction area, the label area and the union = prediction + label − intersection. Pixels labelled
/// <see cref="IgnoreIndex"/> are left out entirely (their prediction too); values outside 0 … classes − 1 fall in no
/// class, as <c>torch.histc(min=0, max=classes − 1)</c> drops them. Counts are exact 64-bit integers (MMSeg sums float
/// histograms in float64: the same numbers while a count stays below 2⁵³). IoU = intersection / union and
/// Acc = intersection / label area (NaN for a 0 denominator), mIoU and mAcc their NaN-skipping means (numpy's
/// <c>nanmean</c>), aAcc = Σ intersection / Σ label area. The scores are not rounded (MMSeg's <c>evaluate</c> reports
/// them rounded to 0.01 %).
/// </summary>
public sealed class SegmentationMetrics
{
    private readonly long[] _intersect;
    private readonly long[] _prediction;
    private readonly long[] _label;

    /// <summary>Starts an empty accumulation.</summary>
    /// <param name="numClasses">Classes (≥ 1).</param>
    /// <param name="ignoreIndex">The label value left out (MMSeg's <c>ignore_index</c>, 255).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> &lt; 1.</exception>
    public SegmentationMetrics(int numClasses, int ignoreIndex = SegmentationDataset.Ignore)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numClasses);
        NumClasses = numClasses;
        IgnoreIndex = ignoreIndex;
        _intersect = new long[numClasses];
        _prediction = new long[numClasses];
        _label = new long[numClasses];
    }

    /// <summary>Classes.</summary>
    public int NumClasses { get; }

    /// <summary>The label value left out.</summary>
    public int IgnoreIndex { get; }

    /// <summary>Images accumulated.</summary>
    public long Images { get; private set; }

    /// <summary>Per class: pixels predicted as the class and labelled as it.</summary>
    public IReadOnlyList<long> AreaIntersect => _intersect;

    /// <summary>Per class: pixels predicted as the class (where the label is not ignored).</summary>
    public IReadOnlyList<long> AreaPrediction => _prediction;

    /// <summary>Per class: pixels labelled as the class.</summary>
    public IReadOnlyList<long> AreaLabel => _label;

    /// <summary>Per class: prediction area + label area − intersection.</summary>
    public IReadOnlyList<long> AreaUnion => [.. Enumerable.Range(0, NumClasses).Select(c => _prediction[c] + _label[c] - _intersect[c])];

    /// <summary>Adds one image (or a batch of images): predicted classes and labels of the same shape.</summary>
    /// <param name="prediction">Predicted class per pixel, [H, W] or [N, H, W], any integer dtype, any device.</param>
    /// <param name="label">Label per pixel, the same shape, any integer dtype (255 = ignore).</param>
    /// <exception cref="ArgumentException">The shapes differ (ParamName <c>label</c>) or a tensor is not of an integer dtype.</exception>
    public void Update(Tensor prediction, Tensor label)
    {
        ArgumentNullException.ThrowIfNull(prediction);
        ArgumentNullException.ThrowIfNull(label);
        if (!TensorSizes.Of(prediction).SequenceEqual(TensorSizes.Of(label)))
        {
            throw new ArgumentException($"label has shape {TensorSizes.Text(label)} but prediction {TensorSizes.Text(prediction)}", nameof(label));
        }

        if (prediction.is_floating_point() || label.is_floating_point())
        {
            throw new ArgumentException("prediction and label must hold integer class indices", prediction.is_floating_point() ? nameof(prediction) : nameof(label));
        }

        using var scope = NewDisposeScope();
        var p = prediction.detach().cpu().to(ScalarType.Int64).contiguous().data<long>().ToArray();
        var l = label.detach().cpu().to(ScalarType.Int64).contiguous().data<long>().ToArray();
        Add(p, l);
        Images += prediction.dim() >= 3 ? prediction.size(0) : 1;
    }

    /// <summary>Adds one image given as arrays: predicted classes and labels, pixel for pixel.</summary>
    /// <param name="prediction">Predicted class per pixel.</param>
    /// <param name="label">Label per pixel (255 = ignore).</param>
    /// <exception cref="ArgumentException">The lengths differ (ParamName <c>label</c>).</exception>
    public void Update(ReadOnlySpan<long> prediction, ReadOnlySpan<long> label)
    {
        if (prediction.Length != label.Length)
        {
            throw new ArgumentException($"label has {label.Length} pixels but prediction {prediction.Length}", nameof(label));
        }

        Add(prediction, label);
        Images++;
    }

    /// <summary>Adds the counts of <paramref name="other"/> (e.g. another worker's share of the set).</summary>
    /// <exception cref="ArgumentException">It has another number of classes or ignore index.</exception>
    public void Merge(SegmentationMetrics other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.NumClasses != NumClasses || other.IgnoreIndex != IgnoreIndex)
        {
            throw new ArgumentException($"other counts {other.NumClasses} classes (ignore {other.IgnoreIndex}), this {NumClasses} (ignore {IgnoreIndex})", nameof(other));
        }

        for (int c = 0; c < NumClasses; c++)
        {
            _intersect[c] += other._intersect[c];
            _prediction[c] += other._prediction[c];
            _label[c] += other._label[c];
        }

        Images += other.Images;
    }

    /// <summary>
    /// The accumulated counts as float64 values, for a sum over the processes of a data-parallel job: the intersection,
    /// prediction and label areas of each class, then the images (3·classes + 1 values; exact while a count stays below 2⁵³).
    /// </summary>
    public double[] ToCounts()
    {
        var counts = new double[3 * NumClasses + 1];
        for (int c = 0; c < NumClasses; c++)
        {
            counts[c] = _intersect[c];
            counts[NumClasses + c] = _prediction[c];
            counts[2 * NumClasses + c] = _label[c];
        }

        counts[3 * NumClasses] = Images;
        return counts;
    }

    /// <summary>An accumulation holding <paramref name="counts"/> as <see cref="ToCounts"/> lays them out (e.g. summed over processes).</summary>
    /// <param name="numClasses">Classes (≥ 1).</param>
    /// <param name="counts">3·classes + 1 non-negative whole numbers.</param>
    /// <param name="ignoreIndex">The label value left out.</param>
    /// <exception cref="ArgumentException"><paramref name="counts"/> has another length or holds a value that is not a non-negative whole number.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> &lt; 1.</exception>
    public static SegmentationMetrics FromCounts(int numClasses, IReadOnlyList<double> counts, int ignoreIndex = SegmentationDataset.Ignore)
    {
        ArgumentNullException.ThrowIfNull(counts);
        var metrics = new SegmentationMetrics(numClasses, ignoreIndex);
        if (counts.Count != 3 * numClasses + 1)
        {
            throw new ArgumentException($"counts must hold 3·{numClasses} + 1 values, got {counts.Count}", nameof(counts));
        }

        if (counts.Any(v => !(v >= 0) || v != Math.Floor(v) || v > 9.007199254740992e15))
        {
            throw new ArgumentException("counts must be non-negative whole numbers below 2^53", nameof(counts));
        }

        for (int c = 0; c < numClasses; c++)
        {
            metrics._intersect[c] = (long)counts[c];
            metrics._prediction[c] = (long)counts[numClasses + c];
            metrics._label[c] = (long)counts[2 * numClasses + c];
        }

        metrics.Images = (long)counts[3 * numClasses];
        return metrics;
    }

    /// <summary>The scores of what was accumulated (<c>total_area_to_metrics</c>).</summary>
    public SegmentationScores Compute()
    {
        var iou = new double[NumClasses];
        var acc = new double[NumClasses];
        long intersect = 0, labelled = 0;
        for (int c = 0; c < NumClasses; c++)
        {
            long union = _prediction[c] + _label[c] - _intersect[c];
            iou[c] = union == 0 ? double.NaN : (double)_intersect[c] / union;
            acc[c] = _label[c] == 0 ? double.NaN : (double)_intersect[c] / _label[c];
            intersect += _intersect[c];
            labelled += _label[c];
        }

        double all = labelled == 0 ? double.NaN : (double)intersect / labelled;
        return new SegmentationScores(all, NanMean(iou), NanMean(acc), iou, acc, Images);
    }

    /// <summary>numpy's <c>nanmean</c>: the mean of the non-NaN values, NaN when there are none.</summary>
    public static double NanMean(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        double sum = 0;
        int n = 0;
        foreach (double v in values)
        {
            if (!double.IsNaN(v))
            {
                sum += v;
                n++;
            }
        }

        return n == 0 ? double.NaN : sum / n;
    }

    private void Add(ReadOnlySpan<long> prediction, ReadOnlySpan<long> label)
    {
        int classes = NumClasses;
        for (int i = 0; i < label.Length; i++)
        {
            long l = label[i];
            if (l == IgnoreIndex)
            {
                continue;
            }

            long p = prediction[i];
            bool predictionInRange = (ulong)p < (ulong)classes;
            if (predictionInRange)
            {
                _prediction[p]++;
            }

            if ((ulong)l < (ulong)classes)
            {
                _label[l]++;
                if (p == l)
                {
                    _intersect[l]++;
                }
            }
        }
    }
}
