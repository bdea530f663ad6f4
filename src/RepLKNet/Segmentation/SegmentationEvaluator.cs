using RepLKNet.Data;
using RepLKNet.Distributed;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Segmentation;

/// <summary>
/// MMSegmentation 0.x's test-time inference (<c>mmseg/models/segmentors/encoder_decoder.py</c>: <c>whole_inference</c>,
/// <c>slide_inference</c>, <c>inference</c>, <c>simple_test</c>, without flip): logits of the (already resized and
/// normalized) image by the whole image or by sliding windows, resized bilinearly (the head's <c>align_corners</c>) to the
/// original image size, softmax over the classes, argmax.
/// </summary>
public static class SegmentationInference
{
    /// <summary>The test modes: <c>whole</c> and <c>slide</c>.</summary>
    public static IReadOnlyList<string> Modes { get; } = ["whole", "slide"];

    /// <summary>
    /// <c>slide_inference</c> before its final resize: windows of <paramref name="crop"/> every <paramref name="stride"/>
    /// pixels — ⌊max(H − crop_h + stride_h − 1, 0) / stride_h⌋ + 1 rows of them (likewise columns), window (i, j) at
    /// y1 = i·stride_h, y2 = min(y1 + crop_h, H), y1 = max(y2 − crop_h, 0) (likewise x), so the last ones end at the image's
    /// edge — each run through <paramref name="encodeDecode"/>; the logits are summed where windows overlap and divided
    /// by the number of windows covering each pixel.
    /// </summary>
    /// <param name="encodeDecode">The segmenter's <c>encode_decode</c>: [N, 3, h, w] → logits [N, classes, h, w].</param>
    /// <param name="image">Normalized images [N, 3, H, W].</param>
    /// <param name="numClasses">Classes of the logits.</param>
    /// <param name="crop">Window size (height, width) in pixels, ≥ 1 (a side larger than the image covers it whole).</param>
    /// <param name="stride">Step between windows (height, width) in pixels, ≥ 1.</param>
    /// <returns>Logits [N, classes, H, W] (the image's dtype), in the caller's dispose scope.</returns>
    /// <exception cref="ArgumentException">A size is not positive (ParamName <c>crop</c> or <c>stride</c>), or the image is not 4-D.</exception>
    public static Tensor SlideLogits(Func<Tensor, Tensor> encodeDecode, Tensor image, int numClasses, (int H, int W) crop, (int H, int W) stride)
    {
        ArgumentNullException.ThrowIfNull(encodeDecode);
        ArgumentNullException.ThrowIfNull(image);
        if (crop.H < 1 || crop.W < 1)
        {
            throw new ArgumentException($"crop must be positive, got {crop.H}×{crop.W}", nameof(crop));
        }

        if (stride.H < 1 || stride.W < 1)
        {
            throw new ArgumentException($"stride must be positive, got {stride.H}×{stride.W}", nameof(stride));
        }

        if (image.dim() != 4)
        {
            throw new ArgumentException($"image must be [N, 3, H, W], got {TensorSizes.Text(image)}", nameof(image));
        }

        int height = (int)image.size(2), width = (int)image.size(3);
        int rows = Math.Max(height - crop.H + stride.H - 1, 0) / stride.H + 1;
        int columns = Math.Max(width - crop.W + stride.W - 1, 0) / stride.W + 1;
        using var scope = NewDisposeScope();
        var sum = zeros([image.size(0), numClasses, height, width], image.dtype, image.device);
        var count = zeros([image.size(0), 1, height, width], image.dtype, image.device);
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < columns; j++)
            {
                using var window = NewDisposeScope();
                int y2 = Math.Min(i * stride.H + crop.H, height), x2 = Math.Min(j * stride.W + crop.W, width);
                int y1 = Math.Max(y2 - crop.H, 0), x1 = Math.Max(x2 - crop.W, 0);
                var logits = encodeDecode(image.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1));
                Scalars.AddInPlace(sum.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1), logits);
                Scalars.AddInPlace(count.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1), 1.0);
            }
        }

        return sum.div(count).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// MMSeg's <c>inference(img, rescale=True)</c>: logits by <paramref name="test"/>'s mode (<c>whole</c>:
    /// <paramref name="encodeDecode"/> of the image; <c>slide</c>: <see cref="SlideLogits"/>), resized bilinearly with
    /// <paramref name="alignCorners"/> to <paramref name="originalSize"/>, softmax over the classes.
    /// </summary>
    /// <param name="encodeDecode">[N, 3, h, w] → logits [N, classes, h, w].</param>
    /// <param name="numClasses">Classes.</param>
    /// <param name="alignCorners">The decode head's align_corners.</param>
    /// <param name="image">The test view [N, 3, H, W] (resized keeping the ratio, normalized).</param>
    /// <param name="originalSize">The image's size before the test resize (height, width): the labels' size.</param>
    /// <param name="test">Mode, crop and stride.</param>
    /// <returns>Class probabilities [N, classes, H₀, W₀], in the caller's dispose scope.</returns>
    /// <exception cref="ArgumentException">An unknown mode (ParamName <c>test</c>), or slide mode without crop and stride.</exception>
    public static Tensor Probabilities(Func<Tensor, Tensor> encodeDecode, int numClasses, bool alignCorners, Tensor image, (int H, int W) originalSize,
        SegmentationTestConfig test)
    {
        ArgumentNullException.ThrowIfNull(encodeDecode);
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(test);
        using var scope = NewDisposeScope();
        var logits = test.Mode switch
        {
            "whole" => encodeDecode(image),
            "slide" => SlideLogits(encodeDecode, image, numClasses,
                test.CropSize ?? throw new ArgumentException("test: slide mode needs a crop size", nameof(test)),
                test.Stride ?? throw new ArgumentException("test: slide mode needs a stride", nameof(test))),
            _ => throw new ArgumentException($"test mode '{test.Mode}': use {string.Join(" or ", Modes)}", nameof(test)),
        };
        var resized = SegResize.Bilinear(logits, originalSize.H, originalSize.W, alignCorners);
        return nn.functional.softmax(resized, 1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// MMSeg's <c>simple_test</c>: <see cref="Probabilities"/> of <paramref name="model"/> (eval mode, no gradients are
    /// needed by the caller), argmax over the classes.
    /// </summary>
    /// <param name="model">The segmenter (in eval mode).</param>
    /// <param name="image">The test view [N, 3, H, W] on the model's device.</param>
    /// <param name="originalSize">The labels' size (height, width).</param>
    /// <param name="test">Mode, crop and stride; null: the model's configuration (<see cref="SegmentorConfig.Test"/>).</param>
    /// <returns>Class indices [N, H₀, W₀] (int64), in the caller's dispose scope.</returns>
    /// <exception cref="ArgumentException">As <see cref="Probabilities"/>.</exception>
    public static Tensor Predict(EncoderDecoder model, Tensor image, (int H, int W) originalSize, SegmentationTestConfig? test = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var scope = NewDisposeScope();
        var probabilities = Probabilities(model.EncodeDecode, model.NumClasses, model.AlignCorners, image, originalSize, test ?? model.Config.Test);
        return probabilities.argmax(1).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Scores a segmenter on a set as MMSeg's test loop does: every image through the test view (<see cref="SegmentationPipeline.Test"/>:
/// keep-ratio resize to the scale, normalize; one image at a time, prepared on background threads by
/// <see cref="SegmentationLoader"/>), <see cref="SegmentationInference.Predict"/> (whole or slide), and
/// <see cref="SegmentationMetrics"/> against the original-size label. Unreadable samples are skipped and reported.
/// </summary>
public sealed class SegmentationEvaluator
{
    private readonly ISegmentationDataset _data;
    private readonly SegmentationPipeline _pipeline;

    /// <summary>Creates the evaluator.</summary>
    /// <param name="data">The evaluation set (labels at the images' sizes).</param>
    /// <param name="pipeline">The test view's scale and normalization.</param>
    /// <param name="test">Mode, crop and stride; null: each model's own (<see cref="SegmentorConfig.Test"/>).</param>
    /// <param name="device">Where the model runs (null: the CPU).</param>
    /// <param name="workers">How many test images the background thread prepares ahead of the model (one image at a time; ≥ 1).</param>
    /// <param name="limit">Score only the first this many images (smoke runs); null: all.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="workers"/> or <paramref name="limit"/> is not positive.</exception>
    public SegmentationEvaluator(ISegmentationDataset data, SegmentationPipeline pipeline, SegmentationTestConfig? test = null, Device? device = null,
        int workers = 1, long? limit = null)
    {
        _data = data ?? throw new ArgumentNullException(nameof(data));
        _pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(workers);
        if (limit is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(limit), limit, "limit must be ≥ 1");
        }

        Test = test;
        Device = device ?? CPU;
        Workers = workers;
        Count = Math.Min(data.Count, limit ?? long.MaxValue);
    }

    /// <summary>Mode, crop and stride, or null for the model's own.</summary>
    public SegmentationTestConfig? Test { get; }

    /// <summary>Where the model runs.</summary>
    public Device Device { get; }

    /// <summary>Background threads preparing images.</summary>
    public int Workers { get; }

    /// <summary>Images scored.</summary>
    public long Count { get; }

    /// <summary>
    /// Scores <paramref name="model"/> (switched to eval mode; gradients off) on the set.
    /// </summary>
    /// <param name="model">The segmenter, on <see cref="Device"/>.</param>
    /// <param name="onImage">Called after each image with (images done, images in all), or null.</param>
    /// <param name="onSkipped">Called for each sample that could not be read, or null.</param>
    /// <param name="cancel">Stops between images (throws <see cref="OperationCanceledException"/>).</param>
    /// <returns>aAcc, mIoU, mAcc and per-class IoU and accuracy.</returns>
    /// <exception cref="DatasetException">The model's class count differs from the set's (ParamName <c>model</c>).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled.</exception>
    public SegmentationScores Evaluate(EncoderDecoder model, Action<long, long>? onImage = null, Action<SkippedImage>? onSkipped = null,
        CancellationToken cancel = default)
    {
        CheckModel(model);
        return Accumulate(model, 0, Count, onImage, onSkipped, cancel).Compute();
    }

    /// <summary>
    /// <see cref="Evaluate(EncoderDecoder, Action{long, long}, Action{SkippedImage}, CancellationToken)"/> in a data-parallel
    /// job: each process of <paramref name="group"/> scores a contiguous block of the images
    /// (<see cref="ShardedEvaluation.Block"/>) and the per-class areas (MMSeg's <c>area_intersect</c>, <c>area_pred_label</c>,
    /// <c>area_label</c>; the union follows) are summed over the processes, so every process returns exactly the scores of
    /// the whole set. A one-process group is the one-process evaluation. A cancellation or failure on one process reaches
    /// all of them at the reduction (<see cref="ShardedEvaluation"/>).
    /// </summary>
    /// <param name="model">The segmenter, on <see cref="Device"/>.</param>
    /// <param name="onImage">Called after each image of this process's block with (images done, images in the block), or null.</param>
    /// <param name="onSkipped">Called, after the reduction, for each sample of the whole set that could not be read (in set order), or null.</param>
    /// <param name="group">The job's processes (every one calls this with the same arguments).</param>
    /// <param name="cancel">Stops this process's part between images.</param>
    /// <returns>aAcc, mIoU, mAcc and per-class IoU and accuracy of the whole set.</returns>
    /// <exception cref="DatasetException">The model's class count differs from the set's (ParamName <c>model</c>).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled (on this or another process).</exception>
    /// <exception cref="CollectiveException">Another process failed, or a collective failed.</exception>
    public SegmentationScores Evaluate(EncoderDecoder model, Action<long, long>? onImage, Action<SkippedImage>? onSkipped, ProcessGroup group,
        CancellationToken cancel = default) =>
        Evaluate(model, onImage, onSkipped, group, [], cancel).Scores;

    /// <summary>
    /// The sharded evaluation with extra counts summed in the same reduction: <paramref name="extra"/> holds as many values
    /// on every process; their sums over the processes come back (the values themselves in a one-process group).
    /// </summary>
    internal (SegmentationScores Scores, double[] Extra) Evaluate(EncoderDecoder model, Action<long, long>? onImage, Action<SkippedImage>? onSkipped, ProcessGroup group,
        double[] extra, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(extra);
        CheckModel(model);
        if (!group.IsDistributed)
        {
            var scores = Accumulate(model, 0, Count, onImage, onSkipped, cancel).Compute();
            return (scores, extra);
        }

        int classes = model.NumClasses, length = 3 * classes + 1;
        var (first, count) = ShardedEvaluation.Block(Count, 1, ShardedEvaluation.ShardOf(group));
        var (sums, skipped) = ShardedEvaluation.Reduce(group, length + extra.Length, () =>
        {
            var mine = new List<SkippedImage>();
            var metrics = Accumulate(model, first, count, onImage, mine.Add, cancel);
            return ([.. metrics.ToCounts(), .. extra], mine);
        });
        foreach (var s in skipped)
        {
            onSkipped?.Invoke(s);
        }

        return (SegmentationMetrics.FromCounts(classes, sums[..length]).Compute(), sums[length..]);
    }

    private void CheckModel(EncoderDecoder model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.NumClasses != _data.ClassNames.Count)
        {
            throw new DatasetException($"the model predicts {model.NumClasses} classes but the set has {_data.ClassNames.Count}", nameof(model));
        }
    }

    // Images [first, first + count) in index order.
    private SegmentationMetrics Accumulate(EncoderDecoder model, long first, long count, Action<long, long>? onImage, Action<SkippedImage>? onSkipped,
        CancellationToken cancel)
    {
        var metrics = new SegmentationMetrics(model.NumClasses);
        var order = new long[count];
        for (long i = 0; i < count; i++)
        {
            order[i] = first + i;
        }

        model.eval();
        using var noGrad = no_grad();
        var plan = new LoaderPlan { Order = order, BatchSize = 1, Train = false, Workers = Workers, Prefetch = Math.Max(2, Workers) };
        using var loader = new SegmentationLoader(_data, _pipeline, plan);
        long done = 0;
        foreach (var batch in loader.Batches())
        {
            cancel.ThrowIfCancellationRequested();
            foreach (var skipped in batch.Skipped)
            {
                onSkipped?.Invoke(skipped);
            }

            if (batch.Count > 0)
            {
                using var scope = NewDisposeScope();
                var image = batch.ImageTensor(Device).to(Training.ModelInputs.FloatType(model));
                var prediction = SegmentationInference.Predict(model, image, (batch.LabelHeight, batch.LabelWidth), Test);
                metrics.Update(prediction.reshape(batch.LabelHeight, batch.LabelWidth), batch.LabelTensor().reshape(batch.LabelHeight, batch.LabelWidth));
            }

            onImage?.Invoke(++done, count);
        }

        return metrics;
    }
}
