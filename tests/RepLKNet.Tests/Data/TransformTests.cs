using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Data;

public sealed class TransformTests
{
    public TransformTests() => Torch.EnsureLoaded();

    private static ImageU8 RandomImage(int channels, int height, int width, int seed)
    {
        var rng = new Random(seed);
        var pixels = new byte[channels * height * width];
        rng.NextBytes(pixels);
        return new ImageU8(pixels, channels, height, width);
    }

    private static Tensor AsTensor(ImageU8 image) =>
        tensor(image.Pixels, [1, image.Channels, image.Height, image.Width], dtype: ScalarType.Byte).to(float32);

    [Theory]
    [InlineData(3, 37, 53, 16, 20)] // shrink (antialiased)
    [InlineData(1, 12, 9, 31, 22)] // enlarge
    [InlineData(3, 40, 40, 40, 13)] // one axis only
    public void Bicubic_resize_matches_libtorch_antialiased_bicubic(int channels, int h, int w, int outH, int outW)
    {
        var image = RandomImage(channels, h, w, seed: h * 31 + w);
        var ours = AsTensor(ImageOps.Resize(image, outH, outW));
        // libtorch's antialiased bicubic uses PIL's kernel (a = −0.5): an independent implementation of the same filter.
        var reference = nn.functional.interpolate(AsTensor(image), [outH, outW], mode: InterpolationMode.Bicubic, align_corners: false, antialias: true)
            .round().clamp(0, 255);
        double maxDiff = (ours - reference).abs().max().item<float>();
        Assert.True(maxDiff <= 1.0, $"max |ours − torch| = {maxDiff} grey levels");
    }

    [Fact]
    public void Affine_translation_by_whole_pixels_shifts_and_fills()
    {
        var image = RandomImage(3, 10, 12, 3);
        byte[] fill = [7, 8, 9];
        var moved = ImageOps.Affine(image, 1, 0, 3, 0, 1, -2, fill); // output (x, y) reads input (x + 3, y − 2)
        for (int c = 0; c < 3; c++)
        {
            for (int y = 0; y < 10; y++)
            {
                for (int x = 0; x < 12; x++)
                {
                    int sx = x + 3, sy = y - 2;
                    byte expected = sx < 12 && sy >= 0 ? image.Pixels[c * 120 + sy * 12 + sx] : fill[c];
                    Assert.Equal(expected, moved.Pixels[c * 120 + y * 12 + x]);
                }
            }
        }
    }

    [Fact]
    public void Rotating_a_square_image_by_90_degrees_is_libtorch_rot90()
    {
        var image = RandomImage(3, 9, 9, 4);
        var rotated = AsTensor(ImageOps.Rotate(image, 90, [0, 0, 0]));
        // PIL's rotate turns counter-clockwise: torch.rot90 with k = 1 over (H, W).
        Assert.True(rotated.equal(AsTensor(image).rot90(1, (2, 3))).all().item<bool>());
    }

    [Fact]
    public void Point_operations_follow_their_definitions()
    {
        var image = RandomImage(3, 16, 16, 5);
        var flipped = ImageOps.FlipHorizontal(image);
        Assert.True(AsTensor(flipped).equal(AsTensor(image).flip(3)).all().item<bool>());

        var dull = new ImageU8([.. image.Pixels.Select(p => (byte)(40 + p / 4))], 3, 16, 16);
        var stretched = ImageOps.AutoContrast(dull);
        for (int c = 0; c < 3; c++)
        {
            var plane = stretched.Channel(c).ToArray();
            Assert.Equal(0, plane.Min());
            Assert.Equal(255, plane.Max());
        }

        // PIL's equalize needs more than 255 pixels per level step: a 64×64 image.
        var large = RandomImage(3, 64, 64, 11);
        dull = new ImageU8([.. large.Pixels.Select(p => (byte)(40 + p / 4))], 3, 64, 64);
        var equalized = ImageOps.Equalize(dull).Pixels;
        // Equalization spreads the 64 input levels over the whole range and keeps their order.
        Assert.True(equalized.Max() - equalized.Min() > 200);
        for (int i = 1; i < dull.Plane; i++) // one channel: each has its own table
        {
            if (dull.Pixels[i] > dull.Pixels[0])
            {
                Assert.True(equalized[i] >= equalized[0]);
            }
        }

        var ra = new RandAugment("rand-m10-mstd0-inc1-p1", [0, 0, 0]);
        var rng = new SampleRandom(1);
        var posterized = ra.Apply("Posterize", image, 0.5, ref rng); // increasing: 4 − 2 = 2 bits kept
        Assert.All(posterized.Pixels, p => Assert.Equal(0, p & 0x3F));
        var solarized = ra.Apply("Solarize", image, 0.5, ref rng); // threshold 128
        for (int i = 0; i < image.Pixels.Length; i++)
        {
            Assert.Equal(image.Pixels[i] < 128 ? image.Pixels[i] : 255 - image.Pixels[i], solarized.Pixels[i]);
        }

        var brighter = ImageOps.Blend(new ImageU8(3, 16, 16), image, 1.5);
        Assert.Equal(ImageOps.ToByte(image.Pixels[17] * 1.5), brighter.Pixels[17]);
    }

    [Fact]
    public void RandAugment_parses_timm_strings_and_rejects_bad_ones()
    {
        var ra = new RandAugment("rand-m9-mstd0.5-inc1", [1, 2, 3]);
        Assert.Equal((9.0, 0.5, true, 2, 0.5), (ra.Magnitude, ra.MagnitudeStd, ra.Increasing, ra.Layers, ra.Probability));
        var three = new RandAugment("rand-m7-n3-mmax12", [1, 2, 3]);
        Assert.Equal((7.0, 3, 12.0, false), (three.Magnitude, three.Layers, three.MagnitudeMax, three.Increasing));
        Assert.Contains("must start with 'rand'", Assert.Throws<ArgumentException>(() => new RandAugment("auto-m9", [0])).Message, StringComparison.Ordinal);
        Assert.Contains("unknown part 'x3'", Assert.Throws<ArgumentException>(() => new RandAugment("rand-m9-x3", [0])).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(1)]
    public void Every_RandAugment_operation_keeps_the_shape_and_the_draws_are_keyed(int channels)
    {
        var full = RandomImage(channels, 24, 20, 6);
        var image = new ImageU8([.. full.Pixels.Select(p => (byte)(20 + p / 2))], channels, 24, 20); // not already full-range
        var ra = new RandAugment("rand-m9-mstd0.5-inc1", [.. Enumerable.Repeat((byte)128, channels)]);
        int changed = 0;
        foreach (var op in RandAugment.Operations)
        {
            var rng = new SampleRandom(9, (ulong)op.Length);
            var result = ra.Apply(op, image, 0.9, ref rng);
            Assert.Equal((channels, 24, 20), (result.Channels, result.Height, result.Width));
            changed += result.Pixels.SequenceEqual(image.Pixels) ? 0 : 1;
        }

        // Colour on a grey image is the identity; every other operation changes random pixels.
        Assert.True(changed >= RandAugment.Operations.Count - (channels == 1 ? 1 : 0), $"{changed} operations changed the image");

        var a = new SampleRandom(3, 1, 4);
        var b = new SampleRandom(3, 1, 4);
        var ia = ra.Apply(image, ref a);
        Assert.Equal(ia.Pixels, ra.Apply(image, ref b).Pixels);
        int differing = 0;
        for (ulong key = 5; key < 10; key++)
        {
            var other = new SampleRandom(3, 1, key);
            differing += ra.Apply(image, ref other).Pixels.SequenceEqual(ia.Pixels) ? 0 : 1;
        }

        Assert.True(differing >= 3, $"only {differing} of 5 other keys gave another augmentation");
    }

    [Fact]
    public void Train_pipeline_crops_to_size_normalizes_and_erases()
    {
        var norm = new Normalization([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]);
        var plain = new SamplePipeline(new AugmentOptions { InputSize = 16 }, norm, 3, 16);
        var image = RandomImage(3, 16, 16, 7);
        var sample = new float[plain.SampleLength];
        plain.Eval(image, sample);
        // The eval view of a 16×16 image at size 16 is the image itself, normalized per channel.
        float[] mean = [0.5f, 0.4f, 0.3f], std = [0.2f, 0.25f, 0.3f];
        var expected = ((AsTensor(image) / 255.0 - tensor(mean).view(1, 3, 1, 1)) / tensor(std).view(1, 3, 1, 1)).flatten();
        Assert.True(tensor(sample).allclose(expected, 1e-5, 1e-5));

        var options = new AugmentOptions { InputSize = 16, CropScale = (0.08, 1), HorizontalFlip = 0.5, RandAugment = "rand-m9-mstd0.5-inc1", EraseProbability = 1 };
        var augmenting = new SamplePipeline(options, norm, 3, 16);
        var big = RandomImage(3, 40, 30, 8);
        var first = new float[augmenting.SampleLength];
        var again = new float[augmenting.SampleLength];
        var rngA = new SampleRandom(1, 2, 3);
        var rngB = new SampleRandom(1, 2, 3);
        augmenting.Train(big, ref rngA, first);
        augmenting.Train(big, ref rngB, again);
        Assert.Equal(first, again);
        // Erasing (p = 1) writes N(0, 1) values: some lie outside what normalized 8-bit pixels can take.
        float low = (float)((0 - 0.5) / 0.2), high = (float)((1 - 0.3) / 0.3);
        Assert.Contains(first, v => v < low || v > high || Math.Abs(v * 255 * 0.2 + 0.5 * 255 - Math.Round(v * 255 * 0.2 + 0.5 * 255)) > 0.01);
    }

    [Fact]
    public void Eval_view_resizes_the_short_side_and_centre_crops()
    {
        var pipeline = new SamplePipeline(new AugmentOptions { CropPct = 0.875 }, new Normalization([0.5], [0.5]), 1, 14);
        var wide = RandomImage(1, 20, 40, 9);
        var view = pipeline.EvalView(wide);
        Assert.Equal((14, 14), (view.Height, view.Width));
        // short side 20 → ⌊14 / 0.875⌋ = 16, long side 32; the crop starts at (1, 9).
        var resized = ImageOps.Resize(wide, 16, 32);
        for (int y = 0; y < 14; y++)
        {
            for (int x = 0; x < 14; x++)
            {
                Assert.Equal(resized.Pixels[(y + 1) * 32 + x + 9], view.Pixels[y * 14 + x]);
            }
        }
    }

    [Theory]
    [InlineData(33, 0.875)] // the smallest size the official code resizes at
    [InlineData(64, 0.9)]
    [InlineData(224, 0.875)] // 224 → 256 → centre 224
    public void An_image_already_at_the_input_size_is_resized_and_centre_cropped_like_any_other(int size, double cropPct)
    {
        var pipeline = new SamplePipeline(new AugmentOptions { CropPct = cropPct }, new Normalization([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), 3, size);
        var image = RandomImage(3, size, size, Environment.TickCount);
        var view = pipeline.EvalView(image);
        Assert.Equal((3, size, size), (view.Channels, view.Height, view.Width));
        // torchvision: Resize(int(size / crop_pct)) bicubic, CenterCrop(size) with top = int(round((short − size) / 2)).
        int resized = (int)(size / cropPct);
        int top = (int)Math.Round((resized - size) / 2.0, MidpointRounding.ToEven);
        Assert.True(resized > size);
        var big = ImageOps.Resize(image, resized, resized);
        var expected = AsTensor(big)[.., .., top..(top + size), top..(top + size)];
        Assert.True(AsTensor(view).equal(expected).all().item<bool>(), "the view is the project's bicubic resize to int(size / crop_pct), centre-cropped");
        // Independently: libtorch's antialiased bicubic (PIL's filter) resized and cropped, within one grey level.
        var reference = nn.functional.interpolate(AsTensor(image), [resized, resized], mode: InterpolationMode.Bicubic, align_corners: false, antialias: true)
            .round().clamp(0, 255)[.., .., top..(top + size), top..(top + size)];
        Assert.True((AsTensor(view) - reference).abs().max().item<float>() <= 1.0);
        Assert.False(AsTensor(view).equal(AsTensor(image)).all().item<bool>(), "the image must not be passed through as it is");

        // Normalized samples (what predict, predict --onnx and eval feed the network) come from that view.
        var sample = new float[pipeline.SampleLength];
        pipeline.Eval(image, sample);
        Assert.True(tensor(sample).allclose(((AsTensor(view) / 255.0 - 0.5) / 0.5).flatten(), 1e-6, 1e-6));
    }

    [Fact]
    public void From_384_up_every_image_is_warped_to_the_input_size_and_at_32_and_below_a_same_size_image_is_kept()
    {
        var norm = new Normalization([0.5], [0.5]);
        var warp = new SamplePipeline(new AugmentOptions { CropPct = 0.875 }, norm, 1, 384);
        var tall = RandomImage(1, 400, 384, Environment.TickCount);
        var view = warp.EvalView(tall);
        Assert.Equal((384, 384), (view.Height, view.Width));
        Assert.Equal(ImageOps.Resize(tall, 384, 384).Pixels, view.Pixels); // warped (bicubic), not short side + crop
        // What the below-384 rule would give: 400×384 → 456×438, centre 384×384 from (36, 27).
        var cropped = AsTensor(ImageOps.Resize(tall, 456, 438))[.., .., 36..420, 27..411];
        Assert.False(AsTensor(view).equal(cropped).all().item<bool>());
        var square = RandomImage(1, 384, 384, Environment.TickCount + 1);
        Assert.Equal(ImageOps.Resize(square, 384, 384).Pixels, warp.EvalView(square).Pixels);

        // The official build_transform does not resize at input sizes ≤ 32 (resize_im = input_size > 32).
        var small = new SamplePipeline(new AugmentOptions { CropPct = 0.875 }, norm, 1, 32);
        var cifarSized = RandomImage(1, 32, 32, Environment.TickCount + 2);
        Assert.Same(cifarSized, small.EvalView(cifarSized));
    }

    [Fact]
    public void Mixup_and_CutMix_mix_with_the_reversed_batch_and_the_targets_say_how_much()
    {
        const int n = 6, c = 2, s = 8, classes = 4;
        var rng0 = new Random(10);
        var images = Enumerable.Range(0, n * c * s * s).Select(_ => (float)rng0.NextDouble()).ToArray();
        long[] labels = [0, 1, 2, 3, 0, 1];
        foreach (var (mixup, cutmix) in new[] { (0.8, 0.0), (0.0, 1.0) })
        {
            var x = (float[])images.Clone();
            var options = new AugmentOptions { Mixup = mixup, CutMix = cutmix, LabelSmoothing = 0.1 };
            var rng = new SampleRandom(5, (ulong)(mixup * 10));
            var targets = Mixing.Apply(x, labels, n, c, s, classes, options, ref rng);
            var t = tensor(targets, [n, classes]);
            Assert.True(t.sum(1).allclose(ones(n), 1e-5, 1e-5));
            // λ from the targets: sample 0 (label 0) is mixed with sample 5 (label 1).
            double off = 0.1 / classes, on = 1 - 0.1 + off;
            double lambda = (targets[0] - off) / (on - off);
            var original = tensor(images, [n, c, s, s]);
            var mixed = tensor(x, [n, c, s, s]);
            if (mixup > 0)
            {
                var expected = original * (float)lambda + original.flip(0) * (float)(1 - lambda);
                Assert.True(mixed.allclose(expected, 1e-5, 1e-5), "mixup is λ·x + (1 − λ)·x.flip(0)");
            }
            else
            {
                // Each pixel comes from the image or its partner; the partner's share is 1 − λ.
                var fromPartner = mixed.ne(original);
                Assert.True(mixed.eq(original).logical_or(mixed.eq(original.flip(0))).all().item<bool>());
                double share = fromPartner[0].to(float32).mean().item<float>();
                Assert.True(Math.Abs(share - (1 - lambda)) < 1e-6, $"box share {share} vs 1 − λ = {1 - lambda}");
            }
        }
    }
}
