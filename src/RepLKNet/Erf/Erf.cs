using System.Globalization;
using System.Text;
using RepLKNet.IO;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Erf;

/// <summary>The high-contribution area for one threshold (the official <c>get_rectangle</c>).</summary>
/// <param name="Threshold">Fraction t of the total contribution.</param>
/// <param name="Side">Side 2i+1 of the smallest centred square holding more than t of it.</param>
/// <param name="Ratio">(2i+1)² / (h·w).</param>
public sealed record AreaRatio(double Threshold, int Side, double Ratio);

/// <summary>An accumulated ERF score matrix (the official <c>visualize_erf.py</c> output).</summary>
/// <param name="Mean">Mean of the per-image maps, row-major h×w: float32 values (accumulated and divided in float32 as the official
/// timm <c>AverageMeter</c> does on the float32 maps), held as doubles.</param>
/// <param name="Height">Rows.</param>
/// <param name="Width">Columns.</param>
/// <param name="Images">Images averaged.</param>
/// <param name="SkippedNaN">Images skipped because their map held a NaN.</param>
public sealed record ErfMap(double[] Mean, int Height, int Width, int Images, int SkippedNaN);

/// <summary>
/// Effective receptive field, exactly as the official <c>erf/visualize_erf.py</c> and <c>analyze_erf.py</c> (spec §9): for each
/// image, S = Σ_c ReLU(O[0, c, h/2, w/2]) over the last-stage feature map O, g = ReLU(∂S/∂x) summed over batch and channels,
/// averaged over images (skipping NaN maps); then A = log10(M + 1) / max and the centred-square area ratios. Every step after
/// the gradient is float32 arithmetic, as the official scripts do it with float32 tensors and NumPy float32 arrays
/// (<see cref="NumpyFloat32"/>), so that a score matrix gives the official area ratios to the pixel.
/// </summary>
public static class EffectiveReceptiveField
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
        if (image.dim() != 4 || image.size(0) != 1)
        {
            throw new ArgumentException($"the ERF takes one image at a time, shaped (1, C, H, W); got {TensorSizes.Text(image)}");
        }

        using var scope = NewDisposeScope();
        using var enable = enable_grad();
        var x = image.detach().clone().requires_grad_(true);
        var output = features(x);
        if (output.dim() != 4)
        {
            throw new ArgumentException($"the feature map must be (N, C, h, w), got {TensorSizes.Text(output)}");
        }

        long h = output.size(2), w = output.size(3);
        var central = output[0, .., h / 2, w / 2];
        var score = nn.functional.relu(central).sum();
        var grad = autograd.grad([score], [x])[0];
        Ops.DepthwiseConv2d.ReleaseBackwardOutputs();
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
        float[]? sum = null; // timm's AverageMeter on float32 arrays: sum += val (float32), avg = sum / count (float32)
        int height = 0, width = 0, accepted = 0, skipped = 0;
        foreach (var image in images)
        {
            double[]? map;
            using (image)
            {
                height = (int)image.size(2);
                width = (int)image.size(3);
                map = ImageMap(features, image);
            }

            if (map is null)
            {
                skipped++;
            }
            else
            {
                sum ??= new float[map.Length];
                if (sum.Length != map.Length)
                {
                    throw new ArgumentException("every image must have the same size");
                }

                for (int i = 0; i < map.Length; i++)
                {
                    sum[i] += (float)map[i]; // the map is float32 (the gradient's dtype), held as doubles
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

        var mean = new double[sum.Length];
        for (int i = 0; i < sum.Length; i++)
        {
            mean[i] = sum[i] / (float)accepted;
        }

        return new ErfMap(mean, height, width, accepted, skipped);
    }

    /// <summary>
    /// The official rescaling of <c>analyze_erf.py</c> on the float32 score matrix: <c>data = np.log10(data + 1)</c>, then
    /// <c>data = data / np.max(data)</c>, all in float32: x + 1 rounded to float32, the C library's <c>log10f</c> (NumPy's
    /// float32 loop calls it; NumPy builds that use SVML on AVX-512 CPUs may differ from it by an ulp), division by the float32
    /// maximum. An all-zero map stays zero (NumPy would give NaN and the official script would then fail).
    /// </summary>
    /// <param name="map">The score matrix M, row-major; values are taken as float32 (the official <c>.npy</c> dtype).</param>
    /// <returns>A in [0, 1], float32 values held as doubles.</returns>
    public static double[] Normalize(IReadOnlyList<double> map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var a = new float[map.Count];
        float max = float.NegativeInfinity;
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = MathF.Log10((float)map[i] + 1f);
            max = Math.Max(max, a[i]);
        }

        var result = new double[a.Length];
        for (int i = 0; i < a.Length; i++)
        {
            result[i] = max > 0 ? a[i] / max : a[i];
        }

        return result;
    }

    /// <summary>
    /// The official <c>get_rectangle(A, t)</c>: grow a centred square of side 2i+1 for i = 1 … h/2 − 1 (rows and columns
    /// h/2 − i … h/2 + i; it starts at 3×3) until its share of Σ A exceeds <paramref name="threshold"/>; null when none does.
    /// The arithmetic is NumPy's on the float32 array: both sums are <c>np.sum</c> of float32 values
    /// (<see cref="NumpyFloat32"/>), the share is a float32 division, and the comparison with the Python float t is made
    /// in float64 (NumPy 1.x promotes a float32 scalar and a Python float to float64; NumPy 2's NEP 50 rules would compare in
    /// float32, which differs only when the share equals float32(t) exactly).
    /// </summary>
    /// <param name="normalized">A, row-major <paramref name="height"/>×<paramref name="width"/>; values are taken as float32.</param>
    /// <param name="height">Rows.</param>
    /// <param name="width">Columns.</param>
    /// <param name="threshold">t, a fraction.</param>
    /// <exception cref="ArgumentException">The map does not hold height × width values.</exception>
    public static AreaRatio? Area(IReadOnlyList<double> normalized, int height, int width, double threshold)
    {
        ArgumentNullException.ThrowIfNull(normalized);
        if (normalized.Count != height * width)
        {
            throw new ArgumentException($"the map holds {normalized.Count} values, not {height}×{width}");
        }

        var a = new float[normalized.Count];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = (float)normalized[i];
        }

        float total = NumpyFloat32.Sum(a, height, width, 0, height, 0, width);
        int ch = height / 2, cw = width / 2;
        for (int i = 1; i < height / 2; i++)
        {
            // data[h//2 - i : h//2 + 1 + i, w//2 - i : w//2 + 1 + i]: NumPy clamps the stop at the edge; the start is never
            // negative for a map at least as wide as high (a narrower one would wrap around in NumPy; it is clamped here).
            int r0 = Math.Max(0, ch - i), r1 = Math.Min(height, ch + i + 1), c0 = Math.Max(0, cw - i), c1 = Math.Min(width, cw + i + 1);
            float inside = NumpyFloat32.Sum(a, height, width, r0, r1, c0, c1);
            float share = inside / total;
            if ((double)share > threshold)
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

/// <summary>
/// <c>np.sum</c> of a float32 array (no axis, float32 result) exactly as NumPy 1.x computes it, so that float32 sums round as
/// the official <c>analyze_erf.py</c>'s do. Source: NumPy's reduction machinery hands the add loop the array in C order in
/// buffers of at most <see cref="BufferSize"/> elements (<c>NPY_BUFSIZE</c>; a contiguous array too); the loop adds each
/// buffer's pairwise sum to the float32 running total, which starts at the identity 0 (<c>FLOAT_add</c> reduce branch,
/// <c>numpy/core/src/umath/loops_arithm_fp.dispatch.c.src</c>). The pairwise sum is <c>FLOAT_pairwise_sum</c>
/// (<c>numpy/core/src/umath/loops_utils.h.src</c>): below 8 elements a plain loop from 0; up to <see cref="BlockSize"/> (128)
/// eight accumulators over the 8-unrolled part, combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the rest
/// one by one; above 128 the two halves split at n/2 rounded down to a multiple of 8, summed recursively and added.
/// Checked against NumPy 1.24.2 (Debian 12) on contiguous arrays and on the strided square windows
/// <c>get_rectangle</c> sums (tests/RepLKNet.Tests/Erf/numpy_erf_reference.py).
/// </summary>
public static class NumpyFloat32
{
    /// <summary>NumPy's <c>NPY_BUFSIZE</c>: the most elements the reduction hands the add loop at once.</summary>
    public const int BufferSize = 8192;

    /// <summary>NumPy's <c>PW_BLOCKSIZE</c>: the largest run summed with eight accumulators rather than split.</summary>
    public const int BlockSize = 128;

    /// <summary>NumPy's <c>FLOAT_pairwise_sum</c> of <paramref name="values"/> (contiguous), in float32.</summary>
    public static float PairwiseSum(ReadOnlySpan<float> values)
    {
        int n = values.Length;
        if (n < 8)
        {
            float res = 0f;
            for (int i = 0; i < n; i++)
            {
                res += values[i];
            }

            return res;
        }

        if (n <= BlockSize)
        {
            float r0 = values[0], r1 = values[1], r2 = values[2], r3 = values[3], r4 = values[4], r5 = values[5], r6 = values[6], r7 = values[7];
            int i;
            for (i = 8; i < n - (n % 8); i += 8)
            {
                r0 += values[i];
                r1 += values[i + 1];
                r2 += values[i + 2];
                r3 += values[i + 3];
                r4 += values[i + 4];
                r5 += values[i + 5];
                r6 += values[i + 6];
                r7 += values[i + 7];
            }

            float res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7));
            for (; i < n; i++)
            {
                res += values[i];
            }

            return res;
        }

        int n2 = n / 2;
        n2 -= n2 % 8;
        return PairwiseSum(values[..n2]) + PairwiseSum(values[n2..]);
    }

    /// <summary><c>np.sum</c> of a contiguous float32 array (any shape, C order).</summary>
    public static float Sum(ReadOnlySpan<float> values)
    {
        float total = 0f;
        for (int start = 0; start < values.Length; start += BufferSize)
        {
            total += PairwiseSum(values.Slice(start, Math.Min(BufferSize, values.Length - start)));
        }

        return total;
    }

    /// <summary>
    /// <c>np.sum(a[r0:r1, c0:c1])</c> for a row-major <paramref name="height"/>×<paramref name="width"/> float32 array: the window
    /// in C order, <see cref="BufferSize"/> elements at a time (a buffer may span rows).
    /// </summary>
    /// <exception cref="ArgumentException">The array or the window does not fit the shape.</exception>
    public static float Sum(ReadOnlySpan<float> values, int height, int width, int r0, int r1, int c0, int c1)
    {
        if (values.Length != height * width || r0 < 0 || r1 > height || r0 > r1 || c0 < 0 || c1 > width || c0 > c1)
        {
            throw new ArgumentException($"window [{r0}:{r1}, {c0}:{c1}] of a {height}×{width} array holding {values.Length} values");
        }

        int cols = c1 - c0;
        if (cols == width)
        {
            return Sum(values.Slice(r0 * width, (r1 - r0) * width));
        }

        Span<float> buffer = new float[BufferSize];
        float total = 0f;
        int filled = 0;
        for (int r = r0; r < r1; r++)
        {
            var row = values.Slice(r * width + c0, cols);
            while (!row.IsEmpty)
            {
                int take = Math.Min(BufferSize - filled, row.Length);
                row[..take].CopyTo(buffer[filled..]);
                filled += take;
                row = row[take..];
                if (filled == BufferSize)
                {
                    total += PairwiseSum(buffer);
                    filled = 0;
                }
            }
        }

        if (filled > 0)
        {
            total += PairwiseSum(buffer[..filled]);
        }

        return total;
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
        AtomicFile.Write(path, stream =>
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
