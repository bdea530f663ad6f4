using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

/// <summary>Whole and sliding-window inference against direct computations, and the evaluator against a plain loop.</summary>
public sealed class SegmentationEvaluatorTests
{
    public SegmentationEvaluatorTests() => Torch.EnsureLoaded();

    /// <summary>
    /// Sliding windows computed another way: starts 0, s, 2s, … while a window starting there would still leave pixels
    /// uncovered at the end, then one window flush with the end (or the whole side when the crop is larger); the logits of
    /// every window added up pixel by pixel in float64 and divided by how many windows cover the pixel.
    /// </summary>
    private static double[] SlideReference(Func<Tensor, Tensor> f, Tensor image, int classes, (int H, int W) crop, (int H, int W) stride)
    {
        int h = (int)image.shape[2], w = (int)image.shape[3];
        static List<int> Starts(int size, int crop, int stride)
        {
            var starts = new List<int>();
            if (crop >= size)
            {
                return [0];
            }

            for (int s = 0; s + crop < size; s += stride)
            {
                starts.Add(s);
            }

            starts.Add(size - crop);
            return starts;
        }

        var sum = new double[classes * h * w];
        var count = new int[h * w];
        foreach (int y in Starts(h, crop.H, stride.H))
        {
            foreach (int x in Starts(w, crop.W, stride.W))
            {
                int ch = Math.Min(crop.H, h), cw = Math.Min(crop.W, w);
                using var logits = f(image[.., .., y..(y + ch), x..(x + cw)].contiguous()).to(ScalarType.Float64).contiguous();
                var v = logits.data<double>().ToArray();
                for (int c = 0; c < classes; c++)
                {
                    for (int i = 0; i < ch; i++)
                    {
                        for (int j = 0; j < cw; j++)
                        {
                            sum[(c * h + y + i) * w + x + j] += v[(c * ch + i) * cw + j];
                        }
                    }
                }

                for (int i = 0; i < ch; i++)
                {
                    for (int j = 0; j < cw; j++)
                    {
                        count[(y + i) * w + x + j]++;
                    }
                }
            }
        }

        for (int k = 0; k < sum.Length; k++)
        {
            sum[k] /= count[k % (h * w)];
        }

        return sum;
    }

    [Theory]
    [InlineData(41, 53, 16, 20, 10, 12)] // strides that do not divide: the last windows are moved back to the edges
    [InlineData(32, 32, 16, 16, 16, 16)] // windows that tile exactly
    [InlineData(20, 50, 32, 24, 8, 24)]  // a crop taller than the image: one row of windows of the image's height
    public void Slide_logits_average_the_windows_as_mmseg_slide_inference(int h, int w, int cropH, int cropW, int strideH, int strideW)
    {
        var g = new Generator(7);
        using var weight = randn([3, 3, 3, 3], generator: g);
        using var image = randn([1, 3, h, w], generator: g);
        // A border-sensitive stand-in for encode_decode (zero padding), so where the windows lie matters.
        Tensor F(Tensor x) => nn.functional.conv2d(x, weight, padding: [1, 1]);
        using var logits = SegmentationInference.SlideLogits(F, image, 3, (cropH, cropW), (strideH, strideW));
        Assert.Equal([1L, 3, h, w], logits.shape);
        var expected = SlideReference(F, image, 3, (cropH, cropW), (strideH, strideW));
        var actual = logits.to(ScalarType.Float64).data<double>().ToArray();
        Assert.Equal(expected.Length, actual.Length);
        double max = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.True(max < 1e-5, $"max difference {max}");
        using var whole = F(image);
        Assert.False(whole.allclose(logits, rtol: 0, atol: 1e-3)); // the windows changed something: the check can fail
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Whole_mode_resizes_the_logits_to_the_original_size_and_takes_the_argmax(bool alignCorners)
    {
        manual_seed(1);
        using var model = new EncoderDecoder(SegShapes.TinyConfig(alignCorners));
        model.eval();
        using var noGrad = no_grad();
        using var image = randn([1, 3, 37, 45], generator: new Generator(2));
        using var prediction = SegmentationInference.Predict(model, image, (50, 61));
        Assert.Equal([1L, 50, 61], prediction.shape);
        using var logits = model.EncodeDecode(image);
        using var direct = nn.functional.interpolate(logits, [50, 61], mode: InterpolationMode.Bilinear, align_corners: alignCorners).argmax(1);
        Assert.Equal(direct.data<long>().ToArray(), prediction.data<long>().ToArray());

        using var slide = SegmentationInference.Predict(model, image, (50, 61), new SegmentationTestConfig("slide", (24, 24), (16, 16)));
        Assert.Equal([1L, 50, 61], slide.shape);
        Assert.Equal("test", Assert.Throws<ArgumentException>(() => SegmentationInference.Predict(model, image, (50, 61), new SegmentationTestConfig("tiles"))).ParamName);
    }

    [Fact]
    public void The_evaluator_scores_the_set_as_a_plain_loop_over_test_views_does()
    {
        manual_seed(4);
        using var model = new EncoderDecoder(SegShapes.TinyConfig());
        using (var noGradient = no_grad())
        {
            // Weights far from the initialisation, so the predictions mix the classes instead of one everywhere.
            foreach (var p in model.parameters())
            {
                RepLKNet.Runtime.Scalars.AddInPlace(p, randn_like(p));
            }
        }

        var data = new SegShapes(5, 30, 38, seed: 9);
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (48, 24), CropSize = (24, 24) });
        var scores = new SegmentationEvaluator(data, pipeline, workers: 2).Evaluate(model);
        Assert.Equal(5, scores.Images);

        var metrics = new SegmentationMetrics(3);
        model.eval();
        using var noGrad = no_grad();
        for (int i = 0; i < data.Count; i++)
        {
            var sample = data.Read(i);
            var view = pipeline.Test(sample.Image);
            Assert.Equal(24, view.Height); // resized to the scale keeping the ratio: 30×38 → 24×30
            using var input = tensor(view.Image, [1, 3, view.Height, view.Width]);
            using var logits = nn.functional.interpolate(model.EncodeDecode(input), [30, 38], mode: InterpolationMode.Bilinear, align_corners: false);
            using var prediction = logits.argmax(1);
            metrics.Update(prediction.data<long>().ToArray(), sample.Label.Pixels.Select(p => (long)p).ToArray());
        }

        var expected = metrics.Compute();
        Assert.Equal(expected, scores with { IoU = expected.IoU, Accuracy = expected.Accuracy });
        Assert.Equal(expected.IoU, scores.IoU);
        Assert.Equal(expected.Accuracy, scores.Accuracy);
        Assert.True(metrics.AreaPrediction.Count(a => a > 0) >= 2); // several classes are predicted: a real comparison
        Assert.Equal("model", Assert.Throws<RepLKNet.Data.DatasetException>(() =>
            new SegmentationEvaluator(data, pipeline).Evaluate(new EncoderDecoder(SegShapes.TinyConfig(classes: 4)))).ParamName);
    }
}
