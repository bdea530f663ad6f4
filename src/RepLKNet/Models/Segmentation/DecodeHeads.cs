using RepLKNet.Layers;
using RepLKNet.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Models.Segmentation;

/// <summary>MMSeg's <c>mmseg.ops.resize</c>: bilinear <c>F.interpolate</c> to a size with the head's <c>align_corners</c>.</summary>
public static class SegResize
{
    /// <summary>Resizes <paramref name="input"/> [N, C, h, w] to [N, C, <paramref name="height"/>, <paramref name="width"/>] bilinearly.</summary>
    /// <param name="input">A float map [N, C, h, w].</param>
    /// <param name="height">Output height in pixels (≥ 1).</param>
    /// <param name="width">Output width in pixels (≥ 1).</param>
    /// <param name="alignCorners">PyTorch's align_corners (false: half-pixel centres; true: corner pixels aligned).</param>
    /// <returns>The resized map; <paramref name="input"/> itself is returned unchanged when the size already matches
    /// (F.interpolate would return an equal copy).</returns>
    public static Tensor Bilinear(Tensor input, long height, long width, bool alignCorners)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        return functional.interpolate(input, size: [height, width], mode: InterpolationMode.Bilinear, align_corners: alignCorners);
    }
}

/// <summary>
/// What every MMSeg decode head has (<c>BaseDecodeHead</c>): <c>conv_seg</c> (1×1 conv with bias to the classes) after a
/// Dropout2d. Both are registered before the subclass's modules, so <c>conv_seg.*</c> comes first in the state dict.
/// </summary>
public abstract class DecodeHead : Module<IReadOnlyList<Tensor>, Tensor>
{
    // Field names are the state_dict keys (MMSeg's); registration follows declaration order.
    private readonly Conv2d conv_seg;
    private readonly Module<Tensor, Tensor>? dropout;

    /// <summary>Creates <c>conv_seg</c> and <c>dropout</c> for <paramref name="config"/>.</summary>
    private protected DecodeHead(string name, DecodeHeadConfig config, Device? device)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config;
        conv_seg = Conv2d(config.Channels, config.NumClasses, 1, device: device);
        dropout = config.DropoutRatio > 0 ? Dropout2d(config.DropoutRatio) : null;

        // Registered here, before the subclass's RegisterComponents (which does not see a base class's private fields).
        register_module("conv_seg", conv_seg);
        if (dropout is not null)
        {
            register_module("dropout", dropout);
        }
    }

    /// <summary>The head's configuration.</summary>
    public DecodeHeadConfig Config { get; }

    /// <summary><c>cls_seg</c>: Dropout2d (training only) then <c>conv_seg</c>.</summary>
    /// <param name="features">[N, channels, h, w].</param>
    /// <returns>Logits [N, num_classes, h, w].</returns>
    protected Tensor ClassifySegments(Tensor features)
    {
        ArgumentNullException.ThrowIfNull(features);
        using var scope = NewDisposeScope();
        var x = dropout is null ? features : dropout.call(features);
        return conv_seg.call(x).MoveToOuterDisposeScope();
    }

    /// <summary>The backbone outputs this head takes (<c>in_index</c>), checked against <c>in_channels</c>.</summary>
    protected IReadOnlyList<Tensor> Select(IReadOnlyList<Tensor> inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        var selected = new Tensor[Config.InIndex.Count];
        for (int i = 0; i < selected.Length; i++)
        {
            int index = Config.InIndex[i];
            if (index >= inputs.Count)
            {
                throw new ArgumentException($"inputs has {inputs.Count} maps; the head reads in_index {index}", nameof(inputs));
            }

            selected[i] = inputs[index];
            if (selected[i].dim() != 4 || selected[i].size(1) != Config.InChannels[i])
            {
                throw new ArgumentException($"inputs[{index}] has shape {TensorSizes.Text(selected[i])}; the head expects [N, {Config.InChannels[i]}, h, w]", nameof(inputs));
            }
        }

        return selected;
    }
}

/// <summary>
/// MMSeg's <c>UPerHead</c> (Xiao et al., Unified Perceptual Parsing, 2018): a pyramid pooling module on the last level,
/// lateral 1×1 and FPN 3×3 ConvModules on the others, a top-down bilinear merge, a 3×3 <c>fpn_bottleneck</c> over the
/// concatenated levels at the finest size, then <c>cls_seg</c>. Source: mmseg 0.x <c>decode_heads/uper_head.py</c>,
/// <c>psp_head.py</c> (PPM).
/// </summary>
public sealed class UPerHead : DecodeHead
{
    private readonly ModuleList<Sequential> psp_modules;
    private readonly ConvBn bottleneck;
    private readonly ModuleList<ConvBn> lateral_convs;
    private readonly ModuleList<ConvBn> fpn_convs;
    private readonly ConvBn fpn_bottleneck;

    /// <summary>Builds the head (train form: conv → BN → ReLU ConvModules).</summary>
    /// <param name="config">A <see cref="DecodeHeadConfig.UPerHead"/> configuration (already validated).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    public UPerHead(DecodeHeadConfig config, Device? device = null)
        : base("UPerHead", config, device)
    {
        int c = config.Channels;
        int last = config.InChannels[^1];
        psp_modules = new ModuleList<Sequential>();
        foreach (int scale in config.PoolScales)
        {
            psp_modules.Add(Sequential(("0", AdaptiveAvgPool2d(scale)), ("1", new ConvBn(last, c, 1, 1, 0, 1, relu: true, device))));
        }

        bottleneck = new ConvBn(last + config.PoolScales.Count * c, c, 3, 1, 1, 1, relu: true, device);
        lateral_convs = new ModuleList<ConvBn>();
        fpn_convs = new ModuleList<ConvBn>();
        foreach (int channels in config.InChannels.Take(config.InChannels.Count - 1))
        {
            lateral_convs.Add(new ConvBn(channels, c, 1, 1, 0, 1, relu: true, device));
            fpn_convs.Add(new ConvBn(c, c, 3, 1, 1, 1, relu: true, device));
        }

        fpn_bottleneck = new ConvBn(config.InChannels.Count * c, c, 3, 1, 1, 1, relu: true, device);
        RegisterComponents();
    }

    /// <summary>The pyramid pooling branches (<c>psp_modules.i</c> = AdaptiveAvgPool2d(s) → ConvModule 1×1).</summary>
    public IReadOnlyList<Sequential> PspModules => [.. psp_modules];

    /// <summary>The ConvModule over [last level, upsampled PPM branches].</summary>
    public ConvBn Bottleneck => bottleneck;

    /// <summary>The 1×1 lateral ConvModules (one per level but the last).</summary>
    public IReadOnlyList<ConvBn> LateralConvs => [.. lateral_convs];

    /// <summary>The 3×3 FPN ConvModules (one per level but the last).</summary>
    public IReadOnlyList<ConvBn> FpnConvs => [.. fpn_convs];

    /// <summary>The 3×3 ConvModule over the concatenated levels.</summary>
    public ConvBn FpnBottleneck => fpn_bottleneck;

    /// <summary>The fused features before <c>cls_seg</c> (mmseg's <c>_forward_feature</c>).</summary>
    /// <param name="inputs">The backbone's outputs; the head reads <c>in_index</c> of them ([N, in_channels[i], h_i, w_i]).</param>
    /// <returns>[N, channels, h_0, w_0] at the finest selected level's size.</returns>
    public Tensor ForwardFeature(IReadOnlyList<Tensor> inputs)
    {
        var x = Select(inputs);
        bool align = Config.AlignCorners;
        using var scope = NewDisposeScope();
        var top = x[^1];
        long h = top.size(2), w = top.size(3);
        var pyramid = new List<Tensor> { top };
        foreach (var branch in psp_modules)
        {
            pyramid.Add(SegResize.Bilinear(branch.call(top), h, w, align));
        }

        var laterals = new List<Tensor>();
        for (int i = 0; i < lateral_convs.Count; i++)
        {
            laterals.Add(lateral_convs[i].call(x[i]));
        }

        laterals.Add(bottleneck.call(cat(pyramid, 1)));
        for (int i = laterals.Count - 1; i > 0; i--)
        {
            var previous = laterals[i - 1];
            laterals[i - 1] = Scalars.Add(previous, SegResize.Bilinear(laterals[i], previous.size(2), previous.size(3), align));
        }

        var outs = new List<Tensor>();
        for (int i = 0; i < fpn_convs.Count; i++)
        {
            outs.Add(fpn_convs[i].call(laterals[i]));
        }

        outs.Add(laterals[^1]);
        long h0 = outs[0].size(2), w0 = outs[0].size(3);
        for (int i = outs.Count - 1; i > 0; i--)
        {
            outs[i] = SegResize.Bilinear(outs[i], h0, w0, align);
        }

        return fpn_bottleneck.call(cat(outs, 1)).MoveToOuterDisposeScope();
    }

    /// <summary>Logits at the finest selected level (stride 4 for RepLKNet).</summary>
    /// <param name="input">The backbone's outputs (see <see cref="ForwardFeature"/>).</param>
    /// <returns>[N, num_classes, h_0, w_0].</returns>
    public override Tensor forward(IReadOnlyList<Tensor> input)
    {
        using var scope = NewDisposeScope();
        return ClassifySegments(ForwardFeature(input)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// MMSeg's <c>FCNHead</c> (Long et al., 2015) as the official configs use it for the auxiliary loss: <c>num_convs</c>
/// ConvModules (k×k, padding k/2) on one backbone level, no input concatenation, then <c>cls_seg</c>. Source: mmseg 0.x
/// <c>decode_heads/fcn_head.py</c>.
/// </summary>
public sealed class FCNHead : DecodeHead
{
    private readonly Sequential convs;

    /// <summary>Builds the head.</summary>
    /// <param name="config">An <see cref="DecodeHeadConfig.FCNHead"/> configuration (already validated; concat_input false).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    public FCNHead(DecodeHeadConfig config, Device? device = null)
        : base("FCNHead", config, device)
    {
        int k = config.KernelSize;
        var layers = new List<(string, Module<Tensor, Tensor>)>();
        for (int i = 0; i < config.NumConvs; i++)
        {
            layers.Add(($"{i}", new ConvBn(i == 0 ? config.InChannels[0] : config.Channels, config.Channels, k, 1, k / 2, 1, relu: true, device)));
        }

        if (config.NumConvs == 0 && config.InChannels[0] != config.Channels)
        {
            throw new ConfigException($"FCNHead: num_convs = 0 needs in_channels ({config.InChannels[0]}) = channels ({config.Channels})");
        }

        convs = Sequential(layers);
        RegisterComponents();
    }

    /// <summary>Logits on the selected level.</summary>
    /// <param name="input">The backbone's outputs; the head reads <c>in_index</c> ([N, in_channels, h, w], stride 16 officially).</param>
    /// <returns>[N, num_classes, h, w].</returns>
    public override Tensor forward(IReadOnlyList<Tensor> input)
    {
        var x = Select(input)[0];
        using var scope = NewDisposeScope();
        return ClassifySegments(convs.call(x)).MoveToOuterDisposeScope();
    }
}
