using RepLKNet.Layers;
using TorchSharp.Modules;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Models;

/// <summary>
/// The RepLK block: <c>x + drop_path(pw2(relu(large_kernel(pw1(prelkb_bn(x))))))</c>. Children are registered in the
/// official order (pw1, pw2, large_kernel, lk_nonlinear, prelkb_bn, drop_path), which is the state_dict order and
/// differs from the execution order.
/// </summary>
public sealed class RepLKBlock : Module<Tensor, Tensor>
{
    private readonly ConvBn pw1;
    private readonly ConvBn pw2;
    private readonly ReparamLargeKernelConv large_kernel;
    private readonly ReLU lk_nonlinear;
    private readonly BatchNorm2d prelkb_bn;
    private readonly Module<Tensor, Tensor> drop_path;

    /// <summary>Creates the block for C channels, depthwise width D, kernel K, small kernel s and drop-path rate p.</summary>
    public RepLKBlock(long channels, long dwChannels, int kernelSize, int? smallKernel, double dropPath, bool deploy, Device? device = null)
        : base(nameof(RepLKBlock))
    {
        pw1 = new ConvBn(channels, dwChannels, 1, 1, 0, 1, relu: true, device);
        pw2 = new ConvBn(dwChannels, channels, 1, 1, 0, 1, relu: false, device);
        large_kernel = new ReparamLargeKernelConv(dwChannels, kernelSize, smallKernel, deploy, device);
        lk_nonlinear = ReLU();
        prelkb_bn = new BatchNorm2d(channels, device: device);
        drop_path = DropPath.OrIdentity(dropPath);
        RegisterComponents();
    }

    /// <summary>The large-kernel module.</summary>
    public ReparamLargeKernelConv LargeKernel => large_kernel;

    internal BatchNorm2d PreBn => prelkb_bn;

    internal ConvBn Pw1 => pw1;

    internal ConvBn Pw2 => pw2;

    /// <inheritdoc />
    /// <remarks>
    /// Without autograd (<c>no_grad</c>, inference mode) the activation and the residual sum run in place on this
    /// block's own intermediates (bit-identical; the input is never written): the activation child is then not called,
    /// so a forward hook on it does not fire, and a hook that kept the output of <c>large_kernel</c>/<c>pw1</c> or
    /// <c>pw2</c> sees it changed.
    /// </remarks>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        // Without autograd every intermediate here is ours alone: the activation and the residual sum run in place (no
        // new buffer, one pass over memory instead of two; bit-identical results).
        bool inPlace = !is_grad_enabled();
        var y = prelkb_bn.call(input);
        y = pw1.call(y);
        y = large_kernel.call(y);
        y = inPlace ? y.relu_() : lk_nonlinear.call(y);
        y = drop_path.call(pw2.call(y));
        return (inPlace ? Scalars.AddInPlace(y, input) : Scalars.Add(input, y)).MoveToOuterDisposeScope();
    }
}

/// <summary>The ConvFFN: <c>x + drop_path(pw2(gelu(pw1(preffn_bn(x)))))</c> with exact (erf) GELU and no activation in pw1.</summary>
public sealed class ConvFFN : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> drop_path;
    private readonly BatchNorm2d preffn_bn;
    private readonly ConvBn pw1;
    private readonly ConvBn pw2;
    private readonly GELU nonlinear;

    /// <summary>Creates the FFN C → F → C with drop-path rate p.</summary>
    public ConvFFN(long channels, long internalChannels, double dropPath, Device? device = null)
        : base(nameof(ConvFFN))
    {
        drop_path = DropPath.OrIdentity(dropPath);
        preffn_bn = new BatchNorm2d(channels, device: device);
        pw1 = new ConvBn(channels, internalChannels, 1, 1, 0, 1, relu: false, device);
        pw2 = new ConvBn(internalChannels, channels, 1, 1, 0, 1, relu: false, device);
        nonlinear = GELU();
        RegisterComponents();
    }

    internal BatchNorm2d PreBn => preffn_bn;

    internal ConvBn Pw1 => pw1;

    internal ConvBn Pw2 => pw2;

    /// <inheritdoc />
    /// <remarks>
    /// Without autograd (<c>no_grad</c>, inference mode) the activation and the residual sum run in place on this
    /// block's own intermediates (bit-identical; the input is never written): the activation child is then not called,
    /// so a forward hook on it does not fire, and a hook that kept the output of <c>pw1</c> or <c>pw2</c> sees it
    /// changed.
    /// </remarks>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        bool inPlace = !is_grad_enabled(); // as in the RepLK block
        var y = preffn_bn.call(input);
        y = pw1.call(y);
        y = inPlace ? y.gelu_() : nonlinear.call(y);
        y = drop_path.call(pw2.call(y));
        return (inPlace ? Scalars.AddInPlace(y, input) : Scalars.Add(input, y)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A stage: <c>blocks</c> alternates RepLKBlock (even indices) and ConvFFN (odd), one pair per layer with the pair's
/// drop-path rate; <c>norm</c> is a BN with norm_intermediate_features, else Identity (used on returned features only).
/// </summary>
public sealed class RepLKNetStage : Module<Tensor, Tensor>
{
    private readonly ModuleList<Module<Tensor, Tensor>> blocks;
    private readonly Module<Tensor, Tensor> norm;

    /// <summary>Creates stage <paramref name="index"/> of <paramref name="config"/> with its slice of drop-path rates.</summary>
    public RepLKNetStage(RepLKNetConfig config, int index, IReadOnlyList<double> dropPaths, bool deploy, Device? device = null)
        : base(nameof(RepLKNetStage))
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(dropPaths);
        long c = config.Channels[index];
        blocks = new ModuleList<Module<Tensor, Tensor>>();
        for (int j = 0; j < config.Layers[index]; j++)
        {
            blocks.Add(new RepLKBlock(c, config.DwChannels(index), config.LargeKernelSizes[index], config.SmallKernel, dropPaths[j], deploy, device));
            blocks.Add(new ConvFFN(c, config.FfnChannels(index), dropPaths[j], device));
        }

        norm = config.NormIntermediateFeatures ? new BatchNorm2d(c, device: device) : Identity();
        RegisterComponents();
    }

    /// <summary>The blocks, in order.</summary>
    public IReadOnlyList<Module<Tensor, Tensor>> Blocks => [.. blocks];

    /// <summary>The feature norm (Identity unless norm_intermediate_features).</summary>
    public Module<Tensor, Tensor> Norm => norm;

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = input;
        foreach (var block in blocks)
        {
            x = block.call(x);
        }

        return x.MoveToOuterDisposeScope();
    }
}
