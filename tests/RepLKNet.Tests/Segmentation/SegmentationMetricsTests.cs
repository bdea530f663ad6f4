using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

/// <summary>
/// The metric against MMSegmentation 0.x's eval_metrics run in Python (mmseg_metrics_reference.py: torch.histc, float64
/// totals, numpy nanmean) on the same pseudo-random maps: an ignored label, an out-of-range label, a class absent from
/// both prediction and labels (NaN, left out of the means) and one predicted but never labelled (IoU 0, Acc NaN).
/// </summary>
public sealed class SegmentationMetricsTests
{
    private sealed class Lcg(ulong seed)
    {
        private ulong _x = seed;

        public long Next(long m)
        {
            _x = unchecked(_x * 6364136223846793005UL + 1442695040888963407UL);
            return (long)((_x >> 33) % (ulong)m);
        }
    }

    private static (long[] Prediction, long[] Label) Maps(Lcg rng, int h, int w)
    {
        var label = new long[h * w];
        var prediction = new long[h * w];
        for (int i = 0; i < h * w; i++)
        {
            long r = rng.Next(100);
            long l = r < 10 ? 255 : r < 12 ? 9 : rng.Next(5);
            r = rng.Next(100);
            prediction[i] = r < 60 ? (l < 7 ? l : 0) : r < 70 ? 6 : rng.Next(5);
            label[i] = l;
        }

        return (prediction, label);
    }

    [Fact]
    public void Scores_equal_mmsegs_eval_metrics_on_maps_with_ignored_out_of_range_and_absent_classes()
    {
        Torch.EnsureLoaded();
        var rng = new Lcg(20240517);
        var byArrays = new SegmentationMetrics(7);
        var byTensors = new SegmentationMetrics(7);
        foreach (var (h, w) in new[] { (17, 23), (8, 31), (29, 5) })
        {
            var (p, l) = Maps(rng, h, w);
            byArrays.Update(p, l);
            using var pt = tensor(p, [h, w]);
            using var lt = tensor(l.Select(v => (byte)v).ToArray(), [h, w]); // labels as stored (uint8)
            byTensors.Update(pt, lt);
        }

        Assert.Equal([82L, 80, 118, 77, 95, 0, 0], byArrays.AreaIntersect);
        Assert.Equal([176L, 166, 186, 166, 177, 0, 71], byArrays.AreaUnion);
        Assert.Equal([125L, 119, 146, 114, 131, 0, 71], byArrays.AreaPrediction);
        Assert.Equal([133L, 127, 158, 129, 141, 0, 0], byArrays.AreaLabel);
        Assert.Equal(byArrays.AreaUnion, byTensors.AreaUnion);
        Assert.Equal(byArrays.AreaIntersect, byTensors.AreaIntersect);
        Assert.Equal(3, byTensors.Images);

        var s = byArrays.Compute();
        Assert.Equal(0.6569767441860465, s.AllAccuracy, 15);
        Assert.Equal(0.4304706649052595, s.MeanIoU, 15);
        Assert.Equal(0.6527912292636764, s.MeanAccuracy, 15);
        double[] iou = [0.4659090909090909, 0.4819277108433735, 0.6344086021505376, 0.463855421686747, 0.536723163841808, double.NaN, 0.0];
        double[] acc = [0.6165413533834586, 0.6299212598425197, 0.7468354430379747, 0.5968992248062015, 0.6737588652482269, double.NaN, double.NaN];
        Assert.Equal(iou, s.IoU);
        Assert.Equal(acc, s.Accuracy);
        Assert.Equal(s, byTensors.Compute() with { IoU = s.IoU, Accuracy = s.Accuracy });

        var details = s.Details(["a", "b", "c", "d", "e", "f", "g"]);
        Assert.Equal(["aAcc", "mIoU", "mAcc", "IoU.a"], details.Keys.Take(4));
        Assert.True(double.IsNaN(details["IoU.f"]));
    }

    [Fact]
    public void Counts_sum_over_the_set_not_per_image_and_an_empty_set_is_nan()
    {
        // Image 1: class 0 everywhere, predicted right. Image 2: class 1, half predicted as 0. Per-set IoU of class 0:
        // 4 / (4 + 2) — a per-image average would give (1 + 0) / 2.
        var m = new SegmentationMetrics(2);
        m.Update([0L, 0, 0, 0], [0L, 0, 0, 0]);
        m.Update([0L, 0, 1, 1], [1L, 1, 1, 1]);
        var s = m.Compute();
        Assert.Equal(4.0 / 6, s.IoU[0], 15);
        Assert.Equal(2.0 / 4, s.IoU[1], 15);
        Assert.Equal(6.0 / 8, s.AllAccuracy, 15);
        Assert.Equal((1.0 + 0.5) / 2, s.MeanAccuracy, 15);

        var empty = new SegmentationMetrics(3).Compute();
        Assert.True(double.IsNaN(empty.MeanIoU) && double.IsNaN(empty.AllAccuracy));
        var merged = new SegmentationMetrics(2);
        merged.Merge(m);
        Assert.Equal(m.AreaUnion, merged.AreaUnion);
        Assert.Equal("label", Assert.Throws<ArgumentException>(() => m.Update([0L], [0L, 1])).ParamName);
        Torch.EnsureLoaded();
        using var f = zeros(2, 2);
        using var i = zeros(2, 2, dtype: ScalarType.Int64);
        Assert.Equal("prediction", Assert.Throws<ArgumentException>(() => m.Update(f, i)).ParamName);
        using var other = zeros(2, 3, dtype: ScalarType.Int64);
        Assert.Equal("label", Assert.Throws<ArgumentException>(() => m.Update(i, other)).ParamName);
    }
}
