using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// A 1×1 convolution (groups 1, stride 1, no padding) on channels_last float32 activations, as one matrix product per
/// call with its epilogue fused: <c>y = [relu](x·Wᵀ + b) [+ r]</c> over rows of pixels. Used by the frozen inference
/// model (<c>Models.FrozenRepLKNet</c>) where its activations are channels_last; each pixel is then a row of
/// C_in contiguous floats and the product is a plain row-major GEMM, (N·H·W × C_in) · (C_in × C_out).
/// </summary>
/// <remarks>
/// Why our own: on the default model's maps (2×2…14×14, 32–256 channels, 32–64 images per thread) libtorch's
/// oneDNN convolution spends most of each call outside arithmetic (descriptor set-up, primitive-cache look-up, weight
/// reorder, a fresh output) and runs at 15–40 % of one core's FMA peak; this register-tiled product (6 rows × 2 vectors
/// of output channels, 12 accumulators, the weights packed once as C_in × C_out) runs at 90–100 % of it on those shapes
/// (docs/perf-notes.md). The sum over C_in runs in order k = 0, 1, …, starting from the bias; the residual is added last,
/// after the ReLU if both are asked (the frozen model asks for one or the other).
/// </remarks>
internal static unsafe class PointwiseConvCpu
{
    private const int TileRows = 6;

    /// <summary>
    /// Packs a 1×1 conv weight (C_out, C_in, 1, 1) as the (C_in, C_out) row-major matrix <see cref="Forward"/> takes.
    /// </summary>
    public static Tensor PackWeight(Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        using var scope = NewDisposeScope();
        return weight.reshape(weight.size(0), weight.size(1)).t().contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// y = [relu](conv1×1(x) + b) [+ residual], channels_last in and out.
    /// </summary>
    /// <param name="x">Input (N, C_in, H, W), float32 on the CPU; read through its channels_last view (copied if its strides are not channels_last).</param>
    /// <param name="packedWeight">(C_in, C_out) from <see cref="PackWeight"/>.</param>
    /// <param name="bias">(C_out).</param>
    /// <param name="relu">Apply ReLU to the convolution.</param>
    /// <param name="residual">
    /// Null, or (N, C_out, H, W) channels_last float32 added to the result: the result is then written into it (in
    /// place; its owner must not need it afterwards, and it must not share memory with <paramref name="x"/>) and it is returned.
    /// </param>
    /// <param name="isa">Instruction set (resolved).</param>
    /// <param name="threads">Threads of libtorch's OpenMP team to spread the rows over (1: the caller only).</param>
    /// <returns>(N, C_out, H, W) with channels_last strides: a new tensor, or <paramref name="residual"/>.</returns>
    /// <exception cref="ArgumentException">Shapes, dtypes, device or layout do not fit (the message names which).</exception>
    public static Tensor Forward(Tensor x, Tensor packedWeight, Tensor bias, bool relu, Tensor? residual, CpuIsa isa, int threads)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(packedWeight);
        ArgumentNullException.ThrowIfNull(bias);
        long[] xs = TensorSizes.Of(x);
        long[] ws = TensorSizes.Of(packedWeight);
        if (xs.Length != 4 || ws.Length != 2 || xs[1] != ws[0] || TensorSizes.Of(bias).Length != 1 || bias.size(0) != ws[1] ||
            x.dtype != ScalarType.Float32 || packedWeight.dtype != ScalarType.Float32 || bias.dtype != ScalarType.Float32 ||
            x.device_type != DeviceType.CPU || packedWeight.device_type != DeviceType.CPU || bias.device_type != DeviceType.CPU ||
            !packedWeight.is_contiguous() || !bias.is_contiguous())
        {
            throw new ArgumentException($"a pointwise conv takes float32 CPU (N, C_in, H, W), (C_in, C_out) and (C_out); got {Shape(xs)}, {Shape(ws)}, {Shape(TensorSizes.Of(bias))}", nameof(x));
        }

        long n = xs[0], k = xs[1], h = xs[2], w = xs[3], cOut = ws[1];
        long m = n * h * w;
        if (!Fits(x, cOut))
        {
            throw new ArgumentException($"a pointwise conv of {Shape(xs)} → {cOut} channels is too large (input and output must each be below 2 GiB)", nameof(x));
        }

        using var rows = ChannelsLastView(x);
        Tensor output;
        if (residual is not null)
        {
            long[] rs = TensorSizes.Of(residual);
            if (rs.Length != 4 || rs[0] != n || rs[1] != cOut || rs[2] != h || rs[3] != w || residual.dtype != ScalarType.Float32 || residual.device_type != DeviceType.CPU ||
                !IsChannelsLast(residual))
            {
                throw new ArgumentException($"the residual must be a channels_last float32 CPU ({n}, {cOut}, {h}, {w}); got {Shape(rs)}", nameof(residual));
            }

            output = residual;
        }
        else
        {
            using var nhwc = empty([n, h, w, cOut], dtype: ScalarType.Float32);
            output = nhwc.permute(0, 3, 1, 2);
        }

        using var outRows = output.permute(0, 2, 3, 1);
        fixed (byte* px = rows.bytes, pw = packedWeight.bytes, pb = bias.bytes, py = outRows.bytes)
        {
            Run(isa, (float*)px, (float*)pw, (float*)pb, (float*)py, residual is not null, relu, (int)m, (int)k, (int)cOut, threads);
        }

        return output;
    }

    /// <summary>
    /// Whether <see cref="Forward"/> takes <paramref name="x"/> (N, C_in, H, W) to <paramref name="outChannels"/>: input and
    /// output each below 2 GiB (TorchSharp hands a tensor's memory over as a span of at most int.MaxValue bytes).
    /// </summary>
    public static bool Fits(Tensor x, long outChannels)
    {
        ArgumentNullException.ThrowIfNull(x);
        long[] xs = TensorSizes.Of(x);
        long pixels = xs.Length == 4 ? xs[0] * xs[2] * xs[3] : 0;
        return xs.Length == 4 && pixels * xs[1] * sizeof(float) <= int.MaxValue && pixels * outChannels * sizeof(float) <= int.MaxValue;
    }

    /// <summary>Whether (N, C, H, W) has channels_last strides (its NHWC view is contiguous).</summary>
    public static bool IsChannelsLast(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        using var view = t.permute(0, 2, 3, 1);
        return view.is_contiguous();
    }

    // The (N, H, W, C) view of x, contiguous (a copy only when x's strides are not channels_last).
    private static Tensor ChannelsLastView(Tensor x)
    {
        var view = x.permute(0, 2, 3, 1);
        if (view.is_contiguous())
        {
            return view;
        }

        using (view)
        {
            return view.contiguous();
        }
    }

    private static string Shape(long[] shape) => $"({string.Join(", ", shape)})";

    /// <summary>The raw product on pointers: y[m, :] = [relu](b + x[m, :]·W) [+ y[m, :] when <paramref name="accumulate"/>].</summary>
    internal static void Run(CpuIsa isa, float* x, float* w, float* b, float* y, bool accumulate, bool relu, int m, int k, int n, int threads)
    {
        int blocks = (m + TileRows - 1) / TileRows;
        // Row blocks in contiguous chunks over the team; a few per thread so that a slower thread does not hold the rest.
        int workers = Math.Max(1, Math.Min(threads, blocks / 8));
        if (workers == 1)
        {
            RunRows(isa, x, w, b, y, accumulate, relu, 0, m, k, n);
            return;
        }

        int chunks = Math.Min(blocks, workers * 4);
        int next = -1;
        OpenMpTeam.Run(workers, () =>
        {
            for (int chunk; (chunk = Interlocked.Increment(ref next)) < chunks;)
            {
                int first = (int)((long)blocks * chunk / chunks) * TileRows;
                int last = Math.Min(m, (int)((long)blocks * (chunk + 1) / chunks) * TileRows);
                RunRows(isa, x, w, b, y, accumulate, relu, first, last, k, n);
            }
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunRows(CpuIsa isa, float* x, float* w, float* b, float* y, bool accumulate, bool relu, int first, int last, int k, int n)
    {
        switch (isa)
        {
            case CpuIsa.Vector512:
                Rows<Ops512, Vector512<float>>(x, w, b, y, accumulate, relu, first, last, k, n);
                break;
            case CpuIsa.Vector256:
                Rows<Ops256, Vector256<float>>(x, w, b, y, accumulate, relu, first, last, k, n);
                break;
            default:
                Rows<OpsScalar, float>(x, w, b, y, accumulate, relu, first, last, k, n);
                break;
        }
    }

    // Output columns in blocks of 2 vectors, then 1 vector, then single floats; rows in blocks of 6, then one at a time.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows<TOps, TV>(float* x, float* w, float* b, float* y, bool accumulate, bool relu, int first, int last, int k, int n)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int v = TOps.Count;
        int c = 0;
        for (; c + 2 * v <= n; c += 2 * v)
        {
            int r = first;
            for (; r + TileRows <= last; r += TileRows)
            {
                Tile6x2<TOps, TV>(x + (long)r * k, w + c, b + c, y + (long)r * n + c, accumulate, relu, k, n);
            }

            for (; r < last; r++)
            {
                Tile1x1<TOps, TV>(x + (long)r * k, w + c, b + c, y + (long)r * n + c, accumulate, relu, k, n);
                Tile1x1<TOps, TV>(x + (long)r * k, w + c + v, b + c + v, y + (long)r * n + c + v, accumulate, relu, k, n);
            }
        }

        for (; c + v <= n; c += v)
        {
            for (int r = first; r < last; r++)
            {
                Tile1x1<TOps, TV>(x + (long)r * k, w + c, b + c, y + (long)r * n + c, accumulate, relu, k, n);
            }
        }

        for (; c < n; c++)
        {
            for (int r = first; r < last; r++)
            {
                Tile1x1<OpsScalar, float>(x + (long)r * k, w + c, b + c, y + (long)r * n + c, accumulate, relu, k, n);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TV Finish<TOps, TV>(TV acc, float* y, bool accumulate, bool relu)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        if (relu)
        {
            acc = TOps.Relu(acc);
        }

        return accumulate ? TOps.Add(acc, TOps.Load(y)) : acc;
    }

    // Fully optimized from the first call (AggressiveOptimization, as the depthwise kernels): at tier 0 these loops ran
    // 3–12× slower, and a benchmark of a few repetitions timed that.
    // 6 rows × 2 vectors: 12 accumulators, 2 weight vectors and a broadcast live (15 registers: fits AVX2's 16).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile6x2<TOps, TV>(float* x, float* w, float* b, float* y, bool accumulate, bool relu, int k, int n)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        int v = TOps.Count;
        TV b0 = TOps.Load(b), b1 = TOps.Load(b + v);
        TV a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1, a40 = b0, a41 = b1, a50 = b0, a51 = b1;
        float* x0 = x, x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k, x4 = x + 4 * k, x5 = x + 5 * k;
        float* wp = w;
        for (int i = 0; i < k; i++, wp += n)
        {
            TV w0 = TOps.Load(wp), w1 = TOps.Load(wp + v);
            TV s = TOps.Broadcast(x0[i]);
            a00 = TOps.Fma(s, w0, a00);
            a01 = TOps.Fma(s, w1, a01);
            s = TOps.Broadcast(x1[i]);
            a10 = TOps.Fma(s, w0, a10);
            a11 = TOps.Fma(s, w1, a11);
            s = TOps.Broadcast(x2[i]);
            a20 = TOps.Fma(s, w0, a20);
            a21 = TOps.Fma(s, w1, a21);
            s = TOps.Broadcast(x3[i]);
            a30 = TOps.Fma(s, w0, a30);
            a31 = TOps.Fma(s, w1, a31);
            s = TOps.Broadcast(x4[i]);
            a40 = TOps.Fma(s, w0, a40);
            a41 = TOps.Fma(s, w1, a41);
            s = TOps.Broadcast(x5[i]);
            a50 = TOps.Fma(s, w0, a50);
            a51 = TOps.Fma(s, w1, a51);
        }

        float* y0 = y, y1 = y + n, y2 = y + 2 * n, y3 = y + 3 * n, y4 = y + 4 * n, y5 = y + 5 * n;
        TOps.Store(y0, Finish<TOps, TV>(a00, y0, accumulate, relu));
        TOps.Store(y0 + v, Finish<TOps, TV>(a01, y0 + v, accumulate, relu));
        TOps.Store(y1, Finish<TOps, TV>(a10, y1, accumulate, relu));
        TOps.Store(y1 + v, Finish<TOps, TV>(a11, y1 + v, accumulate, relu));
        TOps.Store(y2, Finish<TOps, TV>(a20, y2, accumulate, relu));
        TOps.Store(y2 + v, Finish<TOps, TV>(a21, y2 + v, accumulate, relu));
        TOps.Store(y3, Finish<TOps, TV>(a30, y3, accumulate, relu));
        TOps.Store(y3 + v, Finish<TOps, TV>(a31, y3 + v, accumulate, relu));
        TOps.Store(y4, Finish<TOps, TV>(a40, y4, accumulate, relu));
        TOps.Store(y4 + v, Finish<TOps, TV>(a41, y4 + v, accumulate, relu));
        TOps.Store(y5, Finish<TOps, TV>(a50, y5, accumulate, relu));
        TOps.Store(y5 + v, Finish<TOps, TV>(a51, y5 + v, accumulate, relu));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile1x1<TOps, TV>(float* x, float* w, float* b, float* y, bool accumulate, bool relu, int k, int n)
        where TOps : struct, IVectorOps<TV>
        where TV : struct
    {
        TV a = TOps.Load(b);
        float* wp = w;
        for (int i = 0; i < k; i++, wp += n)
        {
            a = TOps.Fma(TOps.Broadcast(x[i]), TOps.Load(wp), a);
        }

        TOps.Store(y, Finish<TOps, TV>(a, y, accumulate, relu));
    }
}
