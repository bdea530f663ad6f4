using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using RepLKNet.Runtime;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// Depthwise "same" convolution (stride 1, padding K/2, odd K) on NCHW float32 planes, in C# SIMD.
/// Design (docs/perf-notes.md):
/// <list type="bullet">
/// <item>Each (n, c) plane is copied once into a zero-padded per-thread scratch, so the inner loops have no bounds
/// checks; the zero border is written once per call, only the data region per plane.</item>
/// <item>Forward: register tiles of 4 output rows × 2 vectors, or on maps one vector wide 8 rows × 1 vector (4 × 1 for
/// K ≤ <see cref="DirectMaxKernel"/> and a last block of ≤ 4 rows); for K ≤ <see cref="DirectMaxKernel"/> on wider maps
/// the 4 × 2 tile loops over the kernel taps directly instead of the row band. Each input
/// row of the band is loaded once per kernel column and feeds the output rows it touches (weights stored column by
/// column, padded with zero rows so edge rows need no branch and a tile's weights for one column are adjacent).
/// Input rows and kernel columns that only see zero padding are skipped.</item>
/// <item>Input-grad: the forward kernel with the kernel rotated by 180°.</item>
/// <item>Weight-grad: per channel, a correlation of the padded input with the output gradient into K×K sums, blocked as
/// 2 kernel rows × 4 kernel columns of vector accumulators, reduced at the end (K = 3: one accumulator per tap, vectors
/// along x); channels are split across threads (or (n, c) planes with per-thread partial sums when there are few
/// channels).</item>
/// </list>
/// </summary>
public static unsafe class DepthwiseConvCpu
{
    /// <summary>Output rows per register tile two vectors wide (4 × 2 = 8 accumulators).</summary>
    private const int RowBlock = 4;

    /// <summary>
    /// Output rows per band tile one vector wide (8 × 1 = 8 accumulators), on maps up to one vector wide with
    /// K &gt; <see cref="DirectMaxKernel"/>; such a map's last block of at most 4 rows takes the 4 × 1 tile.
    /// </summary>
    private const int NarrowRowBlock = 8;

    /// <summary>Zero kernel rows stored above and below each kernel: enough for the tallest row block.</summary>
    private const int WeightPad = NarrowRowBlock - 1;

    /// <summary>Largest kernel for which the direct tap loop beats the row band (measured: docs/perf-notes.md).</summary>
    internal static int DirectMaxKernel { get; set; } = 5;

    /// <summary>Forward: <paramref name="output"/>[n,c] = bias[c] + Σ w[c,ky,kx]·x[n,c,y+ky−p,x+kx−p].</summary>
    /// <param name="input">N·C planes of H×W.</param>
    /// <param name="weight">C kernels of K×K.</param>
    /// <param name="bias">C biases, or null.</param>
    /// <param name="output">N·C planes of H×W (written).</param>
    /// <param name="n">Batch.</param>
    /// <param name="c">Channels.</param>
    /// <param name="h">Height.</param>
    /// <param name="w">Width.</param>
    /// <param name="k">Kernel size (odd).</param>
    /// <param name="isa">Instruction set.</param>
    /// <param name="threads">Worker threads.</param>
    public static void Forward(float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k, CpuIsa isa, int threads) =>
        ConvolveOn(CpuIsas.Resolve(isa), input, weight, bias, output, n, c, h, w, k, rotate: false, threads);

    /// <summary>Input gradient: the forward convolution of <paramref name="gradOutput"/> with each kernel rotated 180°.</summary>
    public static void InputGrad(float* gradOutput, float* weight, float* gradInput, int n, int c, int h, int w, int k, CpuIsa isa, int threads) =>
        ConvolveOn(CpuIsas.Resolve(isa), gradOutput, weight, null, gradInput, n, c, h, w, k, rotate: true, threads);

    private static void ConvolveOn(CpuIsa isa, float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k, bool rotate, int threads)
    {
        switch (isa)
        {
            case CpuIsa.Vector512 when DepthwiseConvBlocked.ConvApplies(isa, c, h, w, k):
                DepthwiseConvBlocked.Convolve(input, weight, bias, output, n, c, h, w, k, rotate, threads);
                break;
            case CpuIsa.Vector512:
                Convolve<Ops512, Vector512<float>>(input, weight, bias, output, n, c, h, w, k, rotate, threads);
                break;
            case CpuIsa.Vector256:
                Convolve<Ops256, Vector256<float>>(input, weight, bias, output, n, c, h, w, k, rotate, threads);
                break;
            default:
                Convolve<OpsScalar, float>(input, weight, bias, output, n, c, h, w, k, rotate, threads);
                break;
        }
    }

    /// <summary>Weight gradient: gradWeight[c,ky,kx] = Σ_n Σ_y Σ_x gradOutput[n,c,y,x]·x_padded[n,c,y+ky,x+kx].</summary>
    public static void WeightGrad(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k, CpuIsa isa, int threads)
    {
        var resolved = CpuIsas.Resolve(isa);
        switch (resolved)
        {
            // Blocked jobs are whole 16-channel blocks: only where there are enough of them for every thread.
            case CpuIsa.Vector512 when DepthwiseConvBlocked.WeightGradApplies(resolved, c, h, w, k) && c / 16 >= threads:
                DepthwiseConvBlocked.WeightGrad(input, gradOutput, gradWeight, n, c, h, w, k, threads);
                break;
            case CpuIsa.Vector512:
                WeightGradAll<Ops512, Vector512<float>>(input, gradOutput, gradWeight, n, c, h, w, k, threads);
                break;
            case CpuIsa.Vector256:
                WeightGradAll<Ops256, Vector256<float>>(input, gradOutput, gradWeight, n, c, h, w, k, threads);
                break;
            default:
                WeightGradAll<OpsScalar, float>(input, gradOutput, gradWeight, n, c, h, w, k, threads);
                break;
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Forward / input-grad

    private readonly struct ConvGeometry
    {
        public ConvGeometry(int h, int w, int k, int vectorLength)
        {
            H = h;
            W = w;
            K = k;
            Pad = k / 2;
            VectorsPerTile = w > vectorLength ? 2 : 1;
            TileWidth = VectorsPerTile * vectorLength;
            Rows = VectorsPerTile == 1 && k > DirectMaxKernel ? NarrowRowBlock : RowBlock;
            PaddedW = RoundUp(w, TileWidth);
            PaddedH = RoundUp(h, RowBlock);
            InStride = PaddedW + k - 1;
            InRows = PaddedH + k - 1;
            WeightRows = k + 2 * WeightPad;
        }

        public int H { get; }

        public int W { get; }

        public int K { get; }

        public int Pad { get; }

        public int VectorsPerTile { get; }

        /// <summary>Output rows per register tile.</summary>
        public int Rows { get; }

        public int TileWidth { get; }

        public int PaddedW { get; }

        public int PaddedH { get; }

        public int InStride { get; }

        public int InRows { get; }

        public int WeightRows { get; }

        public long InputFloats => (long)InRows * InStride;

        public long OutputFloats => (long)PaddedH * PaddedW;

        public long WeightFloats => (long)WeightRows * K;
    }

    private static void Convolve<TOps, TV>(float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k, bool rotate, int threads)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        var g = new ConvGeometry(h, w, k, TOps.Count);
        int planes = n * c;
        ParallelPlanes(planes, threads, g.InputFloats + g.OutputFloats + g.WeightFloats,
            (scratch, first, last) => ConvolveChunk<TOps, TV>(input, weight, bias, output, c, rotate, g, scratch, first, last));
    }

    // Tiering would run this per-plane loop unoptimized for its first calls; benchmarks and short runs must not pay that.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvolveChunk<TOps, TV>(float* input, float* weight, float* bias, float* output, int c, bool rotate,
        ConvGeometry g, float* scratch, int first, int last)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int h = g.H, w = g.W, k = g.K;
        long planeSize = (long)h * w;
        float* inS = scratch;
        float* outS = inS + g.InputFloats;
        float* wz = outS + g.OutputFloats;
        NativeMemory.Clear(inS, (nuint)(g.InputFloats * sizeof(float)));
        NativeMemory.Clear(wz, (nuint)(g.WeightFloats * sizeof(float)));
        int loadedChannel = -1;
        for (int plane = first; plane < last; plane++)
        {
            int channel = plane % c;
            if (channel != loadedChannel)
            {
                // Kernel rows sit between WeightPad zero rows above and below (so edge output rows need no branch).
                float* kernel = weight + (long)channel * k * k;
                for (int ky = 0; ky < k; ky++)
                {
                    for (int kx = 0; kx < k; kx++)
                    {
                        wz[kx * g.WeightRows + ky + WeightPad] = rotate ? kernel[(k - 1 - ky) * k + (k - 1 - kx)] : kernel[ky * k + kx];
                    }
                }

                loadedChannel = channel;
            }

            float* src = input + plane * planeSize;
            for (int y = 0; y < h; y++)
            {
                CopyRow(src + (long)y * w, inS + (long)(y + g.Pad) * g.InStride + g.Pad, w);
            }

            ConvolvePlane<TOps, TV>(inS, wz, outS, g);

            float b = bias == null ? 0f : bias[channel];
            float* dst = output + plane * planeSize;
            for (int y = 0; y < h; y++)
            {
                float* from = outS + (long)y * g.PaddedW;
                float* to = dst + (long)y * w;
                CopyRowAdd(from, to, w, b);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvolvePlane<TOps, TV>(float* inS, float* wz, float* outS, in ConvGeometry g)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K, p = g.Pad, tile = g.TileWidth;
        for (int y0 = 0; y0 < g.PaddedH;)
        {
            // The 8-row tile's last block takes 4 rows when at most 4 are left (PaddedH is a multiple of 4, not 8).
            int rows = g.Rows == NarrowRowBlock && g.H - y0 <= RowBlock ? RowBlock : g.Rows;
            // Only input rows holding data contribute: the rest is zero padding.
            int rowLo = Math.Max(y0, p);
            int rowHi = Math.Min(y0 + rows - 1 + k - 1, p + g.H - 1);
            for (int x0 = 0; x0 < g.PaddedW; x0 += tile)
            {
                // Kernel columns whose input span [x0+kx, x0+kx+tile) misses every data column are skipped.
                int kxLo = Math.Max(0, p - x0 - tile + 1);
                int kxHi = Math.Min(k - 1, p + g.W - 1 - x0);
                float* o = outS + (long)y0 * g.PaddedW + x0;
                if (g.VectorsPerTile == 2 && k <= DirectMaxKernel)
                {
                    // Small kernels: iterate (ky, kx) exactly — no band rows wasted on zero weights.
                    int kyLo = Math.Max(0, p - y0 - (RowBlock - 1));
                    int kyHi = Math.Min(k - 1, p + g.H - 1 - y0);
                    Tile4x2Direct<TOps, TV>(inS, wz, o, g, y0, x0, kyLo, kyHi, kxLo, kxHi);
                }
                else if (rows == NarrowRowBlock)
                {
                    Tile8x1<TOps, TV>(inS, wz, o, g, y0, x0, rowLo, rowHi, kxLo, kxHi);
                }
                else if (g.VectorsPerTile == 2)
                {
                    Tile4x2<TOps, TV>(inS, wz, o, g, y0, x0, rowLo, rowHi, kxLo, kxHi);
                }
                else
                {
                    Tile4x1<TOps, TV>(inS, wz, o, g, y0, x0, rowLo, rowHi, kxLo, kxHi);
                }
            }

            y0 += rows;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x2<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int rowLo, int rowHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int wr = g.WeightRows, vl = TOps.Count;
        TV a00 = TOps.Zero, a01 = TOps.Zero, a10 = TOps.Zero, a11 = TOps.Zero;
        TV a20 = TOps.Zero, a21 = TOps.Zero, a30 = TOps.Zero, a31 = TOps.Zero;
        for (int r = rowLo; r <= rowHi; r++)
        {
            float* x = inS + (long)r * g.InStride + x0 + kxLo;
            float* wc = wz + (long)kxLo * wr + (r - y0 + WeightPad);
            for (int kx = kxLo; kx <= kxHi; kx++, x++, wc += wr)
            {
                TV v0 = TOps.Load(x);
                TV v1 = TOps.Load(x + vl);
                TV b = TOps.Broadcast(wc[0]);
                a00 = TOps.Fma(b, v0, a00);
                a01 = TOps.Fma(b, v1, a01);
                b = TOps.Broadcast(wc[-1]);
                a10 = TOps.Fma(b, v0, a10);
                a11 = TOps.Fma(b, v1, a11);
                b = TOps.Broadcast(wc[-2]);
                a20 = TOps.Fma(b, v0, a20);
                a21 = TOps.Fma(b, v1, a21);
                b = TOps.Broadcast(wc[-3]);
                a30 = TOps.Fma(b, v0, a30);
                a31 = TOps.Fma(b, v1, a31);
            }
        }

        int s = g.PaddedW;
        TOps.Store(o, a00);
        TOps.Store(o + vl, a01);
        TOps.Store(o + s, a10);
        TOps.Store(o + s + vl, a11);
        TOps.Store(o + 2 * s, a20);
        TOps.Store(o + 2 * s + vl, a21);
        TOps.Store(o + 3 * s, a30);
        TOps.Store(o + 3 * s + vl, a31);
    }

    /// <summary>
    /// 4 output rows × 2 vectors, iterating kernel taps directly: per tap one broadcast and 8 loads feed 8 FMAs.
    /// Cheaper than the row band when K is small, where the band's K+3 rows would waste up to half the FMAs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x2Direct<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int kyLo, int kyHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int vl = TOps.Count, s = g.InStride;
        TV a00 = TOps.Zero, a01 = TOps.Zero, a10 = TOps.Zero, a11 = TOps.Zero;
        TV a20 = TOps.Zero, a21 = TOps.Zero, a30 = TOps.Zero, a31 = TOps.Zero;
        for (int ky = kyLo; ky <= kyHi; ky++)
        {
            float* row = inS + (long)(y0 + ky) * s + x0;
            float* wk = wz + (long)kxLo * g.WeightRows + ky + WeightPad;
            for (int kx = kxLo; kx <= kxHi; kx++, wk += g.WeightRows)
            {
                TV b = TOps.Broadcast(*wk);
                float* c = row + kx;
                a00 = TOps.Fma(b, TOps.Load(c), a00);
                a01 = TOps.Fma(b, TOps.Load(c + vl), a01);
                a10 = TOps.Fma(b, TOps.Load(c + s), a10);
                a11 = TOps.Fma(b, TOps.Load(c + s + vl), a11);
                a20 = TOps.Fma(b, TOps.Load(c + 2 * s), a20);
                a21 = TOps.Fma(b, TOps.Load(c + 2 * s + vl), a21);
                a30 = TOps.Fma(b, TOps.Load(c + 3 * s), a30);
                a31 = TOps.Fma(b, TOps.Load(c + 3 * s + vl), a31);
            }
        }

        int os = g.PaddedW;
        TOps.Store(o, a00);
        TOps.Store(o + vl, a01);
        TOps.Store(o + os, a10);
        TOps.Store(o + os + vl, a11);
        TOps.Store(o + 2 * os, a20);
        TOps.Store(o + 2 * os + vl, a21);
        TOps.Store(o + 3 * os, a30);
        TOps.Store(o + 3 * os + vl, a31);
    }

    /// <summary>
    /// 8 output rows × 1 vector, for maps one vector wide (W ≤ 16 with AVX-512, ≤ 8 with AVX2, 1 on the scalar path;
    /// RepLKNet-31B's 14×14 and 7×7 stages) with K &gt; <see cref="DirectMaxKernel"/>: 8 independent FMA chains where
    /// <c>Tile4x1</c> has 4, which cannot cover the FMA latency on two pipes (R 14 K 27: 12.3–12.5 → 9.2–9.5 ms per 4
    /// layers; docs/perf-notes.md). The band is K+7 rows for 8 output rows instead of K+3 for 4: (K+7)/(K+3) as many FMAs
    /// per output row, half the input loads.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile8x1<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int rowLo, int rowHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int wr = g.WeightRows;
        TV a0 = TOps.Zero, a1 = TOps.Zero, a2 = TOps.Zero, a3 = TOps.Zero;
        TV a4 = TOps.Zero, a5 = TOps.Zero, a6 = TOps.Zero, a7 = TOps.Zero;
        for (int r = rowLo; r <= rowHi; r++)
        {
            float* x = inS + (long)r * g.InStride + x0 + kxLo;
            float* wc = wz + (long)kxLo * wr + (r - y0 + WeightPad);
            for (int kx = kxLo; kx <= kxHi; kx++, x++, wc += wr)
            {
                TV v = TOps.Load(x);
                a0 = TOps.Fma(TOps.Broadcast(wc[0]), v, a0);
                a1 = TOps.Fma(TOps.Broadcast(wc[-1]), v, a1);
                a2 = TOps.Fma(TOps.Broadcast(wc[-2]), v, a2);
                a3 = TOps.Fma(TOps.Broadcast(wc[-3]), v, a3);
                a4 = TOps.Fma(TOps.Broadcast(wc[-4]), v, a4);
                a5 = TOps.Fma(TOps.Broadcast(wc[-5]), v, a5);
                a6 = TOps.Fma(TOps.Broadcast(wc[-6]), v, a6);
                a7 = TOps.Fma(TOps.Broadcast(wc[-7]), v, a7);
            }
        }

        int s = g.PaddedW;
        TOps.Store(o, a0);
        TOps.Store(o + s, a1);
        TOps.Store(o + 2 * s, a2);
        TOps.Store(o + 3 * s, a3);
        TOps.Store(o + 4 * s, a4);
        TOps.Store(o + 5 * s, a5);
        TOps.Store(o + 6 * s, a6);
        TOps.Store(o + 7 * s, a7);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x1<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int rowLo, int rowHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int wr = g.WeightRows;
        TV a0 = TOps.Zero, a1 = TOps.Zero, a2 = TOps.Zero, a3 = TOps.Zero;
        for (int r = rowLo; r <= rowHi; r++)
        {
            float* x = inS + (long)r * g.InStride + x0 + kxLo;
            float* wc = wz + (long)kxLo * wr + (r - y0 + WeightPad);
            for (int kx = kxLo; kx <= kxHi; kx++, x++, wc += wr)
            {
                TV v = TOps.Load(x);
                a0 = TOps.Fma(TOps.Broadcast(wc[0]), v, a0);
                a1 = TOps.Fma(TOps.Broadcast(wc[-1]), v, a1);
                a2 = TOps.Fma(TOps.Broadcast(wc[-2]), v, a2);
                a3 = TOps.Fma(TOps.Broadcast(wc[-3]), v, a3);
            }
        }

        int s = g.PaddedW;
        TOps.Store(o, a0);
        TOps.Store(o + s, a1);
        TOps.Store(o + 2 * s, a2);
        TOps.Store(o + 3 * s, a3);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Weight-grad

    private readonly struct GradGeometry
    {
        public GradGeometry(int h, int w, int k, int vectorLength)
        {
            H = h;
            W = w;
            K = k;
            Pad = k / 2;
            VectorLength = vectorLength;
            KxVectors = (k + vectorLength - 1) / vectorLength;
            // Register block: 8 kernel rows × 1 vector for kernels one vector wide, 6 × 2 for two, else 3 × 4.
            (KyBlock, KxBlock) = KxVectors switch { 1 => (8, 1), 2 => (6, 2), _ => (3, 4) };
            KxBlocks = (KxVectors + KxBlock - 1) / KxBlock;
            KRows = RoundUp(k, KyBlock);
            // K = 3 (vectors along x): the output gradient is copied into rows of DyStride floats, zero past W, and a
            // vector starting at the last of them reads input columns up to DyStride + K − 2.
            DyStride = RoundUp(w, vectorLength);
            InStride = Math.Max(w + KxBlocks * KxBlock * vectorLength, DyStride + k - 1);
            InRows = h + KRows - 1;
        }

        public int H { get; }

        public int W { get; }

        public int K { get; }

        public int Pad { get; }

        public int VectorLength { get; }

        /// <summary>Vectors needed to cover one kernel row (kx = 0..K−1).</summary>
        public int KxVectors { get; }

        /// <summary>Kernel rows per register block.</summary>
        public int KyBlock { get; }

        /// <summary>Vectors along kx per register block.</summary>
        public int KxBlock { get; }

        /// <summary>Register blocks along kx.</summary>
        public int KxBlocks { get; }

        /// <summary>K rounded up to the ky block.</summary>
        public int KRows { get; }

        public int InStride { get; }

        public int InRows { get; }

        /// <summary>K = 3: row stride of the plane's output gradient copy.</summary>
        public int DyStride { get; }

        public long InputFloats => (long)InRows * InStride;

        /// <summary>
        /// One block's accumulators for the epilogue (the plane's output gradient is read in place), or for K = 3 the
        /// zero-padded copy of the plane's output gradient.
        /// </summary>
        public long BlockFloats => K == 3 ? (long)H * DyStride : (long)KyBlock * KxBlock * VectorLength;
    }

    private static void WeightGradAll<TOps, TV>(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k, int threads)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        var g = new GradGeometry(h, w, k, TOps.Count);
        long kk = (long)k * k;
        long scratchFloats = g.InputFloats + g.BlockFloats;
        if (c >= 2 * threads || n == 1)
        {
            // Each worker owns whole channels: no reduction across threads.
            ParallelPlanes(c, threads, scratchFloats, (scratch, first, last) =>
                WeightGradChannels<TOps, TV>(input, gradOutput, gradWeight, n, c, g, scratch, first, last));
            return;
        }

        // Few channels, many images: split (n, c) planes and sum per-thread partial gradients.
        int workers = Math.Max(1, Math.Min(threads, n * c));
        var partials = new float*[workers];
        try
        {
            for (int i = 0; i < workers; i++)
            {
                partials[i] = (float*)NativeMemory.AllocZeroed((nuint)(c * kk * sizeof(float)));
            }

            int next = -1;
            ParallelPlanes(n * c, threads, scratchFloats, (scratch, first, last) =>
                WeightGradPlanes<TOps, TV>(input, gradOutput, partials[Interlocked.Increment(ref next) % workers], c, g, scratch, first, last),
                maxChunks: workers);

            for (long i = 0; i < c * kk; i++)
            {
                float sum = 0;
                for (int t = 0; t < workers; t++)
                {
                    sum += partials[t][i];
                }

                gradWeight[i] = sum;
            }
        }
        finally
        {
            foreach (var ptr in partials)
            {
                NativeMemory.Free(ptr);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradChannels<TOps, TV>(float* input, float* gradOutput, float* gradWeight, int n, int c, GradGeometry g,
        float* scratch, int first, int last)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        long planeSize = (long)g.H * g.W;
        long kk = (long)g.K * g.K;
        NativeMemory.Clear(scratch, (nuint)((g.InputFloats + g.BlockFloats) * sizeof(float)));
        for (int channel = first; channel < last; channel++)
        {
            float* dw = gradWeight + channel * kk;
            NativeMemory.Clear(dw, (nuint)(kk * sizeof(float)));
            for (int b = 0; b < n; b++)
            {
                long plane = (long)b * c + channel;
                LoadGradInput(input + plane * planeSize, scratch, g);
                WeightGradPlane<TOps, TV>(scratch, gradOutput + plane * planeSize, dw, scratch + g.InputFloats, g);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradPlanes<TOps, TV>(float* input, float* gradOutput, float* partial, int c, GradGeometry g,
        float* scratch, int first, int last)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        long planeSize = (long)g.H * g.W;
        long kk = (long)g.K * g.K;
        NativeMemory.Clear(scratch, (nuint)((g.InputFloats + g.BlockFloats) * sizeof(float)));
        for (int plane = first; plane < last; plane++)
        {
            LoadGradInput(input + plane * planeSize, scratch, g);
            WeightGradPlane<TOps, TV>(scratch, gradOutput + plane * planeSize, partial + (plane % c) * kk, scratch + g.InputFloats, g);
        }
    }

    // Called per plane: fully optimized from the first call (at tier 0 its row copies are calls, and the tiering delay
    // keeps it there for seconds while a process still compiles new code: K = 3 weight gradients took 2–4× longer then).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void LoadGradInput(float* x, float* xS, in GradGeometry g)
    {
        for (int y = 0; y < g.H; y++)
        {
            CopyRow(x + (long)y * g.W, xS + (long)(y + g.Pad) * g.InStride + g.Pad, g.W);
        }
    }

    /// <summary>
    /// dw[ky, kx..kx+VL) += Σ_y Σ_x dy[y, x] · xpad[y+ky, x+kx..x+kx+VL): vectors run along kx, so each output-gradient
    /// value is broadcast once and multiplied with whole rows of the padded input; the accumulators are 3 kernel rows ×
    /// 4 vectors of kernel columns, written out once per block (no horizontal sums).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradPlane<TOps, TV>(float* xS, float* dy, float* dw, float* block, in GradGeometry g)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K, p = g.Pad, vl = TOps.Count;
        if (k == 3)
        {
            WeightGradPlane3<TOps, TV>(xS, dy, dw, block, g);
            return;
        }

        for (int ky0 = 0; ky0 < g.KRows; ky0 += g.KyBlock)
        {
            // Output-gradient rows whose input rows y+ky0 … y+ky0+KyBlock−1 hold data.
            int yLo = Math.Max(0, p - ky0 - (g.KyBlock - 1));
            int yHi = Math.Min(g.H - 1, p + g.H - 1 - ky0);
            for (int kb = 0; kb < g.KxBlocks; kb++)
            {
                int kx0 = kb * g.KxBlock * vl;
                float* origin = xS + (long)ky0 * g.InStride + kx0;
                switch (g.KxBlock)
                {
                    case 1:
                        GradBlock8x1<TOps, TV>(origin, dy, block, g, yLo, yHi);
                        break;
                    case 2:
                        GradBlock6x2<TOps, TV>(origin, dy, block, g, yLo, yHi);
                        break;
                    default:
                        GradBlock3x4<TOps, TV>(origin, dy, block, g, yLo, yHi);
                        break;
                }

                // Add the block (KyBlock rows × KxBlock·VL columns) into the kernel gradient, clipped to K×K.
                int rowLength = g.KxBlock * vl;
                int kxEnd = Math.Min(k, kx0 + rowLength);
                for (int i = 0; i < g.KyBlock && ky0 + i < k; i++)
                {
                    float* dst = dw + (ky0 + i) * k;
                    float* src = block + i * rowLength - kx0;
                    for (int kx = kx0; kx < kxEnd; kx++)
                    {
                        dst[kx] += src[kx];
                    }
                }
            }
        }
    }

    /// <summary>
    /// K = 3: vectors run along x instead of kx (a 3-wide kernel row would use 3 lanes of a vector, and the 8-row block
    /// 3 of 8 rows). Nine accumulators, one per tap: acc[ky, kx] += dy[y, x..x+VL) · xpad[y+ky, x+kx..x+kx+VL), i.e. per
    /// output-gradient vector 1 + 9 loads feed 9 FMAs, summed horizontally once per plane. The output gradient is first
    /// copied into <paramref name="dyS"/> with rows padded to whole vectors by zeros (cleared once per call), so widths
    /// that are not a multiple of the vector need no scalar tail: the padding lanes add 0 · x (exact for finite inputs).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradPlane3<TOps, TV>(float* xS, float* dy, float* dw, float* dyS, in GradGeometry g)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int vl = TOps.Count, s = g.InStride, ds = g.DyStride;
        for (int y = 0; y < g.H; y++)
        {
            CopyRow(dy + (long)y * g.W, dyS + (long)y * ds, g.W);
        }

        TV a00 = TOps.Zero, a01 = TOps.Zero, a02 = TOps.Zero;
        TV a10 = TOps.Zero, a11 = TOps.Zero, a12 = TOps.Zero;
        TV a20 = TOps.Zero, a21 = TOps.Zero, a22 = TOps.Zero;
        for (int y = 0; y < g.H; y++)
        {
            float* dyRow = dyS + (long)y * ds;
            float* r0 = xS + (long)y * s;
            float* r1 = r0 + s;
            float* r2 = r1 + s;
            for (int x = 0; x < ds; x += vl)
            {
                TV d = TOps.Load(dyRow + x);
                a00 = TOps.Fma(d, TOps.Load(r0 + x), a00);
                a01 = TOps.Fma(d, TOps.Load(r0 + x + 1), a01);
                a02 = TOps.Fma(d, TOps.Load(r0 + x + 2), a02);
                a10 = TOps.Fma(d, TOps.Load(r1 + x), a10);
                a11 = TOps.Fma(d, TOps.Load(r1 + x + 1), a11);
                a12 = TOps.Fma(d, TOps.Load(r1 + x + 2), a12);
                a20 = TOps.Fma(d, TOps.Load(r2 + x), a20);
                a21 = TOps.Fma(d, TOps.Load(r2 + x + 1), a21);
                a22 = TOps.Fma(d, TOps.Load(r2 + x + 2), a22);
            }
        }

        dw[0] += TOps.Sum(a00);
        dw[1] += TOps.Sum(a01);
        dw[2] += TOps.Sum(a02);
        dw[3] += TOps.Sum(a10);
        dw[4] += TOps.Sum(a11);
        dw[5] += TOps.Sum(a12);
        dw[6] += TOps.Sum(a20);
        dw[7] += TOps.Sum(a21);
        dw[8] += TOps.Sum(a22);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GradBlock3x4<TOps, TV>(float* origin, float* dy, float* block, in GradGeometry g, int yLo, int yHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int vl = TOps.Count, s = g.InStride;
        TV a00 = TOps.Zero, a01 = TOps.Zero, a02 = TOps.Zero, a03 = TOps.Zero;
        TV a10 = TOps.Zero, a11 = TOps.Zero, a12 = TOps.Zero, a13 = TOps.Zero;
        TV a20 = TOps.Zero, a21 = TOps.Zero, a22 = TOps.Zero, a23 = TOps.Zero;
        int y = yLo;

        // Two output-gradient rows at a time: their four input rows serve both, so each loaded input vector feeds up to
        // two accumulators (6 FMAs per 4 loads instead of 3 per 3).
        for (; y + 1 <= yHi; y += 2)
        {
            float* dyRow0 = dy + (long)y * g.W;
            float* dyRow1 = dyRow0 + g.W;
            float* r0 = origin + (long)y * s;
            for (int x = 0; x < g.W; x++)
            {
                TV d0 = TOps.Broadcast(dyRow0[x]);
                TV d1 = TOps.Broadcast(dyRow1[x]);
                float* c = r0 + x;
                TV l = TOps.Load(c);
                a00 = TOps.Fma(d0, l, a00);
                l = TOps.Load(c + s);
                a00 = TOps.Fma(d1, l, a00);
                a10 = TOps.Fma(d0, l, a10);
                l = TOps.Load(c + 2 * s);
                a10 = TOps.Fma(d1, l, a10);
                a20 = TOps.Fma(d0, l, a20);
                l = TOps.Load(c + 3 * s);
                a20 = TOps.Fma(d1, l, a20);
                c += vl;
                l = TOps.Load(c);
                a01 = TOps.Fma(d0, l, a01);
                l = TOps.Load(c + s);
                a01 = TOps.Fma(d1, l, a01);
                a11 = TOps.Fma(d0, l, a11);
                l = TOps.Load(c + 2 * s);
                a11 = TOps.Fma(d1, l, a11);
                a21 = TOps.Fma(d0, l, a21);
                l = TOps.Load(c + 3 * s);
                a21 = TOps.Fma(d1, l, a21);
                c += vl;
                l = TOps.Load(c);
                a02 = TOps.Fma(d0, l, a02);
                l = TOps.Load(c + s);
                a02 = TOps.Fma(d1, l, a02);
                a12 = TOps.Fma(d0, l, a12);
                l = TOps.Load(c + 2 * s);
                a12 = TOps.Fma(d1, l, a12);
                a22 = TOps.Fma(d0, l, a22);
                l = TOps.Load(c + 3 * s);
                a22 = TOps.Fma(d1, l, a22);
                c += vl;
                l = TOps.Load(c);
                a03 = TOps.Fma(d0, l, a03);
                l = TOps.Load(c + s);
                a03 = TOps.Fma(d1, l, a03);
                a13 = TOps.Fma(d0, l, a13);
                l = TOps.Load(c + 2 * s);
                a13 = TOps.Fma(d1, l, a13);
                a23 = TOps.Fma(d0, l, a23);
                l = TOps.Load(c + 3 * s);
                a23 = TOps.Fma(d1, l, a23);
            }
        }

        for (; y <= yHi; y++)
        {
            float* dyRow = dy + (long)y * g.W;
            float* r0 = origin + (long)y * s;
            float* r1 = r0 + s;
            float* r2 = r1 + s;
            for (int x = 0; x < g.W; x++)
            {
                TV d = TOps.Broadcast(dyRow[x]);
                a00 = TOps.Fma(d, TOps.Load(r0 + x), a00);
                a01 = TOps.Fma(d, TOps.Load(r0 + x + vl), a01);
                a02 = TOps.Fma(d, TOps.Load(r0 + x + 2 * vl), a02);
                a03 = TOps.Fma(d, TOps.Load(r0 + x + 3 * vl), a03);
                a10 = TOps.Fma(d, TOps.Load(r1 + x), a10);
                a11 = TOps.Fma(d, TOps.Load(r1 + x + vl), a11);
                a12 = TOps.Fma(d, TOps.Load(r1 + x + 2 * vl), a12);
                a13 = TOps.Fma(d, TOps.Load(r1 + x + 3 * vl), a13);
                a20 = TOps.Fma(d, TOps.Load(r2 + x), a20);
                a21 = TOps.Fma(d, TOps.Load(r2 + x + vl), a21);
                a22 = TOps.Fma(d, TOps.Load(r2 + x + 2 * vl), a22);
                a23 = TOps.Fma(d, TOps.Load(r2 + x + 3 * vl), a23);
            }
        }

        int rl = 4 * vl;
        TOps.Store(block, a00);
        TOps.Store(block + vl, a01);
        TOps.Store(block + 2 * vl, a02);
        TOps.Store(block + 3 * vl, a03);
        TOps.Store(block + rl, a10);
        TOps.Store(block + rl + vl, a11);
        TOps.Store(block + rl + 2 * vl, a12);
        TOps.Store(block + rl + 3 * vl, a13);
        TOps.Store(block + 2 * rl, a20);
        TOps.Store(block + 2 * rl + vl, a21);
        TOps.Store(block + 2 * rl + 2 * vl, a22);
        TOps.Store(block + 2 * rl + 3 * vl, a23);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GradBlock6x2<TOps, TV>(float* origin, float* dy, float* block, in GradGeometry g, int yLo, int yHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int vl = TOps.Count, s = g.InStride;
        TV a00 = TOps.Zero, a01 = TOps.Zero, a10 = TOps.Zero, a11 = TOps.Zero, a20 = TOps.Zero, a21 = TOps.Zero;
        TV a30 = TOps.Zero, a31 = TOps.Zero, a40 = TOps.Zero, a41 = TOps.Zero, a50 = TOps.Zero, a51 = TOps.Zero;
        int y = yLo;

        // Two output-gradient rows share 7 input rows: per vector column 7 loads feed 12 FMAs.
        for (; y + 1 <= yHi; y += 2)
        {
            float* dyRow0 = dy + (long)y * g.W;
            float* dyRow1 = dyRow0 + g.W;
            float* r = origin + (long)y * s;
            for (int x = 0; x < g.W; x++)
            {
                TV d0 = TOps.Broadcast(dyRow0[x]);
                TV d1 = TOps.Broadcast(dyRow1[x]);
                float* c = r + x;
                TV l;
                l = TOps.Load(c);
                a00 = TOps.Fma(d0, l, a00);
                l = TOps.Load(c + s);
                a00 = TOps.Fma(d1, l, a00);
                a10 = TOps.Fma(d0, l, a10);
                l = TOps.Load(c + 2 * s);
                a10 = TOps.Fma(d1, l, a10);
                a20 = TOps.Fma(d0, l, a20);
                l = TOps.Load(c + 3 * s);
                a20 = TOps.Fma(d1, l, a20);
                a30 = TOps.Fma(d0, l, a30);
                l = TOps.Load(c + 4 * s);
                a30 = TOps.Fma(d1, l, a30);
                a40 = TOps.Fma(d0, l, a40);
                l = TOps.Load(c + 5 * s);
                a40 = TOps.Fma(d1, l, a40);
                a50 = TOps.Fma(d0, l, a50);
                l = TOps.Load(c + 6 * s);
                a50 = TOps.Fma(d1, l, a50);
                c += vl;
                l = TOps.Load(c);
                a01 = TOps.Fma(d0, l, a01);
                l = TOps.Load(c + s);
                a01 = TOps.Fma(d1, l, a01);
                a11 = TOps.Fma(d0, l, a11);
                l = TOps.Load(c + 2 * s);
                a11 = TOps.Fma(d1, l, a11);
                a21 = TOps.Fma(d0, l, a21);
                l = TOps.Load(c + 3 * s);
                a21 = TOps.Fma(d1, l, a21);
                a31 = TOps.Fma(d0, l, a31);
                l = TOps.Load(c + 4 * s);
                a31 = TOps.Fma(d1, l, a31);
                a41 = TOps.Fma(d0, l, a41);
                l = TOps.Load(c + 5 * s);
                a41 = TOps.Fma(d1, l, a41);
                a51 = TOps.Fma(d0, l, a51);
                l = TOps.Load(c + 6 * s);
                a51 = TOps.Fma(d1, l, a51);
            }
        }

        for (; y <= yHi; y++)
        {
            float* dyRow = dy + (long)y * g.W;
            float* r = origin + (long)y * s;
            for (int x = 0; x < g.W; x++)
            {
                TV d = TOps.Broadcast(dyRow[x]);
                float* c = r + x;
                a00 = TOps.Fma(d, TOps.Load(c), a00);
                a01 = TOps.Fma(d, TOps.Load(c + vl), a01);
                a10 = TOps.Fma(d, TOps.Load(c + s), a10);
                a11 = TOps.Fma(d, TOps.Load(c + s + vl), a11);
                a20 = TOps.Fma(d, TOps.Load(c + 2 * s), a20);
                a21 = TOps.Fma(d, TOps.Load(c + 2 * s + vl), a21);
                a30 = TOps.Fma(d, TOps.Load(c + 3 * s), a30);
                a31 = TOps.Fma(d, TOps.Load(c + 3 * s + vl), a31);
                a40 = TOps.Fma(d, TOps.Load(c + 4 * s), a40);
                a41 = TOps.Fma(d, TOps.Load(c + 4 * s + vl), a41);
                a50 = TOps.Fma(d, TOps.Load(c + 5 * s), a50);
                a51 = TOps.Fma(d, TOps.Load(c + 5 * s + vl), a51);
            }
        }

        int rl = 2 * vl;
        TOps.Store(block, a00);
        TOps.Store(block + vl, a01);
        TOps.Store(block + rl, a10);
        TOps.Store(block + rl + vl, a11);
        TOps.Store(block + 2 * rl, a20);
        TOps.Store(block + 2 * rl + vl, a21);
        TOps.Store(block + 3 * rl, a30);
        TOps.Store(block + 3 * rl + vl, a31);
        TOps.Store(block + 4 * rl, a40);
        TOps.Store(block + 4 * rl + vl, a41);
        TOps.Store(block + 5 * rl, a50);
        TOps.Store(block + 5 * rl + vl, a51);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GradBlock8x1<TOps, TV>(float* origin, float* dy, float* block, in GradGeometry g, int yLo, int yHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int vl = TOps.Count, s = g.InStride;
        TV a0 = TOps.Zero, a1 = TOps.Zero, a2 = TOps.Zero, a3 = TOps.Zero, a4 = TOps.Zero, a5 = TOps.Zero, a6 = TOps.Zero, a7 = TOps.Zero;
        int y = yLo;

        // Two output-gradient rows share 9 input rows: 9 loads feed 16 FMAs.
        for (; y + 1 <= yHi; y += 2)
        {
            float* dyRow0 = dy + (long)y * g.W;
            float* dyRow1 = dyRow0 + g.W;
            float* r = origin + (long)y * s;
            for (int x = 0; x < g.W; x++)
            {
                TV d0 = TOps.Broadcast(dyRow0[x]);
                TV d1 = TOps.Broadcast(dyRow1[x]);
                float* c = r + x;
                TV l = TOps.Load(c);
                a0 = TOps.Fma(d0, l, a0);
                l = TOps.Load(c + s);
                a0 = TOps.Fma(d1, l, a0);
                a1 = TOps.Fma(d0, l, a1);
                l = TOps.Load(c + 2 * s);
                a1 = TOps.Fma(d1, l, a1);
                a2 = TOps.Fma(d0, l, a2);
                l = TOps.Load(c + 3 * s);
                a2 = TOps.Fma(d1, l, a2);
                a3 = TOps.Fma(d0, l, a3);
                l = TOps.Load(c + 4 * s);
                a3 = TOps.Fma(d1, l, a3);
                a4 = TOps.Fma(d0, l, a4);
                l = TOps.Load(c + 5 * s);
                a4 = TOps.Fma(d1, l, a4);
                a5 = TOps.Fma(d0, l, a5);
                l = TOps.Load(c + 6 * s);
                a5 = TOps.Fma(d1, l, a5);
                a6 = TOps.Fma(d0, l, a6);
                l = TOps.Load(c + 7 * s);
                a6 = TOps.Fma(d1, l, a6);
                a7 = TOps.Fma(d0, l, a7);
                l = TOps.Load(c + 8 * s);
                a7 = TOps.Fma(d1, l, a7);
            }
        }

        for (; y <= yHi; y++)
        {
            float* dyRow = dy + (long)y * g.W;
            float* r = origin + (long)y * s;
            for (int x = 0; x < g.W; x++)
            {
                TV d = TOps.Broadcast(dyRow[x]);
                float* c = r + x;
                a0 = TOps.Fma(d, TOps.Load(c), a0);
                a1 = TOps.Fma(d, TOps.Load(c + s), a1);
                a2 = TOps.Fma(d, TOps.Load(c + 2 * s), a2);
                a3 = TOps.Fma(d, TOps.Load(c + 3 * s), a3);
                a4 = TOps.Fma(d, TOps.Load(c + 4 * s), a4);
                a5 = TOps.Fma(d, TOps.Load(c + 5 * s), a5);
                a6 = TOps.Fma(d, TOps.Load(c + 6 * s), a6);
                a7 = TOps.Fma(d, TOps.Load(c + 7 * s), a7);
            }
        }

        TOps.Store(block, a0);
        TOps.Store(block + vl, a1);
        TOps.Store(block + 2 * vl, a2);
        TOps.Store(block + 3 * vl, a3);
        TOps.Store(block + 4 * vl, a4);
        TOps.Store(block + 5 * vl, a5);
        TOps.Store(block + 6 * vl, a6);
        TOps.Store(block + 7 * vl, a7);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Threading

    internal delegate void ChunkBody(float* scratch, int first, int last);

    /// <summary>
    /// Runs <paramref name="body"/> over [0, count) in contiguous chunks on up to <paramref name="threads"/> workers, each
    /// with its own 64-byte-aligned scratch of <paramref name="scratchFloats"/> floats (plus slack for vector over-reads).
    /// </summary>
    internal static void ParallelPlanes(int count, int threads, long scratchFloats, ChunkBody body, int maxChunks = 0)
    {
        int workers = Math.Max(1, Math.Min(threads, count));
        int chunks = maxChunks > 0 ? Math.Min(maxChunks, count) : Math.Min(count, workers * 4);
        nuint bytes = (nuint)((scratchFloats + 64) * sizeof(float));
        if (workers == 1)
        {
            float* scratch = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            try
            {
                body(scratch, 0, count);
            }
            finally
            {
                NativeMemory.AlignedFree(scratch);
            }

            return;
        }

        // libtorch's OpenMP team (the caller and the workers libtorch's own ops use; .NET's thread pool where that runtime is
        // not found): each thread takes contiguous chunks until none is left, so a smaller team than asked still does it all.
        int nextChunk = -1;
        OpenMpTeam.Run(workers, () =>
        {
            // A thread that finds no chunk left allocates nothing.
            int chunk = Interlocked.Increment(ref nextChunk);
            if (chunk >= chunks)
            {
                return;
            }

            float* scratch = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            try
            {
                do
                {
                    int first = (int)((long)count * chunk / chunks);
                    int last = (int)((long)count * (chunk + 1) / chunks);
                    body(scratch, first, last);
                }
                while ((chunk = Interlocked.Increment(ref nextChunk)) < chunks);
            }
            finally
            {
                NativeMemory.AlignedFree(scratch);
            }
        });
    }

    // Rows are short (often 7–64 floats): an inlined vector loop beats a memmove call per row.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRow(float* from, float* to, int count)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= count; i += 8)
            {
                Vector256.Store(Vector256.Load(from + i), to + i);
            }
        }

        for (; i < count; i++)
        {
            to[i] = from[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRowAdd(float* from, float* to, int count, float add)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(add);
            for (; i + 8 <= count; i += 8)
            {
                Vector256.Store(Vector256.Load(from + i) + v, to + i);
            }
        }

        for (; i < count; i++)
        {
            to[i] = from[i] + add;
        }
    }

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;
}
