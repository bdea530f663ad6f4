using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// The CPU side of the project's depthwise convolution on tensors: forward, input gradient and weight gradient of
/// <see cref="DepthwiseConvCpu"/>'s SIMD kernels (the counterpart of <see cref="Cuda.CudaDepthwise"/>). Contract: the one
/// <see cref="DepthwiseConv2d.Fits"/> checks: NCHW float32 CPU tensors (any strides: they are made contiguous), a
/// (C, 1, K, K) filter with odd K in [3, 63], stride 1, padding K/2, an optional bias of C values. No autograd: the
/// dispatcher (<see cref="DepthwiseConv2d.Forward"/>) wires these into its autograd function. Every call runs on
/// <see cref="DepthwiseConv2d.ThreadCount"/> worker threads with <see cref="DepthwiseConv2d.Isa"/>.
/// </summary>
public static class CpuDepthwise
{
    /// <summary>The kernels as the dispatcher uses them.</summary>
    internal static IDepthwiseKernels Kernels { get; } = new Adapter();

    /// <summary>Whether our CPU kernels take this call (the contract on CPU tensors).</summary>
    public static bool Fits(Tensor input, Tensor weight, Tensor? bias) => DepthwiseConv2d.FitsOn(input, weight, bias, DeviceType.CPU);

    /// <summary>
    /// Small maps with K ≤ 13 (pad ≤ 6: oneDNN's direct depthwise path), where libtorch's forward is faster than ours:
    /// H, W ≤ 20. Measured (docs/perf-notes.md, 2026-11-30, AVX-512, `bench dwconv --pass all`): at batch 8, C 384
    /// libtorch's forward wins at R 12/16/20 for every K 3…13 (e.g. R 16 K 13: 3.0 vs 4.7 ms per 4 layers), ties at R 24
    /// and loses from R 32 (K 13: 18.2 vs 12.4); at batch 128, C 32 (RepLKNet-FMNIST's stem and stages) it wins at R 14
    /// and on the 7×7/4×4/2×2 maps 3–10×. Our kernels pay per-plane setup and padded taps that dominate such maps. The raw
    /// kernels stay ours on every map (the instruction-set checks call them directly).
    /// </summary>
    internal static bool ForwardOnLibtorch(long h, long w, long k) => h <= 20 && w <= 20 && k <= 13;

    /// <summary>
    /// Maps where libtorch's input gradient is faster than ours, with K ≤ 13: H, W ≤ 24 (measured as
    /// <see cref="ForwardOnLibtorch"/>: libtorch wins at R 12…24 for every K 3…13, e.g. R 20 K 9: 4.6 vs 8.9 ms, and loses
    /// at R 32 except K 5). The weight gradient stays ours on every map from K 5 on (2–20× faster than libtorch's);
    /// libtorch's is faster at K 3 (R 12: 0.5 vs 4.3 ms) but has no direct entry point here.
    /// </summary>
    internal static bool InputGradOnLibtorch(long h, long w, long k) => h <= 24 && w <= 24 && k <= 13;

    /// <summary>
    /// y = depthwise_conv(x, w) + b as the dispatch runs it on the CPU: libtorch's on small maps
    /// (<see cref="ForwardOnLibtorch"/>), our kernels otherwise. No autograd.
    /// </summary>
    /// <param name="x">Input (N, C, H, W).</param>
    /// <param name="w">Filter (C, 1, K, K).</param>
    /// <param name="b">Bias (C), or null.</param>
    /// <returns>A new contiguous (N, C, H, W) float32 tensor.</returns>
    public static Tensor Forward(Tensor x, Tensor w, Tensor? b)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(w);
        return ForwardOnLibtorch(x.shape[2], x.shape[3], w.shape[2]) ? DepthwiseConv2d.Libtorch(x, w, b) : ForwardRaw(x, w, b);
    }

    /// <summary>
    /// The input gradient as the dispatch runs it on the CPU: libtorch's on small maps (<see cref="InputGradOnLibtorch"/>),
    /// our kernels otherwise. No autograd.
    /// </summary>
    /// <param name="gradOutput">Gradient of the output (N, C, H, W).</param>
    /// <param name="w">Filter (C, 1, K, K).</param>
    /// <returns>The gradient of the input, a new (N, C, H, W) float32 tensor.</returns>
    public static Tensor InputGrad(Tensor gradOutput, Tensor w)
    {
        ArgumentNullException.ThrowIfNull(gradOutput);
        ArgumentNullException.ThrowIfNull(w);
        if (!InputGradOnLibtorch(gradOutput.shape[2], gradOutput.shape[3], w.shape[2]))
        {
            return InputGradRaw(gradOutput, w);
        }

        // The transpose of a "same" depthwise convolution is the same convolution with the filter rotated by 180°.
        using var flipped = w.flip(2, 3);
        return DepthwiseConv2d.Libtorch(gradOutput, flipped, null);
    }

    /// <summary>The weight gradient on our kernels on every map (faster than libtorch's from K 5 on, even on tiny maps). No autograd.</summary>
    /// <param name="x">Input of the forward (N, C, H, W).</param>
    /// <param name="gradOutput">Gradient of the output (N, C, H, W).</param>
    /// <param name="k">Kernel size K.</param>
    /// <returns>The gradient of the filter, a new (C, 1, K, K) float32 tensor.</returns>
    public static unsafe Tensor WeightGrad(Tensor x, Tensor gradOutput, long k)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(gradOutput);
        using var xc = x.contiguous();
        using var gc = gradOutput.contiguous();
        var (n, c, h, wd) = Dims(xc);
        var dw = empty([c, 1, k, k], dtype: float32);
        fixed (byte* px = xc.bytes, pg = gc.bytes, pdw = dw.bytes)
        {
            DepthwiseConvCpu.WeightGrad((float*)px, (float*)pg, (float*)pdw, n, c, h, wd, (int)k, DepthwiseConv2d.Isa, DepthwiseConv2d.ThreadCount);
        }

        return dw;
    }

    /// <summary>Our forward kernel on every map (no autograd; the instruction-set checks compare it with libtorch).</summary>
    internal static unsafe Tensor ForwardRaw(Tensor x, Tensor w, Tensor? b)
    {
        using var xc = x.contiguous();
        using var wc = w.contiguous();
        using var bc = b?.contiguous();
        var (n, c, h, wd) = Dims(xc);
        var y = empty(xc.shape, dtype: float32);
        // An empty span pins as a null pointer: no bias.
        fixed (byte* px = xc.bytes, pw = wc.bytes, py = y.bytes, pb = bc is null ? Span<byte>.Empty : bc.bytes)
        {
            DepthwiseConvCpu.Forward((float*)px, (float*)pw, (float*)pb, (float*)py, n, c, h, wd, (int)w.shape[2], DepthwiseConv2d.Isa, DepthwiseConv2d.ThreadCount);
        }

        return y;
    }

    /// <summary>Our input-gradient kernel on every map (no autograd).</summary>
    internal static unsafe Tensor InputGradRaw(Tensor gradOutput, Tensor w)
    {
        using var gc = gradOutput.contiguous();
        using var wc = w.contiguous();
        var (n, c, h, wd) = Dims(gc);
        var dx = empty(gc.shape, dtype: float32);
        fixed (byte* pg = gc.bytes, pw = wc.bytes, pdx = dx.bytes)
        {
            DepthwiseConvCpu.InputGrad((float*)pg, (float*)pw, (float*)pdx, n, c, h, wd, (int)w.shape[2], DepthwiseConv2d.Isa, DepthwiseConv2d.ThreadCount);
        }

        return dx;
    }

    private static (int N, int C, int H, int W) Dims(Tensor t) => ((int)t.shape[0], (int)t.shape[1], (int)t.shape[2], (int)t.shape[3]);

    private sealed class Adapter : IDepthwiseKernels
    {
        public bool Takes(Tensor input, Tensor weight, Tensor? bias, bool tracked) => Fits(input, weight, bias);

        public Tensor Forward(Tensor input, Tensor weight, Tensor? bias) => CpuDepthwise.Forward(input, weight, bias);

        public Tensor InputGrad(Tensor gradOutput, Tensor weight) => CpuDepthwise.InputGrad(gradOutput, weight);

        public Tensor WeightGrad(Tensor input, Tensor gradOutput, int k) => CpuDepthwise.WeightGrad(input, gradOutput, k);
    }
}
