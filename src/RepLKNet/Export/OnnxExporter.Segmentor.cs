using Onnx;
using RepLKNet.Layers;
using RepLKNet.Models.Segmentation;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Export;

/// <summary>The UperNet segmenter (<see cref="EncoderDecoder"/>) as an ONNX graph.</summary>
public static partial class OnnxExporter
{
    /// <summary>
    /// Builds the ONNX model of a segmenter (eval, backbone re-parameterized; the ConvModules may be fused): MMSeg's
    /// whole-image <c>encode_decode</c>, input <c>input</c> [N, C, H, W] (fixed, or symbolic "height" × "width" with
    /// <see cref="OnnxExportOptions.DynamicSize"/>) → output <c>logits</c> [N, classes, H, W] at the input size. The graph:
    /// the backbone's out_indices maps (as <see cref="Build"/> writes them, initializers prefixed <c>backbone.</c>), then
    /// UPerHead (mmseg 0.x <c>uper_head.py</c>): PPM branches AdaptiveAvgPool(s) → ConvModule 1×1 → Resize to the last
    /// level, Concat → <c>bottleneck</c>; laterals; top-down Add of the resized coarser level; <c>fpn_convs</c>; Resize of
    /// every level to the finest; Concat → <c>fpn_bottleneck</c> → <c>conv_seg</c> (Dropout2d is the identity in eval);
    /// finally Resize of the logits to the input's size. Every Resize is bilinear with the head's align_corners and reads
    /// its target size at run time. The auxiliary head (training only) is not exported.
    /// </summary>
    /// <param name="model">The segmenter, its backbone in deploy form.</param>
    /// <param name="info">What the metadata records (<see cref="OnnxModelInfo.Task"/> is set to segmentation).</param>
    /// <param name="options">Opset, batch and size; <see cref="OnnxExportOptions.Features"/> must be off.</param>
    /// <exception cref="OnnxExportException">
    /// The backbone is in its training form, the opset is outside 13–21, a size or the batch is not positive, or
    /// <see cref="OnnxExportOptions.Features"/> is set (<see cref="OnnxExportException.ParamName"/> <c>Features</c>: a
    /// segmenter's output is its logits).
    /// </exception>
    public static ModelProto BuildSegmentor(EncoderDecoder model, OnnxModelInfo info, OnnxExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(options);
        var (height, width) = CheckOptions(options, info);
        if (options.Features)
        {
            throw new OnnxExportException($"{nameof(OnnxExportOptions.Features)} applies to RepLKNet classifiers and backbones: a segmenter's output is its logits", nameof(OnnxExportOptions.Features));
        }

        if (!model.IsDeploy)
        {
            throw new OnnxExportException("the segmenter's backbone is in its training form: re-parameterize it first (the exporter writes the deploy graph)");
        }

        var g = new GraphWriter(options.Opset);
        using var noGrad = no_grad();
        var backboneConfig = model.Backbone.Config;
        var outIndices = backboneConfig.OutIndices ?? [.. Enumerable.Range(0, backboneConfig.Channels.Count)];
        var (_, stageFeatures) = Backbone(g, model.Backbone, InputName, outIndices, allStages: false, "backbone.");
        // The backbone's outputs in forward_intermediates order (out_indices), which in_index picks from.
        var features = outIndices.Select(i => stageFeatures.First(f => f.Stage == i).Value).ToList();
        var logits = UPerHead(g, model.DecodeHead, features, "decode_head");
        logits = g.ResizeLike(logits, InputName, model.AlignCorners, "resize");
        g.Rename(logits, LogitsName, false);
        var outputs = new List<(string Name, long[] Shape)>
        {
            (LogitsName, [model.NumClasses, options.DynamicSize ? SymbolicHeight : height, options.DynamicSize ? SymbolicWidth : width]),
        };
        var recorded = info with { InputHeight = height, InputWidth = width, DynamicSize = options.DynamicSize, Task = OnnxModelInfo.SegmentationTask };
        return Finish(g, recorded, options, outputs, $"UperNet-RepLKNet ({info.Arch}, {info.Form})",
            "UperNet (MMSegmentation 0.x EncoderDecoder + UPerHead) on RepLKNet (Ding et al., CVPR 2022), deploy form, whole-image logits, written by the .NET RepLKNet toolkit");
    }

    private static string UPerHead(GraphWriter g, UPerHead head, List<string> backboneOutputs, string path)
    {
        var config = head.Config;
        var children = Children(head, path);
        var inputs = config.InIndex.Select(i => backboneOutputs[i]).ToList();
        bool align = config.AlignCorners;
        string top = inputs[^1];
        var pyramid = new List<string> { top };
        for (int i = 0; i < head.PspModules.Count; i++)
        {
            string branch = $"{path}.psp_modules.{i}";
            var parts = Children(head.PspModules[i], branch);
            _ = Child<AdaptiveAvgPool2d>(parts, "0", branch);
            var pooled = g.AdaptiveAvgPool(top, config.PoolScales[i], $"{branch}.0");
            var conv = g.ConvBn(Child<ConvBn>(parts, "1", branch), pooled, $"{branch}.1");
            pyramid.Add(g.ResizeLike(conv, top, align, $"{branch}.resize"));
        }

        var laterals = new List<string>();
        for (int i = 0; i < head.LateralConvs.Count; i++)
        {
            laterals.Add(g.ConvBn(head.LateralConvs[i], inputs[i], $"{path}.lateral_convs.{i}"));
        }

        laterals.Add(g.ConvBn(head.Bottleneck, g.ConcatChannels(pyramid, $"{path}.psp_cat"), $"{path}.bottleneck"));
        for (int i = laterals.Count - 1; i > 0; i--)
        {
            laterals[i - 1] = g.Node("Add", [laterals[i - 1], g.ResizeLike(laterals[i], laterals[i - 1], align, $"{path}.top_down.{i}")], $"{path}.top_down.{i}");
        }

        var outs = new List<string>();
        for (int i = 0; i < head.FpnConvs.Count; i++)
        {
            outs.Add(g.ConvBn(head.FpnConvs[i], laterals[i], $"{path}.fpn_convs.{i}"));
        }

        outs.Add(laterals[^1]);
        for (int i = outs.Count - 1; i > 0; i--)
        {
            outs[i] = g.ResizeLike(outs[i], outs[0], align, $"{path}.fpn_resize.{i}");
        }

        var x = g.ConvBn(head.FpnBottleneck, g.ConcatChannels(outs, $"{path}.fpn_cat"), $"{path}.fpn_bottleneck");
        // cls_seg: Dropout2d (the identity in eval, so nothing is written) → conv_seg.
        var dropout = children.FirstOrDefault(c => c.Name == "dropout").Module;
        if (dropout is not null and not TorchSharp.Modules.Dropout2d)
        {
            throw Unsupported(dropout, $"{path}.dropout", "Dropout2d");
        }

        return g.Conv(Child<Conv2d>(children, "conv_seg", path), x, $"{path}.conv_seg");
    }
}
