using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// Depthwise "same" convolution (stride 1, padding K/2, odd K) with vectors along channels, for AVX-512 and large
/// kernels on small maps (docs/perf-notes.md, "Vectors along channels"). NCHW tensors in and out; inside, each job takes
/// one image and 16 channels and transposes them into a per-thread scratch of H rows × (W + 14) columns × 16 channels
/// (7 zero columns each side), so that every tap is one 16-wide FMA of real data and the taps that read padding are
/// skipped by loop bounds (all but at most 6 steps at each end of a row, see <see cref="Slide8"/>) (with vectors along x, as <see cref="DepthwiseConvCpu"/> has them, a 32-wide row needs every
/// kernel column for both of its vectors: ~24 % of the FMAs at R 32, K 31 read zeros).
/// <list type="bullet">
/// <item>Forward and input gradient (the forward with each kernel rotated 180°): per output row, tiles of 12 output
/// columns (8 for the last ≤ 16 columns and for K ≤ 16); the tile's accumulators run over the valid kernel rows and,
/// along each row, over the kernel columns, with the tile's input vectors kept in registers and slid by one per column
/// (2 loads per 12 or 8 FMAs); the triangles where part of the tile would read padding run as straight-line code.</item>
/// <item>Weight gradient: the same kernels with the roles exchanged — the accumulators are 12 (or 8) kernel columns of
/// one kernel row, the sum runs over the output pixels that see data; each thread owns whole channel blocks (no
/// reduction).</item>
/// <item>The next job's input is prefetched into L2 while the current one computes, and its output lines into L1 row by
/// row, so the NCHW ↔ blocked transposes (16 × 16 in registers) mostly overlap the arithmetic.</item>
/// </list>
/// Results agree with <see cref="DepthwiseConvCpu"/>'s and libtorch's to float32 rounding, not bit for bit in general:
/// without bias the forward and input gradient measured bit-identical to the row kernels (same order per output), but
/// the bias is the starting value here and added last there, and the weight gradient sums in another order (≤ 3e-6 of
/// its scale at R 32, K 31). A non-finite input
/// can turn outputs it does not reach into NaN (a widened triangle multiplies it by a zero of the kernel's padding; the
/// row kernels do the same at fewer outputs, libtorch does not).
/// </summary>
internal static unsafe class DepthwiseConvBlocked
{
    /// <summary>Channels per vector (AVX-512 float32).</summary>
    private const int V = 16;

    /// <summary>Accumulators of the narrow tile (output columns, or kernel columns for the weight gradient).</summary>
    private const int T = 8;

    /// <summary>Accumulators of the wide tile (12 output or kernel columns).</summary>
    private const int T12 = 12;

    /// <summary>Zero columns on each side of a scratch row and of a packed kernel row (the wide tile's T − 1).</summary>
    private const int Pad = T12 - 1;

    /// <summary>Test and benchmark switch: false sends every call to <see cref="DepthwiseConvCpu"/>'s row kernels.</summary>
    internal static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("REPLKNET_DW_BLOCKED") != "0";

    /// <summary>
    /// Whether the forward and input gradient run here: AVX-512, channels a multiple of 16, maps at least 8 × 8, and
    /// K ≥ 9, or K ≥ 5 on maps up to 16 × 16. Measured crossovers (batch 8, C 384, 2 threads, docs/perf-notes.md): the
    /// blocked kernels are 1.1–2.2× the row kernels there, 0.95–0.98× at R 32 K 7 and 1.04–1.08× at R 32–64 K 5.
    /// </summary>
    internal static bool ConvApplies(CpuIsa isa, int c, int h, int w, int k) =>
        Runs(isa, c) && h >= T && w >= T && (k >= 9 || (k >= 5 && h <= 16 && w <= 16));

    /// <summary>
    /// Whether the weight gradient can run here: AVX-512, channels a multiple of 16, maps at least 8 × 8, K ≥ 5
    /// (measured 1.4–3.3× the row kernel's from K 5 to 31, R 8 to 64); the caller also requires at least as many
    /// 16-channel blocks as threads (a block is one thread's job).
    /// </summary>
    internal static bool WeightGradApplies(CpuIsa isa, int c, int h, int w, int k) =>
        Runs(isa, c) && h >= T && w >= T && k >= 5;

    private static bool Runs(CpuIsa isa, int c) => Enabled && isa == CpuIsa.Vector512 && Avx512F.IsSupported && c % V == 0;

    /// <summary>
    /// Forward (rotate false) or input gradient (rotate true); the contract of <see cref="DepthwiseConvCpu.Forward"/>
    /// (NCHW float32, odd K, output written) plus what <see cref="ConvApplies"/> checks first: AVX-512 and C a multiple
    /// of 16 (any map size and K run correctly; the rule only picks where it is faster).
    /// </summary>
    internal static void Convolve(float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k, bool rotate, int threads)
    {
        Debug.Assert(Avx512F.IsSupported && c % V == 0 && k % 2 == 1, "blocked depthwise: AVX-512, C % 16 == 0, odd K");
        int tiled = w + T12;
        long inFloats = (long)h * (w + 2 * Pad) * V;
        long accFloats = (long)tiled * V;
        long weightFloats = (long)k * (k + 2 * Pad) * V;
        int blocks = c / V;
        DepthwiseConvCpu.ParallelPlanes(n * blocks, threads, inFloats + accFloats + weightFloats + V + (long)k * k * V, (scratch, first, last) =>
            ConvolveJobs(input, weight, bias, output, n, c, h, w, k, rotate, scratch, first, last));
    }

    /// <summary>
    /// Weight gradient; the contract of <see cref="DepthwiseConvCpu.WeightGrad"/> (gradWeight, C × K × K, is overwritten)
    /// plus AVX-512 and C a multiple of 16.
    /// </summary>
    internal static void WeightGrad(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k, int threads)
    {
        Debug.Assert(Avx512F.IsSupported && c % V == 0 && k % 2 == 1, "blocked depthwise: AVX-512, C % 16 == 0, odd K");
        long planeFloats = (long)h * (w + 2 * Pad) * V;
        long accFloats = (long)k * (k + T12) * V;
        DepthwiseConvCpu.ParallelPlanes(c / V, threads, 2 * planeFloats + accFloats, (scratch, first, last) =>
            WeightGradJobs(input, gradOutput, gradWeight, n, c, h, w, k, scratch, first, last));
    }

    // Every loop here and in the helpers it calls is compiled fully optimized from the first call (as in
    // DepthwiseConvCpu): at tier 0 the transposes' intrinsics are not inlined, and a benchmark of a few calls, or a
    // short run, measured them instead of the kernels.
    // Jobs are (channel block, image) with the image fastest, so a thread's consecutive jobs share the packed kernel.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvolveJobs(float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k,
        bool rotate, float* scratch, int first, int last)
    {
        int p = k / 2, tiled = w + T12, stride = w + 2 * Pad;
        long rowFloats = (long)stride * V, plane = (long)h * w, weightRow = (long)(k + 2 * Pad) * V;
        float* inS = scratch;
        float* acc = inS + (long)h * rowFloats;
        float* wS = acc + (long)tiled * V;
        float* biasS = wS + k * weightRow;
        float* taps = biasS + V;
        NativeMemory.Clear(inS, (nuint)(h * rowFloats * sizeof(float)));
        int packed = -1;
        for (int job = first; job < last; job++)
        {
            int block = job / n, image = job % n, c0 = block * V;
            if (block != packed)
            {
                PackKernel(weight + (long)c0 * k * k, wS, taps, k, rotate);
                for (int ch = 0; ch < V; ch++)
                {
                    biasS[ch] = bias == null ? 0f : bias[c0 + ch];
                }

                packed = block;
            }

            ToBlocked(input + ((long)image * c + c0) * plane, inS + Pad * V, h, w, rowFloats);
            float* next = null;
            if (job + 1 < last)
            {
                next = input + ((long)((job + 1) % n) * c + (job + 1) / n * V) * plane;
            }

            float* dst = output + ((long)image * c + c0) * plane;
            var b = Vector512.Load(biasS);
            for (int y = 0; y < h; y++)
            {
                Prefetch(next, dst, y, h, w, plane);
                for (int x = 0; x < tiled; x++)
                {
                    b.Store(acc + (long)x * V);
                }

                int kyLo = Math.Max(0, p - y), kyHi = Math.Min(k - 1, h - 1 + p - y);
                for (int x0 = 0; x0 < w;)
                {
                    // 12-wide tiles while more than 16 columns are left (and K > 16: shorter kernel rows would mostly
                    // be the 12-wide triangles), then 8-wide ones. Kernel columns whose input columns all fall in the
                    // padding are skipped; the rest run exactly.
                    int t = w - x0 > 16 && k > 16 ? T12 : T;
                    int kxLo = Math.Max(0, p - x0 - (t - 1)), kxHi = Math.Min(k - 1, p + w - 1 - x0);
                    float* pa = inS + (long)(y + kyLo - p) * rowFloats + (long)(x0 + Pad - p + kxLo) * V;
                    float* pb = wS + kyLo * weightRow + (long)(Pad + kxLo) * V;
                    if (t == T12)
                    {
                        Slide12(pa, rowFloats, pb, weightRow, kyHi - kyLo + 1, kxHi - kxLo + 1, x0 - p + kxLo, w, acc + (long)x0 * V);
                    }
                    else
                    {
                        Slide8(pa, rowFloats, pb, weightRow, kyHi - kyLo + 1, kxHi - kxLo + 1, x0 - p + kxLo, w, acc + (long)x0 * V);
                    }

                    x0 += t;
                }

                FromBlockedRow(acc, dst + (long)y * w, w, plane);
            }
        }
    }

    // Jobs are channel blocks; each sums over the whole batch into its own 16 kernels.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradJobs(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k,
        float* scratch, int first, int last)
    {
        int p = k / 2, k8 = k + T12;
        long rowFloats = (long)(w + 2 * Pad) * V, plane = (long)h * w, planeFloats = h * rowFloats;
        float* xS = scratch;
        float* gS = xS + planeFloats;
        float* acc = gS + planeFloats;
        NativeMemory.Clear(scratch, (nuint)(2 * planeFloats * sizeof(float)));
        for (int block = first; block < last; block++)
        {
            int c0 = block * V;
            NativeMemory.Clear(acc, (nuint)((long)k * k8 * V * sizeof(float)));
            for (int image = 0; image < n; image++)
            {
                long offset = ((long)image * c + c0) * plane;
                ToBlocked(input + offset, xS + Pad * V, h, w, rowFloats);
                ToBlocked(gradOutput + offset, gS + Pad * V, h, w, rowFloats);
                for (int ky = 0; ky < k; ky++)
                {
                    // Output rows whose input row ky − p away holds data.
                    int yLo = Math.Max(0, p - ky), yHi = Math.Min(h - 1, h - 1 + p - ky);
                    for (int k0 = 0; k0 < k;)
                    {
                        // 12 kernel columns at a time while more than 16 are left (and W > 16, for the same reason), then 8.
                        int t = k - k0 > 16 && w > 16 ? T12 : T;
                        int xLo = Math.Max(0, p - k0 - (t - 1)), xHi = Math.Min(w - 1, p + w - 1 - k0);
                        if (xLo <= xHi)
                        {
                            float* pa = xS + (long)(yLo + ky - p) * rowFloats + (long)(xLo + k0 - p + Pad) * V;
                            float* pb = gS + yLo * rowFloats + (long)(xLo + Pad) * V;
                            float* pacc = acc + ((long)ky * k8 + k0) * V;
                            if (t == T12)
                            {
                                Slide12(pa, rowFloats, pb, rowFloats, yHi - yLo + 1, xHi - xLo + 1, xLo + k0 - p, w, pacc);
                            }
                            else
                            {
                                Slide8(pa, rowFloats, pb, rowFloats, yHi - yLo + 1, xHi - xLo + 1, xLo + k0 - p, w, pacc);
                            }
                        }

                        k0 += t;
                    }
                }
            }

            long kk = (long)k * k;
            for (int ch = 0; ch < V; ch++)
            {
                float* dst = gradWeight + (c0 + ch) * kk;
                for (int ky = 0; ky < k; ky++)
                {
                    for (int kx = 0; kx < k; kx++)
                    {
                        dst[ky * k + kx] = acc[((long)ky * k8 + kx) * V + ch];
                    }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(float* next, float* dst, int y, int h, int w, long plane)
    {
        if (next == null)
        {
            return;
        }

        // Row y's share of the next job's 16 planes (contiguous in NCHW) into L2, this row's output lines into L1.
        long lines = (V * plane + 15) / 16, per = (lines + h - 1) / h;
        for (long q = y * per, end = Math.Min(lines, (y + 1) * per); q < end; q++)
        {
            Sse.Prefetch1(next + q * 16);
        }

        for (int ch = 0; ch < V; ch++)
        {
            for (int x = 0; x < w; x += 16)
            {
                Sse.Prefetch0(dst + ch * plane + (long)y * w + x);
            }
        }
    }

    /// <summary>
    /// Kernels c0..c0+15 (K×K each, contiguous) → [ky][Pad + kx][16] with zero columns on both sides, rotated 180° for
    /// the input gradient; <paramref name="taps"/> is K·K·16 floats of scratch (the taps transposed 16 at a time).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackKernel(float* kernels, float* packed, float* taps, int k, bool rotate)
    {
        int kk = k * k, row = k + 2 * Pad, kk16 = kk & ~15;
        for (int t = 0; t < kk16; t += 16)
        {
            Transpose16(kernels + t, kk, taps + (long)t * V, V);
        }

        for (int ch = 0; ch < V; ch++)
        {
            for (int t = kk16; t < kk; t++)
            {
                taps[(long)t * V + ch] = kernels[(long)ch * kk + t];
            }
        }

        NativeMemory.Clear(packed, (nuint)((long)k * row * V * sizeof(float)));
        for (int u = 0; u < kk; u++)
        {
            Vector512.Load(taps + (long)(rotate ? kk - 1 - u : u) * V).Store(packed + ((long)(u / k) * row + Pad + u % k) * V);
        }
    }

    /// <summary>16 planes of H×W (contiguous) → rows of W pixels × 16 channels, <paramref name="rowFloats"/> apart.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ToBlocked(float* planes, float* dst, int h, int w, long rowFloats)
    {
        long plane = (long)h * w;
        int w16 = w & ~15;
        for (int y = 0; y < h; y++)
        {
            float* d = dst + y * rowFloats;
            float* s = planes + (long)y * w;
            for (int x = 0; x < w16; x += 16)
            {
                Transpose16(s + x, plane, d + (long)x * V, V);
            }

            for (int ch = 0; ch < V; ch++)
            {
                for (int x = w16; x < w; x++)
                {
                    d[(long)x * V + ch] = s[ch * plane + x];
                }
            }
        }
    }

    /// <summary>One row of W pixels × 16 channels → row y of 16 planes (<paramref name="dst"/> points at plane 0's row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FromBlockedRow(float* row, float* dst, int w, long plane)
    {
        int w16 = w & ~15;
        for (int x = 0; x < w16; x += 16)
        {
            Transpose16(row + (long)x * V, V, dst + x, plane);
        }

        for (int ch = 0; ch < V; ch++)
        {
            for (int x = w16; x < w; x++)
            {
                dst[ch * plane + x] = row[(long)x * V + ch];
            }
        }
    }

    /// <summary>Transposes a 16 × 16 block: row i (16 floats at src + i·srcStride) becomes column i (dst + j·dstStride, lane i).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose16(float* src, long srcStride, float* dst, long dstStride)
    {
        var r0 = Vector512.Load(src);
        var r1 = Vector512.Load(src + srcStride);
        var r2 = Vector512.Load(src + 2 * srcStride);
        var r3 = Vector512.Load(src + 3 * srcStride);
        var r4 = Vector512.Load(src + 4 * srcStride);
        var r5 = Vector512.Load(src + 5 * srcStride);
        var r6 = Vector512.Load(src + 6 * srcStride);
        var r7 = Vector512.Load(src + 7 * srcStride);
        var r8 = Vector512.Load(src + 8 * srcStride);
        var r9 = Vector512.Load(src + 9 * srcStride);
        var r10 = Vector512.Load(src + 10 * srcStride);
        var r11 = Vector512.Load(src + 11 * srcStride);
        var r12 = Vector512.Load(src + 12 * srcStride);
        var r13 = Vector512.Load(src + 13 * srcStride);
        var r14 = Vector512.Load(src + 14 * srcStride);
        var r15 = Vector512.Load(src + 15 * srcStride);

        // Pairs of rows interleaved, then 4-row groups per 128-bit lane: u_q (q = 0..3) holds, in lane l, column 4l + q
        // of rows 4g..4g+3 for its group g.
        var t0 = Avx512F.UnpackLow(r0, r1);
        var t1 = Avx512F.UnpackHigh(r0, r1);
        var t2 = Avx512F.UnpackLow(r2, r3);
        var t3 = Avx512F.UnpackHigh(r2, r3);
        var t4 = Avx512F.UnpackLow(r4, r5);
        var t5 = Avx512F.UnpackHigh(r4, r5);
        var t6 = Avx512F.UnpackLow(r6, r7);
        var t7 = Avx512F.UnpackHigh(r6, r7);
        var t8 = Avx512F.UnpackLow(r8, r9);
        var t9 = Avx512F.UnpackHigh(r8, r9);
        var t10 = Avx512F.UnpackLow(r10, r11);
        var t11 = Avx512F.UnpackHigh(r10, r11);
        var t12 = Avx512F.UnpackLow(r12, r13);
        var t13 = Avx512F.UnpackHigh(r12, r13);
        var t14 = Avx512F.UnpackLow(r14, r15);
        var t15 = Avx512F.UnpackHigh(r14, r15);
        Quad(Avx512F.Shuffle(t0, t2, 0x44), Avx512F.Shuffle(t4, t6, 0x44), Avx512F.Shuffle(t8, t10, 0x44), Avx512F.Shuffle(t12, t14, 0x44), dst, dstStride, 0);
        Quad(Avx512F.Shuffle(t0, t2, 0xEE), Avx512F.Shuffle(t4, t6, 0xEE), Avx512F.Shuffle(t8, t10, 0xEE), Avx512F.Shuffle(t12, t14, 0xEE), dst, dstStride, 1);
        Quad(Avx512F.Shuffle(t1, t3, 0x44), Avx512F.Shuffle(t5, t7, 0x44), Avx512F.Shuffle(t9, t11, 0x44), Avx512F.Shuffle(t13, t15, 0x44), dst, dstStride, 2);
        Quad(Avx512F.Shuffle(t1, t3, 0xEE), Avx512F.Shuffle(t5, t7, 0xEE), Avx512F.Shuffle(t9, t11, 0xEE), Avx512F.Shuffle(t13, t15, 0xEE), dst, dstStride, 3);
    }

    /// <summary>Gathers lane l of the four row groups into column 4l + q (128-bit lane shuffles).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Quad(Vector512<float> g0, Vector512<float> g1, Vector512<float> g2, Vector512<float> g3, float* dst, long dstStride, int q)
    {
        var v0 = Avx512F.Shuffle4x128(g0, g1, 0x88);
        var v1 = Avx512F.Shuffle4x128(g0, g1, 0xDD);
        var w0 = Avx512F.Shuffle4x128(g2, g3, 0x88);
        var w1 = Avx512F.Shuffle4x128(g2, g3, 0xDD);
        Avx512F.Shuffle4x128(v0, w0, 0x88).Store(dst + q * dstStride);
        Avx512F.Shuffle4x128(v1, w1, 0x88).Store(dst + (4 + q) * dstStride);
        Avx512F.Shuffle4x128(v0, w0, 0xDD).Store(dst + (8 + q) * dstStride);
        Avx512F.Shuffle4x128(v1, w1, 0xDD).Store(dst + (12 + q) * dstStride);
    }

    // <generated by tools/gen_depthwise_slide.py>
    /// <summary>
    /// acc[j] += Σ_rows Σ_{m &lt; len} a[(m + j)·16] ⊙ b[m·16] for j = 0..7 (16-wide vectors; a and b advance by
    /// their strides per row), skipping the pairs whose column u = ustart + j + m lies outside [0, width), where a
    /// reads padding. Forward: j an output column, m a kernel column, b the kernel row. Weight gradient: j a kernel
    /// column, m an output column, b the output-gradient row.
    /// </summary>
    /// <remarks>
    /// The skipped pairs form two triangles, before the first step where all 8 columns see data and after the last.
    /// Both are widened to exactly 7 steps (a and b have 7+ zero vectors on each side, so up to 6 extra steps
    /// multiply zeros) and run as straight-line code; between them the main loop slides the input vectors through
    /// 8 registers, unrolled 8 times so the rotation is static (2 loads per 8 FMAs). When the triangles overlap
    /// (rows shorter than ~14 steps) every pair is tested (<see cref="Slide8Edges"/>). Callers clip m to the
    /// pairs' union: ustart ≥ −7 and ustart + len ≤ width.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Slide8(float* a, long aStride, float* b, long bStride, int rows, int len, int ustart, int width, float* acc)
    {
        Debug.Assert(ustart >= -7 && ustart + len <= width, "Slide8: m range outside the padded columns");
        if (ustart < 0 && ustart > -7)
        {
            int d = 7 + ustart;
            a -= d * V;
            b -= d * V;
            len += d;
            ustart = -7;
        }

        int over = ustart + 7 + len - width;
        if (over > 0 && over < 7)
        {
            len += 7 - over;
            over = 7;
        }

        bool left = ustart < 0, right = over > 0;
        int mid = len - (left ? 7 : 0) - (right ? 7 : 0);
        if (mid < 0)
        {
            Slide8Edges(a, aStride, b, bStride, rows, len, ustart, width, acc);
            return;
        }

        int main = mid / 8 * 8, tail = mid - main;
        var a0 = Vector512.Load(acc + (0 * V));
        var a1 = Vector512.Load(acc + (1 * V));
        var a2 = Vector512.Load(acc + (2 * V));
        var a3 = Vector512.Load(acc + (3 * V));
        var a4 = Vector512.Load(acc + (4 * V));
        var a5 = Vector512.Load(acc + (5 * V));
        var a6 = Vector512.Load(acc + (6 * V));
        var a7 = Vector512.Load(acc + (7 * V));
        Vector512<float> i0, i1, i2, i3, i4, i5, i6, i7, w;
        for (int r = 0; r < rows; r++, a += aStride, b += bStride)
        {
            float* pa = a;
            float* pb = b;
            if (left)
            {
                i0 = Vector512.Load(pa + (7 * V));
                w = Vector512.Load(pb + (0 * V));
                a7 = Avx512F.FusedMultiplyAdd(i0, w, a7);
                i1 = Vector512.Load(pa + (8 * V));
                w = Vector512.Load(pb + (1 * V));
                a6 = Avx512F.FusedMultiplyAdd(i0, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i1, w, a7);
                i2 = Vector512.Load(pa + (9 * V));
                w = Vector512.Load(pb + (2 * V));
                a5 = Avx512F.FusedMultiplyAdd(i0, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i1, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i2, w, a7);
                i3 = Vector512.Load(pa + (10 * V));
                w = Vector512.Load(pb + (3 * V));
                a4 = Avx512F.FusedMultiplyAdd(i0, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i1, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i2, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i3, w, a7);
                i4 = Vector512.Load(pa + (11 * V));
                w = Vector512.Load(pb + (4 * V));
                a3 = Avx512F.FusedMultiplyAdd(i0, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i1, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i2, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i3, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i4, w, a7);
                i5 = Vector512.Load(pa + (12 * V));
                w = Vector512.Load(pb + (5 * V));
                a2 = Avx512F.FusedMultiplyAdd(i0, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i1, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i2, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i3, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i4, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i5, w, a7);
                i6 = Vector512.Load(pa + (13 * V));
                w = Vector512.Load(pb + (6 * V));
                a1 = Avx512F.FusedMultiplyAdd(i0, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i1, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i2, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i3, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i4, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i5, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i6, w, a7);
                pa += 7 * V;
                pb += 7 * V;
            }
            else
            {
                i0 = Vector512.Load(pa + (0 * V));
                i1 = Vector512.Load(pa + (1 * V));
                i2 = Vector512.Load(pa + (2 * V));
                i3 = Vector512.Load(pa + (3 * V));
                i4 = Vector512.Load(pa + (4 * V));
                i5 = Vector512.Load(pa + (5 * V));
                i6 = Vector512.Load(pa + (6 * V));
            }

            for (int m = 0; m < main; m += 8, pa += 8 * V, pb += 8 * V)
            {
                i7 = Vector512.Load(pa + (7 * V));
                w = Vector512.Load(pb + (0 * V));
                a0 = Avx512F.FusedMultiplyAdd(i0, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i1, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i2, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i3, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i4, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i5, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i6, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i7, w, a7);
                i0 = Vector512.Load(pa + (8 * V));
                w = Vector512.Load(pb + (1 * V));
                a0 = Avx512F.FusedMultiplyAdd(i1, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i2, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i3, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i4, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i5, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i6, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i7, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i0, w, a7);
                i1 = Vector512.Load(pa + (9 * V));
                w = Vector512.Load(pb + (2 * V));
                a0 = Avx512F.FusedMultiplyAdd(i2, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i3, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i4, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i5, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i6, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i7, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i0, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i1, w, a7);
                i2 = Vector512.Load(pa + (10 * V));
                w = Vector512.Load(pb + (3 * V));
                a0 = Avx512F.FusedMultiplyAdd(i3, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i4, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i5, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i6, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i7, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i0, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i1, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i2, w, a7);
                i3 = Vector512.Load(pa + (11 * V));
                w = Vector512.Load(pb + (4 * V));
                a0 = Avx512F.FusedMultiplyAdd(i4, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i5, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i6, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i7, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i0, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i1, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i2, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i3, w, a7);
                i4 = Vector512.Load(pa + (12 * V));
                w = Vector512.Load(pb + (5 * V));
                a0 = Avx512F.FusedMultiplyAdd(i5, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i6, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i7, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i0, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i1, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i2, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i3, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i4, w, a7);
                i5 = Vector512.Load(pa + (13 * V));
                w = Vector512.Load(pb + (6 * V));
                a0 = Avx512F.FusedMultiplyAdd(i6, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i7, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i0, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i1, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i2, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i3, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i4, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i5, w, a7);
                i6 = Vector512.Load(pa + (14 * V));
                w = Vector512.Load(pb + (7 * V));
                a0 = Avx512F.FusedMultiplyAdd(i7, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i0, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i1, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i2, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i3, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i4, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i5, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i6, w, a7);
            }

            if (tail > 0)
            {
                for (int m = 0; m < tail; m++, pa += V, pb += V)
                {
                    w = Vector512.Load(pb);
                    a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (0 * V)), w, a0);
                    a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (1 * V)), w, a1);
                    a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (2 * V)), w, a2);
                    a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (3 * V)), w, a3);
                    a4 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (4 * V)), w, a4);
                    a5 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (5 * V)), w, a5);
                    a6 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (6 * V)), w, a6);
                    a7 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (7 * V)), w, a7);
                }

                i0 = Vector512.Load(pa + (0 * V));
                i1 = Vector512.Load(pa + (1 * V));
                i2 = Vector512.Load(pa + (2 * V));
                i3 = Vector512.Load(pa + (3 * V));
                i4 = Vector512.Load(pa + (4 * V));
                i5 = Vector512.Load(pa + (5 * V));
                i6 = Vector512.Load(pa + (6 * V));
            }

            if (right)
            {
                w = Vector512.Load(pb + (0 * V));
                a0 = Avx512F.FusedMultiplyAdd(i0, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i1, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i2, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i3, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i4, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i5, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i6, w, a6);
                w = Vector512.Load(pb + (1 * V));
                a0 = Avx512F.FusedMultiplyAdd(i1, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i2, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i3, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i4, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i5, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i6, w, a5);
                w = Vector512.Load(pb + (2 * V));
                a0 = Avx512F.FusedMultiplyAdd(i2, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i3, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i4, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i5, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i6, w, a4);
                w = Vector512.Load(pb + (3 * V));
                a0 = Avx512F.FusedMultiplyAdd(i3, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i4, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i5, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i6, w, a3);
                w = Vector512.Load(pb + (4 * V));
                a0 = Avx512F.FusedMultiplyAdd(i4, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i5, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i6, w, a2);
                w = Vector512.Load(pb + (5 * V));
                a0 = Avx512F.FusedMultiplyAdd(i5, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i6, w, a1);
                w = Vector512.Load(pb + (6 * V));
                a0 = Avx512F.FusedMultiplyAdd(i6, w, a0);
            }
        }

        a0.Store(acc + (0 * V));
        a1.Store(acc + (1 * V));
        a2.Store(acc + (2 * V));
        a3.Store(acc + (3 * V));
        a4.Store(acc + (4 * V));
        a5.Store(acc + (5 * V));
        a6.Store(acc + (6 * V));
        a7.Store(acc + (7 * V));
    }

    /// <summary><see cref="Slide8"/> for short rows: every pair tested against [0, width).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Slide8Edges(float* a, long aStride, float* b, long bStride, int rows, int len, int ustart, int width, float* acc)
    {
        var a0 = Vector512.Load(acc + (0 * V));
        var a1 = Vector512.Load(acc + (1 * V));
        var a2 = Vector512.Load(acc + (2 * V));
        var a3 = Vector512.Load(acc + (3 * V));
        var a4 = Vector512.Load(acc + (4 * V));
        var a5 = Vector512.Load(acc + (5 * V));
        var a6 = Vector512.Load(acc + (6 * V));
        var a7 = Vector512.Load(acc + (7 * V));
        for (int r = 0; r < rows; r++, a += aStride, b += bStride)
        {
            for (int m = 0; m < len; m++)
            {
                int jlo = -ustart - m, jhi = width - 1 - ustart - m;
                float* pa = a + ((long)m * V);
                var w = Vector512.Load(b + ((long)m * V));
                if (jlo <= 0 && 0 <= jhi)
                {
                    a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (0 * V)), w, a0);
                }

                if (jlo <= 1 && 1 <= jhi)
                {
                    a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (1 * V)), w, a1);
                }

                if (jlo <= 2 && 2 <= jhi)
                {
                    a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (2 * V)), w, a2);
                }

                if (jlo <= 3 && 3 <= jhi)
                {
                    a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (3 * V)), w, a3);
                }

                if (jlo <= 4 && 4 <= jhi)
                {
                    a4 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (4 * V)), w, a4);
                }

                if (jlo <= 5 && 5 <= jhi)
                {
                    a5 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (5 * V)), w, a5);
                }

                if (jlo <= 6 && 6 <= jhi)
                {
                    a6 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (6 * V)), w, a6);
                }

                if (jlo <= 7 && 7 <= jhi)
                {
                    a7 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (7 * V)), w, a7);
                }
            }
        }

        a0.Store(acc + (0 * V));
        a1.Store(acc + (1 * V));
        a2.Store(acc + (2 * V));
        a3.Store(acc + (3 * V));
        a4.Store(acc + (4 * V));
        a5.Store(acc + (5 * V));
        a6.Store(acc + (6 * V));
        a7.Store(acc + (7 * V));
    }

    /// <summary>
    /// acc[j] += Σ_rows Σ_{m &lt; len} a[(m + j)·16] ⊙ b[m·16] for j = 0..11 (16-wide vectors; a and b advance by
    /// their strides per row), skipping the pairs whose column u = ustart + j + m lies outside [0, width), where a
    /// reads padding. Forward: j an output column, m a kernel column, b the kernel row. Weight gradient: j a kernel
    /// column, m an output column, b the output-gradient row.
    /// </summary>
    /// <remarks>
    /// The skipped pairs form two triangles, before the first step where all 12 columns see data and after the last.
    /// Both are widened to exactly 11 steps (a and b have 11+ zero vectors on each side, so up to 10 extra steps
    /// multiply zeros) and run as straight-line code; between them the main loop slides the input vectors through
    /// 12 registers, unrolled 12 times so the rotation is static (2 loads per 12 FMAs). When the triangles overlap
    /// (rows shorter than ~22 steps) every pair is tested (<see cref="Slide12Edges"/>). Callers clip m to the
    /// pairs' union: ustart ≥ −11 and ustart + len ≤ width.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Slide12(float* a, long aStride, float* b, long bStride, int rows, int len, int ustart, int width, float* acc)
    {
        Debug.Assert(ustart >= -11 && ustart + len <= width, "Slide12: m range outside the padded columns");
        if (ustart < 0 && ustart > -11)
        {
            int d = 11 + ustart;
            a -= d * V;
            b -= d * V;
            len += d;
            ustart = -11;
        }

        int over = ustart + 11 + len - width;
        if (over > 0 && over < 11)
        {
            len += 11 - over;
            over = 11;
        }

        bool left = ustart < 0, right = over > 0;
        int mid = len - (left ? 11 : 0) - (right ? 11 : 0);
        if (mid < 0)
        {
            Slide12Edges(a, aStride, b, bStride, rows, len, ustart, width, acc);
            return;
        }

        int main = mid / 12 * 12, tail = mid - main;
        var a0 = Vector512.Load(acc + (0 * V));
        var a1 = Vector512.Load(acc + (1 * V));
        var a2 = Vector512.Load(acc + (2 * V));
        var a3 = Vector512.Load(acc + (3 * V));
        var a4 = Vector512.Load(acc + (4 * V));
        var a5 = Vector512.Load(acc + (5 * V));
        var a6 = Vector512.Load(acc + (6 * V));
        var a7 = Vector512.Load(acc + (7 * V));
        var a8 = Vector512.Load(acc + (8 * V));
        var a9 = Vector512.Load(acc + (9 * V));
        var a10 = Vector512.Load(acc + (10 * V));
        var a11 = Vector512.Load(acc + (11 * V));
        Vector512<float> i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, w;
        for (int r = 0; r < rows; r++, a += aStride, b += bStride)
        {
            float* pa = a;
            float* pb = b;
            if (left)
            {
                i0 = Vector512.Load(pa + (11 * V));
                w = Vector512.Load(pb + (0 * V));
                a11 = Avx512F.FusedMultiplyAdd(i0, w, a11);
                i1 = Vector512.Load(pa + (12 * V));
                w = Vector512.Load(pb + (1 * V));
                a10 = Avx512F.FusedMultiplyAdd(i0, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i1, w, a11);
                i2 = Vector512.Load(pa + (13 * V));
                w = Vector512.Load(pb + (2 * V));
                a9 = Avx512F.FusedMultiplyAdd(i0, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i1, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i2, w, a11);
                i3 = Vector512.Load(pa + (14 * V));
                w = Vector512.Load(pb + (3 * V));
                a8 = Avx512F.FusedMultiplyAdd(i0, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i1, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i2, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i3, w, a11);
                i4 = Vector512.Load(pa + (15 * V));
                w = Vector512.Load(pb + (4 * V));
                a7 = Avx512F.FusedMultiplyAdd(i0, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i1, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i2, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i3, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i4, w, a11);
                i5 = Vector512.Load(pa + (16 * V));
                w = Vector512.Load(pb + (5 * V));
                a6 = Avx512F.FusedMultiplyAdd(i0, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i1, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i2, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i3, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i4, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i5, w, a11);
                i6 = Vector512.Load(pa + (17 * V));
                w = Vector512.Load(pb + (6 * V));
                a5 = Avx512F.FusedMultiplyAdd(i0, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i1, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i2, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i3, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i4, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i5, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i6, w, a11);
                i7 = Vector512.Load(pa + (18 * V));
                w = Vector512.Load(pb + (7 * V));
                a4 = Avx512F.FusedMultiplyAdd(i0, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i1, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i2, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i3, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i4, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i5, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i6, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i7, w, a11);
                i8 = Vector512.Load(pa + (19 * V));
                w = Vector512.Load(pb + (8 * V));
                a3 = Avx512F.FusedMultiplyAdd(i0, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i1, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i2, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i3, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i4, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i5, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i6, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i7, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i8, w, a11);
                i9 = Vector512.Load(pa + (20 * V));
                w = Vector512.Load(pb + (9 * V));
                a2 = Avx512F.FusedMultiplyAdd(i0, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i1, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i2, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i3, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i4, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i5, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i6, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i7, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i8, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i9, w, a11);
                i10 = Vector512.Load(pa + (21 * V));
                w = Vector512.Load(pb + (10 * V));
                a1 = Avx512F.FusedMultiplyAdd(i0, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i1, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i2, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i3, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i4, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i5, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i6, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i7, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i8, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i9, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i10, w, a11);
                pa += 11 * V;
                pb += 11 * V;
            }
            else
            {
                i0 = Vector512.Load(pa + (0 * V));
                i1 = Vector512.Load(pa + (1 * V));
                i2 = Vector512.Load(pa + (2 * V));
                i3 = Vector512.Load(pa + (3 * V));
                i4 = Vector512.Load(pa + (4 * V));
                i5 = Vector512.Load(pa + (5 * V));
                i6 = Vector512.Load(pa + (6 * V));
                i7 = Vector512.Load(pa + (7 * V));
                i8 = Vector512.Load(pa + (8 * V));
                i9 = Vector512.Load(pa + (9 * V));
                i10 = Vector512.Load(pa + (10 * V));
            }

            for (int m = 0; m < main; m += 12, pa += 12 * V, pb += 12 * V)
            {
                i11 = Vector512.Load(pa + (11 * V));
                w = Vector512.Load(pb + (0 * V));
                a0 = Avx512F.FusedMultiplyAdd(i0, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i1, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i2, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i3, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i4, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i5, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i6, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i7, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i8, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i9, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i10, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i11, w, a11);
                i0 = Vector512.Load(pa + (12 * V));
                w = Vector512.Load(pb + (1 * V));
                a0 = Avx512F.FusedMultiplyAdd(i1, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i2, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i3, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i4, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i5, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i6, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i7, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i8, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i9, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i10, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i11, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i0, w, a11);
                i1 = Vector512.Load(pa + (13 * V));
                w = Vector512.Load(pb + (2 * V));
                a0 = Avx512F.FusedMultiplyAdd(i2, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i3, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i4, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i5, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i6, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i7, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i8, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i9, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i10, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i11, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i0, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i1, w, a11);
                i2 = Vector512.Load(pa + (14 * V));
                w = Vector512.Load(pb + (3 * V));
                a0 = Avx512F.FusedMultiplyAdd(i3, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i4, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i5, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i6, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i7, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i8, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i9, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i10, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i11, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i0, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i1, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i2, w, a11);
                i3 = Vector512.Load(pa + (15 * V));
                w = Vector512.Load(pb + (4 * V));
                a0 = Avx512F.FusedMultiplyAdd(i4, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i5, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i6, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i7, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i8, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i9, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i10, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i11, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i0, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i1, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i2, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i3, w, a11);
                i4 = Vector512.Load(pa + (16 * V));
                w = Vector512.Load(pb + (5 * V));
                a0 = Avx512F.FusedMultiplyAdd(i5, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i6, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i7, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i8, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i9, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i10, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i11, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i0, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i1, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i2, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i3, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i4, w, a11);
                i5 = Vector512.Load(pa + (17 * V));
                w = Vector512.Load(pb + (6 * V));
                a0 = Avx512F.FusedMultiplyAdd(i6, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i7, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i8, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i9, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i10, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i11, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i0, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i1, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i2, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i3, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i4, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i5, w, a11);
                i6 = Vector512.Load(pa + (18 * V));
                w = Vector512.Load(pb + (7 * V));
                a0 = Avx512F.FusedMultiplyAdd(i7, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i8, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i9, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i10, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i11, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i0, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i1, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i2, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i3, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i4, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i5, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i6, w, a11);
                i7 = Vector512.Load(pa + (19 * V));
                w = Vector512.Load(pb + (8 * V));
                a0 = Avx512F.FusedMultiplyAdd(i8, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i9, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i10, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i11, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i0, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i1, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i2, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i3, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i4, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i5, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i6, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i7, w, a11);
                i8 = Vector512.Load(pa + (20 * V));
                w = Vector512.Load(pb + (9 * V));
                a0 = Avx512F.FusedMultiplyAdd(i9, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i10, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i11, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i0, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i1, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i2, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i3, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i4, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i5, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i6, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i7, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i8, w, a11);
                i9 = Vector512.Load(pa + (21 * V));
                w = Vector512.Load(pb + (10 * V));
                a0 = Avx512F.FusedMultiplyAdd(i10, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i11, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i0, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i1, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i2, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i3, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i4, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i5, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i6, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i7, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i8, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i9, w, a11);
                i10 = Vector512.Load(pa + (22 * V));
                w = Vector512.Load(pb + (11 * V));
                a0 = Avx512F.FusedMultiplyAdd(i11, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i0, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i1, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i2, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i3, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i4, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i5, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i6, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i7, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i8, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i9, w, a10);
                a11 = Avx512F.FusedMultiplyAdd(i10, w, a11);
            }

            if (tail > 0)
            {
                for (int m = 0; m < tail; m++, pa += V, pb += V)
                {
                    w = Vector512.Load(pb);
                    a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (0 * V)), w, a0);
                    a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (1 * V)), w, a1);
                    a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (2 * V)), w, a2);
                    a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (3 * V)), w, a3);
                    a4 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (4 * V)), w, a4);
                    a5 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (5 * V)), w, a5);
                    a6 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (6 * V)), w, a6);
                    a7 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (7 * V)), w, a7);
                    a8 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (8 * V)), w, a8);
                    a9 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (9 * V)), w, a9);
                    a10 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (10 * V)), w, a10);
                    a11 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (11 * V)), w, a11);
                }

                i0 = Vector512.Load(pa + (0 * V));
                i1 = Vector512.Load(pa + (1 * V));
                i2 = Vector512.Load(pa + (2 * V));
                i3 = Vector512.Load(pa + (3 * V));
                i4 = Vector512.Load(pa + (4 * V));
                i5 = Vector512.Load(pa + (5 * V));
                i6 = Vector512.Load(pa + (6 * V));
                i7 = Vector512.Load(pa + (7 * V));
                i8 = Vector512.Load(pa + (8 * V));
                i9 = Vector512.Load(pa + (9 * V));
                i10 = Vector512.Load(pa + (10 * V));
            }

            if (right)
            {
                w = Vector512.Load(pb + (0 * V));
                a0 = Avx512F.FusedMultiplyAdd(i0, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i1, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i2, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i3, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i4, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i5, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i6, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i7, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i8, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i9, w, a9);
                a10 = Avx512F.FusedMultiplyAdd(i10, w, a10);
                w = Vector512.Load(pb + (1 * V));
                a0 = Avx512F.FusedMultiplyAdd(i1, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i2, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i3, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i4, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i5, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i6, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i7, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i8, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i9, w, a8);
                a9 = Avx512F.FusedMultiplyAdd(i10, w, a9);
                w = Vector512.Load(pb + (2 * V));
                a0 = Avx512F.FusedMultiplyAdd(i2, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i3, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i4, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i5, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i6, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i7, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i8, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i9, w, a7);
                a8 = Avx512F.FusedMultiplyAdd(i10, w, a8);
                w = Vector512.Load(pb + (3 * V));
                a0 = Avx512F.FusedMultiplyAdd(i3, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i4, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i5, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i6, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i7, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i8, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i9, w, a6);
                a7 = Avx512F.FusedMultiplyAdd(i10, w, a7);
                w = Vector512.Load(pb + (4 * V));
                a0 = Avx512F.FusedMultiplyAdd(i4, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i5, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i6, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i7, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i8, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i9, w, a5);
                a6 = Avx512F.FusedMultiplyAdd(i10, w, a6);
                w = Vector512.Load(pb + (5 * V));
                a0 = Avx512F.FusedMultiplyAdd(i5, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i6, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i7, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i8, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i9, w, a4);
                a5 = Avx512F.FusedMultiplyAdd(i10, w, a5);
                w = Vector512.Load(pb + (6 * V));
                a0 = Avx512F.FusedMultiplyAdd(i6, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i7, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i8, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i9, w, a3);
                a4 = Avx512F.FusedMultiplyAdd(i10, w, a4);
                w = Vector512.Load(pb + (7 * V));
                a0 = Avx512F.FusedMultiplyAdd(i7, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i8, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i9, w, a2);
                a3 = Avx512F.FusedMultiplyAdd(i10, w, a3);
                w = Vector512.Load(pb + (8 * V));
                a0 = Avx512F.FusedMultiplyAdd(i8, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i9, w, a1);
                a2 = Avx512F.FusedMultiplyAdd(i10, w, a2);
                w = Vector512.Load(pb + (9 * V));
                a0 = Avx512F.FusedMultiplyAdd(i9, w, a0);
                a1 = Avx512F.FusedMultiplyAdd(i10, w, a1);
                w = Vector512.Load(pb + (10 * V));
                a0 = Avx512F.FusedMultiplyAdd(i10, w, a0);
            }
        }

        a0.Store(acc + (0 * V));
        a1.Store(acc + (1 * V));
        a2.Store(acc + (2 * V));
        a3.Store(acc + (3 * V));
        a4.Store(acc + (4 * V));
        a5.Store(acc + (5 * V));
        a6.Store(acc + (6 * V));
        a7.Store(acc + (7 * V));
        a8.Store(acc + (8 * V));
        a9.Store(acc + (9 * V));
        a10.Store(acc + (10 * V));
        a11.Store(acc + (11 * V));
    }

    /// <summary><see cref="Slide12"/> for short rows: every pair tested against [0, width).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Slide12Edges(float* a, long aStride, float* b, long bStride, int rows, int len, int ustart, int width, float* acc)
    {
        var a0 = Vector512.Load(acc + (0 * V));
        var a1 = Vector512.Load(acc + (1 * V));
        var a2 = Vector512.Load(acc + (2 * V));
        var a3 = Vector512.Load(acc + (3 * V));
        var a4 = Vector512.Load(acc + (4 * V));
        var a5 = Vector512.Load(acc + (5 * V));
        var a6 = Vector512.Load(acc + (6 * V));
        var a7 = Vector512.Load(acc + (7 * V));
        var a8 = Vector512.Load(acc + (8 * V));
        var a9 = Vector512.Load(acc + (9 * V));
        var a10 = Vector512.Load(acc + (10 * V));
        var a11 = Vector512.Load(acc + (11 * V));
        for (int r = 0; r < rows; r++, a += aStride, b += bStride)
        {
            for (int m = 0; m < len; m++)
            {
                int jlo = -ustart - m, jhi = width - 1 - ustart - m;
                float* pa = a + ((long)m * V);
                var w = Vector512.Load(b + ((long)m * V));
                if (jlo <= 0 && 0 <= jhi)
                {
                    a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (0 * V)), w, a0);
                }

                if (jlo <= 1 && 1 <= jhi)
                {
                    a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (1 * V)), w, a1);
                }

                if (jlo <= 2 && 2 <= jhi)
                {
                    a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (2 * V)), w, a2);
                }

                if (jlo <= 3 && 3 <= jhi)
                {
                    a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (3 * V)), w, a3);
                }

                if (jlo <= 4 && 4 <= jhi)
                {
                    a4 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (4 * V)), w, a4);
                }

                if (jlo <= 5 && 5 <= jhi)
                {
                    a5 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (5 * V)), w, a5);
                }

                if (jlo <= 6 && 6 <= jhi)
                {
                    a6 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (6 * V)), w, a6);
                }

                if (jlo <= 7 && 7 <= jhi)
                {
                    a7 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (7 * V)), w, a7);
                }

                if (jlo <= 8 && 8 <= jhi)
                {
                    a8 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (8 * V)), w, a8);
                }

                if (jlo <= 9 && 9 <= jhi)
                {
                    a9 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (9 * V)), w, a9);
                }

                if (jlo <= 10 && 10 <= jhi)
                {
                    a10 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (10 * V)), w, a10);
                }

                if (jlo <= 11 && 11 <= jhi)
                {
                    a11 = Avx512F.FusedMultiplyAdd(Vector512.Load(pa + (11 * V)), w, a11);
                }
            }
        }

        a0.Store(acc + (0 * V));
        a1.Store(acc + (1 * V));
        a2.Store(acc + (2 * V));
        a3.Store(acc + (3 * V));
        a4.Store(acc + (4 * V));
        a5.Store(acc + (5 * V));
        a6.Store(acc + (6 * V));
        a7.Store(acc + (7 * V));
        a8.Store(acc + (8 * V));
        a9.Store(acc + (9 * V));
        a10.Store(acc + (10 * V));
        a11.Store(acc + (11 * V));
    }
    // </generated>

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;
}
