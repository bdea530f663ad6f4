using System.Globalization;
using RepLKNet.Data;
using RepLKNet.Models.Segmentation;

namespace RepLKNet.Segmentation;

/// <summary>
/// The MMSegmentation 0.x data pipeline settings of the official RepLKNet configs (<c>segmentation/configs/*_ade20k_*.py</c>,
/// <c>*_cityscapes_769.py</c>): <c>Resize(img_scale, ratio_range)</c>, <c>RandomCrop(crop_size, cat_max_ratio)</c>,
/// <c>RandomFlip(prob)</c>, <c>PhotoMetricDistortion</c>, <c>Normalize(mean, std, to_rgb=True)</c>,
/// <c>Pad(size=crop_size, pad_val=0, seg_pad_val=255)</c>; test: <c>Resize(img_scale, keep_ratio=True)</c>, <c>Normalize</c>.
/// </summary>
public sealed record SegmentationPipelineOptions
{
    /// <summary>MMSeg's <c>img_scale</c> (long, short): the image is rescaled so its long side is ≤ Long and its short side ≤ Short (mmcv <c>rescale_size</c>).</summary>
    public (int Long, int Short) Scale { get; init; } = (2048, 512);

    /// <summary>Training: the scale is multiplied by a ratio drawn uniformly from this range (null: the scale itself).</summary>
    public (double Min, double Max)? RatioRange { get; init; } = (0.5, 2.0);

    /// <summary>Training crop (height, width), the size of every training sample.</summary>
    public (int Height, int Width) CropSize { get; init; } = (512, 512);

    /// <summary><c>RandomCrop</c>'s <c>cat_max_ratio</c>: up to 10 re-draws while one class fills this fraction or more of the crop (1: off).</summary>
    public double CatMaxRatio { get; init; } = 0.75;

    /// <summary>Probability of a horizontal flip.</summary>
    public double FlipProbability { get; init; } = 0.5;

    /// <summary>Whether <c>PhotoMetricDistortion</c> (brightness 32, contrast 0.5–1.5, saturation 0.5–1.5, hue 18) runs.</summary>
    public bool PhotometricDistortion { get; init; } = true;

    /// <summary>Per-channel (R, G, B) mean on the 0–255 scale.</summary>
    public IReadOnlyList<double> Mean { get; init; } = [123.675, 116.28, 103.53];

    /// <summary>Per-channel (R, G, B) standard deviation on the 0–255 scale.</summary>
    public IReadOnlyList<double> Std { get; init; } = [58.395, 57.12, 57.375];

    /// <summary>The ADE20K configs (scale (2048, 512), ratio 0.5–2, crop <paramref name="crop"/>: 512 or 640).</summary>
    public static SegmentationPipelineOptions Ade20k(int crop = 512) => new() { Scale = (2048, crop), CropSize = (crop, crop) };

    /// <summary>The Cityscapes 769 config (scale (2049, 1025), ratio 0.5–2, crop 769).</summary>
    public static SegmentationPipelineOptions Cityscapes() => new() { Scale = (2049, 1025), CropSize = (769, 769) };

    /// <summary>
    /// The pipeline of a segmenter preset's recipe (<see cref="SegmentationRecipe"/>: its scale, crop, mean and std) with
    /// the official augmentation (ratio 0.5–2, cat_max_ratio 0.75, flip 0.5, photometric distortion).
    /// </summary>
    public static SegmentationPipelineOptions FromRecipe(SegmentationRecipe recipe)
    {
        ArgumentNullException.ThrowIfNull(recipe);
        return new() { Scale = recipe.Scale, CropSize = recipe.CropSize, Mean = recipe.Mean, Std = recipe.Std };
    }

    /// <summary>The largest scale or crop side accepted, in pixels.</summary>
    public const int MaxSide = 16384;

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentException">A value is out of range: the message starts with the property's name, which <see cref="ArgumentException.ParamName"/> holds.</exception>
    public void Validate()
    {
        static void Check(bool ok, string name, string rule)
        {
            if (!ok)
            {
                throw new ArgumentException($"{name} {rule}", name);
            }
        }

        Check(Scale.Long > 0 && Scale.Short > 0 && Scale.Long <= MaxSide && Scale.Short <= MaxSide, nameof(Scale), $"must be two sizes in 1 … {MaxSide} pixels");
        Check(RatioRange is null || (RatioRange.Value.Min > 0 && RatioRange.Value.Min <= RatioRange.Value.Max), nameof(RatioRange), "must be MIN,MAX with 0 < MIN ≤ MAX");
        Check(CropSize.Height >= 8 && CropSize.Width >= 8 && CropSize.Height <= MaxSide && CropSize.Width <= MaxSide, nameof(CropSize),
            $"must be 8 … {MaxSide} pixels on each side");
        Check(CatMaxRatio is > 0 and <= 1, nameof(CatMaxRatio), "must be in (0, 1]");
        Check(FlipProbability is >= 0 and <= 1, nameof(FlipProbability), "must be in [0, 1]");
        Check(Mean is { Count: 3 }, nameof(Mean), "must hold 3 values (R, G, B)");
        Check(Std is { Count: 3 } && Std.All(s => s > 0), nameof(Std), "must hold 3 positive values (R, G, B)");
    }

    /// <summary>One line for logs.</summary>
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"scale ({Scale.Long}, {Scale.Short}){(RatioRange is { } r ? $" × {r.Min:0.##}–{r.Max:0.##}" : "")}, crop {CropSize.Height}×{CropSize.Width} (cat_max_ratio {CatMaxRatio:0.##}), flip {FlipProbability:0.##}{(PhotometricDistortion ? ", photometric distortion" : "")}");
}

/// <summary>The random choices of one <c>PhotoMetricDistortion</c> call (null: that step is skipped).</summary>
/// <param name="Brightness">Added to every value (−32 … 32), or null.</param>
/// <param name="ContrastFirst">Mode 1: contrast before the HSV steps; mode 0: after them.</param>
/// <param name="Contrast">Multiplies every value (0.5 … 1.5), or null.</param>
/// <param name="Saturation">Multiplies the HSV saturation (0.5 … 1.5), or null.</param>
/// <param name="Hue">Added to the 8-bit HSV hue (0–179) modulo 180 (−18 … 17), or null.</param>
public sealed record PhotometricDraws(double? Brightness, bool ContrastFirst, double? Contrast, double? Saturation, int? Hue);

/// <summary>A test-view sample: the normalized image resized to the test scale, and where it came from.</summary>
/// <param name="Image">(3, Height, Width) normalized floats.</param>
/// <param name="Height">Rows after the keep-ratio resize.</param>
/// <param name="Width">Columns after the keep-ratio resize.</param>
public sealed record SegmentationTestView(float[] Image, int Height, int Width);

/// <summary>
/// MMSegmentation 0.x's training and test pipelines (<c>mmseg/datasets/pipelines/transforms.py</c> with mmcv's
/// <c>imrescale</c>/<c>imresize</c>/<c>imflip</c>/<c>impad</c>/<c>bgr2hsv</c>/<c>imnormalize</c>) on
/// <see cref="SegmentationSample"/>s. Every random draw comes from a <see cref="SampleRandom"/> in MMSeg's order (resize
/// ratio, crop offsets (re-drawn for cat_max_ratio), flip, photometric), one generator per sample keyed by the caller
/// (the loader keys it by seed, epoch and the sample's position in the epoch).
/// </summary>
public sealed class SegmentationPipeline
{
    private readonly SegmentationPipelineOptions _o;
    private readonly double[] _mean = new double[3];
    private readonly double[] _stdInverse = new double[3];

    /// <summary>Creates the pipeline.</summary>
    /// <exception cref="ArgumentException">An option is out of range (<see cref="SegmentationPipelineOptions.Validate"/>).</exception>
    public SegmentationPipeline(SegmentationPipelineOptions options)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        for (int c = 0; c < 3; c++)
        {
            // mmseg's Normalize holds mean and std as float32; mmcv.imnormalize subtracts float64(mean) and multiplies by
            // 1 / float64(std), each result stored as float32 (cv2.subtract / cv2.multiply on a float32 image).
            _mean[c] = (float)options.Mean[c];
            _stdInverse[c] = 1.0 / (float)options.Std[c];
        }
    }

    /// <summary>The settings.</summary>
    public SegmentationPipelineOptions Options => _o;

    /// <summary>Rows of every training sample.</summary>
    public int CropHeight => _o.CropSize.Height;

    /// <summary>Columns of every training sample.</summary>
    public int CropWidth => _o.CropSize.Width;

    /// <summary>
    /// The training view of <paramref name="sample"/>: random rescale, random crop (cat_max_ratio), flip, photometric
    /// distortion, normalize, pad. Writes the image into <paramref name="image"/> (3 × CropHeight × CropWidth floats, planar
    /// RGB, normalized, padding 0) and the labels into <paramref name="label"/> (CropHeight × CropWidth, padding 255).
    /// </summary>
    /// <exception cref="ArgumentException">A destination has the wrong length.</exception>
    public void Train(SegmentationSample sample, ref SampleRandom rng, Span<float> image, Span<long> label)
    {
        ArgumentNullException.ThrowIfNull(sample);
        int ch = CropHeight, cw = CropWidth;
        if (image.Length != 3 * ch * cw || label.Length != ch * cw)
        {
            throw new ArgumentException($"the destinations must hold 3×{ch}×{cw} floats and {ch}×{cw} labels");
        }

        // Resize(img_scale, ratio_range, keep_ratio=True).
        var scale = _o.Scale;
        if (_o.RatioRange is { } range)
        {
            double ratio = rng.NextDouble() * (range.Max - range.Min) + range.Min;
            scale = ((int)(scale.Long * ratio), (int)(scale.Short * ratio));
        }

        var (rw, rh) = RescaleSize(sample.Image.Width, sample.Image.Height, scale);
        var img = ResizeBilinear(sample.Image, rh, rw);
        var (lw, lh) = RescaleSize(sample.Label.Width, sample.Label.Height, scale);
        var seg = ResizeNearest(sample.Label, lh, lw);

        // RandomCrop(crop_size, cat_max_ratio).
        var (top, left) = CropOffset(img.Height, img.Width, seg, _o.CropSize, _o.CatMaxRatio, ref rng);
        img = Crop(img, top, left, ch, cw);
        seg = Crop(seg, top, left, ch, cw);

        // RandomFlip(prob).
        if (rng.NextDouble() < _o.FlipProbability)
        {
            img = Data.Transforms.ImageOps.FlipHorizontal(img);
            seg = Data.Transforms.ImageOps.FlipHorizontal(seg);
        }

        if (_o.PhotometricDistortion)
        {
            img = PhotometricDistort(img, DrawPhotometric(ref rng));
        }

        // Normalize, then Pad(size=crop, pad_val=0, seg_pad_val=255) at the bottom and right.
        image.Clear();
        label.Fill(SegmentationDataset.Ignore);
        for (int c = 0; c < 3; c++)
        {
            var src = img.Channel(c);
            var dst = image.Slice(c * ch * cw, ch * cw);
            for (int y = 0; y < img.Height; y++)
            {
                for (int x = 0; x < img.Width; x++)
                {
                    dst[y * cw + x] = Normalized(src[y * img.Width + x], c);
                }
            }
        }

        for (int y = 0; y < seg.Height; y++)
        {
            for (int x = 0; x < seg.Width; x++)
            {
                label[y * cw + x] = seg.Pixels[y * seg.Width + x];
            }
        }
    }

    /// <summary>
    /// The test view of <paramref name="image"/> (MMSeg's <c>MultiScaleFlipAug(img_scale, flip=False)</c> with
    /// <c>Resize(keep_ratio=True)</c> and <c>Normalize</c>): resized bilinearly to <see cref="RescaleSize"/> of the scale (no
    /// crop, no pad), normalized. The metric compares against the original-size label.
    /// </summary>
    public SegmentationTestView Test(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var (w, h) = RescaleSize(image.Width, image.Height, _o.Scale);
        var resized = ResizeBilinear(image, h, w);
        var data = new float[3 * h * w];
        Normalize(resized, data);
        return new SegmentationTestView(data, h, w);
    }

    /// <summary>(x − mean) / std per channel into <paramref name="destination"/> (3 × H × W floats), as mmcv's <c>imnormalize</c>.</summary>
    public void Normalize(ImageU8 image, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image.Channels != 3 || destination.Length != 3 * image.Plane)
        {
            throw new ArgumentException($"an RGB image of {image.Height}×{image.Width} needs {3 * image.Plane} floats");
        }

        for (int c = 0; c < 3; c++)
        {
            var src = image.Channel(c);
            var dst = destination.Slice(c * image.Plane, image.Plane);
            for (int i = 0; i < src.Length; i++)
            {
                dst[i] = Normalized(src[i], c);
            }
        }
    }

    private float Normalized(byte x, int c) => (float)((float)(x - _mean[c]) * _stdInverse[c]);

    /// <summary>
    /// mmcv's <c>rescale_size((w, h), scale)</c>: the factor min(long / max(h, w), short / min(h, w)) and the new size
    /// (⌊w·f + 0.5⌋, ⌊h·f + 0.5⌋).
    /// </summary>
    /// <returns>(width, height) after the keep-ratio rescale.</returns>
    public static (int Width, int Height) RescaleSize(int width, int height, (int Long, int Short) scale)
    {
        int longEdge = Math.Max(scale.Long, scale.Short), shortEdge = Math.Min(scale.Long, scale.Short);
        double factor = Math.Min((double)longEdge / Math.Max(height, width), (double)shortEdge / Math.Min(height, width));
        // mmcv rounds to the nearest pixel; a side that would round to 0 (a 3000×2 image) keeps one pixel.
        return (Math.Max(1, (int)(width * factor + 0.5)), Math.Max(1, (int)(height * factor + 0.5)));
    }

    /// <summary>
    /// <c>RandomCrop.get_crop_bbox</c> with <c>cat_max_ratio</c>: offsets drawn uniformly in [0, max(H − crop, 0)] (rows
    /// first); while fewer than two classes (255 not counted) are in the crop, or one fills ≥ <paramref name="catMaxRatio"/>
    /// of its labelled pixels, a new box is drawn, up to 10 times; after the 10th failure the last drawn box is kept unchecked.
    /// With <paramref name="catMaxRatio"/> 1 the first box is kept.
    /// </summary>
    /// <returns>(top, left) of the crop.</returns>
    public static (int Top, int Left) CropOffset(int height, int width, ImageU8 label, (int Height, int Width) crop, double catMaxRatio, ref SampleRandom rng)
    {
        ArgumentNullException.ThrowIfNull(label);
        (int, int) Draw(ref SampleRandom r) => (r.NextInt(Math.Max(height - crop.Height, 0) + 1), r.NextInt(Math.Max(width - crop.Width, 0) + 1));
        var box = Draw(ref rng);
        if (catMaxRatio < 1)
        {
            Span<int> counts = stackalloc int[256];
            for (int attempt = 0; attempt < 10; attempt++)
            {
                counts.Clear();
                int y1 = Math.Min(box.Item1 + crop.Height, label.Height), x1 = Math.Min(box.Item2 + crop.Width, label.Width);
                for (int y = box.Item1; y < y1; y++)
                {
                    for (int x = box.Item2; x < x1; x++)
                    {
                        counts[label.Pixels[y * label.Width + x]]++;
                    }
                }

                int kinds = 0, max = 0, sum = 0;
                for (int v = 0; v < 255; v++)
                {
                    if (counts[v] > 0)
                    {
                        kinds++;
                        sum += counts[v];
                        max = Math.Max(max, counts[v]);
                    }
                }

                if (kinds > 1 && (double)max / sum < catMaxRatio)
                {
                    break;
                }

                box = Draw(ref rng);
            }
        }

        return box;
    }

    /// <summary>
    /// The box (top, left, height, width) of <paramref name="image"/>, clipped to the image (numpy slicing: a crop larger
    /// than the image keeps what is there; <c>Pad</c> fills the rest later).
    /// </summary>
    public static ImageU8 Crop(ImageU8 image, int top, int left, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(image);
        int h = Math.Min(height, image.Height - top), w = Math.Min(width, image.Width - left);
        if (top == 0 && left == 0 && h == image.Height && w == image.Width)
        {
            return image;
        }

        var result = new ImageU8(image.Channels, h, w);
        for (int c = 0; c < image.Channels; c++)
        {
            var src = image.Channel(c);
            var dst = result.Channel(c);
            for (int y = 0; y < h; y++)
            {
                src.Slice((top + y) * image.Width + left, w).CopyTo(dst.Slice(y * w, w));
            }
        }

        return result;
    }

    /// <summary>
    /// OpenCV's <c>cv2.resize(..., INTER_LINEAR)</c> on 8-bit images (what mmcv's <c>imresize</c>/<c>imrescale</c> call):
    /// half-pixel centres (source x = (x + 0.5)·(W/W') − 0.5, clamped at the borders), 11-bit fixed-point weights rounded from
    /// float32, the sum rounded and shifted by 22 bits (OpenCV's reference, non-SIMD path; its SIMD path can differ by 1 in
    /// a few pixels); an exact 2× reduction on both axes is OpenCV's area average ((a + b + c + d + 2) / 4), as
    /// <c>cv2.resize</c> switches to it. No antialiasing.
    /// </summary>
    public static ImageU8 ResizeBilinear(ImageU8 source, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        int sh = source.Height, sw = source.Width;
        if (sh == height && sw == width)
        {
            return source;
        }

        var result = new ImageU8(source.Channels, height, width);
        if (sw == 2 * width && sh == 2 * height)
        {
            for (int c = 0; c < source.Channels; c++)
            {
                var s = source.Channel(c);
                var d = result.Channel(c);
                for (int y = 0; y < height; y++)
                {
                    for (int x = 0; x < width; x++)
                    {
                        int i = 2 * y * sw + 2 * x;
                        d[y * width + x] = (byte)((s[i] + s[i + 1] + s[i + sw] + s[i + sw + 1] + 2) >> 2);
                    }
                }
            }

            return result;
        }

        var (xs, xa) = LinearTaps(sw, width);
        var (ys, ya) = LinearTaps(sh, height);
        var rows = new int[2 * width];
        for (int c = 0; c < source.Channels; c++)
        {
            var s = source.Channel(c);
            var d = result.Channel(c);
            for (int y = 0; y < height; y++)
            {
                for (int k = 0; k < 2; k++)
                {
                    int row = Math.Min(ys[y] + k, sh - 1) * sw;
                    for (int x = 0; x < width; x++)
                    {
                        int x0 = xs[x], x1 = Math.Min(x0 + 1, sw - 1);
                        rows[k * width + x] = s[row + x0] * xa[2 * x] + s[row + x1] * xa[2 * x + 1];
                    }
                }

                int b0 = ya[2 * y], b1 = ya[2 * y + 1];
                for (int x = 0; x < width; x++)
                {
                    long v = ((long)rows[x] * b0 + (long)rows[width + x] * b1 + (1 << 21)) >> 22;
                    d[y * width + x] = (byte)Math.Clamp(v, 0, 255);
                }
            }
        }

        return result;
    }

    /// <summary>
    /// OpenCV's <c>cv2.resize(..., INTER_NEAREST)</c> (mmcv's 'nearest', used for label maps): source index
    /// ⌊x·(W/W')⌋, clamped to the last column/row; labels keep their values.
    /// </summary>
    public static ImageU8 ResizeNearest(ImageU8 source, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        int sh = source.Height, sw = source.Width;
        if (sh == height && sw == width)
        {
            return source;
        }

        double fx = 1.0 / ((double)width / sw), fy = 1.0 / ((double)height / sh);
        var xs = new int[width];
        for (int x = 0; x < width; x++)
        {
            xs[x] = Math.Min((int)Math.Floor(x * fx), sw - 1);
        }

        var result = new ImageU8(source.Channels, height, width);
        for (int c = 0; c < source.Channels; c++)
        {
            var s = source.Channel(c);
            var d = result.Channel(c);
            for (int y = 0; y < height; y++)
            {
                int sy = Math.Min((int)Math.Floor(y * fy), sh - 1);
                for (int x = 0; x < width; x++)
                {
                    d[y * width + x] = s[sy * sw + xs[x]];
                }
            }
        }

        return result;
    }

    /// <summary>
    /// Draws <c>PhotoMetricDistortion</c>'s choices in mmseg's order: brightness (coin, then δ ∈ U(−32, 32)), mode (coin),
    /// contrast if mode 1 (coin, α ∈ U(0.5, 1.5)), saturation (coin, α ∈ U(0.5, 1.5)), hue (coin, δ ∈ {−18 … 17}, numpy's
    /// <c>randint(-18, 18)</c>), contrast if mode 0.
    /// </summary>
    public static PhotometricDraws DrawPhotometric(ref SampleRandom rng)
    {
        double? brightness = rng.NextInt(2) == 1 ? rng.Uniform(-32, 32) : null;
        bool contrastFirst = rng.NextInt(2) == 1;
        double? contrast = null;
        if (contrastFirst && rng.NextInt(2) == 1)
        {
            contrast = rng.Uniform(0.5, 1.5);
        }

        double? saturation = rng.NextInt(2) == 1 ? rng.Uniform(0.5, 1.5) : null;
        int? hue = rng.NextInt(2) == 1 ? rng.NextInt(-18, 17) : null;
        if (!contrastFirst && rng.NextInt(2) == 1)
        {
            contrast = rng.Uniform(0.5, 1.5);
        }

        return new PhotometricDraws(brightness, contrastFirst, contrast, saturation, hue);
    }

    /// <summary>
    /// Applies <c>PhotoMetricDistortion</c> with the choices <paramref name="draws"/> to an 8-bit RGB image: brightness and
    /// contrast are mmseg's <c>convert</c> (float32 x·α + β, clipped to 0–255, truncated to uint8); saturation and hue go
    /// through OpenCV's 8-bit HSV (<c>mmcv.bgr2hsv</c>/<c>hsv2bgr</c>: H in 0–179, S and V in 0–255; forward in OpenCV's
    /// 12-bit fixed point, back in float32 rounded to nearest even), the saturation scaled with <c>convert</c>, the hue shifted
    /// modulo 180.
    /// </summary>
    public static ImageU8 PhotometricDistort(ImageU8 image, PhotometricDraws draws)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(draws);
        if (image.Channels != 3)
        {
            throw new ArgumentException($"image must be RGB, got {image.Channels} channels", nameof(image));
        }

        var p = (byte[])image.Pixels.Clone();
        if (draws.Brightness is { } beta)
        {
            Convert(p, 1f, (float)beta);
        }

        if (draws.ContrastFirst && draws.Contrast is { } a1)
        {
            Convert(p, (float)a1, 0f);
        }

        if (draws.Saturation is not null || draws.Hue is not null)
        {
            int plane = image.Plane;
            for (int c = 0; c < 2; c++)
            {
                bool saturation = c == 0;
                if ((saturation ? draws.Saturation is null : draws.Hue is null))
                {
                    continue;
                }

                for (int i = 0; i < plane; i++)
                {
                    var (h, s, v) = RgbToHsv(p[i], p[plane + i], p[2 * plane + i]);
                    if (saturation)
                    {
                        s = ConvertOne(s, (float)draws.Saturation!.Value, 0f);
                    }
                    else
                    {
                        h = (byte)(((h + draws.Hue!.Value) % 180 + 180) % 180);
                    }

                    (p[i], p[plane + i], p[2 * plane + i]) = HsvToRgb(h, s, v);
                }
            }
        }

        if (!draws.ContrastFirst && draws.Contrast is { } a0)
        {
            Convert(p, (float)a0, 0f);
        }

        return new ImageU8(p, 3, image.Height, image.Width);
    }

    /// <summary>OpenCV's 8-bit RGB → HSV (<c>COLOR_RGB2HSV</c>, hue range 180): fixed point with 12-bit tables, as <c>RGB2HSV_b</c>.</summary>
    public static (byte H, byte S, byte V) RgbToHsv(byte r, byte g, byte b)
    {
        const int shift = 12;
        int v = Math.Max(Math.Max(r, g), b), vmin = Math.Min(Math.Min(r, g), b);
        int diff = v - vmin;
        int vr = v == r ? -1 : 0, vg = v == g ? -1 : 0;
        int s = (diff * SaturationTable[v] + (1 << (shift - 1))) >> shift;
        int h = (vr & (g - b)) + (~vr & ((vg & (b - r + 2 * diff)) + (~vg & (r - g + 4 * diff))));
        h = (h * HueTable[diff] + (1 << (shift - 1))) >> shift;
        h += h < 0 ? 180 : 0;
        return ((byte)h, (byte)s, (byte)v);
    }

    /// <summary>OpenCV's 8-bit HSV (hue range 180) → RGB (<c>HSV2RGB_b</c>): S and V scaled to 0–1 and H by 6/180 in float32, the sector formula, ×255 rounded to nearest even.</summary>
    public static (byte R, byte G, byte B) HsvToRgb(byte h8, byte s8, byte v8)
    {
        float h = h8, s = s8 * (1f / 255f), v = v8 * (1f / 255f);
        float r, g, b;
        if (s == 0)
        {
            r = g = b = v;
        }
        else
        {
            h *= 6f / 180f;
            h %= 6f;
            h += h < 0 ? 6f : 0f;
            int sector = (int)MathF.Floor(h);
            h -= sector;
            if ((uint)sector >= 6u)
            {
                sector = 0;
                h = 0f;
            }

            Span<float> tab = [v, v * (1f - s), v * (1f - (s * h)), v * (1f - (s * (1f - h)))];
            ReadOnlySpan<int> bIndex = [1, 1, 3, 0, 0, 2], gIndex = [3, 0, 0, 2, 1, 1], rIndex = [0, 2, 1, 1, 3, 0];
            b = tab[bIndex[sector]];
            g = tab[gIndex[sector]];
            r = tab[rIndex[sector]];
        }

        return (RoundByte(r * 255f), RoundByte(g * 255f), RoundByte(b * 255f));
    }

    private static readonly int[] SaturationTable = Table(255.0, 1.0);
    private static readonly int[] HueTable = Table(180.0, 6.0);

    private static int[] Table(double range, double divisor)
    {
        var t = new int[256];
        for (int i = 1; i < 256; i++)
        {
            t[i] = (int)Math.Round((range * 4096) / (divisor * i), MidpointRounding.ToEven);
        }

        return t;
    }

    private static byte RoundByte(float x) => (byte)Math.Clamp((int)MathF.Round(x, MidpointRounding.ToEven), 0, 255);

    private static void Convert(byte[] p, float alpha, float beta)
    {
        for (int i = 0; i < p.Length; i++)
        {
            p[i] = ConvertOne(p[i], alpha, beta);
        }
    }

    /// <summary>mmseg's <c>convert</c> on one value: float32 x·α + β, clipped to [0, 255], truncated.</summary>
    private static byte ConvertOne(byte x, float alpha, float beta)
    {
        float y = (x * alpha) + beta;
        return (byte)(y <= 0f ? 0f : y >= 255f ? 255f : y);
    }

    /// <summary>OpenCV's linear-resize taps: first source index and the two 11-bit weights per output position.</summary>
    private static (int[] Start, int[] Weights) LinearTaps(int source, int target)
    {
        double scale = 1.0 / ((double)target / source);
        var start = new int[target];
        var weights = new int[2 * target];
        for (int d = 0; d < target; d++)
        {
            float f = (float)(((d + 0.5) * scale) - 0.5);
            int s = (int)MathF.Floor(f);
            f -= s;
            if (s < 0)
            {
                f = 0;
                s = 0;
            }

            if (s >= source - 1)
            {
                f = 0;
                s = source - 1;
            }

            start[d] = s;
            weights[2 * d] = (int)MathF.Round((1f - f) * 2048f, MidpointRounding.ToEven);
            weights[2 * d + 1] = (int)MathF.Round(f * 2048f, MidpointRounding.ToEven);
        }

        return (start, weights);
    }
}
