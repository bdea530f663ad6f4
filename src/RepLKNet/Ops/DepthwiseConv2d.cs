using System.Runtime.InteropServices;
using RepLKNet.Ops.Cpu;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Ops;

/// <summary>Which implementation runs depthwise convolutions that fit the contract.</summary>
public enum DepthwiseBackend
{
    /// <summary>Ours where the contract holds (CPU SIMD kernels), libtorch otherwise.</summary>
    Ours,

    /// <summary>Always libtorch's <c>conv2d</c> (for comparison).</summary>
    Torch,
}

/// <summary>
/// The project's one depthwise convolution: stride 1, padding K/2 ("same"), dilation 1, odd square K in [3, 63],
/// float32, any N, C, H, W ≥ 1, optional bias. It dispatches by device: CPU inputs that fit run on our SIMD kernels with
/// gradients for input, weight and bias through a TorchSharp autograd function; CUDA inputs that fit run on our NVRTC
/// forward kernel when no gradient is tracked; everything else goes to <c>torch.nn.functional.conv2d</c>.
/// </summary>
public static class DepthwiseConv2d
{
    /// <summary>Smallest kernel our kernels take.</summary>
    public const int MinKernel = 3;

    /// <summary>Largest kernel our kernels take.</summary>
    public const int MaxKernel = 63;

    /// <summary>Environment variable: <c>torch</c> makes libtorch's conv the default implementation.</summary>
    public const string ImplEnvironmentVariable = "REPLKNET_DWCONV";

    /// <summary>Environment variable forcing a CPU instruction set: <c>vector512</c>, <c>vector256</c> or <c>scalar</c>.</summary>
    public const string IsaEnvironmentVariable = "REPLKNET_CPU_ISA";

    private static readonly AsyncLocal<DepthwiseBackend?> ScopedBackend = new();

    /// <summary>The process-wide default implementation (from <c>REPLKNET_DWCONV</c>, else ours).</summary>
    public static DepthwiseBackend DefaultBackend { get; set; } =
        string.Equals(Environment.GetEnvironmentVariable(ImplEnvironmentVariable), "torch", StringComparison.OrdinalIgnoreCase)
            ? DepthwiseBackend.Torch
            : DepthwiseBackend.Ours;

    private static readonly AsyncLocal<CpuIsa?> ScopedIsa = new();

    /// <summary>The process-wide CPU instruction set (from <c>REPLKNET_CPU_ISA</c>, else the widest available).</summary>
    public static CpuIsa DefaultIsa { get; set; } =
        Enum.TryParse<CpuIsa>(Environment.GetEnvironmentVariable(IsaEnvironmentVariable), ignoreCase: true, out var isa) ? isa : CpuIsa.Auto;

    /// <summary>The CPU instruction set in effect on this async flow.</summary>
    public static CpuIsa Isa => ScopedIsa.Value ?? DefaultIsa;

    /// <summary>Uses <paramref name="isa"/> on this async flow until the returned scope is disposed (tests, self-checks).</summary>
    public static IDisposable UseIsa(CpuIsa isa)
    {
        var previous = ScopedIsa.Value;
        ScopedIsa.Value = isa;
        return new Restore(() => ScopedIsa.Value = previous);
    }

    /// <summary>Worker threads for our CPU kernels; 0 means libtorch's <c>get_num_threads()</c>.</summary>
    public static int Threads { get; set; }

    /// <summary>The implementation in effect on this async flow.</summary>
    public static DepthwiseBackend CurrentBackend => ScopedBackend.Value ?? DefaultBackend;

    /// <summary>Uses <paramref name="impl"/> on this async flow until the returned scope is disposed (benchmarks, tests).</summary>
    public static IDisposable Use(DepthwiseBackend impl)
    {
        var previous = ScopedBackend.Value;
        ScopedBackend.Value = impl;
        return new Restore(() => ScopedBackend.Value = previous);
    }

    /// <summary>Whether a convolution with these settings is a depthwise "same" convolution of this contract.</summary>
    public static bool IsDepthwiseSame(long inChannels, long outChannels, long groups, long kernelH, long kernelW, long stride, long padding, long dilation) =>
        inChannels == outChannels && groups == inChannels && kernelH == kernelW && kernelH % 2 == 1 &&
        stride == 1 && dilation == 1 && padding == kernelH / 2;

    /// <summary>Whether our CPU kernels take this call (else it goes to libtorch).</summary>
    public static bool Fits(Tensor input, Tensor weight, Tensor? bias) => FitsOn(input, weight, bias, DeviceType.CPU);

    /// <summary>
    /// The contract on one device type: 4-D float32 input (N, C, H, W ≥ 1, fewer than 2³¹ elements), a (C, 1, K, K)
    /// float32 filter with odd K in [3, 63], an optional float32 bias of C values, all on the same device of that type.
    /// </summary>
    internal static bool FitsOn(Tensor input, Tensor weight, Tensor? bias, DeviceType device)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        if (input.dim() != 4 || weight.dim() != 4 || input.dtype != ScalarType.Float32 || weight.dtype != ScalarType.Float32 ||
            input.device_type != device || weight.device_type != device || input.device_index != weight.device_index)
        {
            return false;
        }

        long c = input.shape[1], k = weight.shape[2];
        return weight.shape[0] == c && weight.shape[1] == 1 && weight.shape[3] == k && k % 2 == 1 && k is >= MinKernel and <= MaxKernel &&
               input.shape[0] > 0 && input.shape[2] > 0 && input.shape[3] > 0 && c > 0 && input.numel() < int.MaxValue &&
               (bias is null || bias.dtype == ScalarType.Float32 && bias.device_type == device && bias.device_index == input.device_index && bias.numel() == c);
    }

    /// <summary>y = depthwise_conv(x, w) + b with stride 1 and padding K/2; ours when it fits and is enabled, libtorch otherwise.</summary>
    public static Tensor Forward(Tensor input, Tensor weight, Tensor? bias = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        // With gradients to track, calls go through the autograd function; without, its bookkeeping is skipped.
        bool tracked = is_grad_enabled() && (input.requires_grad || weight.requires_grad || bias?.requires_grad == true);
        if (CurrentBackend == DepthwiseBackend.Ours && input.device_type == DeviceType.CUDA)
        {
            // CUDA: our forward kernel; with gradients to track, our backward kernels only when opted in
            // (REPLKNET_CUDA_BACKWARD=1: they are verified by compile checks and CPU emulation, not yet on a GPU), else libtorch.
            if (Cuda.CudaDepthwise.Fits(input, weight, bias))
            {
                if (!tracked)
                {
                    return Cuda.CudaDepthwise.Forward(input, weight, bias);
                }

                if (Cuda.CudaDepthwise.BackwardEnabled && Cuda.CudaDepthwise.WeightGradFits(input, (int)weight.shape[2]))
                {
                    return Apply(input, weight, bias);
                }
            }
        }
        else if (CurrentBackend == DepthwiseBackend.Ours && Fits(input, weight, bias))
        {
            return tracked ? Apply(input, weight, bias) : CpuForward(input, weight, bias);
        }

        return Libtorch(input, weight, bias);
    }

    private static Tensor Apply(Tensor input, Tensor weight, Tensor? bias) =>
        bias is null ? DepthwiseConvFunction.apply(input, weight) : DepthwiseConvFunction.apply(input, weight, bias);

    /// <summary>libtorch's depthwise "same" convolution.</summary>
    internal static Tensor Libtorch(Tensor x, Tensor w, Tensor? b)
    {
        long k = w.shape[2];
        return nn.functional.conv2d(x, w, b, padding: [k / 2, k / 2], groups: w.shape[0]);
    }

    internal static int ThreadCount => Threads > 0 ? Threads : Math.Max(1, torch.get_num_threads());

    /// <summary>
    /// Maps of at most 8×8 with K ≤ 13 (pad ≤ 6: oneDNN's direct depthwise path): libtorch's forward and input gradient
    /// are 3–10× faster than ours there (measured at batch 128 on 7×7/K=13, 4×4/K=9, 2×2/K=5 — RepLKNet-FMNIST's stages:
    /// our kernels pay per-plane setup and padded taps that dominate such maps), while our weight gradient stays 4–9×
    /// faster than libtorch's. So those two passes use libtorch for such maps, inside the same autograd function; the
    /// raw kernels below stay ours on every map (the instruction-set checks call them directly).
    /// </summary>
    internal static bool TinyMapForLibtorch(long h, long w, long k) => h <= 8 && w <= 8 && k <= 13;

    /// <summary>The CPU forward the dispatch uses: libtorch's on tiny maps, ours otherwise.</summary>
    internal static Tensor CpuForward(Tensor x, Tensor w, Tensor? b) =>
        TinyMapForLibtorch(x.shape[2], x.shape[3], w.shape[2]) ? Libtorch(x, w, b) : ForwardRaw(x, w, b);

    /// <summary>The CPU input gradient the dispatch uses: libtorch's on tiny maps, ours otherwise.</summary>
    internal static Tensor CpuInputGrad(Tensor gradOutput, Tensor w)
    {
        if (!TinyMapForLibtorch(gradOutput.shape[2], gradOutput.shape[3], w.shape[2]))
        {
            return InputGradRaw(gradOutput, w);
        }

        // The transpose of a "same" depthwise convolution is the same convolution with the filter rotated by 180°.
        using var flipped = w.flip(2, 3);
        return Libtorch(gradOutput, flipped, null);
    }

    /// <summary>Our forward on contiguous CPU tensors (no autograd).</summary>
    internal static unsafe Tensor ForwardRaw(Tensor x, Tensor w, Tensor? b)
    {
        using var xc = x.contiguous();
        using var wc = w.contiguous();
        using var bc = b?.contiguous();
        var (n, c, h, wd) = Dims(xc);
        var y = empty(xc.shape, dtype: float32);
        fixed (byte* px = xc.bytes, pw = wc.bytes, py = y.bytes)
        {
            float* pb = null;
            if (bc is not null)
            {
                fixed (byte* pbb = bc.bytes)
                {
                    DepthwiseConvCpu.Forward((float*)px, (float*)pw, (float*)pbb, (float*)py, n, c, h, wd, (int)w.shape[2], Isa, ThreadCount);
                    return y;
                }
            }

            DepthwiseConvCpu.Forward((float*)px, (float*)pw, pb, (float*)py, n, c, h, wd, (int)w.shape[2], Isa, ThreadCount);
        }

        return y;
    }

    /// <summary>Our input gradient (no autograd).</summary>
    internal static unsafe Tensor InputGradRaw(Tensor gradOutput, Tensor w)
    {
        using var gc = gradOutput.contiguous();
        using var wc = w.contiguous();
        var (n, c, h, wd) = Dims(gc);
        var dx = empty(gc.shape, dtype: float32);
        fixed (byte* pg = gc.bytes, pw = wc.bytes, pdx = dx.bytes)
        {
            DepthwiseConvCpu.InputGrad((float*)pg, (float*)pw, (float*)pdx, n, c, h, wd, (int)w.shape[2], Isa, ThreadCount);
        }

        return dx;
    }

    /// <summary>Our weight gradient (no autograd).</summary>
    internal static unsafe Tensor WeightGradRaw(Tensor x, Tensor gradOutput, long k)
    {
        using var xc = x.contiguous();
        using var gc = gradOutput.contiguous();
        var (n, c, h, wd) = Dims(xc);
        var dw = empty([c, 1, k, k], dtype: float32);
        fixed (byte* px = xc.bytes, pg = gc.bytes, pdw = dw.bytes)
        {
            DepthwiseConvCpu.WeightGrad((float*)px, (float*)pg, (float*)pdw, n, c, h, wd, (int)k, Isa, ThreadCount);
        }

        return dw;
    }

    /// <summary>
    /// Frees the gradient wrappers our autograd function keeps reachable for libtorch until it has copied them (see
    /// docs/runtime.md, "Object lifetimes"). Call after <c>backward()</c> returns; without it each thread that ran a
    /// backward keeps its last call's gradients until its next one (on CUDA: libtorch's device threads, i.e. GPU memory).
    /// </summary>
    public static void ReleaseBackwardOutputs() => DepthwiseConvFunction.ReleaseAll();

    private static (int N, int C, int H, int W) Dims(Tensor t) => ((int)t.shape[0], (int)t.shape[1], (int)t.shape[2], (int)t.shape[3]);

    private sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }
}

/// <summary>The autograd function behind <see cref="DepthwiseConv2d.Forward"/>: forward and both gradients on our kernels.</summary>
internal sealed class DepthwiseConvFunction : torch.autograd.SingleTensorFunction<DepthwiseConvFunction>
{
    public override string Name => "ReplknetDepthwiseConv2d";

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var w = (Tensor)vars[1];
        var b = vars.Length > 2 ? (Tensor)vars[2] : null;
        ctx.save_for_backward([x, w]);
        ctx.save_data("has_bias", b is not null);
        using var noGrad = no_grad();
        return x.device_type == DeviceType.CUDA ? Cuda.CudaDepthwise.Forward(x, w, b) : DepthwiseConv2d.CpuForward(x, w, b);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad)
    {
        // Lifetimes (docs/runtime.md, "Object lifetimes"). On the CPU, libtorch runs this on the thread that called
        // backward(), inside the training step's dispose scope; on CUDA it runs on libtorch's device threads, where no scope
        // exists. Either way: this scope owns every temporary made here, the inputs stay reachable to the end, and the
        // gradients we hand back stay reachable until libtorch has copied them (it does so as soon as this returns).
        using var scope = NewDisposeScope();
        var saved = ctx.get_saved_variables();
        var x = saved[0];
        var w = saved[1];
        bool hasBias = (bool)ctx.get_data("has_bias");
        using var noGrad = no_grad();
        Tensor? dx, dw;
        if (x.device_type == DeviceType.CUDA)
        {
            int k = (int)w.shape[2];
            dx = x.requires_grad ? Cuda.CudaDepthwise.InputGrad(grad, w) : null;
            dw = w.requires_grad
                ? Cuda.CudaDepthwise.WeightGrad(x, grad, k) ?? throw new InvalidOperationException($"no weight-gradient tile fits a {x.shape[2]}×{x.shape[3]} map with K={k}")
                : null;
        }
        else
        {
            dx = x.requires_grad ? DepthwiseConv2d.CpuInputGrad(grad, w) : null;
            dw = w.requires_grad ? DepthwiseConv2d.WeightGradRaw(x, grad, w.shape[2]) : null;
        }

        var result = new List<Tensor> { dx!, dw! };
        if (hasBias)
        {
            result.Add(grad.sum([0, 2, 3]));
        }

        foreach (var t in result)
        {
            t?.MoveToOuterDisposeScope();
        }

        HandBack(result);
        GC.KeepAlive(grad);
        return result;
    }

    private static readonly System.Threading.Lock HeldGate = new();
    private static readonly Dictionary<int, List<Tensor>> Held = [];

    /// <summary>
    /// Keeps this call's gradients reachable after it returns: libtorch copies them right after, and only then may our
    /// wrappers go (on a thread without a dispose scope the GC could otherwise free one in between). Released at this
    /// thread's next call, or all at once by <see cref="DepthwiseConv2d.ReleaseBackwardOutputs"/> once backward() returned.
    /// </summary>
    private static void HandBack(List<Tensor> gradients)
    {
        List<Tensor>? previous;
        lock (HeldGate)
        {
            int thread = Environment.CurrentManagedThreadId;
            Held.TryGetValue(thread, out previous);
            Held[thread] = gradients;
        }

        Dispose(previous);
    }

    /// <summary>Releases every held gradient (call after backward() has returned: libtorch has copied them all).</summary>
    internal static void ReleaseAll()
    {
        List<List<Tensor>> all;
        lock (HeldGate)
        {
            all = [.. Held.Values];
            Held.Clear();
        }

        foreach (var list in all)
        {
            Dispose(list);
        }
    }

    private static void Dispose(List<Tensor>? tensors)
    {
        if (tensors is not null)
        {
            foreach (var t in tensors)
            {
                t?.Dispose();
            }
        }
    }
}
