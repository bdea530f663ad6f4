using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// Depthwise "same" convolution (stride 1, padding K/2, odd K) on NCHW float32 planes, in C# SIMD.
/// Design (docs/perf-notes.md):
/// <list type="bullet">
/// <item>Each (n, c) plane is copied once into a zero-padded per-thread scratch, so the inner loops have no bounds
/// checks; the zero border is written once per call, only the data region per plane.</item>
/// <item>Forward: register tiles of 4 output rows × 1–2 vectors. Each input row of the band is loaded once per kernel
/// column and feeds the 4 output rows it touches (weights padded with zero rows so edge rows need no branch).
/// Input rows and kernel columns that only see zero padding are skipped.</item>
/// <item>Input-grad: the forward kernel with the kernel rotated by 180°.</item>
/// <item>Weight-grad: per channel, a correlation of the padded input with the output gradient into K×K sums, blocked as
/// 2 kernel rows × 4 kernel columns of vector accumulators, reduced at the end; channels are split across threads
/// (or (n, c) planes with per-thread partial sums when there are few channels).</item>
/// </list>
/// </summary>
public static unsafe class DepthwiseConvCpu
{
    private const int RowBlock = 4;

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
    public static void Forward(float* input, float* weight, float* bias, float* output, int n, int c, int h, int w, int k, CpuIsa isa, int threads)
    {
        switch (CpuIsas.Resolve(isa))
        {
            case CpuIsa.Vector512:
                Convolve<Ops512, Vector512<float>>(input, weight, bias, output, n, c, h, w, k, rotate: false, threads);
                break;
            case CpuIsa.Vector256:
                Convolve<Ops256, Vector256<float>>(input, weight, bias, output, n, c, h, w, k, rotate: false, threads);
                break;
            default:
                Convolve<OpsScalar, float>(input, weight, bias, output, n, c, h, w, k, rotate: false, threads);
                break;
        }
    }

    /// <summary>Input gradient: the forward convolution of <paramref name="gradOutput"/> with each kernel rotated 180°.</summary>
    public static void InputGrad(float* gradOutput, float* weight, float* gradInput, int n, int c, int h, int w, int k, CpuIsa isa, int threads)
    {
        switch (CpuIsas.Resolve(isa))
        {
            case CpuIsa.Vector512:
                Convolve<Ops512, Vector512<float>>(gradOutput, weight, null, gradInput, n, c, h, w, k, rotate: true, threads);
                break;
            case CpuIsa.Vector256:
                Convolve<Ops256, Vector256<float>>(gradOutput, weight, null, gradInput, n, c, h, w, k, rotate: true, threads);
                break;
            default:
                Convolve<OpsScalar, float>(gradOutput, weight, null, gradInput, n, c, h, w, k, rotate: true, threads);
                break;
        }
    }

    /// <summary>Weight gradient: gradWeight[c,ky,kx] = Σ_n Σ_y Σ_x gradOutput[n,c,y,x]·x_padded[n,c,y+ky,x+kx].</summary>
    public static void WeightGrad(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k, CpuIsa isa, int threads)
    {
        switch (CpuIsas.Resolve(isa))
        {
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
            PaddedW = RoundUp(w, TileWidth);
            PaddedH = RoundUp(h, RowBlock);
            InStride = PaddedW + k - 1;
            InRows = PaddedH + k - 1;
            WeightRows = k + 2 * (RowBlock - 1);
        }

        public int H { get; }

        public int W { get; }

        public int K { get; }

        public int Pad { get; }

        public int VectorsPerTile { get; }

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
                // Kernel rows sit between RowBlock−1 zero rows above and below (so edge output rows need no branch).
                float* kernel = weight + (long)channel * k * k;
                for (int ky = 0; ky < k; ky++)
                {
                    for (int kx = 0; kx < k; kx++)
                    {
                        wz[(ky + RowBlock - 1) * k + kx] = rotate ? kernel[(k - 1 - ky) * k + (k - 1 - kx)] : kernel[ky * k + kx];
                    }
                }

                loadedChannel = channel;
            }

            float* src = input + plane * planeSize;
            for (int y = 0; y < h; y++)
            {
                Buffer.MemoryCopy(src + (long)y * w, inS + (long)(y + g.Pad) * g.InStride + g.Pad, w * sizeof(float), w * sizeof(float));
            }

            ConvolvePlane<TOps, TV>(inS, wz, outS, g);

            float b = bias == null ? 0f : bias[channel];
            float* dst = output + plane * planeSize;
            for (int y = 0; y < h; y++)
            {
                float* from = outS + (long)y * g.PaddedW;
                float* to = dst + (long)y * w;
                if (b == 0f)
                {
                    Buffer.MemoryCopy(from, to, w * sizeof(float), w * sizeof(float));
                }
                else
                {
                    for (int x = 0; x < w; x++)
                    {
                        to[x] = from[x] + b;
                    }
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvolvePlane<TOps, TV>(float* inS, float* wz, float* outS, in ConvGeometry g)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K, p = g.Pad, tile = g.TileWidth;
        for (int y0 = 0; y0 < g.PaddedH; y0 += RowBlock)
        {
            // Only input rows holding data contribute: the rest is zero padding.
            int rowLo = Math.Max(y0, p);
            int rowHi = Math.Min(y0 + RowBlock - 1 + k - 1, p + g.H - 1);
            for (int x0 = 0; x0 < g.PaddedW; x0 += tile)
            {
                // Kernel columns whose input span [x0+kx, x0+kx+tile) misses every data column are skipped.
                int kxLo = Math.Max(0, p - x0 - tile + 1);
                int kxHi = Math.Min(k - 1, p + g.W - 1 - x0);
                float* o = outS + (long)y0 * g.PaddedW + x0;
                if (g.VectorsPerTile == 2)
                {
                    Tile4x2<TOps, TV>(inS, wz, o, g, y0, x0, rowLo, rowHi, kxLo, kxHi);
                }
                else
                {
                    Tile4x1<TOps, TV>(inS, wz, o, g, y0, x0, rowLo, rowHi, kxLo, kxHi);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x2<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int rowLo, int rowHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K, vl = TOps.Count;
        TV a00 = TOps.Zero, a01 = TOps.Zero, a10 = TOps.Zero, a11 = TOps.Zero;
        TV a20 = TOps.Zero, a21 = TOps.Zero, a30 = TOps.Zero, a31 = TOps.Zero;
        for (int r = rowLo; r <= rowHi; r++)
        {
            float* row = inS + (long)r * g.InStride + x0;
            float* w0 = wz + (r - y0 + RowBlock - 1) * k;
            float* w1 = w0 - k;
            float* w2 = w1 - k;
            float* w3 = w2 - k;
            for (int kx = kxLo; kx <= kxHi; kx++)
            {
                TV v0 = TOps.Load(row + kx);
                TV v1 = TOps.Load(row + kx + vl);
                TV b = TOps.Broadcast(w0[kx]);
                a00 = TOps.Fma(b, v0, a00);
                a01 = TOps.Fma(b, v1, a01);
                b = TOps.Broadcast(w1[kx]);
                a10 = TOps.Fma(b, v0, a10);
                a11 = TOps.Fma(b, v1, a11);
                b = TOps.Broadcast(w2[kx]);
                a20 = TOps.Fma(b, v0, a20);
                a21 = TOps.Fma(b, v1, a21);
                b = TOps.Broadcast(w3[kx]);
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x1<TOps, TV>(float* inS, float* wz, float* o, in ConvGeometry g, int y0, int x0, int rowLo, int rowHi, int kxLo, int kxHi)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K;
        TV a0 = TOps.Zero, a1 = TOps.Zero, a2 = TOps.Zero, a3 = TOps.Zero;
        for (int r = rowLo; r <= rowHi; r++)
        {
            float* row = inS + (long)r * g.InStride + x0;
            float* w0 = wz + (r - y0 + RowBlock - 1) * k;
            float* w1 = w0 - k;
            float* w2 = w1 - k;
            float* w3 = w2 - k;
            for (int kx = kxLo; kx <= kxHi; kx++)
            {
                TV v = TOps.Load(row + kx);
                a0 = TOps.Fma(TOps.Broadcast(w0[kx]), v, a0);
                a1 = TOps.Fma(TOps.Broadcast(w1[kx]), v, a1);
                a2 = TOps.Fma(TOps.Broadcast(w2[kx]), v, a2);
                a3 = TOps.Fma(TOps.Broadcast(w3[kx]), v, a3);
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
            KRows = RoundUp(k, 2);
            KCols = RoundUp(k, 4);
            GradStride = RoundUp(w, vectorLength);
            InStride = GradStride + KCols - 1;
            InRows = h + KRows - 1;
        }

        public int H { get; }

        public int W { get; }

        public int K { get; }

        public int Pad { get; }

        public int KRows { get; }

        public int KCols { get; }

        public int GradStride { get; }

        public int InStride { get; }

        public int InRows { get; }

        public long InputFloats => (long)InRows * InStride;

        public long GradFloats => (long)H * GradStride;
    }

    private static void WeightGradAll<TOps, TV>(float* input, float* gradOutput, float* gradWeight, int n, int c, int h, int w, int k, int threads)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        var g = new GradGeometry(h, w, k, TOps.Count);
        long planeSize = (long)h * w;
        long kk = (long)k * k;
        long scratchFloats = g.InputFloats + g.GradFloats;
        if (c >= 2 * threads || n == 1)
        {
            // Each worker owns whole channels: no reduction across threads.
            ParallelPlanes(c, threads, scratchFloats, (scratch, first, last) =>
            {
                float* xS = scratch;
                float* gS = xS + g.InputFloats;
                NativeMemory.Clear(scratch, (nuint)(scratchFloats * sizeof(float)));
                for (int channel = first; channel < last; channel++)
                {
                    float* dw = gradWeight + channel * kk;
                    NativeMemory.Clear(dw, (nuint)(kk * sizeof(float)));
                    for (int b = 0; b < n; b++)
                    {
                        long plane = (long)b * c + channel;
                        LoadGradPlanes(input + plane * planeSize, gradOutput + plane * planeSize, xS, gS, g);
                        WeightGradPlane<TOps, TV>(xS, gS, dw, g);
                    }
                }
            });
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
            {
                float* partial = partials[Interlocked.Increment(ref next) % workers];
                float* xS = scratch;
                float* gS = xS + g.InputFloats;
                NativeMemory.Clear(scratch, (nuint)(scratchFloats * sizeof(float)));
                for (int plane = first; plane < last; plane++)
                {
                    LoadGradPlanes(input + plane * planeSize, gradOutput + plane * planeSize, xS, gS, g);
                    WeightGradPlane<TOps, TV>(xS, gS, partial + (plane % c) * kk, g);
                }
            }, maxChunks: workers);

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

    private static void LoadGradPlanes(float* x, float* dy, float* xS, float* gS, in GradGeometry g)
    {
        for (int y = 0; y < g.H; y++)
        {
            Buffer.MemoryCopy(x + (long)y * g.W, xS + (long)(y + g.Pad) * g.InStride + g.Pad, g.W * sizeof(float), g.W * sizeof(float));
            Buffer.MemoryCopy(dy + (long)y * g.W, gS + (long)y * g.GradStride, g.W * sizeof(float), g.W * sizeof(float));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightGradPlane<TOps, TV>(float* xS, float* gS, float* dw, in GradGeometry g)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int k = g.K, p = g.Pad, vl = TOps.Count;
        for (int ky0 = 0; ky0 < g.KRows; ky0 += 2)
        {
            // Output-gradient rows whose input rows (y+ky0, y+ky0+1) hold data.
            int yLo = Math.Max(0, p - ky0 - 1);
            int yHi = Math.Min(g.H - 1, p + g.H - 1 - ky0);
            for (int kx0 = 0; kx0 < g.KCols; kx0 += 4)
            {
                // Vectors whose input columns [x+kx0, x+kx0+3+vl) miss the data columns contribute nothing.
                int xLo = Math.Max(0, p - kx0 - 3 - vl + 1) / vl * vl;
                int xHi = Math.Min(g.GradStride - vl, p + g.W - 1 - kx0);
                TV a00 = TOps.Zero, a01 = TOps.Zero, a02 = TOps.Zero, a03 = TOps.Zero;
                TV a10 = TOps.Zero, a11 = TOps.Zero, a12 = TOps.Zero, a13 = TOps.Zero;
                for (int y = yLo; y <= yHi; y++)
                {
                    float* gRow = gS + (long)y * g.GradStride;
                    float* x0Row = xS + (long)(y + ky0) * g.InStride + kx0;
                    float* x1Row = x0Row + g.InStride;
                    for (int x = xLo; x <= xHi; x += vl)
                    {
                        TV d = TOps.Load(gRow + x);
                        a00 = TOps.Fma(d, TOps.Load(x0Row + x), a00);
                        a01 = TOps.Fma(d, TOps.Load(x0Row + x + 1), a01);
                        a02 = TOps.Fma(d, TOps.Load(x0Row + x + 2), a02);
                        a03 = TOps.Fma(d, TOps.Load(x0Row + x + 3), a03);
                        a10 = TOps.Fma(d, TOps.Load(x1Row + x), a10);
                        a11 = TOps.Fma(d, TOps.Load(x1Row + x + 1), a11);
                        a12 = TOps.Fma(d, TOps.Load(x1Row + x + 2), a12);
                        a13 = TOps.Fma(d, TOps.Load(x1Row + x + 3), a13);
                    }
                }

                Accumulate(dw, k, ky0, kx0, TOps.Sum(a00), TOps.Sum(a01), TOps.Sum(a02), TOps.Sum(a03));
                Accumulate(dw, k, ky0 + 1, kx0, TOps.Sum(a10), TOps.Sum(a11), TOps.Sum(a12), TOps.Sum(a13));
            }
        }
    }

    private static void Accumulate(float* dw, int k, int ky, int kx0, float s0, float s1, float s2, float s3)
    {
        if (ky >= k)
        {
            return;
        }

        float* row = dw + ky * k;
        row[kx0] += s0;
        if (kx0 + 1 < k)
        {
            row[kx0 + 1] += s1;
        }

        if (kx0 + 2 < k)
        {
            row[kx0 + 2] += s2;
        }

        if (kx0 + 3 < k)
        {
            row[kx0 + 3] += s3;
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Threading

    private delegate void ChunkBody(float* scratch, int first, int last);

    /// <summary>
    /// Runs <paramref name="body"/> over [0, count) in contiguous chunks on up to <paramref name="threads"/> workers, each
    /// with its own 64-byte-aligned scratch of <paramref name="scratchFloats"/> floats (plus slack for vector over-reads).
    /// </summary>
    private static void ParallelPlanes(int count, int threads, long scratchFloats, ChunkBody body, int maxChunks = 0)
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

        // Thread-pool workers (no thread creation per call); each takes contiguous chunks until none is left.
        int nextChunk = -1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            float* scratch = (float*)NativeMemory.AlignedAlloc(bytes, 64);
            try
            {
                int chunk;
                while ((chunk = Interlocked.Increment(ref nextChunk)) < chunks)
                {
                    int first = (int)((long)count * chunk / chunks);
                    int last = (int)((long)count * (chunk + 1) / chunks);
                    body(scratch, first, last);
                }
            }
            finally
            {
                NativeMemory.AlignedFree(scratch);
            }
        });
    }

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;
}
