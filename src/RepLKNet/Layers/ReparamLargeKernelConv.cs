using RepLKNet.Ops;
using RepLKNet.Reparam;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Layers;

/// <summary>
/// The large depthwise kernel of a RepLK block (the official <c>ReparamLargeKernelConv</c>).
/// Training form: <c>lkb_origin</c> = conv_bn(K×K) plus, when a small kernel is configured, <c>small_conv</c> = conv_bn(s×s),
/// outputs summed. Deploy form: one biased K×K conv <c>lkb_reparam</c> with padding K//2 and identical outputs.
/// </summary>
public sealed class ReparamLargeKernelConv : Module<Tensor, Tensor>, IReparameterizable
{
    private ConvBn? lkb_origin;
    private ConvBn? small_conv;
    private Conv2d? lkb_reparam;

    /// <summary>Creates the module (depthwise: in = out = groups = <paramref name="channels"/>).</summary>
    /// <param name="channels">Channels D.</param>
    /// <param name="kernelSize">Large kernel K (odd).</param>
    /// <param name="smallKernel">Small kernel s (odd, ≤ K), or null for none.</param>
    /// <param name="deploy">Build the deploy form directly (the official <c>small_kernel_merged=True</c>).</param>
    /// <param name="device">Where to allocate.</param>
    /// <param name="stride">Stride of both branches (1 in RepLKNet; MobileNetV2's down-sampling blocks use 2). Both pad by
    /// half their kernel, so the small kernel stays centred in the large one and the merge holds at any stride.</param>
    public ReparamLargeKernelConv(long channels, int kernelSize, int? smallKernel, bool deploy, Device? device = null, int stride = 1)
        : base(nameof(ReparamLargeKernelConv))
    {
        if (kernelSize % 2 == 0 || smallKernel is int s && (s > kernelSize || s % 2 == 0))
        {
            throw new ArgumentException($"kernel {kernelSize} and small kernel {smallKernel} must be odd with small ≤ large");
        }

        if (stride < 1)
        {
            throw new ArgumentException($"stride must be ≥ 1, got {stride}");
        }

        Stride = stride;

        Channels = channels;
        KernelSize = kernelSize;
        SmallKernel = smallKernel;
        if (deploy)
        {
            lkb_reparam = DeployConv(channels, kernelSize, stride, device);
        }
        else
        {
            lkb_origin = new ConvBn(channels, channels, kernelSize, stride, kernelSize / 2, channels, relu: false, device);
            if (smallKernel is int small)
            {
                small_conv = new ConvBn(channels, channels, small, stride, small / 2, channels, relu: false, device);
            }
        }

        RegisterComponents();
    }

    /// <summary>Channels D.</summary>
    public long Channels { get; }

    /// <summary>Large kernel size K.</summary>
    public int KernelSize { get; }

    /// <summary>Stride.</summary>
    public int Stride { get; }

    /// <summary>Small kernel size, or null.</summary>
    public int? SmallKernel { get; }

    /// <inheritdoc />
    public bool IsDeploy => lkb_reparam is not null;

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        if (lkb_reparam is not null)
        {
            return Stride == 1 ? DepthwiseConv2d.Forward(input, lkb_reparam.weight!, lkb_reparam.bias) : lkb_reparam.call(input);
        }

        var output = lkb_origin!.call(input);
        return small_conv is null ? output : Scalars.AddInPlace(output, small_conv.call(input));
    }

    /// <summary>
    /// The official <c>get_equivalent_kernel_bias</c>: BN folded into each branch, the small kernel zero-padded by
    /// (K−s)/2 on every side and added, biases summed.
    /// </summary>
    public (Tensor Kernel, Tensor Bias) EquivalentKernelBias()
    {
        if (lkb_reparam is not null)
        {
            using var noGrad = no_grad();
            return (lkb_reparam.weight!.detach().clone(), lkb_reparam.bias!.detach().clone());
        }

        var (kernel, bias) = lkb_origin!.EquivalentKernelBias();
        if (small_conv is null)
        {
            return (kernel, bias);
        }

        using var scope = NewDisposeScope();
        var (smallKernel, smallBias) = small_conv.EquivalentKernelBias();
        long pad = (KernelSize - SmallKernel!.Value) / 2;
        var total = Scalars.Add(kernel, nn.functional.pad(smallKernel, [pad, pad, pad, pad]));
        var totalBias = Scalars.Add(bias, smallBias);
        kernel.Dispose();
        bias.Dispose();
        return (total.MoveToOuterDisposeScope(), totalBias.MoveToOuterDisposeScope());
    }

    /// <inheritdoc />
    public void SwitchToDeploy()
    {
        if (lkb_reparam is not null)
        {
            return;
        }

        var (kernel, bias) = EquivalentKernelBias();
        var merged = DeployConv(Channels, KernelSize, Stride, kernel.device);
        using (no_grad())
        {
            merged.weight!.copy_(kernel);
            merged.bias!.copy_(bias);
        }

        kernel.Dispose();
        bias.Dispose();
        foreach (var name in new[] { "lkb_origin", "small_conv" })
        {
#pragma warning disable CA1853 // TorchSharp's OrderedDict.Remove throws on a missing key, unlike Dictionary's.
            if (_internal_submodules.ContainsKey(name))
            {
                _internal_submodules.Remove(name);
            }
#pragma warning restore CA1853
        }
        lkb_origin?.Dispose();
        small_conv?.Dispose();
        lkb_origin = null;
        small_conv = null;
        lkb_reparam = merged;
        register_module("lkb_reparam", merged);
    }

    // Padding is set explicitly to K//2 (the official merge_kernel loses it when the CUTLASS conv is active, issue #48).
    private static Conv2d DeployConv(long channels, int kernelSize, int stride, Device? device) =>
        Conv2d(channels, channels, kernelSize, stride: stride, padding: kernelSize / 2, groups: channels, bias: true, device: device);
}
