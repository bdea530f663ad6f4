using RepLKNet.Ops;
using RepLKNet.Reparam;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Layers;

/// <summary>
/// The official <c>conv_bn</c> / <c>conv_bn_relu</c>: children <c>conv</c> (no bias), <c>bn</c> and optionally
/// <c>nonlinear</c> (ReLU, no keys). After <see cref="FuseBn"/> it is a single biased <c>conv</c> (keys <c>conv.weight</c>,
/// <c>conv.bias</c>), as the official <c>deep_fuse_BN</c> leaves it.
/// </summary>
public sealed class ConvBn : Module<Tensor, Tensor>, IBatchNormFoldable
{
    // Field names are the state_dict keys; they are reassigned when the BN is fused.
    private Conv2d conv;
    private BatchNorm2d? bn;
    private readonly ReLU? nonlinear;

    // Depthwise stride-1 "same" convs run on the project's depthwise op (ours on CPU); the rest on libtorch's conv through
    // DenseConv2d (odd channel counts padded).
    private readonly bool _depthwiseSame;

    /// <summary>Creates conv(k×k, stride, padding, groups, no bias) → BN(out) [→ ReLU].</summary>
    /// <param name="inChannels">Input channels.</param>
    /// <param name="outChannels">Output channels.</param>
    /// <param name="kernelSize">Square kernel size k, in pixels.</param>
    /// <param name="stride">Stride, in pixels.</param>
    /// <param name="padding">Zero padding on each side, in pixels.</param>
    /// <param name="groups">Convolution groups (= channels for a depthwise conv).</param>
    /// <param name="relu">Append a ReLU (conv_bn_relu).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    public ConvBn(long inChannels, long outChannels, long kernelSize, long stride, long padding, long groups, bool relu, Device? device = null)
        : base(relu ? "conv_bn_relu" : "conv_bn")
    {
        conv = Conv2d(inChannels, outChannels, kernelSize, stride: stride, padding: padding, groups: groups, bias: false, device: device);
        bn = new BatchNorm2d(outChannels, device: device);
        nonlinear = relu ? ReLU() : null;
        _depthwiseSame = DepthwiseConv2d.IsDepthwiseSame(inChannels, outChannels, groups, kernelSize, kernelSize, stride, padding, 1) && kernelSize > 1;
        RegisterComponents();
    }

    /// <summary>The convolution (biased once the BN has been fused).</summary>
    public Conv2d Conv => conv;

    /// <summary>The BatchNorm, or null once fused.</summary>
    public BatchNorm2d? Bn => bn;

    /// <inheritdoc />
    public bool IsFused => bn is null;

    /// <summary>Whether a ReLU follows (conv_bn_relu).</summary>
    public bool HasRelu => nonlinear is not null;

    /// <summary>
    /// Runs conv → BN (unless fused) → ReLU (if any); a depthwise stride-1 "same" conv runs on
    /// <see cref="DepthwiseConv2d.Forward"/>, every other conv on <see cref="DenseConv2d.Forward"/> with the <c>conv</c>
    /// child's weights (so hooks on the <c>conv</c> child itself do not fire; hooks on this module do).
    /// </summary>
    /// <remarks>
    /// Without autograd (<c>no_grad</c>, inference mode) the ReLU runs in place on the conv/BN output (bit-identical): the
    /// <c>nonlinear</c> child is then not called, so a forward hook on it does not fire, and a hook that kept the
    /// <c>conv</c> or <c>bn</c> output sees it rectified.
    /// </remarks>
    /// <param name="input">[N, inChannels, H, W].</param>
    /// <returns>[N, outChannels, ⌊(H + 2·padding − k)/stride⌋ + 1, ⌊(W + 2·padding − k)/stride⌋ + 1].</returns>
    public override Tensor forward(Tensor input)
    {
        // Dense convs go through DenseConv2d: libtorch 2.10's oneDNN kernels are wrong for odd channel counts (docs/runtime.md).
        var x = _depthwiseSame ? DepthwiseConv2d.Forward(input, conv.weight!, conv.bias)
            : DenseConv2d.Forward(input, conv.weight!, conv.bias, conv.stride, conv.padding!, conv.dilation, conv.groups);
        if (bn is not null && nonlinear is not null && bn.SyncGroup is not { IsDistributed: true })
        {
            // BN + ReLU: fused into one pass where our training kernels run (BatchNorm2d.ForwardRelu).
            return bn.ForwardRelu(x);
        }

        if (bn is not null)
        {
            x = bn.call(x);
        }

        // Without autograd the conv/BN output is ours alone: its ReLU runs in place (bit-identical, no new buffer).
        return nonlinear is null ? x : !is_grad_enabled() ? x.relu_() : nonlinear.call(x);
    }

    /// <summary>The (kernel, bias) of one conv equivalent to this conv + BN in eval mode.</summary>
    public (Tensor Kernel, Tensor Bias) EquivalentKernelBias()
    {
        if (bn is null)
        {
            using var noGrad = no_grad();
            return (conv.weight!.detach().clone(), conv.bias!.detach().clone());
        }

        return BnFusion.Fuse(conv.weight!, bn.weight!, bn.bias!, bn.running_mean!, bn.running_var!, bn.eps);
    }

    /// <summary>Folds the BN into a new biased conv in place (the optional deep-fuse step). No-op when already fused.</summary>
    public void FuseBn()
    {
        if (bn is null)
        {
            return;
        }

        var (kernel, bias) = EquivalentKernelBias();
        var fused = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride: conv.stride[0],
            padding: conv.padding![0], groups: conv.groups, bias: true, device: kernel.device);
        using (no_grad())
        {
            fused.weight!.copy_(kernel);
            fused.bias!.copy_(bias);
        }

        kernel.Dispose();
        bias.Dispose();
        conv = fused;
        _internal_submodules["conv"] = fused;
        _internal_submodules.Remove("bn");
        bn = null;
    }
}
