using RepLKNet.Erf;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Erf;

public sealed class ErfTests
{
    public ErfTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(1, 33)]
    [InlineData(3, 33)]
    [InlineData(6, 41)]
    public void The_map_of_a_positive_3x3_stack_is_non_zero_exactly_inside_its_theoretical_field(int depth, int size)
    {
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        // depth 3×3 convs (stride 1, padding 1) with positive weights and ReLU: the centre output sees (2·depth+1)² input pixels.
        var weights = Enumerable.Range(0, depth).Select(i => rand([4, i == 0 ? 3 : 4, 3, 3], generator: generator) + 0.05).ToList();
        Tensor Features(Tensor x)
        {
            foreach (var w in weights)
            {
                x = nn.functional.relu(nn.functional.conv2d(x, w, padding: [1, 1]));
            }

            return x;
        }

        var image = rand([1, 3, size, size], generator: generator) + 0.1;
        var map = EffectiveReceptiveField.ImageMap(Features, image)!;
        int c = size / 2;
        for (int r = 0; r < size; r++)
        {
            for (int col = 0; col < size; col++)
            {
                bool inside = Math.Abs(r - c) <= depth && Math.Abs(col - c) <= depth;
                double v = map[r * size + col];
                Assert.True(inside ? v > 0 : v == 0, $"({r}, {col}) = {v}, inside = {inside} (depth {depth}, seed {seed})");
            }
        }
    }

    [Fact]
    public void The_map_of_one_linear_conv_is_its_kernel_summed_over_channels_at_the_centre()
    {
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        var w = rand([5, 2, 7, 7], generator: generator, dtype: float64) - 0.3;   // mixed signs: ReLU(g) keeps the positive part
        var image = randn([1, 2, 20, 20], generator: generator, dtype: float64);
        var map = EffectiveReceptiveField.ImageMap(x => nn.functional.conv2d(x, w), image)!;         // output 14×14, centre (7, 7) ↔ input rows 7…13
        var o = nn.functional.conv2d(image, w);
        var active = o[0, .., 7, 7].gt(0).to(float64);                          // only channels whose centre is positive count
        // Independent reference: ∂S/∂x[ci, 7+u, 7+v] = Σ_c active_c · w[c, ci, u, v]; ReLU; sum over ci.
        var expected = nn.functional.relu((active.view(5, 1, 1, 1) * w).sum([0])).sum([0]);
        for (int r = 0; r < 20; r++)
        {
            for (int col = 0; col < 20; col++)
            {
                double want = r is >= 7 and < 14 && col is >= 7 and < 14 ? expected[r - 7, col - 7].item<double>() : 0;
                Assert.True(Math.Abs(map[r * 20 + col] - want) < 1e-12, $"({r}, {col}): {map[r * 20 + col]} vs {want} (seed {seed})");
            }
        }
    }

    [Fact]
    public void Maps_with_NaN_are_skipped_and_the_rest_averaged()
    {
        using var scope = NewDisposeScope();
        var images = new List<Tensor> { ones(1, 1, 9, 9), full(1, 1, 9, 9, double.NaN), ones(1, 1, 9, 9) * 3 };
        var map = EffectiveReceptiveField.Accumulate(x => x * x, images, count: 5);
        Assert.Equal((2, 1), (map.Images, map.SkippedNaN));
        // d(x²)/dx at the centre only = 2x: (2 + 6) / 2 = 4 at the centre, 0 elsewhere.
        Assert.Equal(4, map.Mean[4 * 9 + 4], 6);
        Assert.Equal(0, map.Mean.Where((_, i) => i != 40).Max());
    }

    [Fact]
    public void Area_ratio_follows_the_official_growth_rule()
    {
        // All the mass in the centre pixel: the square starts at 3×3, so every threshold answers 3.
        var point = new double[21 * 21];
        point[10 * 21 + 10] = 1;
        foreach (double t in EffectiveReceptiveField.Thresholds)
        {
            var a = EffectiveReceptiveField.Area(point, 21, 21, t)!;
            Assert.Equal(3, a.Side);
            Assert.Equal(9.0 / 441, a.Ratio, 12);
        }

        // Uniform 21×21: side s holds s²/441. t = 0.2 → first s with s² > 88.2 is 11; t = 0.5 → 17 (289 > 220.5).
        var uniform = Enumerable.Repeat(1.0, 21 * 21).ToArray();
        Assert.Equal(11, EffectiveReceptiveField.Area(uniform, 21, 21, 0.2)!.Side);
        Assert.Equal(121.0 / 441, EffectiveReceptiveField.Area(uniform, 21, 21, 0.2)!.Ratio, 12);
        Assert.Equal(15, EffectiveReceptiveField.Area(uniform, 21, 21, 0.5)!.Side);
        // The share must exceed t strictly: 3×3 holds exactly 9/441, so t = 9/441 needs 5×5.
        Assert.Equal(5, EffectiveReceptiveField.Area(uniform, 21, 21, 9.0 / 441)!.Side);
        // i stops at h//2 − 1 = 9 (19×19 = 82 %): 99 % is never reached, as the official function returns None.
        Assert.Null(EffectiveReceptiveField.Area(uniform, 21, 21, 0.99));
        Assert.Equal(19, EffectiveReceptiveField.Area(uniform, 21, 21, 0.8)!.Side);
    }

    [Fact]
    public void Normalization_is_log10_plus_one_over_its_maximum()
    {
        var a = EffectiveReceptiveField.Normalize([0, 9, 99, 999]);
        // float32, as NumPy on the official float32 matrix: log10f gives 0, 1, 2, 3 and the divisions round to float32.
        double[] expected = [0, 1f / 3f, 2f / 3f, 1];
        Assert.Equal(expected, a);
        Assert.Equal([0.0, 0.0], EffectiveReceptiveField.Normalize([0, 0]));
    }

    /// <summary>The matrix of numpy_erf_reference.py (see there): a core of levels, a faint tail, K level-5 cells and X in row/column 0.</summary>
    private static double[] ReferenceMatrix(int k, float x)
    {
        const int n = 512, d0 = 200;
        var m = new double[n * n];
        for (int r = 0; r < n; r++)
        {
            for (int c = 0; c < n; c++)
            {
                int d = Math.Max(Math.Abs(r - n / 2), Math.Abs(c - n / 2));
                int level = Math.Clamp(5 - d / 40 + ((r * 7 + c * 13) % 3 == 0 ? 1 : 0), 0, 5);
                m[r * n + c] = d >= d0 ? 5e-7f : (float)(Math.Pow(10, level) - 1);
            }
        }

        for (int j = 0; j < n; j++)
        {
            m[j] = 0;
            m[j * n] = 0;
        }

        for (int j = 1; j <= Math.Min(k, n - 1); j++)
        {
            m[j] = 99999;
        }

        for (int r = 1; r <= Math.Max(0, k - (n - 1)); r++)
        {
            m[r * n] = 99999;
        }

        m[0] = x;
        return m;
    }

    [Fact]
    public void The_99_percent_square_is_the_official_float32_one_not_the_float64_one()
    {
        // A 512×512 score matrix whose squares near 99 % differ by less than float32 resolves, as real ERF maps do in their flat
        // tails; the expected sides are NumPy 1.24.2's running analyze_erf.py verbatim (numpy_erf_reference.py, portable log10f).
        var m = ReferenceMatrix(809, BitConverter.UInt32BitsToSingle(0x41B51C37));
        var a = EffectiveReceptiveField.Normalize(m);
        var areas = EffectiveReceptiveField.Areas(a, 512, 512);
        Assert.Equal([135, 167, 229, 427], areas.Select(r => r!.Side));
        Assert.Equal(427.0 * 427 / (512 * 512), areas[3]!.Ratio, 15);
        Assert.Equal(0x479E0FD8u, BitConverter.SingleToUInt32Bits(NumpyFloat32.Sum([.. a.Select(v => (float)v)])));

        // The same analysis in float64 (log10, division and plain sums in double) finds a larger 99 % square: 463.
        var a64 = m.Select(v => Math.Log10(v + 1)).ToArray();
        double max = a64.Max();
        a64 = [.. a64.Select(v => v / max)];
        double total = a64.Sum();
        int side64 = 0;
        for (int i = 1; i < 256 && side64 == 0; i++)
        {
            double inside = 0;
            for (int r = 256 - i; r <= 256 + i; r++)
            {
                for (int c = 256 - i; c <= 256 + i; c++)
                {
                    inside += a64[r * 512 + c];
                }
            }

            side64 = inside / total > 0.99 ? 2 * i + 1 : 0;
        }

        Assert.Equal(463, side64);
    }

    /// <summary>NumPy's FLOAT_pairwise_sum written out independently (recursion on arrays, no spans).</summary>
    private static float Pairwise(float[] a, int start, int n)
    {
        if (n < 8)
        {
            float res = 0;
            for (int i = 0; i < n; i++)
            {
                res += a[start + i];
            }

            return res;
        }

        if (n > 128)
        {
            int half = n / 2 - (n / 2 % 8);
            return Pairwise(a, start, half) + Pairwise(a, start + half, n - half);
        }

        var acc = new float[8];
        Array.Copy(a, start, acc, 0, 8);
        int j = 8;
        for (; j + 8 <= n; j += 8)
        {
            for (int u = 0; u < 8; u++)
            {
                acc[u] += a[start + j + u];
            }
        }

        float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; j < n; j++)
        {
            sum += a[start + j];
        }

        return sum;
    }

    [Fact]
    public void Float32_sums_are_numpys_pairwise_sums_over_8192_element_buffers_in_C_order()
    {
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        foreach (int n in new[] { 1, 7, 8, 127, 128, 129, 1000, 8192, 8193, 40000 })
        {
            var a = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * Math.Pow(10, rng.Next(-3, 4)))).ToArray();
            float expected = 0;
            for (int start = 0; start < n; start += 8192)
            {
                expected += Pairwise(a, start, Math.Min(8192, n - start));
            }

            Assert.True(expected == NumpyFloat32.Sum(a), $"n = {n} (seed {seed})");
        }

        // Windows of a 300×300 array: NumPy buffers the strided view in C order, 8192 values at a time, across rows.
        var m = Enumerable.Range(0, 300 * 300).Select(_ => (float)(rng.NextDouble() * 1000)).ToArray();
        foreach (int i in new[] { 1, 44, 45, 46, 100, 148 })
        {
            var window = new List<float>();
            for (int r = 150 - i; r <= 150 + i; r++)
            {
                window.AddRange(m.Skip(r * 300 + 150 - i).Take(2 * i + 1));
            }

            var flat = window.ToArray();
            float expected = 0;
            for (int start = 0; start < flat.Length; start += 8192)
            {
                expected += Pairwise(flat, start, Math.Min(8192, flat.Length - start));
            }

            Assert.True(expected == NumpyFloat32.Sum(m, 300, 300, 150 - i, 151 + i, 150 - i, 151 + i), $"i = {i} (seed {seed})");
        }
    }

    [Fact]
    public void The_mean_map_is_accumulated_in_float32_as_timms_AverageMeter_does()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)Environment.TickCount64);
        var images = Enumerable.Range(0, 7).Select(_ => rand([1, 1, 6, 6], generator: generator) * 100 + 1).ToList();
        // d(relu(centre of x³))/dx = 3x² at the centre pixel (float32, as autograd computes it), 0 elsewhere.
        var maps = images.Select(x => 3f * x[0, 0, 3, 3].pow(2).item<float>()).ToList();
        var mean = EffectiveReceptiveField.Accumulate(x => x.pow(3), images.Select(x => x.clone()), count: 7);
        float sum = 0;
        foreach (float v in maps)
        {
            sum += v;
        }

        Assert.Equal(sum / 7f, mean.Mean[3 * 6 + 3]);
    }

    [Fact]
    public void Npy_files_round_trip_with_an_aligned_version_1_header()
    {
        using var dir = new TempDirectory();
        var values = Enumerable.Range(0, 6 * 5).Select(i => i * 0.5).ToArray();
        string path = dir.File("m.npy");
        NpyFile.Write(path, values, 6, 5);
        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal(0x93, bytes[0]);
        Assert.Equal("NUMPY", System.Text.Encoding.ASCII.GetString(bytes, 1, 5));
        int headerEnd = 10 + BitConverter.ToUInt16(bytes, 8);
        Assert.Equal(0, headerEnd % 64);
        Assert.Equal('\n', (char)bytes[headerEnd - 1]);
        Assert.Equal(headerEnd + 4 * 30, bytes.Length);
        var (read, h, w) = NpyFile.Read(path);
        Assert.Equal((6, 5), (h, w));
        Assert.Equal(values, read);
        File.WriteAllBytes(dir.File("bad.npy"), [1, 2, 3, 4, 5, 6, 7, 8]);
        Assert.Contains("bad.npy", Assert.Throws<InvalidDataException>(() => NpyFile.Read(dir.File("bad.npy"))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_colour_map_runs_from_light_yellow_to_dark_green_as_seaborn_centre_0_draws_it()
    {
        Assert.Equal(new SkiaSharp.SKColor(0xff, 0xff, 0xbf), ErfFigure.Colour(0));
        Assert.Equal(new SkiaSharp.SKColor(0x00, 0x68, 0x37), ErfFigure.Colour(1));
        Assert.Equal(new SkiaSharp.SKColor(0xa6, 0xd9, 0x6a), ErfFigure.Colour(0.4));   // RdYlGn(0.7) is a control point
    }
}
