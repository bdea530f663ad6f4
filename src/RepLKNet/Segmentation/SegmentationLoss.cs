using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using static TorchSharp.torch;

namespace RepLKNet.Segmentation;

/// <summary>
/// The training loss of MMSegmentation 0.x's <c>EncoderDecoder</c> with the official RepLKNet UperNet configs:
/// <c>BaseDecodeHead.losses</c> resizes each head's logits to the label size (<c>mmseg.ops.resize</c>: bilinear, the head's
/// <c>align_corners</c>) and applies <c>CrossEntropyLoss(use_sigmoid=False)</c> — <c>F.cross_entropy(reduction='none',
/// ignore_index=255)</c> then the mean over <b>all</b> pixels, ignored ones counting as 0 (mmseg 0.x's
/// <c>weight_reduce_loss</c> without <c>avg_non_ignore</c>; <c>mmseg/models/losses/cross_entropy_loss.py</c>) — times the
/// head's <c>loss_weight</c>; the total is the decode head's loss (weight 1.0) plus the auxiliary head's (weight 0.4).
/// </summary>
public static class SegmentationLoss
{
    /// <summary>The label value the loss ignores (MMSeg's <c>ignore_index</c>).</summary>
    public const int IgnoreIndex = SegmentationDataset.Ignore;

    /// <summary>The official auxiliary (FCNHead) loss weight.</summary>
    public const double DefaultAuxiliaryWeight = 0.4;

    /// <summary>
    /// One head's pixel cross-entropy: <paramref name="logits"/> resized to the labels' size, cross-entropy per pixel with
    /// <see cref="IgnoreIndex"/> ignored (0 there), averaged over all N·H·W pixels.
    /// </summary>
    /// <param name="logits">Head logits [N, classes, h, w] (float32 or float64).</param>
    /// <param name="labels">Labels [N, H, W], int64, values in 0 … classes − 1 or 255.</param>
    /// <param name="alignCorners">The head's <c>align_corners</c> for the resize.</param>
    /// <returns>A scalar tensor of the logits' dtype, with a gradient function when the logits have one.</returns>
    /// <exception cref="ArgumentException">The ranks or batch sizes do not fit (ParamName <c>labels</c>).</exception>
    public static Tensor CrossEntropy(Tensor logits, Tensor labels, bool alignCorners)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(labels);
        if (logits.dim() != 4 || labels.dim() != 3 || labels.size(0) != logits.size(0))
        {
            throw new ArgumentException(
                $"labels {TensorSizes.Text(labels)} do not fit logits {TensorSizes.Text(logits)}: expected logits [N, classes, h, w] and labels [N, H, W]",
                nameof(labels));
        }

        using var scope = NewDisposeScope();
        var resized = logits.size(2) == labels.size(1) && logits.size(3) == labels.size(2)
            ? logits
            : SegResize.Bilinear(logits, labels.size(1), labels.size(2), alignCorners);
        var perPixel = nn.functional.cross_entropy(resized, labels, reduction: nn.Reduction.None, ignore_index: IgnoreIndex);
        return perPixel.mean().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The training step's loss as MMSeg's <c>EncoderDecoder.forward_train</c> sums it: each head's <see cref="CrossEntropy"/>
    /// at the label size with that head's own <c>align_corners</c>, times its <c>loss_weight</c>. No value is read back
    /// from the device (no synchronisation per step).
    /// </summary>
    /// <param name="decode">Decode-head logits [N, classes, h, w].</param>
    /// <param name="auxiliary">Auxiliary-head logits [N, classes, h', w'], or null.</param>
    /// <param name="labels">Labels [N, H, W], int64 (255 = ignore).</param>
    /// <param name="decodeAlignCorners">The decode head's <c>align_corners</c>.</param>
    /// <param name="auxiliaryAlignCorners">The auxiliary head's <c>align_corners</c>.</param>
    /// <param name="decodeWeight">The decode head's <c>loss_weight</c> (1.0).</param>
    /// <param name="auxiliaryWeight">The auxiliary head's <c>loss_weight</c> (0.4 in the official configs).</param>
    /// <returns>A scalar float tensor with a gradient function.</returns>
    /// <exception cref="ArgumentException">As <see cref="CrossEntropy"/>.</exception>
    public static Tensor Weighted(Tensor decode, Tensor? auxiliary, Tensor labels, bool decodeAlignCorners, bool auxiliaryAlignCorners,
        double decodeWeight, double auxiliaryWeight)
    {
        using var scope = NewDisposeScope();
        var decodeLoss = CrossEntropy(decode, labels, decodeAlignCorners);
        var loss = decodeWeight == 1.0 ? decodeLoss : Scalars.Mul(decodeLoss, decodeWeight);
        if (auxiliary is not null)
        {
            loss = Scalars.Add(loss, Scalars.Mul(CrossEntropy(auxiliary, labels, auxiliaryAlignCorners), auxiliaryWeight));
        }

        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The segmenter's training loss: <paramref name="decodeWeight"/> · CE(decode) + <paramref name="auxiliaryWeight"/> ·
    /// CE(auxiliary) (<see cref="CrossEntropy"/>; the auxiliary term only when <paramref name="auxiliary"/> is given).
    /// </summary>
    /// <param name="decode">Decode-head logits [N, classes, h, w].</param>
    /// <param name="auxiliary">Auxiliary-head logits [N, classes, h', w'], or null.</param>
    /// <param name="labels">Labels [N, H, W], int64.</param>
    /// <param name="alignCorners">The heads' <c>align_corners</c>.</param>
    /// <param name="decodeWeight">The decode head's <c>loss_weight</c> (1.0).</param>
    /// <param name="auxiliaryWeight">The auxiliary head's <c>loss_weight</c> (0.4).</param>
    /// <returns>The scalar loss and its two terms, unweighted (detached, for reports).</returns>
    /// <exception cref="ArgumentException">As <see cref="CrossEntropy"/>.</exception>
    public static (Tensor Loss, double Decode, double Auxiliary) Total(Tensor decode, Tensor? auxiliary, Tensor labels, bool alignCorners,
        double decodeWeight = 1.0, double auxiliaryWeight = DefaultAuxiliaryWeight)
    {
        using var scope = NewDisposeScope();
        var decodeLoss = CrossEntropy(decode, labels, alignCorners);
        var loss = decodeWeight == 1.0 ? decodeLoss : Scalars.Mul(decodeLoss, decodeWeight);
        double auxValue = double.NaN;
        if (auxiliary is not null)
        {
            var auxLoss = CrossEntropy(auxiliary, labels, alignCorners);
            auxValue = auxLoss.detach().cpu().to(ScalarType.Float64).item<double>();
            loss = Scalars.Add(loss, Scalars.Mul(auxLoss, auxiliaryWeight));
        }

        double decodeValue = decodeLoss.detach().cpu().to(ScalarType.Float64).item<double>();
        return (loss.MoveToOuterDisposeScope(), decodeValue, auxValue);
    }
}
