using System.Globalization;
using System.Text;
using static TorchSharp.torch;

namespace RepLKNet.Analysis;

/// <summary>The high-contribution area for one threshold (the official <c>get_rectangle</c>).</summary>
/// <param name="Threshold">Fraction t of the total contribution.</param>
/// <param name="Side">Side 2i+1 of the smallest centred square holding more than t of it.</param>
/// <param name="Ratio">(2i+1)² / (h·w).</param>
public sealed record AreaRatio(double Threshold, int Side, double Ratio);

/// <summary>An accumulated ERF score matrix (the official <c>visualize_erf.py</c> output).</summary>
/// <param name="Mean">Mean of the per-image maps, row-major h×w.</param>
/// <param name="Height">Rows.</param>
/// <param name="Width">Columns.</param>
/// <param name="Images">Images averaged.</param>
/// <param name="SkippedNaN">Images skipped because their map held a NaN.</param>
public sealed record ErfMap(double[] Mean, int Height, int Width, int Images, int SkippedNaN);

/// <summary>
/// Effective receptive field, exactly as the official <c>erf/visualize_erf.py</c> and <c>analyze_erf.py</c> (spec §9): for each
/// image, S = Σ_c ReLU(O[0, c, h/2, w/2]) over the last-stage feature map O, g = ReLU(∂S/∂x) summed over batch and channels,
/// averaged over images (skipping NaN maps); then A = log10(M + 1) / max and the centred-square area ratios.
/// </summary>
public static class Erf
{
    /// <summary>The paper's thresholds: 20 %, 30 %, 50 %, 99 %.</summary>
    public static IReadOnlyList<double> Thresholds { get; } = [0.2, 0.3, 0.5, 0.99];

    /// <summary>
    /// The score map of one image: <paramref name="image"/> is (1, C, H, W) on the model's device, <paramref name="features"/> the
    /// model's last-stage map (eval mode; parameters need no gradient). Returns an H×W row-major map, or null when it has a NaN.
    /// </summary>
    public static double[]? ImageMap(Func<Tensor, Tensor> features, Tensor image)
    {
        ArgumentNullException.ThrowIfNull(features);
        ArgumentNullException.ThrowIfNull(image);
        if (image.dim() != 4 || image.shape[0] != 1)
        {
            throw new ArgumentException($"the ERF takes one image at a time, shaped (1, C, H, W); got [{string.Join(", ", image.shape)}]");
        }

        using var scope = NewDisposeScope();
        using var enable = enable_grad();
        var x = image.detach().clone().requires_grad_(true);
        var output = features(x);
        if (output.dim() != 4)
        {
            throw new ArgumentException($"the feature map must be (N, C, h, w), got [{string.Join(", ", output.shape)}]");
        }

        long h = output.shape[2], w = output.shape[3];
        var central = output[0, .., h / 2, w / 2];
        var score = nn.functional.relu(central).sum();
        var grad = autograd.grad([score], [x])[0];
        var map = nn.functional.relu(grad).sum([0, 1]).to(ScalarType.Float64).cpu();
        var values = map.data<double>().ToArray();
        return values.Any(double.IsNaN) ? null : values;
    }

    /// <summary>Averages <see cref="ImageMap"/> over <paramref name="images"/> until <paramref name="count"/> maps were accepted.</summary>
    /// <param name="features">The model's last-stage features.</param>
    /// <param name="images">(1, C, H, W) tensors (each is disposed after use).</param>
    /// <param name="count">Maps to average (the official 50).</param>
    /// <param name="onImage">Called after each image with (accepted, skipped).</param>
    public static ErfMap Accumulate(Func<Tensor, Tensor> features, IEnumerable<Tensor> images, int count, Action<int, int>? onImage = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        double[]? sum = null;
        int height = 0, width = 0, accepted = 0, skipped = 0;
        foreach (var image in images)
        {
            double[]? map;
            using (image)
            {
                height = (int)image.shape[2];
                width = (int)image.shape[3];
                map = ImageMap(features, image);
            }

            if (map is null)
            {
                skipped++;
            }
            else
            {
                sum ??= new double[map.Length];
                if (sum.Length != map.Length)
                {
                    throw new ArgumentException("every image must have the same size");
                }

                for (int i = 0; i < map.Length; i++)
                {
                    sum[i] += map[i];
                }

                accepted++;
            }

            onImage?.Invoke(accepted, skipped);
            if (accepted == count)
            {
                break;
            }
        }

        if (sum is null)
        {
            throw new InvalidOperationException(skipped > 0 ? $"all {skipped} image maps held NaN" : "no images were given");
        }

        for (int i = 0; i < sum.Length; i++)
        {
            sum[i] /= accepted;
        }

        return new ErfMap(sum, height, width, accepted, skipped);
    }

    /// <summary>The official rescaling: A = log10(M + 1), then A / max(A) (all zeros stay zero).</summary>
    public static double[] Normalize(IReadOnlyList<double> map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var a = map.Select(v => Math.Log10(v + 1)).ToArray();
        double max = a.Max();
        if (max > 0)
        {
            for (int i = 0; i < a.Length; i++)
            {
                a[i] /= max;
            }
        }

        return a;
    }

    /// <summary>
    /// The official <c>get_rectangle(A, t)</c>: grow a centred square of side 2i+1 for i = 1 … h/2 − 1 (rows and columns
    /// h/2 − i … h/2 + i; it starts at 3×3) until its share of Σ A exceeds <paramref name="threshold"/>; null when none does.
    /// </summary>
    public static AreaRatio? Area(IReadOnlyList<double> normalized, int height, int width, double threshold)
    {
        ArgumentNullException.ThrowIfNull(normalized);
        if (normalized.Count != height * width)
        {
            throw new ArgumentException($"the map holds {normalized.Count} values, not {height}×{width}");
        }

        double total = normalized.Sum();
        int ch = height / 2, cw = width / 2;
        for (int i = 1; i < height / 2; i++)
        {
            double inside = 0;
            for (int r = Math.Max(0, ch - i); r <= Math.Min(height - 1, ch + i); r++)
            {
                for (int c = Math.Max(0, cw - i); c <= Math.Min(width - 1, cw + i); c++)
                {
                    inside += normalized[r * width + c];
                }
            }

            if (inside / total > threshold)
            {
                int side = 2 * i + 1;
                return new AreaRatio(threshold, side, (double)side * side / ((double)height * width));
            }
        }

        return null;
    }

    /// <summary>The area ratios at <see cref="Thresholds"/> (null entries where the square never reaches t).</summary>
    public static IReadOnlyList<AreaRatio?> Areas(IReadOnlyList<double> normalized, int height, int width) =>
        [.. Thresholds.Select(t => Area(normalized, height, width, t))];

    /// <summary>"20%: 0.012 (s=111) …" for reports.</summary>
    public static string Describe(IEnumerable<AreaRatio?> areas, IReadOnlyList<double>? thresholds = null)
    {
        ArgumentNullException.ThrowIfNull(areas);
        var list = areas.ToList();
        thresholds ??= Thresholds;
        return string.Join("  ", list.Select((a, i) => a is null
            ? string.Create(CultureInfo.InvariantCulture, $"t={thresholds[i]:P0}: none")
            : string.Create(CultureInfo.InvariantCulture, $"t={a.Threshold:P0}: {a.Ratio:0.0000} ({a.Side}×{a.Side})")));
    }
}

/// <summary>NumPy <c>.npy</c> (version 1.0, little-endian float32, C order) for 2-D maps: the official score-matrix format.</summary>
public static class NpyFile
{
    private static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Writes <paramref name="values"/> (row-major <paramref name="height"/>×<paramref name="width"/>) as float32, atomically.</summary>
    public static void Write(string path, IReadOnlyList<double> values, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count != height * width)
        {
            throw new ArgumentException($"{values.Count} values are not {height}×{width}");
        }

        string dict = string.Create(CultureInfo.InvariantCulture, $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
        int unpadded = Magic.Length + 2 + 2 + dict.Length + 1;
        string header = dict + new string(' ', (64 - unpadded % 64) % 64) + "\n";
        Checkpoints.AtomicFile.Write(path, stream =>
        {
            using var writer = new BinaryWriter(stream, Encoding.ASCII, leaveOpen: true);
            writer.Write(Magic);
            writer.Write((byte)1);
            writer.Write((byte)0);
            writer.Write((ushort)header.Length);
            writer.Write(Encoding.ASCII.GetBytes(header));
            foreach (double v in values)
            {
                writer.Write((float)v);
            }
        });
    }

    /// <summary>Reads a 2-D little-endian float32 or float64 C-order array.</summary>
    /// <exception cref="InvalidDataException">The file is not such an array (the message names it).</exception>
    public static (double[] Values, int Height, int Width) Read(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"'{path}': no such .npy file", path);
        }

        using var reader = new BinaryReader(File.OpenRead(path), Encoding.ASCII);
        byte[] magic = reader.ReadBytes(6);
        if (!magic.AsSpan().SequenceEqual(Magic))
        {
            throw new InvalidDataException($"'{path}' is not a .npy file (bad magic)");
        }

        byte major = reader.ReadByte();
        reader.ReadByte();
        int length = major == 1 ? reader.ReadUInt16() : (int)reader.ReadUInt32();
        string header = Encoding.ASCII.GetString(reader.ReadBytes(length));
        bool f4 = header.Contains("'<f4'", StringComparison.Ordinal);
        bool f8 = header.Contains("'<f8'", StringComparison.Ordinal);
        var shape = System.Text.RegularExpressions.Regex.Match(header, @"'shape':\s*\((\d+),\s*(\d+)\)");
        if (!(f4 || f8) || header.Contains("'fortran_order': True", StringComparison.Ordinal) || !shape.Success)
        {
            throw new InvalidDataException($"'{path}' is not a 2-D little-endian float32/float64 C-order array (header {header.Trim()})");
        }

        int h = int.Parse(shape.Groups[1].Value, CultureInfo.InvariantCulture), w = int.Parse(shape.Groups[2].Value, CultureInfo.InvariantCulture);
        var values = new double[h * w];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = f4 ? reader.ReadSingle() : reader.ReadDouble();
        }

        return (values, h, w);
    }
}
