using RepLKNet.Data;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

public sealed class SegmentationPipelineTests
{
    public SegmentationPipelineTests() => Torch.EnsureLoaded();

    private static ImageU8 RandomImage(int channels, int height, int width, int seed)
    {
        var pixels = new byte[channels * height * width];
        new Random(seed).NextBytes(pixels);
        return new ImageU8(pixels, channels, height, width);
    }

    private static Tensor AsTensor(ImageU8 image) =>
        tensor(image.Pixels, [1, image.Channels, image.Height, image.Width], dtype: ScalarType.Byte).to(float32);

    [Theory]
    [InlineData(640, 480, 2048, 512, 683, 512)] // factor min(2048/640, 512/480) = 16/15: 640·16/15 = 682.67 → 683
    [InlineData(2000, 300, 2048, 512, 2048, 307)] // long side binds: 2048/2000 = 1.024, 300·1.024 = 307.2 → 307
    [InlineData(300, 2000, 2048, 512, 307, 2048)] // portrait: the same with w and h swapped
    [InlineData(2048, 1024, 2049, 1025, 2049, 1025)] // Cityscapes: 1025/1024 = 1.000977, 2048·1.000977 = 2050.0 > 2049 → long binds: 2049/2048
    [InlineData(96, 72, 1536, 384, 512, 384)] // ratio 0.75 of (2048, 512): int(2048·0.75), int(512·0.75); 384/72 = 5.33
    public void RescaleSize_is_mmcv_rescale_size(int w, int h, int scaleLong, int scaleShort, int expectedW, int expectedH)
    {
        Assert.Equal((expectedW, expectedH), SegmentationPipeline.RescaleSize(w, h, (scaleLong, scaleShort)));
        Assert.Equal((expectedW, expectedH), SegmentationPipeline.RescaleSize(w, h, (scaleShort, scaleLong))); // order-free, as max/min
    }

    [Theory]
    [InlineData(23, 31, 40, 17)] // enlarge one axis, shrink the other
    [InlineData(40, 40, 13, 29)]
    [InlineData(9, 14, 27, 42)] // 3× enlarge
    public void Bilinear_resize_is_half_pixel_bilinear_within_one_level_and_nearest_is_exact(int h, int w, int outH, int outW)
    {
        var image = RandomImage(3, h, w, h * 7 + w);
        // libtorch's bilinear with align_corners=False and no antialias is cv2's INTER_LINEAR geometry in float.
        var reference = nn.functional.interpolate(AsTensor(image), [outH, outW], mode: InterpolationMode.Bilinear, align_corners: false).round();
        var ours = AsTensor(SegmentationPipeline.ResizeBilinear(image, outH, outW));
        double maxDiff = (ours - reference).abs().max().item<float>();
        Assert.True(maxDiff <= 1.0, $"max |ours − torch| = {maxDiff}");

        var label = RandomImage(1, h, w, 5);
        var nearest = nn.functional.interpolate(AsTensor(label), [outH, outW], mode: InterpolationMode.Nearest);
        Assert.Equal(0f, (AsTensor(SegmentationPipeline.ResizeNearest(label, outH, outW)) - nearest).abs().max().item<float>());
    }

    [Fact]
    public void An_exact_2x_reduction_is_the_rounded_2x2_mean()
    {
        var image = RandomImage(3, 8, 10, 1);
        var half = SegmentationPipeline.ResizeBilinear(image, 4, 5);
        for (int c = 0; c < 3; c++)
        {
            for (int y = 0; y < 4; y++)
            {
                for (int x = 0; x < 5; x++)
                {
                    int Px(int yy, int xx) => image.Pixels[c * 80 + yy * 10 + xx];
                    int sum = Px(2 * y, 2 * x) + Px(2 * y, 2 * x + 1) + Px(2 * y + 1, 2 * x) + Px(2 * y + 1, 2 * x + 1);
                    Assert.Equal((sum + 2) / 4, half.Pixels[c * 20 + y * 5 + x]);
                }
            }
        }
    }

    /// <summary>A sample whose label is a function of its pixels: red = 40·label + 20, green = column, blue = row.</summary>
    private static SegmentationSample Coded(int h, int w, Func<int, int, byte> labelAt)
    {
        var image = new ImageU8(3, h, w);
        var label = new ImageU8(1, h, w);
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                byte l = labelAt(y, x);
                label.Pixels[y * w + x] = l;
                image.Pixels[y * w + x] = (byte)(l == 255 ? 250 : 40 * l + 20);
                image.Pixels[h * w + y * w + x] = (byte)x;
                image.Pixels[2 * h * w + y * w + x] = (byte)y;
            }
        }

        return new SegmentationSample(image, label);
    }

    private static byte Unnormalize(float v, int c, SegmentationPipelineOptions o) => (byte)Math.Round(v * o.Std[c] + o.Mean[c]);

    [Fact]
    public void A_crop_larger_than_the_rescaled_image_is_padded_with_0_and_255_at_the_bottom_right()
    {
        var o = new SegmentationPipelineOptions { Scale = (64, 16), RatioRange = (0.5, 2.0), CropSize = (80, 90), FlipProbability = 0, PhotometricDistortion = false };
        var pipeline = new SegmentationPipeline(o);
        var sample = Coded(30, 40, (y, x) => (byte)((x / 10) % 3));
        for (int seed = 0; seed < 5; seed++)
        {
            var rng = new SampleRandom((ulong)seed, 9);
            var image = new float[3 * 80 * 90];
            var label = new long[80 * 90];
            pipeline.Train(sample, ref rng, image, label);

            // The first draw of the same key is the ratio: the scale and mmcv's rescale_size by hand.
            var again = new SampleRandom((ulong)seed, 9);
            double ratio = again.NextDouble() * 1.5 + 0.5;
            int sl = (int)(64 * ratio), ss = (int)(16 * ratio);
            double f = Math.Min((double)Math.Max(sl, ss) / 40, (double)Math.Min(sl, ss) / 30);
            int rw = (int)(40 * f + 0.5), rh = (int)(30 * f + 0.5);
            for (int y = 0; y < 80; y++)
            {
                for (int x = 0; x < 90; x++)
                {
                    bool inside = y < rh && x < rw;
                    Assert.Equal(inside, label[y * 90 + x] != 255);
                    if (!inside)
                    {
                        Assert.Equal(0f, image[y * 90 + x]);
                        Assert.Equal(0f, image[2 * 7200 + y * 90 + x]);
                    }
                }
            }
        }
    }

    [Fact]
    public void Flipped_crops_keep_image_and_label_aligned_and_mirror_the_unflipped_ones()
    {
        var baseOptions = new SegmentationPipelineOptions { Scale = (48, 32), RatioRange = null, CropSize = (32, 48), PhotometricDistortion = false, CatMaxRatio = 1 };
        var sample = Coded(32, 48, (y, x) => (byte)(x < 20 ? 0 : y < 10 ? 255 : x % 7 == 0 ? 1 : 2));
        var plain = new SegmentationPipeline(baseOptions with { FlipProbability = 0 });
        var flipped = new SegmentationPipeline(baseOptions with { FlipProbability = 1 });
        var (i0, l0) = (new float[3 * 32 * 48], new long[32 * 48]);
        var (i1, l1) = (new float[3 * 32 * 48], new long[32 * 48]);
        var r0 = new SampleRandom(1);
        var r1 = new SampleRandom(1);
        plain.Train(sample, ref r0, i0, l0);
        flipped.Train(sample, ref r1, i1, l1);
        for (int y = 0; y < 32; y++)
        {
            for (int x = 0; x < 48; x++)
            {
                int m = y * 48 + (47 - x);
                Assert.Equal(l0[y * 48 + x], l1[m]);
                Assert.Equal(i0[y * 48 + x], i1[m]);
                // The label still matches the pixel it labels: red encodes it, green the original column.
                byte red = Unnormalize(i1[m], 0, baseOptions), green = Unnormalize(i1[32 * 48 + m], 1, baseOptions);
                Assert.Equal(l1[m] == 255 ? 250 : 40 * l1[m] + 20, red);
                Assert.Equal(x, green);
            }
        }
    }

    [Fact]
    public void Cat_max_ratio_redraws_crops_dominated_by_one_class_and_counts_no_ignore()
    {
        // Left 3/4 class 0, right quarter class 1 with ignore stripes: 16×16 crops satisfy the rule only near the boundary.
        var label = new ImageU8(1, 64, 64);
        for (int y = 0; y < 64; y++)
        {
            for (int x = 0; x < 64; x++)
            {
                label.Pixels[y * 64 + x] = (byte)(x < 48 ? 0 : y % 2 == 0 ? 255 : 1);
            }
        }

        bool Good(int top, int left, double ratio)
        {
            var counts = new Dictionary<int, int>();
            for (int y = top; y < top + 16; y++)
            {
                for (int x = left; x < left + 16; x++)
                {
                    int v = label.Pixels[y * 64 + x];
                    if (v != 255)
                    {
                        counts[v] = counts.GetValueOrDefault(v) + 1;
                    }
                }
            }

            return counts.Count > 1 && (double)counts.Values.Max() / counts.Values.Sum() < ratio;
        }

        int goodWith = 0, goodWithout = 0;
        for (int seed = 0; seed < 200; seed++)
        {
            var rng = new SampleRandom((ulong)seed);
            var (t, l) = SegmentationPipeline.CropOffset(64, 64, label, (16, 16), 0.75, ref rng);
            goodWith += Good(t, l, 0.75) ? 1 : 0;
            var plain = new SampleRandom((ulong)seed);
            var (t0, l0) = SegmentationPipeline.CropOffset(64, 64, label, (16, 16), 1.0, ref plain);
            goodWithout += Good(t0, l0, 0.75) ? 1 : 0;
        }

        // One uniform crop satisfies the rule with probability p ≈ 8/49 (left offsets 41–48 of 0–48); 11 tries: 1 − (1 − p)^11 ≈ 0.86.
        Assert.InRange(goodWithout, 15, 55);
        Assert.InRange(goodWith, 150, 200);

        // A crop holding one class (and ignore) never passes: after 10 failures the 11th box is kept unchecked.
        var single = new ImageU8(1, 40, 40);
        for (int i = 0; i < single.Pixels.Length; i++)
        {
            single.Pixels[i] = (byte)(i % 3 == 0 ? 255 : 4);
        }

        var g = new SampleRandom(77);
        var box = SegmentationPipeline.CropOffset(40, 40, single, (8, 8), 0.75, ref g);
        var replay = new SampleRandom(77);
        (int, int) last = default;
        for (int k = 0; k < 11; k++)
        {
            last = (replay.NextInt(33), replay.NextInt(33));
        }

        Assert.Equal(last, box);
        Assert.Equal(replay.NextUInt64(), g.NextUInt64()); // and exactly 11 boxes were drawn
    }

    [Theory]
    [InlineData(255, 0, 0, 0, 255, 255)]
    [InlineData(0, 255, 0, 60, 255, 255)]
    [InlineData(0, 0, 255, 120, 255, 255)]
    [InlineData(255, 255, 0, 30, 255, 255)]
    [InlineData(255, 0, 255, 150, 255, 255)]
    [InlineData(90, 90, 90, 0, 0, 90)]
    [InlineData(0, 0, 0, 0, 0, 0)]
    [InlineData(200, 100, 50, 10, 191, 200)] // H = 60·(100−50)/150 / 2 = 10, S = 255·150/200 = 191.25
    public void HSV_of_known_colours_is_OpenCVs(byte r, byte g, byte b, byte h, byte s, byte v)
    {
        Assert.Equal((h, s, v), SegmentationPipeline.RgbToHsv(r, g, b));
        if (s == 255 || s == 0)
        {
            Assert.Equal((r, g, b), SegmentationPipeline.HsvToRgb(h, s, v)); // exact colours survive the round trip
        }
    }

    [Fact]
    public void The_fixed_point_HSV_of_every_colour_is_within_one_step_of_the_float64_HSV()
    {
        int hueOff = 0, total = 0;
        for (int r = 0; r < 256; r += 3)
        {
            for (int g = 0; g < 256; g += 3)
            {
                for (int b = 0; b < 256; b += 3)
                {
                    var (h, s, v) = SegmentationPipeline.RgbToHsv((byte)r, (byte)g, (byte)b);
                    int max = Math.Max(r, Math.Max(g, b)), diff = max - Math.Min(r, Math.Min(g, b));
                    double hue = diff == 0 ? 0 : max == r ? 60.0 * (g - b) / diff : max == g ? 120 + 60.0 * (b - r) / diff : 240 + 60.0 * (r - g) / diff;
                    double h64 = (hue < 0 ? hue + 360 : hue) / 2, s64 = max == 0 ? 0 : 255.0 * diff / max;
                    Assert.Equal(max, v);
                    // Rounding plus the table's error: diff · 0.5 / 4096 ≤ 0.03.
                    Assert.True(Math.Abs(s - s64) <= 0.54, $"S of {r},{g},{b}: {s} vs {s64}");
                    double dh = Math.Abs(h - h64);
                    // Rounding (0.5) plus the 12-bit reciprocal table's error, at most |numerator| · 0.5 / 4096 ≤ 6·255·0.5/4096 = 0.19.
                    Assert.True(Math.Min(dh, 180 - dh) <= 0.69, $"H of {r},{g},{b}: {h} vs {h64}");
                    hueOff += Math.Abs(h - Math.Floor(h64 + 0.5)) % 180 == 0 ? 0 : 1;
                    total++;
                }
            }
        }

        Assert.True(hueOff < total / 50, $"{hueOff} of {total} hues off the rounded value");
    }

    /// <summary>The distortion in float64 with textbook HSV (H in 0–180, S and V in 0–255, rounded like OpenCV's 8-bit storage).</summary>
    private static (int R, int G, int B) Reference(int r, int g, int b, PhotometricDraws d)
    {
        // numpy multiplies a float32 image by the drawn Python floats as float32 values: α and β are rounded to float32 first.
        // (float) after each operation: numpy's float32 arithmetic rounds the product and the sum to float32.
        static int Conv(double x, double a, double beta) => (int)Math.Clamp((float)((float)(x * (float)a) + (float)beta), 0, 255);
        double[] p = [r, g, b];
        if (d.Brightness is { } beta)
        {
            p = [.. p.Select(x => (double)Conv(x, 1, beta))];
        }

        if (d.ContrastFirst && d.Contrast is { } a1)
        {
            p = [.. p.Select(x => (double)Conv(x, a1, 0))];
        }

        foreach (bool saturation in new[] { true, false })
        {
            if (saturation ? d.Saturation is null : d.Hue is null)
            {
                continue;
            }

            double max = p.Max(), min = p.Min(), diff = max - min;
            double hue = diff == 0 ? 0 : max == p[0] ? 60 * (p[1] - p[2]) / diff : max == p[1] ? 120 + 60 * (p[2] - p[0]) / diff : 240 + 60 * (p[0] - p[1]) / diff;
            // OpenCV stores H = hue/2 and S = 255·diff/V rounded half up (its fixed point adds one half before the shift).
            int h = (int)Math.Floor((hue < 0 ? hue + 360 : hue) / 2 + 0.5) % 180, s = max == 0 ? 0 : (int)Math.Floor(255 * diff / max + 0.5), v = (int)max;
            if (saturation)
            {
                s = Conv(s, d.Saturation!.Value, 0);
            }
            else
            {
                h = ((h + d.Hue!.Value) % 180 + 180) % 180;
            }

            double hh = h * 2 / 60.0, ss = s / 255.0, vv = v / 255.0;
            int sector = (int)Math.Floor(hh) % 6;
            double f = hh - Math.Floor(hh), pp = vv * (1 - ss), q = vv * (1 - ss * f), t = vv * (1 - ss * (1 - f));
            var (rr, gg, bb) = sector switch { 0 => (vv, t, pp), 1 => (q, vv, pp), 2 => (pp, vv, t), 3 => (pp, q, vv), 4 => (t, pp, vv), _ => (vv, pp, q) };
            p = [Math.Round(rr * 255), Math.Round(gg * 255), Math.Round(bb * 255)];
        }

        if (!d.ContrastFirst && d.Contrast is { } a0)
        {
            p = [.. p.Select(x => (double)Conv(x, a0, 0))];
        }

        return ((int)p[0], (int)p[1], (int)p[2]);
    }

    [Theory]
    [InlineData(20.7, true, 1.3, null, null)]
    [InlineData(-31.2, false, 0.55, null, null)]
    [InlineData(null, true, null, 1.4, null)]
    [InlineData(null, false, null, null, -18)]
    [InlineData(12.5, false, 0.8, 0.6, 17)]
    [InlineData(-5.0, true, 1.45, 1.2, 7)]
    public void Photometric_distortion_matches_a_float64_recomputation(double? brightness, bool first, double? contrast, double? saturation, int? hue)
    {
        var draws = new PhotometricDraws(brightness, first, contrast, saturation, hue);
        var image = RandomImage(3, 24, 24, 11);
        var ours = SegmentationPipeline.PhotometricDistort(image, draws);
        int plane = image.Plane, exact = 0, worst = 0;
        string firstMismatch = "";
        for (int i = 0; i < plane; i++)
        {
            var (r, g, b) = Reference(image.Pixels[i], image.Pixels[plane + i], image.Pixels[2 * plane + i], draws);
            int d = Math.Max(Math.Abs(ours.Pixels[i] - r), Math.Max(Math.Abs(ours.Pixels[plane + i] - g), Math.Abs(ours.Pixels[2 * plane + i] - b)));
            if (d > 0 && firstMismatch == "")
            {
                firstMismatch = $"in {image.Pixels[i]},{image.Pixels[plane + i]},{image.Pixels[2 * plane + i]} ours {ours.Pixels[i]},{ours.Pixels[plane + i]},{ours.Pixels[2 * plane + i]} ref {r},{g},{b}";
            }

            worst = Math.Max(worst, d);
            exact += d == 0 ? 1 : 0;
        }

        // Brightness and contrast are exact; through HSV, OpenCV's fixed-point hue (12-bit reciprocal table) lands one 8-bit
        // hue step (2°, up to 255·2/60 = 8.5 levels) from the textbook value for a few pixels near a rounding boundary.
        bool hsv = saturation is not null || hue is not null;
        Assert.True(worst <= (hsv ? 9 : 0), $"worst channel difference {worst}; {exact} of {plane} pixels exact; {firstMismatch}");
        Assert.True(exact >= plane * (hsv ? 0.85 : 1.0), $"{exact} of {plane} pixels exact; {firstMismatch}");
    }

    [Fact]
    public void Photometric_draws_follow_mmsegs_ranges_and_order()
    {
        int hueLow = 0, hueHigh = 0, contrastFirst = 0, brightness = 0;
        for (ulong k = 0; k < 2000; k++)
        {
            var rng = new SampleRandom(k);
            var d = SegmentationPipeline.DrawPhotometric(ref rng);
            Assert.True(d.Brightness is null or (>= -32 and < 32));
            Assert.True(d.Contrast is null or (>= 0.5 and < 1.5));
            Assert.True(d.Saturation is null or (>= 0.5 and < 1.5));
            Assert.True(d.Hue is null or (>= -18 and <= 17)); // numpy randint(-18, 18) excludes 18
            hueLow += d.Hue == -18 ? 1 : 0;
            hueHigh += d.Hue == 17 ? 1 : 0;
            contrastFirst += d.ContrastFirst ? 1 : 0;
            brightness += d.Brightness is null ? 0 : 1;
        }

        Assert.True(hueLow > 0 && hueHigh > 0);
        Assert.InRange(contrastFirst, 900, 1100);
        Assert.InRange(brightness, 900, 1100);
    }

    [Fact]
    public void The_test_view_rescales_keeping_the_ratio_and_normalizes()
    {
        var o = SegmentationPipelineOptions.Ade20k();
        var pipeline = new SegmentationPipeline(o);
        var image = RandomImage(3, 30, 50, 3);
        var view = pipeline.Test(image);
        Assert.Equal((512, 853), (view.Height, view.Width)); // 512/30 binds: 50·17.07 = 853.3
        var resized = SegmentationPipeline.ResizeBilinear(image, 512, 853);
        Assert.Equal((resized.Pixels[0] - 123.675) / 58.395, view.Image[0], 4);
        Assert.Equal((resized.Pixels[2 * 512 * 853 + 100] - 103.53) / 57.375, view.Image[2 * 512 * 853 + 100], 4);
    }

    [Fact]
    public void A_presets_recipe_gives_its_scale_crop_and_normalization()
    {
        var recipe = RepLKNet.Models.Segmentation.SegmentorRegistry.Find("upernet-31B-cityscapes-769")!.Recipe;
        var o = SegmentationPipelineOptions.FromRecipe(recipe);
        Assert.Equal((2049, 1025), o.Scale);
        Assert.Equal((769, 769), o.CropSize);
        Assert.Equal(SegmentationPipelineOptions.Cityscapes() with { Mean = o.Mean, Std = o.Std }, o);
        Assert.Equal([123.675, 116.28, 103.53], o.Mean);
    }

    [Fact]
    public void Options_out_of_range_name_the_property()
    {
        Assert.Equal("CatMaxRatio", Assert.Throws<ArgumentException>(() => new SegmentationPipeline(new SegmentationPipelineOptions { CatMaxRatio = 0 })).ParamName);
        Assert.Equal("CropSize", Assert.Throws<ArgumentException>(() => new SegmentationPipeline(new SegmentationPipelineOptions { CropSize = (0, 4) })).ParamName);
        Assert.Equal("Std", Assert.Throws<ArgumentException>(() => new SegmentationPipeline(new SegmentationPipelineOptions { Std = [1, 0, 1] })).ParamName);
        Assert.Equal("RatioRange", Assert.Throws<ArgumentException>(() => new SegmentationPipeline(new SegmentationPipelineOptions { RatioRange = (2, 1) })).ParamName);
    }
}
