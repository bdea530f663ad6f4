using RepLKNet.Reparam;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Models.Segmentation;

/// <summary>
/// MMSegmentation's <c>EncoderDecoder</c> with the official RepLKNet backbone, a <see cref="UPerHead"/> decode head and an
/// optional <see cref="FCNHead"/> auxiliary head. The state dict is MMSeg's, key for key and in its order:
/// <c>backbone.*</c>, <c>decode_head.*</c> (<c>conv_seg</c> first), <c>auxiliary_head.*</c>. Source: mmseg 0.x
/// <c>models/segmentors/encoder_decoder.py</c>; the configs of DingXiaoH/RepLKNet-pytorch <c>segmentation/configs</c>.
/// </summary>
/// <remarks>
/// <see cref="forward"/> is MMSeg's <c>encode_decode</c> (whole-image inference): logits at the input's size. Training uses
/// <see cref="ForwardTrain"/>, whose logits stay at the heads' resolutions (the loss resizes them to the labels).
/// </remarks>
public sealed class EncoderDecoder : Module<Tensor, Tensor>
{
    // Field names are the state_dict keys; registration follows declaration order.
    private readonly RepLKNetModel backbone;
    private readonly UPerHead decode_head;
    private readonly FCNHead? auxiliary_head;

    /// <summary>Builds the segmenter in the training form, or with a deploy-form backbone when <paramref name="deploy"/>.</summary>
    /// <param name="config">The model dict.</param>
    /// <param name="deploy">Build the backbone's deploy topology directly (so re-parameterized checkpoints load).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    /// <param name="name">Architecture name (a preset's, or a JSON file's); null: "UPerNet-RepLKNet".</param>
    /// <exception cref="ArgumentNullException"><paramref name="config"/> is null.</exception>
    /// <exception cref="ConfigException">The configuration is invalid (<see cref="SegmentorConfig.Validate"/>).</exception>
    public EncoderDecoder(SegmentorConfig config, bool deploy = false, Device? device = null, string? name = null)
        : base("EncoderDecoder")
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config.Validate();
        Name = name ?? "UPerNet-RepLKNet";
        backbone = new RepLKNetModel(config.Backbone, deploy, device, name is null ? null : $"{name} backbone");
        decode_head = new UPerHead(config.DecodeHead, device);
        auxiliary_head = config.AuxiliaryHead is { } aux ? new FCNHead(aux, device) : null;
        RegisterComponents();
    }

    /// <summary>The configuration.</summary>
    public SegmentorConfig Config { get; }

    /// <summary>Architecture name.</summary>
    public string Name { get; }

    /// <summary>The backbone (a RepLKNet with out_indices).</summary>
    public RepLKNetModel Backbone => backbone;

    /// <summary>The decode head.</summary>
    public UPerHead DecodeHead => decode_head;

    /// <summary>The auxiliary head, or null.</summary>
    public FCNHead? AuxiliaryHead => auxiliary_head;

    /// <summary>Classes predicted.</summary>
    public int NumClasses => Config.NumClasses;

    /// <summary>align_corners of the decode head (and of the final resize).</summary>
    public bool AlignCorners => Config.AlignCorners;

    /// <summary>Input channels.</summary>
    public int InChannels => Config.Backbone.InChannels;

    /// <summary>Whether every large-kernel module of the backbone is in its deploy form.</summary>
    public bool IsDeploy => backbone.IsDeploy;

    /// <summary>MMSeg's <c>extract_feat</c>: the backbone's out_indices maps.</summary>
    /// <param name="input">Images [N, C_in, H, W], normalized.</param>
    /// <returns>One map per out_index i: [N, channels[i], ⌈H/s⌉, ⌈W/s⌉] with stride s = 4·2^i.</returns>
    public IReadOnlyList<Tensor> ExtractFeatures(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.dim() != 4 || input.size(1) != InChannels)
        {
            throw new ArgumentException($"input has shape {TensorSizes.Text(input)}; the segmenter takes [N, {InChannels}, H, W]", nameof(input));
        }

        return backbone.forward_intermediates(input);
    }

    /// <summary>MMSeg's <c>encode_decode</c>: decode-head logits resized (bilinear, <see cref="AlignCorners"/>) to the input size.</summary>
    /// <param name="input">Images [N, C_in, H, W], normalized (any H, W ≥ 1).</param>
    /// <returns>Logits [N, num_classes, H, W] (unnormalized class scores per pixel).</returns>
    public Tensor EncodeDecode(Tensor input)
    {
        using var scope = NewDisposeScope();
        var logits = decode_head.call(ExtractFeatures(input));
        return SegResize.Bilinear(logits, input.size(2), input.size(3), AlignCorners).MoveToOuterDisposeScope();
    }

    /// <summary>Whole-image inference (<see cref="EncodeDecode"/>).</summary>
    /// <param name="input">Images [N, C_in, H, W].</param>
    /// <returns>Logits [N, num_classes, H, W].</returns>
    public override Tensor forward(Tensor input) => EncodeDecode(input);

    /// <summary>The heads' logits for the training losses (MMSeg's <c>forward_train</c> before the losses).</summary>
    /// <param name="input">Images [N, C_in, H, W], normalized.</param>
    /// <returns>Decode logits [N, classes, ⌈H/4⌉, ⌈W/4⌉] (at the decode head's finest level) and auxiliary logits at its
    /// level ([N, classes, ⌈H/16⌉, ⌈W/16⌉] officially), or null without an auxiliary head.</returns>
    public (Tensor Decode, Tensor? Auxiliary) ForwardTrain(Tensor input)
    {
        using var scope = NewDisposeScope();
        var features = ExtractFeatures(input);
        var decode = decode_head.call(features).MoveToOuterDisposeScope();
        var aux = auxiliary_head?.call(features).MoveToOuterDisposeScope();
        return (decode, aux);
    }

    /// <summary>Switches the backbone's large-kernel modules to their deploy form (and with <paramref name="fuseBn"/> folds every conv+BN pair, heads included); returns how many large-kernel modules were switched.</summary>
    public int Reparameterize(bool fuseBn = false) => Reparameterizer.Reparameterize(this, fuseBn);

    /// <summary>The state dict in MMSeg's order with shapes and the parameter count (works on the meta device).</summary>
    public ModelDescription Describe()
    {
        var entries = StateDictOrder.Ordered(this).Select(kv => new StateDictEntry(kv.Key, TensorSizes.Of(kv.Value), kv.Value.dtype)).ToList();
        return new ModelDescription(Name, ModelFamily.RepLKNet, InChannels, NumClasses, Config.DecodeHead.Channels,
            parameters().Sum(p => p.numel()), backbone.FeatureInfo, entries);
    }
}
