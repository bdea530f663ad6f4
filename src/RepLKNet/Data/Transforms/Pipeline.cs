using System.Globalization;
using System.Text;

namespace RepLKNet.Data.Transforms;

/// <summary>
/// The data recipe: the train pipeline (RandomResizedCrop with bicubic interpolation, horizontal flip, RandAugment,
/// normalization, RandomErasing), batch-level Mixup/CutMix, and the eval pipeline (short side to size / crop_pct, bicubic,
/// centre crop). Defaults do nothing; the recipes' values (the official ImageNet recipe, spec §8, and each dataset's) are in Training/Recipes.cs.
/// </summary>
public sealed record AugmentOptions
{
    /// <summary>Square input size of the network; null: the dataset's own size (fixed-size sets only).</summary>
    public int? InputSize { get; init; }

    /// <summary>RandomResizedCrop area range (fractions of the image); null: no random crop.</summary>
    public (double Min, double Max)? CropScale { get; init; }

    /// <summary>RandomResizedCrop aspect-ratio range.</summary>
    public (double Min, double Max) CropRatio { get; init; } = (3.0 / 4, 4.0 / 3);

    /// <summary>Probability of a horizontal flip.</summary>
    public double HorizontalFlip { get; init; }

    /// <summary>RandAugment string (e.g. <c>rand-m9-mstd0.5-inc1</c>); null: none.</summary>
    public string? RandAugment { get; init; }

    /// <summary>RandomErasing probability (mode "pixel", one box).</summary>
    public double EraseProbability { get; init; }

    /// <summary>Mixup α (0: off).</summary>
    public double Mixup { get; init; }

    /// <summary>CutMix α (0: off).</summary>
    public double CutMix { get; init; }

    /// <summary>Probability that a batch is mixed at all.</summary>
    public double MixProbability { get; init; } = 1.0;

    /// <summary>With both on: probability of CutMix rather than Mixup.</summary>
    public double MixSwitchProbability { get; init; } = 0.5;

    /// <summary>Label smoothing (folded into the soft targets when mixing).</summary>
    public double LabelSmoothing { get; init; } = 0.1;

    /// <summary>Eval centre-crop fraction (the short side is resized to size / crop_pct first).</summary>
    public double CropPct { get; init; } = 0.875;

    /// <summary>Whether batches are mixed.</summary>
    public bool Mixes => (Mixup > 0 || CutMix > 0) && MixProbability > 0;

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentException">
    /// A value is out of range: the message starts with the property's name, which <see cref="ArgumentException.ParamName"/>
    /// holds (e.g. <c>HorizontalFlip must be in [0, 1]</c>).
    /// </exception>
    public void Validate()
    {
        static void Check(bool ok, string name, string rule)
        {
            if (!ok)
            {
                throw new ArgumentException($"{name} {rule}", name);
            }
        }

        Check(InputSize is null or > 0, nameof(InputSize), "must be positive");
        Check(CropScale is null || (CropScale.Value.Min > 0 && CropScale.Value.Min <= CropScale.Value.Max && CropScale.Value.Max <= 1), nameof(CropScale), "must be MIN,MAX with 0 < MIN ≤ MAX ≤ 1");
        Check(CropRatio.Min > 0 && CropRatio.Min <= CropRatio.Max, nameof(CropRatio), "must be MIN,MAX with 0 < MIN ≤ MAX");
        Check(HorizontalFlip is >= 0 and <= 1, nameof(HorizontalFlip), "must be in [0, 1]");
        Check(EraseProbability is >= 0 and <= 1, nameof(EraseProbability), "must be in [0, 1]");
        Check(Mixup >= 0, nameof(Mixup), "must be ≥ 0");
        Check(CutMix >= 0, nameof(CutMix), "must be ≥ 0");
        Check(MixProbability is >= 0 and <= 1, nameof(MixProbability), "must be in [0, 1]");
        Check(MixSwitchProbability is >= 0 and <= 1, nameof(MixSwitchProbability), "must be in [0, 1]");
        Check(LabelSmoothing is >= 0 and < 1, nameof(LabelSmoothing), "must be in [0, 1)");
        Check(CropPct is > 0 and <= 1, nameof(CropPct), "must be in (0, 1]");
        if (RandAugment is not null)
        {
            try
            {
                _ = new RandAugment(RandAugment, [0, 0, 0]);
            }
            catch (ArgumentException e)
            {
                // RandAugment's own message names its spec argument; here the spec is this property.
                string reason = e.ParamName is { } spec ? e.Message.Replace($" (Parameter '{spec}')", "", StringComparison.Ordinal) : e.Message;
                throw new ArgumentException($"{nameof(RandAugment)} {reason}", nameof(RandAugment), e);
            }
        }
    }

    /// <summary>One line for logs.</summary>
    public string Describe(int size)
    {
        var s = new StringBuilder();
        s.Append(CultureInfo.InvariantCulture, $"{size}×{size}");
        if (CropScale is { } c)
        {
            s.Append(CultureInfo.InvariantCulture, $", random-resized-crop {c.Min:0.##}–{c.Max:0.##} bicubic");
        }

        if (HorizontalFlip > 0)
        {
            s.Append(CultureInfo.InvariantCulture, $", hflip {HorizontalFlip:0.##}");
        }

        if (RandAugment is not null)
        {
            s.Append(CultureInfo.InvariantCulture, $", {RandAugment}");
        }

        if (EraseProbability > 0)
        {
            s.Append(CultureInfo.InvariantCulture, $", random-erasing {EraseProbability:0.##}");
        }

        if (Mixes)
        {
            s.Append(CultureInfo.InvariantCulture, $", mixup {Mixup:0.##} / cutmix {CutMix:0.##}");
        }

        if (LabelSmoothing > 0)
        {
            s.Append(CultureInfo.InvariantCulture, $", label smoothing {LabelSmoothing:0.##}");
        }

        if (s.Length == $"{size}×{size}".Length)
        {
            s.Append(", no augmentation");
        }

        return s.ToString();
    }
}

/// <summary>Turns dataset images into normalized float samples (train: augmented with a keyed generator; eval: fixed).</summary>
public sealed class SamplePipeline
{
    private readonly AugmentOptions _o;
    private readonly RandAugment? _randAugment;
    private readonly Normalization _norm;

    /// <summary>Creates the pipeline for <paramref name="channels"/>-channel images at <paramref name="size"/>×<paramref name="size"/>.</summary>
    public SamplePipeline(AugmentOptions options, Normalization normalization, int channels, int size)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        _norm = normalization ?? throw new ArgumentNullException(nameof(normalization));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        Channels = channels;
        Size = size;
        _ = _norm.At(0, channels); // a 3-value normalization on grey images fails here, before any worker runs
        _randAugment = options.RandAugment is { } spec ? new RandAugment(spec, normalization.FillColour(channels)) : null;
    }

    /// <summary>Channels of every sample.</summary>
    public int Channels { get; }

    /// <summary>Side of every (square) sample.</summary>
    public int Size { get; }

    /// <summary>Floats per sample.</summary>
    public int SampleLength => Channels * Size * Size;

    /// <summary>The training view of <paramref name="image"/>, written normalized into <paramref name="destination"/>.</summary>
    public void Train(ImageU8 image, ref SampleRandom rng, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(image);
        image = _o.CropScale is { } scale ? RandomResizedCrop(image, scale, ref rng) : EvalView(image);
        if (rng.Chance(_o.HorizontalFlip))
        {
            image = ImageOps.FlipHorizontal(image);
        }

        if (_randAugment is not null)
        {
            image = _randAugment.Apply(image, ref rng);
        }

        Normalize(image, destination);
        if (rng.Chance(_o.EraseProbability))
        {
            Erase(destination, ref rng);
        }
    }

    /// <summary>The evaluation view of <paramref name="image"/>, written normalized into <paramref name="destination"/>.</summary>
    public void Eval(ImageU8 image, Span<float> destination) => Normalize(EvalView(image), destination);

    /// <summary>
    /// The eval geometry of the official <c>datasets.py</c> <c>build_transform(is_train=False)</c> (timm/ConvNeXt lineage,
    /// spec §8), applied to every image whatever its size: for sizes above 32 and below 384 the short side goes to
    /// ⌊size / crop_pct⌋ (bicubic, the long side ⌊short · long / short⌋ as torchvision's Resize) and the centre size×size is
    /// cut (top/left rounded half to even, as torchvision's CenterCrop); from 384 up the image is warped to size×size
    /// (bicubic). An image already at size×size goes through the same steps (at 224: 224 → 256 → centre 224).
    /// At 32 and below the official code does no resize at all (<c>resize_im = input_size &gt; 32</c>: ToTensor and
    /// Normalize only), so a size×size image is kept as it is there; an image of another size, which the official code
    /// could not batch, gets the short-side resize and centre crop (this project's extension).
    /// </summary>
    /// <param name="image">Any size, <see cref="Channels"/> channels.</param>
    /// <returns>A <see cref="Size"/>×<see cref="Size"/> image.</returns>
    public ImageU8 EvalView(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (Size <= MaxUnresizedSize && image.Height == Size && image.Width == Size)
        {
            return image;
        }

        if (Size >= 384)
        {
            return ImageOps.Resize(image, Size, Size);
        }

        int shortSide = (int)Math.Floor(Size / _o.CropPct);
        int h, w;
        if (image.Height <= image.Width)
        {
            h = shortSide;
            w = (int)(shortSide * (double)image.Width / image.Height);
        }
        else
        {
            w = shortSide;
            h = (int)(shortSide * (double)image.Height / image.Width);
        }

        var resized = ImageOps.Resize(image, h, w);
        int top = (int)Math.Round((h - Size) / 2.0, MidpointRounding.ToEven), left = (int)Math.Round((w - Size) / 2.0, MidpointRounding.ToEven);
        return Crop(resized, top, left, Size, Size);
    }

    /// <summary>
    /// The largest input size at which the official eval transform does not resize (<c>resize_im = input_size &gt; 32</c> in
    /// the official <c>datasets.py</c>): the CIFAR-sized and Fashion-MNIST-sized runs evaluate their images as they are.
    /// </summary>
    public const int MaxUnresizedSize = 32;

    /// <summary>torchvision's RandomResizedCrop box choice (10 tries, then a centre crop with the ratio clamped), resized bicubic.</summary>
    public ImageU8 RandomResizedCrop(ImageU8 image, (double Min, double Max) scale, ref SampleRandom rng)
    {
        ArgumentNullException.ThrowIfNull(image);
        int height = image.Height, width = image.Width;
        double area = height * width;
        double logLow = Math.Log(_o.CropRatio.Min), logHigh = Math.Log(_o.CropRatio.Max);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * rng.Uniform(scale.Min, scale.Max);
            double ratio = Math.Exp(rng.Uniform(logLow, logHigh));
            int w = (int)Math.Round(Math.Sqrt(target * ratio));
            int h = (int)Math.Round(Math.Sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= width && h <= height)
            {
                int top = rng.NextInt(0, height - h), left = rng.NextInt(0, width - w);
                return ImageOps.ResizeBicubic(image, left, top, w, h, Size, Size);
            }
        }

        double inRatio = (double)width / height;
        int cw, ch;
        if (inRatio < _o.CropRatio.Min)
        {
            cw = width;
            ch = (int)Math.Round(cw / _o.CropRatio.Min);
        }
        else if (inRatio > _o.CropRatio.Max)
        {
            ch = height;
            cw = (int)Math.Round(ch * _o.CropRatio.Max);
        }
        else
        {
            cw = width;
            ch = height;
        }

        return ImageOps.ResizeBicubic(image, (width - cw) / 2, (height - ch) / 2, cw, ch, Size, Size);
    }

    private static ImageU8 Crop(ImageU8 image, int top, int left, int height, int width)
    {
        var result = new ImageU8(image.Channels, height, width);
        for (int c = 0; c < image.Channels; c++)
        {
            var src = image.Channel(c);
            var dst = result.Channel(c);
            for (int y = 0; y < height; y++)
            {
                int sy = Math.Clamp(top + y, 0, image.Height - 1);
                for (int x = 0; x < width; x++)
                {
                    dst[y * width + x] = src[sy * image.Width + Math.Clamp(left + x, 0, image.Width - 1)];
                }
            }
        }

        return result;
    }

    /// <summary>
    /// Normalizes an image that already has the pipeline's size and channels, without any resize or crop (what a
    /// <c>ToTensor</c> + <c>Normalize</c> transform does, e.g. model-vs-human's for its 224-pixel stimuli).
    /// </summary>
    /// <exception cref="InvalidOperationException">The image has another size or channel count.</exception>
    public void EvalAsIs(ImageU8 image, Span<float> destination) => Normalize(image, destination);

    private void Normalize(ImageU8 image, Span<float> destination)
    {
        if (image.Channels != Channels || image.Height != Size || image.Width != Size || destination.Length != SampleLength)
        {
            throw new InvalidOperationException($"sample is {image.Channels}×{image.Height}×{image.Width}, expected {Channels}×{Size}×{Size}");
        }

        int plane = Size * Size;
        for (int c = 0; c < Channels; c++)
        {
            var (mean, std) = _norm.At(c, Channels);
            float scale = (float)(1.0 / (255.0 * std)), shift = (float)(mean / std);
            var src = image.Channel(c);
            var dst = destination.Slice(c * plane, plane);
            for (int i = 0; i < plane; i++)
            {
                dst[i] = src[i] * scale - shift;
            }
        }
    }

    /// <summary>timm's RandomErasing, mode "pixel", one box: area 2–33 %, log-uniform aspect 0.3–3.3, filled with N(0, 1).</summary>
    private void Erase(Span<float> sample, ref SampleRandom rng)
    {
        int size = Size, plane = size * size;
        double area = plane;
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * rng.Uniform(0.02, 1.0 / 3);
            double aspect = Math.Exp(rng.Uniform(Math.Log(0.3), Math.Log(1 / 0.3)));
            int h = (int)Math.Round(Math.Sqrt(target * aspect));
            int w = (int)Math.Round(Math.Sqrt(target / aspect));
            if (w < size && h < size && w > 0 && h > 0)
            {
                int top = rng.NextInt(0, size - h), left = rng.NextInt(0, size - w);
                for (int c = 0; c < Channels; c++)
                {
                    for (int y = top; y < top + h; y++)
                    {
                        for (int x = left; x < left + w; x++)
                        {
                            sample[c * plane + y * size + x] = (float)rng.Normal();
                        }
                    }
                }

                return;
            }
        }
    }
}
