using RepLKNet.Checkpoints;
using RepLKNet.Layers;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Tests.Models;

/// <summary>
/// The segmenter against MMSegmentation 0.x semantics: keys and order, and every level of the heads recomputed from
/// libtorch's functional ops on the loaded weights (not through the model's modules).
/// </summary>
public sealed class SegmentorTests
{
    private static RepLKNetConfig SmallBackbone(bool xlStyle = false) => new()
    {
        LargeKernelSizes = [13, 11, 9, 5], Layers = [1, 1, 2, 1], Channels = [16, 32, 48, 64],
        SmallKernel = xlStyle ? null : 3, DwRatio = xlStyle ? 1.5 : 1, FfnRatio = 2, NumClasses = null, OutIndices = [0, 1, 2, 3],
        NormIntermediateFeatures = xlStyle,
    };

    internal static SegmentorConfig Small(bool alignCorners = false, bool xlStyle = false, int classes = 7)
    {
        var backbone = SmallBackbone(xlStyle);
        return new SegmentorConfig
        {
            Backbone = backbone,
            DecodeHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.UPerHead, InChannels = [16, 32, 48, 64], InIndex = [0, 1, 2, 3], Channels = 24,
                NumClasses = classes, AlignCorners = alignCorners,
            },
            AuxiliaryHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.FCNHead, InChannels = [48], InIndex = [2], Channels = 12, NumClasses = classes,
                AlignCorners = alignCorners, LossWeight = 0.4,
            },
        };
    }

    internal static void Randomize(Module model, long seed)
    {
        var g = new Generator((ulong)seed);
        using var noGrad = no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            // Scalars holds each number until libtorch has read it (a temporary Scalar can be finalized mid-call: docs/runtime.md).
            using var first = p[0];
            p.copy_(Scalars.MulInPlace(randn(p.shape, generator: g), p.dim() > 1 ? 0.5 / Math.Sqrt(first.numel()) : 0.1));
        }

        foreach (var bn in model.modules().OfType<RepLKNet.Layers.BatchNorm2d>())
        {
            long n = bn.weight!.shape[0];
            bn.weight!.copy_(Scalars.AddInPlace(rand(n, generator: g), 0.5));
            bn.bias!.copy_(Scalars.MulInPlace(randn(n, generator: g), 0.2));
            bn.running_mean!.copy_(Scalars.MulInPlace(randn(n, generator: g), 0.3));
            bn.running_var!.copy_(Scalars.AddInPlace(rand(n, generator: g), 0.5));
        }
    }

    [Fact]
    public void State_dict_keys_order_and_shapes_are_mmsegs()
    {
        var config = Small();
        using var model = new EncoderDecoder(config, device: new Device("meta"));
        using var backbone = new RepLKNetModel(config.Backbone, device: new Device("meta"));
        var expected = new List<(string Key, long[] Shape)>();
        expected.AddRange(backbone.Describe().StateDict.Select(e => ("backbone." + e.Key, e.Shape.ToArray())));

        void ConvModule(string prefix, long cin, long cout, long k)
        {
            expected.Add(($"{prefix}.conv.weight", [cout, cin, k, k]));
            foreach (var b in new[] { "weight", "bias", "running_mean", "running_var" })
            {
                expected.Add(($"{prefix}.bn.{b}", [cout]));
            }

            expected.Add(($"{prefix}.bn.num_batches_tracked", []));
        }

        // BaseDecodeHead registers conv_seg before the subclass's modules (mmseg decode_head.py).
        expected.Add(("decode_head.conv_seg.weight", [7, 24, 1, 1]));
        expected.Add(("decode_head.conv_seg.bias", [7]));
        for (int i = 0; i < 4; i++)
        {
            ConvModule($"decode_head.psp_modules.{i}.1", 64, 24, 1);
        }

        ConvModule("decode_head.bottleneck", 64 + 4 * 24, 24, 3);
        long[] levels = [16, 32, 48];
        for (int i = 0; i < 3; i++)
        {
            ConvModule($"decode_head.lateral_convs.{i}", levels[i], 24, 1);
        }

        for (int i = 0; i < 3; i++)
        {
            ConvModule($"decode_head.fpn_convs.{i}", 24, 24, 3);
        }

        ConvModule("decode_head.fpn_bottleneck", 4 * 24, 24, 3);
        expected.Add(("auxiliary_head.conv_seg.weight", [7, 12, 1, 1]));
        expected.Add(("auxiliary_head.conv_seg.bias", [7]));
        ConvModule("auxiliary_head.convs.0", 48, 12, 3);

        var actual = model.Describe().StateDict;
        Assert.Equal(expected.Select(e => e.Key), actual.Select(e => e.Key));
        foreach (var ((key, shape), entry) in expected.Zip(actual))
        {
            Assert.True(shape.SequenceEqual(entry.Shape), $"{key}: [{string.Join(",", entry.Shape)}], expected [{string.Join(",", shape)}]");
        }
    }

    [Theory]
    [InlineData(false, false, 61, 45)]
    [InlineData(true, false, 61, 45)]
    [InlineData(false, true, 33, 70)]
    [InlineData(true, true, 29, 29)]
    public void Every_level_matches_a_functional_recomputation(bool alignCorners, bool xlStyle, int height, int width)
    {
        using var scope = NewDisposeScope();
        var config = Small(alignCorners, xlStyle);
        using var model = new EncoderDecoder(config);
        Randomize(model, 11 + height);
        model.eval();
        var input = randn([2, 3, height, width], generator: new Generator(5));
        using var noGrad = no_grad();
        var features = model.ExtractFeatures(input);
        Assert.Equal(4, features.Count);
        var state = StateDicts.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(config.Backbone.Channels[i], features[i].shape[1]);
        }

        if (xlStyle)
        {
            // norm_intermediate_features: each returned map is the raw stage output through that stage's BN. The raw
            // outputs come from the same weights in a backbone without the norms (the path the official fixtures check),
            // the BN from libtorch's functional batch_norm on backbone.stages.i.norm.*.
            using var plain = new RepLKNetModel(config.Backbone with { NormIntermediateFeatures = false });
            var plainState = StateDicts.Ordered(plain);
            foreach (var (key, value) in plainState)
            {
                value.copy_(state["backbone." + key]);
            }

            plain.eval();
            var raw = plain.forward_intermediates(input);
            for (int i = 0; i < 4; i++)
            {
                string n = $"backbone.stages.{i}.norm.";
                var expected = functional.batch_norm(raw[i], state[n + "running_mean"], state[n + "running_var"], state[n + "weight"], state[n + "bias"], false, 0.1, 1e-5);
                AssertClose(expected, features[i], $"stage {i} features with norm_intermediate_features");
            }
        }

        var head = model.DecodeHead;
        Tensor Cm(string prefix, Tensor x)
        {
            var w = state[prefix + ".conv.weight"];
            long pad = w.shape[2] / 2;
            // In float64: libtorch 2.10's float32 oneDNN conv is wrong at these odd channel counts (DenseConv2d).
            var y = functional.conv2d(x.to(ScalarType.Float64), w.to(ScalarType.Float64), null, padding: [pad, pad]).to(x.dtype);
            y = functional.batch_norm(y, state[prefix + ".bn.running_mean"], state[prefix + ".bn.running_var"],
                state[prefix + ".bn.weight"], state[prefix + ".bn.bias"], false, 0.1, 1e-5);
            return functional.relu(y);
        }

        Tensor Up(Tensor x, long h, long w) =>
            functional.interpolate(x, [h, w], mode: InterpolationMode.Bilinear, align_corners: alignCorners);

        // UPerHead (mmseg uper_head.py), from the raw weights.
        var x3 = features[3];
        var psp = new List<Tensor> { x3 };
        int[] scales = [1, 2, 3, 6];
        for (int i = 0; i < 4; i++)
        {
            var pooled = functional.adaptive_avg_pool2d(x3, [scales[i], scales[i]]);
            psp.Add(Up(Cm($"decode_head.psp_modules.{i}.1", pooled), x3.shape[2], x3.shape[3]));
        }

        var laterals = new List<Tensor>();
        for (int i = 0; i < 3; i++)
        {
            laterals.Add(Cm($"decode_head.lateral_convs.{i}", features[i]));
        }

        laterals.Add(Cm("decode_head.bottleneck", cat(psp, 1)));
        for (int i = 3; i > 0; i--)
        {
            laterals[i - 1] = laterals[i - 1] + Up(laterals[i], laterals[i - 1].shape[2], laterals[i - 1].shape[3]);
        }

        var outs = new List<Tensor>();
        for (int i = 0; i < 3; i++)
        {
            outs.Add(Cm($"decode_head.fpn_convs.{i}", laterals[i]));
        }

        outs.Add(laterals[3]);
        for (int i = 1; i < 4; i++)
        {
            outs[i] = Up(outs[i], outs[0].shape[2], outs[0].shape[3]);
        }

        var fused = Cm("decode_head.fpn_bottleneck", cat(outs, 1));
        var decode = functional.conv2d(fused, state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"]);
        var aux = functional.conv2d(Cm("auxiliary_head.convs.0", features[2]), state["auxiliary_head.conv_seg.weight"], state["auxiliary_head.conv_seg.bias"]);
        var final = Up(decode, height, width);

        AssertClose(fused, head.ForwardFeature(features), "UPerHead features before cls_seg");
        var (modelDecode, modelAux) = model.ForwardTrain(input);
        AssertClose(decode, modelDecode, "decode-head logits (stride 4)");
        AssertClose(aux, modelAux!, "auxiliary-head logits (stride 16)");
        var logits = model.call(input);
        Assert.Equal(new long[] { 2, 7, height, width }, logits.shape);
        AssertClose(final, logits, "logits at the input size");
    }

    [Fact]
    public void Reparameterized_and_fused_segmenters_give_the_training_forms_logits()
    {
        using var scope = NewDisposeScope();
        using var model = new EncoderDecoder(Small(alignCorners: true));
        Randomize(model, 3);
        model.eval();
        var input = randn([1, 3, 47, 53], generator: new Generator(8));
        using var noGrad = no_grad();
        var reference = model.call(input);
        Assert.True(model.Reparameterize() > 0);
        Assert.True(model.IsDeploy);
        AssertClose(reference, model.call(input), "deploy form", 1e-4);
        model.Reparameterize(fuseBn: true);
        Assert.DoesNotContain(StateDicts.Ordered(model), kv => kv.Key.Contains(".bn.", StringComparison.Ordinal));
        AssertClose(reference, model.call(input), "fused form", 1e-4);
    }

    [Theory]
    [InlineData("model.pth")]
    [InlineData("model.safetensors")]
    public void A_saved_segmenter_loads_back_strictly_with_its_records(string file)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        using var model = new EncoderDecoder(Small(classes: 3));
        Randomize(model, 21);
        model.eval();
        string path = dir.File(file);
        SegmentorCheckpoint.Save(path, model, "small-seg", ["sky", "road", "car"], [(1, 2, 3), (4, 5, 6), (250, 251, 252)]);

        var loaded = SegmentorCheckpoint.Load(path);
        using var copy = loaded.Model;
        copy.eval();
        Assert.True(loaded.Report.IsExact, loaded.Report.Describe());
        Assert.Equal("small-seg", loaded.Arch);
        Assert.Equal(["sky", "road", "car"], loaded.Info.Classes!);
        Assert.Equal((250, 251, 252), loaded.Info.Palette![2]);
        Assert.Equal(ModelForm.Train, loaded.Info.Form);
        var input = randn([1, 3, 37, 41], generator: new Generator(2));
        using var noGrad = no_grad();
        Assert.Equal(0, (model.call(input) - copy.call(input)).abs().max().item<float>());

        // Another architecture (other classes) does not load strictly; the error names the weights.
        var wrong = Assert.Throws<CheckpointException>(() => SegmentorCheckpoint.Load(path, numClasses: 5));
        Assert.StartsWith("weights ", wrong.Message);
        Assert.Contains("decode_head.conv_seg.weight", wrong.Message);
    }

    [Fact]
    public void A_deploy_segmenter_checkpoint_is_recognised_and_loads()
    {
        using var dir = new TempDirectory();
        using var model = new EncoderDecoder(Small());
        Randomize(model, 4);
        model.Reparameterize();
        SegmentorCheckpoint.Save(dir.File("deploy.pth"), model, "small");
        var loaded = SegmentorCheckpoint.Load(dir.File("deploy.pth"));
        using var copy = loaded.Model;
        Assert.Equal(ModelForm.Deploy, loaded.Info.Form);
        Assert.True(copy.IsDeploy);
        Assert.Equal(0, RandomModels.MaxStateDiff(model, copy));
    }

    [Fact]
    public void A_classification_checkpoint_initialises_the_backbone_and_reports_the_classifier_keys()
    {
        using var dir = new TempDirectory();
        var config = Small();
        using var classifier = new RepLKNetModel(config.Backbone with { OutIndices = null, NumClasses = 10 });
        Randomize(classifier, 9);
        CheckpointFile.WritePyTorch(dir.File("cls.pth"), StateDicts.Ordered(classifier));
        using var model = new EncoderDecoder(config);
        var report = SegmentorCheckpoint.LoadBackbone(dir.File("cls.pth"), model);
        Assert.Contains("head.weight", report.Unexpected);
        Assert.Contains("norm.running_mean", report.Unexpected);
        Assert.Empty(report.Missing);
        var backbone = StateDicts.Ordered(model.Backbone).ToDictionary();
        foreach (var (key, value) in StateDicts.Ordered(classifier).Where(kv => backbone.ContainsKey(kv.Key)))
        {
            Assert.True((value.to(float64) - backbone[key].to(float64)).abs().max().item<double>() == 0, key);
        }

        // A segmenter checkpoint is not a backbone for Load, and a classifier is not a segmenter checkpoint.
        var notSeg = Assert.Throws<CheckpointException>(() => SegmentorCheckpoint.Load(dir.File("cls.pth"), "upernet-tiny"));
        Assert.Contains("no decode_head.* keys", notSeg.Message);
        using var other = new RepLKNetModel(SmallBackbone() with { Channels = [8, 16, 24, 32], OutIndices = null, NumClasses = 10 });
        CheckpointFile.WritePyTorch(dir.File("other.pth"), StateDicts.Ordered(other));
        var mismatch = Assert.Throws<CheckpointException>(() => SegmentorCheckpoint.LoadBackbone(dir.File("other.pth"), model));
        Assert.Equal("weights", mismatch.ParamName);
    }

    [Fact]
    public void The_issue_json_parses_and_bad_fields_are_named()
    {
        const string json = """
            {"backbone": {"large_kernel_sizes": [31,29,27,13], "layers": [2,2,18,2], "channels": [128,256,512,1024],
              "drop_path_rate": 0.3, "small_kernel": 5, "dw_ratio": 1, "num_classes": null, "out_indices": [0,1,2,3]},
             "decode_head": {"type": "UPerHead", "in_channels": [128,256,512,1024], "channels": 512, "pool_scales": [1,2,3,6],
              "num_classes": 150, "align_corners": false},
             "auxiliary_head": {"type": "FCNHead", "in_channels": 512, "in_index": 2, "channels": 256, "num_convs": 1,
              "concat_input": false, "num_classes": 150, "align_corners": false}}
            """;
        var config = SegmentorConfig.FromJson(json);
        Assert.Equal(SegmentorRegistry.Find("upernet-31B-ade20k-512")!.Config.DecodeHead.ToJsonObject().ToJsonString(), config.DecodeHead.ToJsonObject().ToJsonString());
        Assert.Equal(0.4, config.AuxiliaryHead!.LossWeight);
        var roundTrip = SegmentorConfig.FromJson(config.ToJson());
        Assert.Equal(config.ToJson(), roundTrip.ToJson());

        Assert.Contains("unknown field 'chanels'", Assert.Throws<ConfigException>(() => SegmentorConfig.FromJson(json.Replace("\"channels\": 512", "\"chanels\": 512", StringComparison.Ordinal))).Message);
        Assert.Contains("in_channels 256 for in_index 2", Assert.Throws<ConfigException>(() => SegmentorConfig.FromJson(json.Replace("\"in_channels\": 512", "\"in_channels\": 256", StringComparison.Ordinal))).Message);
        Assert.Contains("backbone.num_classes must be null", Assert.Throws<ConfigException>(() => SegmentorConfig.FromJson(json.Replace("\"num_classes\": null", "\"num_classes\": 1000", StringComparison.Ordinal))).Message);
        Assert.Contains("concat_input = true", Assert.Throws<ConfigException>(() => SegmentorConfig.FromJson(json.Replace("\"concat_input\": false", "\"concat_input\": true", StringComparison.Ordinal))).Message);
        Assert.Contains("num_classes 19 differs", Assert.Throws<ConfigException>(() => SegmentorConfig.FromJson(json.Replace("\"num_classes\": 150, \"align_corners\": false}}", "\"num_classes\": 19, \"align_corners\": false}}", StringComparison.Ordinal))).Message);
        var arch = Assert.Throws<ConfigException>(() => SegmentorRegistry.Resolve("no-such-segmenter"));
        Assert.Equal("arch", arch.ParamName);
    }

    [Theory]
    // The paper's Table 5/6 parameter counts (UperNet, inference: deploy form without the auxiliary head): 112M, 207M, 374M.
    [InlineData("upernet-31B-ade20k-512", 112)]
    [InlineData("upernet-31L-ade20k-640", 207)]
    [InlineData("upernet-XL-ade20k-640", 374)]
    public void Official_presets_have_the_papers_parameter_counts(string preset, int millions)
    {
        var (_, config) = SegmentorRegistry.Resolve(preset);
        using var model = new EncoderDecoder(config, deploy: true, device: new Device("meta"));
        long total = model.parameters().Sum(p => p.numel());
        long aux = model.AuxiliaryHead!.parameters().Sum(p => p.numel());
        Assert.InRange((total - aux) / 1e6, millions - 1, millions + 1);
    }

    private static void AssertClose(Tensor expected, Tensor actual, string what, double tolerance = 2e-5)
    {
        Assert.Equal(expected.shape, actual.shape);
        double scale = Math.Max(1, expected.abs().max().item<float>());
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= tolerance * scale, $"{what}: max |diff| {diff:E3} (scale {scale:F3})");
    }
}
