using System.Globalization;

namespace RepLKNet.Data.Transforms;

/// <summary>
/// timm's RandAugment, configured by its string (e.g. the official <c>rand-m9-mstd0.5-inc1</c>): <c>n</c> operations
/// (default 2) drawn with replacement from the 15 transforms, each applied with probability <c>p</c> (0.5) at magnitude
/// <c>m</c> (out of <c>mmax</c> = 10) plus Gaussian noise of std <c>mstd</c> (clipped to [0, mmax]); <c>inc1</c> picks the
/// variants whose strength increases with the magnitude. Geometric operations fill with the dataset mean colour.
/// Differences from timm + PIL, all within augmentation noise: geometric operations always sample bilinearly (timm picks
/// bilinear or bicubic at random) and enhance blends round where PIL truncates.
/// </summary>
public sealed class RandAugment
{
    private static readonly string[] Names =
    [
        "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
        "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    ];

    private readonly byte[] _fill;

    /// <summary>Parses <paramref name="spec"/> ("rand-m9-mstd0.5-inc1", "rand-m7-n3", ...).</summary>
    /// <exception cref="ArgumentException">The string is not a RandAugment configuration.</exception>
    public RandAugment(string spec, byte[] fill)
    {
        ArgumentNullException.ThrowIfNull(spec);
        _fill = fill ?? throw new ArgumentNullException(nameof(fill));
        var parts = spec.Split('-');
        if (parts[0] != "rand")
        {
            throw new ArgumentException($"'{spec}' is not a RandAugment string (it must start with 'rand', e.g. rand-m9-mstd0.5-inc1)", nameof(spec));
        }

        foreach (var part in parts.Skip(1))
        {
            double Value(string prefix) => double.TryParse(part.AsSpan(prefix.Length), NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
                ? v
                : throw new ArgumentException($"'{spec}': bad value in '{part}'", nameof(spec));
            if (part.StartsWith("mstd", StringComparison.Ordinal))
            {
                MagnitudeStd = Value("mstd");
            }
            else if (part.StartsWith("mmax", StringComparison.Ordinal))
            {
                MagnitudeMax = Value("mmax");
            }
            else if (part.StartsWith("inc", StringComparison.Ordinal))
            {
                Increasing = Value("inc") != 0;
            }
            else if (part.StartsWith('m'))
            {
                Magnitude = Value("m");
            }
            else if (part.StartsWith('n'))
            {
                Layers = (int)Value("n");
            }
            else if (part.StartsWith('p'))
            {
                Probability = Value("p");
            }
            else
            {
                throw new ArgumentException($"'{spec}': unknown part '{part}' (known: m, n, mstd, mmax, inc, p)", nameof(spec));
            }
        }

        if (Layers < 1 || Magnitude < 0 || MagnitudeMax <= 0 || Probability is < 0 or > 1 || MagnitudeStd < 0)
        {
            throw new ArgumentException($"'{spec}': n ≥ 1, m ≥ 0, mmax > 0, mstd ≥ 0 and p in [0, 1] are required", nameof(spec));
        }

        Spec = spec;
    }

    /// <summary>The configuration string.</summary>
    public string Spec { get; }

    /// <summary>Operations per image.</summary>
    public int Layers { get; } = 2;

    /// <summary>Magnitude.</summary>
    public double Magnitude { get; } = 10;

    /// <summary>Std of the per-application magnitude noise (∞: uniform on [0, m]).</summary>
    public double MagnitudeStd { get; }

    /// <summary>Largest magnitude.</summary>
    public double MagnitudeMax { get; } = 10;

    /// <summary>Probability of applying each chosen operation.</summary>
    public double Probability { get; } = 0.5;

    /// <summary>Whether the increasing-strength variants are used.</summary>
    public bool Increasing { get; }

    /// <summary>The transforms operations are drawn from.</summary>
    public static IReadOnlyList<string> Operations => Names;

    /// <summary>Augments <paramref name="image"/>.</summary>
    public ImageU8 Apply(ImageU8 image, ref SampleRandom rng)
    {
        for (int i = 0; i < Layers; i++)
        {
            string op = Names[rng.NextInt(Names.Length)];
            if (Probability < 1 && rng.NextDouble() > Probability)
            {
                continue;
            }

            double m = Magnitude;
            if (double.IsPositiveInfinity(MagnitudeStd))
            {
                m = rng.Uniform(0, m);
            }
            else if (MagnitudeStd > 0)
            {
                m += MagnitudeStd * rng.Normal();
            }

            m = Math.Clamp(m, 0, MagnitudeMax);
            image = Apply(op, image, m / 10.0, ref rng);
        }

        return image;
    }

    /// <summary>Applies operation <paramref name="op"/> at level <paramref name="level"/> (magnitude / 10).</summary>
    public ImageU8 Apply(string op, ImageU8 image, double level, ref SampleRandom rng)
    {
        ArgumentNullException.ThrowIfNull(image);
        double Signed(double v, ref SampleRandom r) => r.NextDouble() < 0.5 ? -v : v;
        switch (op)
        {
            case "AutoContrast":
                return ImageOps.AutoContrast(image);
            case "Equalize":
                return ImageOps.Equalize(image);
            case "Invert":
                return ImageOps.Lookup(image, (_, v) => 255 - v);
            case "Rotate":
                return ImageOps.Rotate(image, Signed(level * 30, ref rng), _fill);
            case "Posterize":
            {
                int bits = Increasing ? 4 - (int)(level * 4) : (int)(level * 4);
                if (bits >= 8)
                {
                    return image;
                }

                int mask = ~((1 << (8 - Math.Max(bits, 0))) - 1) & 0xFF;
                return ImageOps.Lookup(image, (_, v) => v & mask);
            }

            case "Solarize":
            {
                int threshold = Increasing ? 256 - (int)(level * 256) : (int)(level * 256);
                return ImageOps.Lookup(image, (_, v) => v < threshold ? v : 255 - v);
            }

            case "SolarizeAdd":
            {
                int add = (int)(level * 110);
                return ImageOps.Lookup(image, (_, v) => v < 128 ? Math.Min(255, v + add) : v);
            }

            case "Color" or "Contrast" or "Brightness" or "Sharpness":
            {
                double factor = Increasing ? 1.0 + Signed(level * 0.9, ref rng) : level * 1.8 + 0.1;
                var degenerate = op switch
                {
                    "Color" => ImageOps.Grey(image),
                    "Contrast" => Constant(image, ImageOps.MeanLuminance(image)),
                    "Brightness" => Constant(image, 0),
                    _ => ImageOps.Smooth(image),
                };
                return ImageOps.Blend(degenerate, image, factor);
            }

            case "ShearX":
                return ImageOps.Affine(image, 1, Signed(level * 0.3, ref rng), 0, 0, 1, 0, _fill);
            case "ShearY":
                return ImageOps.Affine(image, 1, 0, 0, Signed(level * 0.3, ref rng), 1, 0, _fill);
            case "TranslateXRel":
                return ImageOps.Affine(image, 1, 0, Signed(level * 0.45, ref rng) * image.Width, 0, 1, 0, _fill);
            case "TranslateYRel":
                return ImageOps.Affine(image, 1, 0, 0, 0, 1, Signed(level * 0.45, ref rng) * image.Height, _fill);
            default:
                throw new ArgumentException($"unknown RandAugment operation '{op}'", nameof(op));
        }
    }

    private static ImageU8 Constant(ImageU8 like, int value)
    {
        var image = new ImageU8(like.Channels, like.Height, like.Width);
        Array.Fill(image.Pixels, (byte)value);
        return image;
    }
}
