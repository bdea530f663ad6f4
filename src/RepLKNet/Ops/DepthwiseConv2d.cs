using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;
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
/// float32, any N, C, H, W ≥ 1, optional bias. It decides once per call (<see cref="Select"/>) between our kernels for the
/// input's device and libtorch: CPU inputs that fit run on our SIMD kernels (<see cref="CpuDepthwise"/>) with gradients
/// for input, weight and bias through a TorchSharp autograd function; CUDA inputs that fit run on our NVRTC kernels
/// (<see cref="Cuda.CudaDepthwise"/>: forward when no gradient is tracked, backward too when opted in); everything else
/// goes to <c>torch.nn.functional.conv2d</c>.
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

    /// <summary>
    /// Worker threads for our CPU kernels; 0 means libtorch's <c>get_num_threads()</c>. The same setting as
    /// <see cref="TorchRuntime.KernelThreads"/> (which <see cref="TorchRuntime.SetThreads"/> sets with libtorch's).
    /// </summary>
    public static int Threads
    {
        get => TorchRuntime.KernelThreads;
        set => TorchRuntime.KernelThreads = value;
    }

    /// <summary>The implementation in effect on this async flow.</summary>
    public static DepthwiseBackend CurrentBackend => ScopedBackend.Value ?? DefaultBackend;

    /// <summary>Uses <paramref name="impl"/> on this async flow until the returned scope is disposed (benchmarks, tests).</summary>
    public static IDisposable Use(DepthwiseBackend impl)
    {
        var previous = ScopedBackend.Value;
        ScopedBackend.Value = impl;
        return new Restore(() => ScopedBackend.Value = previous);
    }

    /// <summary>
    /// Whether a convolution with these settings is a depthwise "same" convolution of this contract: groups = in = out
    /// channels, square odd kernel, stride 1, dilation 1, padding K/2 (the kernel-size range and dtype are not checked here).
    /// </summary>
    public static bool IsDepthwiseSame(long inChannels, long outChannels, long groups, long kernelH, long kernelW, long stride, long padding, long dilation) =>
        inChannels == outChannels && groups == inChannels && kernelH == kernelW && kernelH % 2 == 1 &&
        stride == 1 && dilation == 1 && padding == kernelH / 2;

    /// <summary>Whether the call fits the contract on the CPU (4-D float32 input, (C, 1, K, K) filter with odd K in [3, 63], bias of C values, all on the CPU); else it goes to libtorch.</summary>
    /// <param name="input">Input (N, C, H, W).</param>
    /// <param name="weight">Filter (C, 1, K, K).</param>
    /// <param name="bias">Bias (C), or null.</param>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="weight"/> is null.</exception>
    public static bool Fits(Tensor input, Tensor weight, Tensor? bias) => CpuDepthwise.Fits(input, weight, bias);

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

        // Each .shape is a native call and an array: read once (this runs on every call, tiny maps included).
        long[] xs = TensorSizes.Of(input), ws = TensorSizes.Of(weight);
        long c = xs[1], k = ws[2];
        return ws[0] == c && ws[1] == 1 && ws[3] == k && k % 2 == 1 && k is >= MinKernel and <= MaxKernel &&
               xs[0] > 0 && xs[2] > 0 && xs[3] > 0 && c > 0 && xs[0] * c * xs[2] * xs[3] < int.MaxValue &&
               (bias is null || bias.dtype == ScalarType.Float32 && bias.device_type == device && bias.device_index == input.device_index && bias.numel() == c);
    }

    /// <summary>
    /// y = depthwise_conv(x, w) + b with stride 1 and padding K/2: on our kernels when <see cref="Select"/> picks them,
    /// libtorch's <c>conv2d</c> otherwise. With gradients to track, our kernels run through an autograd function whose
    /// backward uses the same kernels; without, its bookkeeping is skipped.
    /// </summary>
    /// <param name="input">Input (N, C, H, W).</param>
    /// <param name="weight">Filter (C, 1, K, K).</param>
    /// <param name="bias">Bias (C), or null.</param>
    /// <returns>(N, C, H, W): the same shape as <paramref name="input"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="weight"/> is null.</exception>
    public static Tensor Forward(Tensor input, Tensor weight, Tensor? bias = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        bool tracked = is_grad_enabled() && (input.requires_grad || weight.requires_grad || bias?.requires_grad == true);
        var kernels = Select(input, weight, bias, tracked);
        if (kernels is null)
        {
            return Libtorch(input, weight, bias);
        }

        return tracked ? DepthwiseConvFunction.Apply(kernels, input, weight, bias) : kernels.Forward(input, weight, bias);
    }

    /// <summary>
    /// The one decision per call: our kernels for the input's device type when <see cref="CurrentBackend"/> is
    /// <see cref="DepthwiseBackend.Ours"/> and they take the call (the contract on that device; for a
    /// <paramref name="tracked"/> call, their backward too), else null: libtorch runs it, forward and backward.
    /// </summary>
    internal static IDepthwiseKernels? Select(Tensor input, Tensor weight, Tensor? bias, bool tracked)
    {
        var kernels = input.device_type switch
        {
            DeviceType.CPU => CpuDepthwise.Kernels,
            DeviceType.CUDA => Cuda.CudaDepthwise.Kernels,
            _ => null,
        };
        return CurrentBackend == DepthwiseBackend.Ours && kernels?.Takes(input, weight, bias, tracked) == true ? kernels : null;
    }

    /// <summary>libtorch's depthwise "same" convolution.</summary>
    internal static Tensor Libtorch(Tensor x, Tensor w, Tensor? b)
    {
        long[] ws = TensorSizes.Of(w);
        return nn.functional.conv2d(x, w, b, padding: [ws[2] / 2, ws[2] / 2], groups: ws[0]);
    }

    /// <summary>Worker threads our CPU kernels run on: <see cref="Threads"/>, or libtorch's <c>get_num_threads()</c> when 0.</summary>
    /// <remarks>1 inside a part of a batch split (<see cref="Runtime.BatchSplit"/>): each part's ops run on its own thread.</remarks>
    internal static int ThreadCount => Runtime.BatchSplit.Current is not null ? 1 : Threads > 0 ? Threads : Math.Max(1, torch.get_num_threads());

    /// <summary>
    /// Frees the gradient wrappers our autograd function keeps reachable for libtorch until it has copied them (see
    /// docs/runtime.md, "Object lifetimes"). Call after <c>backward()</c> returns; without it each thread that ran a
    /// backward keeps its last call's gradients until its next one (on CUDA: libtorch's device threads, i.e. GPU memory).
    /// </summary>
    public static void ReleaseBackwardOutputs() => Runtime.BackwardOutputs.ReleaseAll();

    private sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }
}

/// <summary>
/// The autograd function behind <see cref="DepthwiseConv2d.Forward"/>: forward and both gradients on the kernels the
/// dispatcher picked for the call (passed in, kept in the context for backward).
/// </summary>
internal sealed class DepthwiseConvFunction : torch.autograd.SingleTensorFunction<DepthwiseConvFunction>
{
    private const string KernelsKey = "kernels";
    private const string HasBiasKey = "has_bias";

    public override string Name => "ReplknetDepthwiseConv2d";

    /// <summary>y = depthwise_conv(x, w) + b on <paramref name="kernels"/>, recorded for backward on the same kernels.</summary>
    public static Tensor Apply(IDepthwiseKernels kernels, Tensor x, Tensor w, Tensor? b) =>
        b is null ? apply(kernels, x, w) : apply(kernels, x, w, b);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var kernels = (IDepthwiseKernels)vars[0];
        var x = (Tensor)vars[1];
        var w = (Tensor)vars[2];
        var b = vars.Length > 3 ? (Tensor)vars[3] : null;
        ctx.save_for_backward([x, w]);
        ctx.save_data(KernelsKey, kernels);
        ctx.save_data(HasBiasKey, b is not null);
        using var noGrad = no_grad();
        return kernels.Forward(x, w, b);
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
        var kernels = (IDepthwiseKernels)ctx.get_data(KernelsKey);
        bool hasBias = (bool)ctx.get_data(HasBiasKey);
        using var noGrad = no_grad();
        var dx = x.requires_grad ? kernels.InputGrad(grad, w) : null;
        var dw = w.requires_grad ? kernels.WeightGrad(x, grad, (int)w.size(2)) : null;
        // One entry per forward argument: none for the kernels (not a tensor), then x, w and b.
        var result = new List<Tensor> { null!, dx!, dw! };
        if (hasBias)
        {
            result.Add(grad.sum([0, 2, 3]));
        }

        Runtime.BackwardOutputs.HandBack(result);
        GC.KeepAlive(grad);
        return result;
    }
}
