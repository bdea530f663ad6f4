using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

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
    /// The instruction set the dispatch rules below are measured for: the one our kernels run
    /// (<see cref="DepthwiseConv2d.Isa"/>, resolved). The crossovers were measured with libtorch (oneDNN) on the same
    /// instruction set (docs/perf-notes.md, "Table 1 on AVX2 and AVX-512"); any ISA other than Vector512 gets the AVX2 rules.
    /// </summary>
    internal static CpuIsa RuleIsa => CpuIsas.Resolve(DepthwiseConv2d.Isa);

    /// <summary>
    /// Whether libtorch's forward of this shape runs oneDNN's direct depthwise kernel (<c>jit_dw</c>) rather than its GEMM
    /// path (10–50× slower than ours): padding K/2 at most 6 with AVX-512, 4 with AVX2 (K ≤ 13, K ≤ 9), and at most the
    /// map's height and width. Read off <c>ONEDNN_VERBOSE=1</c> (oneDNN 3.7.1 in libtorch 2.10) for K 3…31 on maps 2…64
    /// with <c>ONEDNN_MAX_CPU_ISA</c> unset and <c>AVX2</c>. Its input gradient (<c>backward_data</c>) is <c>jit_dw</c>
    /// for every K.
    /// </summary>
    internal static bool LibtorchForwardIsDirect(CpuIsa isa, long h, long w, long k) =>
        k / 2 <= Math.Min(Math.Min(h, w), isa == CpuIsa.Vector512 ? 6 : 4);

    /// <summary>
    /// Maps where libtorch's forward is faster than ours: H, W ≤ 20 where its forward is direct
    /// (<see cref="LibtorchForwardIsDirect"/>). Measured (docs/perf-notes.md, "Table 1 on AVX2 and AVX-512"; `bench dwconv`,
    /// our raw kernels vs libtorch, ms per layer, medians of 3 runs): batch 8, C 384 — AVX-512 R 16 libtorch wins at K 3…13
    /// (K 9: 0.69 vs 0.42, K 13: 1.22 vs 0.67), R 32 ours at every K (K 3: 0.61 vs 1.95, K 13: 3.26 vs 4.12); AVX2 R 16
    /// libtorch wins at K 5 and 9 (K 9: 0.95 vs 0.69), ties at K 3 and 7, and at K 13 its GEMM forward takes 32.7 ms against
    /// our 1.7; batch 128, C 32 (RepLKNet-FMNIST's maps) — libtorch wins 1.1–8× on 7…14-wide maps where direct (AVX2 7×7
    /// K 13: GEMM, 9.3 ms against our 0.5). Our kernels pay per-plane setup and padded taps that dominate such maps. The raw
    /// kernels stay ours on every map (the instruction-set checks call them directly).
    /// </summary>
    internal static bool ForwardOnLibtorch(CpuIsa isa, long h, long w, long k) => h <= 20 && w <= 20 && LibtorchForwardIsDirect(isa, h, w, k);

    /// <summary>
    /// Where the channel-blocked AVX-512 kernels (<see cref="DepthwiseConvBlocked"/>) beat libtorch's direct forward and
    /// input gradient, so that <see cref="ForwardOnLibtorch"/> and <see cref="InputGradientOnlyOnLibtorch"/> yield to
    /// them: the blocked rule holds and W is a multiple of 16 (whole 16 × 16 transposes). Measured (batch 8, C 384,
    /// 2 threads, ms per layer, blocked vs libtorch): R 16 forward K 5 0.22 vs 0.24, K 7 0.27 vs 0.31, K 13 0.46 vs 0.63;
    /// input gradient K 9 0.32 vs 0.41, K 13 0.46 vs 0.65; but R 14 K 13 0.61 vs 0.51–0.54 and R 8 K 13 a tie.
    /// </summary>
    internal static bool BlockedBeatsLibtorch(CpuIsa isa, long c, long h, long w, long k) =>
        w % 16 == 0 && DepthwiseConvBlocked.ConvApplies(isa, (int)Math.Min(c, int.MaxValue), (int)Math.Min(h, int.MaxValue), (int)Math.Min(w, int.MaxValue), (int)Math.Min(k, int.MaxValue));

    /// <summary>
    /// Tiny maps, where libtorch's input gradient (and at K = 3 its whole training step) beats ours: H, W ≤ 12 with
    /// AVX-512, ≤ 8 with AVX2. Measured as <see cref="ForwardOnLibtorch"/> (input gradients with autograd.grad): batch
    /// 128, C 32 — AVX-512 7×7 K 13 0.78 vs 0.32 ms per layer, 10×10 K 13 1.02 vs 0.74, 12×12 a tie (K 3 0.25 vs 0.24,
    /// K 13 1.15 vs 1.21), 14×14 ours or a tie; AVX2 7×7 K 13 0.68 vs 0.62, from 8×8 on ours (K 3 0.14 vs 0.22, K 13
    /// 0.73 vs 0.89); 4×4 K 9 and 2×2 K 5 libtorch 2–4× on both. Batch 8, C 384, R 16 (Table 1): ours at every K on both
    /// (AVX-512 K 3 0.24 vs 0.26, K 5 0.36 vs 0.35, K 13 1.26 vs 2.09; K 17…31 0.65–0.77×; AVX2 0.55–0.96×).
    /// </summary>
    internal static bool TinyMap(CpuIsa isa, long h, long w) => Math.Max(h, w) <= (isa == CpuIsa.Vector512 ? 12 : 8);

    /// <summary>
    /// Maps where libtorch's input gradient is faster than ours: tiny maps (<see cref="TinyMap"/>) with K ≤ 13 (larger
    /// kernels on such maps are not measured), through <see cref="LibtorchInputGrad"/>.
    /// </summary>
    internal static bool InputGradOnLibtorch(CpuIsa isa, long h, long w, long k) => TinyMap(isa, h, w) && k <= 13;

    /// <summary>
    /// Tracked calls whose weight and bias need no gradient (frozen layers, ERF maps: only the input gradient) that go to
    /// libtorch whole: with AVX-512, K ≤ 9 where its forward runs (<see cref="ForwardOnLibtorch"/>, maps up to 20×20).
    /// There libtorch's autograd runs oneDNN's direct input-gradient kernel with no managed callback, which neither our
    /// kernel behind the autograd function nor libtorch's input gradient called from TorchSharp (a forward with the
    /// flipped kernel, or <c>conv_transpose2d</c>) matches. Measured (Table 1's R 16, batch 8, C 384, 4 layers, three
    /// runs, ms, input gradient only, ours vs libtorch): K 3 1.0 vs 0.9–1.2, K 5 1.5–2.0 vs 1.2–1.6, K 7 2.0–2.7 vs 1.8–2.0,
    /// K 9 2.6–2.7 vs 2.6–2.8 (the flipped forward 5.1–6.2, <c>conv_transpose2d</c> 3.4–6.1), K 13 4.5 vs 7.8–17.5 (ours);
    /// AVX2 ours at every K (K 3 1.0–1.5 vs 1.4–1.7, K 9 3.4–3.6 vs 4.5–5.1). With the weight trained too, our weight
    /// gradient (7–17× libtorch's at K 5–9) decides, and the call stays ours.
    /// </summary>
    internal static bool InputGradientOnlyOnLibtorch(CpuIsa isa, long h, long w, long k) =>
        isa == CpuIsa.Vector512 && k <= 9 && ForwardOnLibtorch(isa, h, w, k);

    /// <summary>
    /// Tracked calls (training) that go to libtorch whole, forward and both gradients: K = 3 on tiny maps
    /// (<see cref="TinyMap"/>) of at least 3×3. Its K = 3 weight gradient is oneDNN's direct kernel there (from K 5 on, and
    /// on maps narrower than the kernel, a GEMM path 5–30× slower than ours) and TorchSharp has no entry to libtorch's
    /// weight gradient alone. Measured (batch 128, C 32, ms per layer, ours vs libtorch): AVX-512 4×4 weight gradient
    /// 0.18 vs 0.08 and both gradients 0.38 vs 0.17, 12×12 0.22 vs 0.15 and 0.45 vs 0.41, 14×14 0.26 vs 0.20 and a tie;
    /// AVX2 8×8 0.11 vs 0.11 and 0.43 vs 0.33, 10×10 ours for both gradients (0.38 vs 0.42); 2×2 libtorch's is 4–8×
    /// slower (GEMM). At Table 1's R 16 ours wins (weight gradient 0.18 vs 0.31 on AVX-512).
    /// </summary>
    internal static bool TrainingOnLibtorch(CpuIsa isa, long h, long w, long k) => k == 3 && Math.Min(h, w) >= 3 && TinyMap(isa, h, w);

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
        long[] xs = TensorSizes.Of(x);
        var isa = RuleIsa;
        bool libtorch = ForwardOnLibtorch(isa, xs[2], xs[3], w.size(2)) && !BlockedBeatsLibtorch(isa, xs[1], xs[2], xs[3], w.size(2));
        return libtorch ? DepthwiseConv2d.Libtorch(x, w, b) : ForwardRaw(x, w, b);
    }

    /// <summary>
    /// The input gradient as the dispatch runs it on the CPU: libtorch's where it is faster (<see cref="InputGradOnLibtorch"/>),
    /// our kernels otherwise. No autograd.
    /// </summary>
    /// <param name="gradOutput">Gradient of the output (N, C, H, W).</param>
    /// <param name="w">Filter (C, 1, K, K).</param>
    /// <returns>The gradient of the input, a new (N, C, H, W) float32 tensor.</returns>
    public static Tensor InputGrad(Tensor gradOutput, Tensor w)
    {
        ArgumentNullException.ThrowIfNull(gradOutput);
        ArgumentNullException.ThrowIfNull(w);
        var isa = RuleIsa;
        long[] gs = TensorSizes.Of(gradOutput);
        long h = gs[2], wd = gs[3], k = w.size(2);
        return !InputGradOnLibtorch(isa, h, wd, k) ? InputGradRaw(gradOutput, w) : LibtorchInputGrad(gradOutput, w, LibtorchForwardIsDirect(isa, h, wd, k));
    }

    /// <summary>
    /// libtorch's input gradient of a depthwise "same" convolution. With <paramref name="viaForward"/>: its forward with
    /// each kernel rotated by 180° (the transpose of a "same" depthwise convolution), faster than its own
    /// <c>backward_data</c> where the forward is direct (harness, AVX-512, R 32 K 3: 2.06 vs 2.51 ms per layer); else
    /// <c>conv_transpose2d</c>, i.e. oneDNN's direct <c>backward_data</c> kernel at every K (R 16 K 31: 6.9 ms per layer, the
    /// rotated forward on the GEMM path 189).
    /// </summary>
    internal static Tensor LibtorchInputGrad(Tensor gradOutput, Tensor w, bool viaForward)
    {
        if (viaForward)
        {
            using var flipped = w.flip(2, 3);
            return DepthwiseConv2d.Libtorch(gradOutput, flipped, null);
        }

        long[] ws = TensorSizes.Of(w);
        return nn.functional.conv_transpose2d(gradOutput, w, padding: [ws[2] / 2, ws[2] / 2], groups: ws[0]);
    }

    /// <summary>
    /// The weight gradient on our kernels on every map (faster than libtorch's from K 5 on, even on tiny maps; at K = 3 on
    /// small maps the whole tracked call goes to libtorch instead: <see cref="TrainingOnLibtorch"/>). No autograd.
    /// </summary>
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
        var y = empty(TensorSizes.Of(xc), dtype: float32);
        // An empty span pins as a null pointer: no bias.
        fixed (byte* px = xc.bytes, pw = wc.bytes, py = y.bytes, pb = bc is null ? Span<byte>.Empty : bc.bytes)
        {
            DepthwiseConvCpu.Forward((float*)px, (float*)pw, (float*)pb, (float*)py, n, c, h, wd, (int)w.size(2), DepthwiseConv2d.Isa, DepthwiseConv2d.ThreadCount);
        }

        return y;
    }

    /// <summary>Our input-gradient kernel on every map (no autograd).</summary>
    internal static unsafe Tensor InputGradRaw(Tensor gradOutput, Tensor w)
    {
        using var gc = gradOutput.contiguous();
        using var wc = w.contiguous();
        var (n, c, h, wd) = Dims(gc);
        var dx = empty(TensorSizes.Of(gc), dtype: float32);
        fixed (byte* pg = gc.bytes, pw = wc.bytes, pdx = dx.bytes)
        {
            DepthwiseConvCpu.InputGrad((float*)pg, (float*)pw, (float*)pdx, n, c, h, wd, (int)w.size(2), DepthwiseConv2d.Isa, DepthwiseConv2d.ThreadCount);
        }

        return dx;
    }

    private static (int N, int C, int H, int W) Dims(Tensor t) => ((int)t.size(0), (int)t.size(1), (int)t.size(2), (int)t.size(3));

    private sealed class Adapter : IDepthwiseKernels
    {
        public bool Takes(Tensor input, Tensor weight, Tensor? bias, bool tracked)
        {
            if (!Fits(input, weight, bias))
            {
                return false;
            }

            if (!tracked)
            {
                return true;
            }

            var isa = RuleIsa;
            long h = input.size(2), w = input.size(3), k = weight.size(2);
            bool inputGradientOnly = !weight.requires_grad && bias?.requires_grad != true;
            return !(TrainingOnLibtorch(isa, h, w, k)
                || inputGradientOnly && InputGradientOnlyOnLibtorch(isa, h, w, k) && !BlockedBeatsLibtorch(isa, input.size(1), h, w, k));
        }

        public Tensor Forward(Tensor input, Tensor weight, Tensor? bias) => CpuDepthwise.Forward(input, weight, bias);

        public Tensor InputGrad(Tensor gradOutput, Tensor weight) => CpuDepthwise.InputGrad(gradOutput, weight);

        public Tensor WeightGrad(Tensor input, Tensor gradOutput, int k) => CpuDepthwise.WeightGrad(input, gradOutput, k);
    }
}
