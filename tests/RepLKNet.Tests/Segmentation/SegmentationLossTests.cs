using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

/// <summary>The pixel loss against an independent float64 computation (interpolate → log-softmax → gather by hand).</summary>
public sealed class SegmentationLossTests
{
    public SegmentationLossTests() => Torch.EnsureLoaded();

    /// <summary>MMSeg 0.x by hand: −log softmax at the label, 0 where the label is 255, summed and divided by ALL N·H·W pixels.</summary>
    private static double Reference(Tensor logits, Tensor labels, bool alignCorners)
    {
        using var scope = NewDisposeScope();
        var up = nn.functional.interpolate(logits.to(ScalarType.Float64), [labels.shape[1], labels.shape[2]], mode: InterpolationMode.Bilinear, align_corners: alignCorners);
        var logp = nn.functional.log_softmax(up, 1);
        var l = labels.data<long>().ToArray();
        var lp = logp.contiguous().data<double>().ToArray();
        long n = labels.shape[0], h = labels.shape[1], w = labels.shape[2], c = logits.shape[1];
        double sum = 0;
        for (long b = 0; b < n; b++)
        {
            for (long i = 0; i < h * w; i++)
            {
                long label = l[b * h * w + i];
                if (label != 255)
                {
                    sum -= lp[(b * c + label) * h * w + i];
                }
            }
        }

        return sum / (n * h * w);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Cross_entropy_resizes_to_the_labels_ignores_255_and_averages_over_all_pixels(bool alignCorners)
    {
        var g = new Generator(5);
        using var decode = randn([2, 4, 5, 7], generator: g).requires_grad_(true);
        using var aux = randn([2, 4, 3, 4], generator: g).requires_grad_(true);
        using var labels = randint(0, 4, [2, 19, 27], generator: g, dtype: ScalarType.Int64);
        using var ignore = rand([2, 19, 27], generator: g).lt(tensor(0.3f));
        using var s255 = 255.ToScalar();
        labels.masked_fill_(ignore, s255);

        using var loss = SegmentationLoss.CrossEntropy(decode, labels, alignCorners);
        double expected = Reference(decode.detach(), labels, alignCorners);
        Assert.Equal(expected, loss.item<float>(), 5);
        // Not the mean over the labelled pixels only (which mmseg ≥ 0.x's avg_non_ignore would give).
        double labelled = labels.ne(tensor(255L)).sum().item<long>();
        Assert.True(Math.Abs(expected * (2 * 19 * 27) / labelled - loss.item<float>()) > 0.1);

        var (total, d, a) = SegmentationLoss.Total(decode, aux, labels, alignCorners);
        using var t = total;
        Assert.Equal(expected, d, 5);
        Assert.Equal(Reference(aux.detach(), labels, alignCorners), a, 5);
        Assert.Equal(d + 0.4 * a, t.item<float>(), 5);
        t.backward();
        Assert.NotNull(decode.grad);
        Assert.True(aux.grad!.abs().sum().item<float>() > 0);

        var (decodeOnly, _, none) = SegmentationLoss.Total(decode.detach(), null, labels, alignCorners);
        Assert.Equal(expected, decodeOnly.item<float>(), 5);
        Assert.True(double.IsNaN(none));
    }

    [Fact]
    public void Labels_that_do_not_fit_the_logits_are_refused_by_name()
    {
        using var logits = zeros(2, 3, 4, 4);
        using var labels = zeros([3, 4, 4], dtype: ScalarType.Int64);
        Assert.Equal("labels", Assert.Throws<ArgumentException>(() => SegmentationLoss.CrossEntropy(logits, labels, false)).ParamName);
    }
}
