using Microsoft.ML.OnnxRuntime;
using RepLKNet.Export;
using RepLKNet.Models.Segmentation;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Export;

/// <summary>The whole UperNet segmenter as ONNX: re-parameterized (and fused), checked by ONNX Runtime at odd, non-square sizes.</summary>
public sealed class OnnxSegmentorTests
{
    public OnnxSegmentorTests() => Torch.EnsureLoaded();

    internal static SegmentorConfig SmallConfig(bool alignCorners, bool normIntermediateFeatures = false) => new()
    {
        Backbone = OfficialFixture.Config with { Layers = [1, 1, 1, 1], NumClasses = null, OutIndices = [0, 1, 2, 3], NormIntermediateFeatures = normIntermediateFeatures },
        DecodeHead = new DecodeHeadConfig
        {
            Type = DecodeHeadConfig.UPerHead, InChannels = [16, 32, 64, 128], InIndex = [0, 1, 2, 3], Channels = 32, PoolScales = [1, 2, 3, 6],
            NumClasses = 5, AlignCorners = alignCorners,
        },
        AuxiliaryHead = new DecodeHeadConfig
        {
            Type = DecodeHeadConfig.FCNHead, InChannels = [64], InIndex = [2], Channels = 16, NumClasses = 5, AlignCorners = alignCorners,
        },
    };

    private static EncoderDecoder RandomSegmentor(bool alignCorners, Generator generator, bool normIntermediateFeatures = false)
    {
        var model = new EncoderDecoder(SmallConfig(alignCorners, normIntermediateFeatures), name: "seg-small");
        Assert.True(OnnxEmitterTests.RandomizeNorms(model, generator) > 20);
        model.eval();
        return model;
    }

    private static OnnxModelInfo Info(EncoderDecoder model, int size) =>
        new(model.Name, model.Config.ToJson(), size, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1.0, ["a", "b", "c", "d", "e"], "deploy");

    private static Tensor RunOrt(string path, Tensor x)
    {
        Assert.Equal([OnnxExporter.LogitsName], OnnxTestModels.OutputNames(path));
        return OnnxTestModels.RunOrt(path, x).Single();
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void A_dynamic_size_segmenter_export_matches_encode_decode_at_odd_non_square_sizes(bool alignCorners, bool fuseBn)
    {
        using var dir = new TempDirectory();
        var generator = new Generator(alignCorners ? 31UL : 32UL);
        using var model = RandomSegmentor(alignCorners, generator);
        string path = dir.File("seg.onnx");
        var report = OnnxExport.Run(model, Info(model, 37), new OnnxExportOptions { DynamicSize = true, DynamicBatch = true, InputHeight = 37, InputWidth = 53 },
            fuseBn, path, seed: 7);
        Assert.Equal([new OnnxCheck(1, 37, 53), new OnnxCheck(3, 29, 47)], report.Checks);
        Assert.Equal(4, report.Switched);
        Assert.True(report.Relative <= OnnxExport.Tolerance, $"relative {report.Relative}");

        // Sizes the export was not checked at: odd and non-square, tiny (the last level 1×1, PPM bins larger than it).
        foreach (var (n, h, w) in new[] { (2, 23, 31), (1, 5, 3), (1, 67, 45) })
        {
            using var scope = NewDisposeScope();
            var x = randn([n, 3, h, w], generator: generator);
            using var noGrad = no_grad();
            var expected = model.call(x);
            var actual = RunOrt(path, x);
            Assert.Equal([n, 5, h, w], actual.shape);
            double diff = (expected - actual).abs().max().item<float>(), scale = expected.abs().max().item<float>();
            Assert.True(scale > 0.1 && expected.std().item<float>() > 0.01, $"degenerate logits (largest {scale})");
            Assert.True(diff <= 1e-5 * Math.Max(1, scale), $"{n}×{h}×{w}, align_corners={alignCorners}: max |ORT − TorchSharp| = {diff} (largest {scale})");
        }

        var proto = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        var output = proto.Graph.Output.Single();
        Assert.Equal(["batch", "", "height", "width"], output.Type.TensorType.Shape.Dim.Select(d => d.DimParam));
        Assert.Equal(5, output.Type.TensorType.Shape.Dim[1].DimValue);
        string mode = alignCorners ? "align_corners" : "half_pixel";
        Assert.All(proto.Graph.Node.Where(n => n.OpType == "Resize"), n =>
            Assert.Equal(mode, n.Attribute.Single(a => a.Name == "coordinate_transformation_mode").S.ToStringUtf8()));
        // 4 PPM branches, 3 top-down, 3 to the finest level, 1 to the input.
        Assert.Equal(11, proto.Graph.Node.Count(n => n.OpType == "Resize"));
        Assert.Equal(fuseBn ? 2 * 4 : 2 * 4 + proto.Graph.Node.Count(n => n.OpType == "Conv") - 4 - 1, proto.Graph.Node.Count(n => n.OpType == "BatchNormalization"));
        Assert.Contains(proto.Graph.Initializer, t => t.Name == "decode_head.conv_seg.weight");
        Assert.Contains(proto.Graph.Initializer, t => t.Name == "backbone.stages.0.blocks.0.large_kernel.lkb_reparam.weight");
        Assert.DoesNotContain(proto.Graph.Initializer, t => t.Name.StartsWith("auxiliary_head.", StringComparison.Ordinal));

        using var session = new InferenceSession(path);
        var info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, path)!;
        Assert.Equal((OnnxModelInfo.SegmentationTask, 37, 53, true), (info.Task, info.InputHeight, info.InputWidth, info.DynamicSize));
        var e = Assert.Throws<OnnxExportException>(() => new OnnxClassifier(path));
        Assert.Contains("segmentation export, not a classifier", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void A_fixed_non_square_segmenter_export_matches_encode_decode(bool alignCorners, bool normIntermediateFeatures)
    {
        using var dir = new TempDirectory();
        var generator = new Generator(33);
        // normIntermediateFeatures: an XL-style backbone, a BatchNorm on every out_indices map.
        using var model = RandomSegmentor(alignCorners, generator, normIntermediateFeatures);
        string path = dir.File("fixed.onnx");
        var report = OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Batch = 2, InputHeight = 41, InputWidth = 27 }, fuseBn: !alignCorners, path, seed: 8);
        Assert.Equal([new OnnxCheck(2, 41, 27)], report.Checks);
        using var x = randn([2, 3, 41, 27], generator: generator);
        using var noGrad = no_grad();
        using var expected = model.call(x);
        var actual = RunOrt(path, x);
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 1e-5 * Math.Max(1, expected.abs().max().item<float>()), $"max |ORT − TorchSharp| = {diff}");
        var input = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph.Input.Single();
        Assert.Equal([2L, 3, 41, 27], input.Type.TensorType.Shape.Dim.Select(d => d.DimValue));
    }

    [Fact]
    public void Segmenter_options_that_do_not_apply_fail_clearly()
    {
        using var dir = new TempDirectory();
        using var model = new EncoderDecoder(SmallConfig(false));
        model.eval();
        var info = Info(model, 32);
        var e = Assert.Throws<OnnxExportException>(() => OnnxExporter.Build(model, info, new OnnxExportOptions()));
        Assert.Contains("training form", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(model, info, new OnnxExportOptions { Features = true }, false, dir.File("f.onnx")));
        Assert.Equal("Features", e.ParamName);
        Assert.StartsWith("Features applies to RepLKNet classifiers and backbones", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(model, info, new OnnxExportOptions { InputWidth = 0, DynamicSize = true }, false, dir.File("g.onnx")));
        Assert.Equal("InputWidth", e.ParamName);
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Cli_exports_a_segmenter_checkpoint_at_a_dynamic_size_and_refuses_features()
    {
        using var dir = new TempDirectory();
        var generator = new Generator(34);
        using var model = RandomSegmentor(alignCorners: true, generator);
        File.WriteAllText(dir.File("seg.json"), model.Config.ToJson());
        RepLKNet.Checkpoints.SegmentorCheckpoint.Save(dir.File("seg.pth"), model, "seg", ["a", "b", "c", "d", "e"]);
        var export = CliRunner.Run("export", "onnx", "--arch", dir.File("seg.json"), "--weights", dir.File("seg.pth"), "--out", dir.File("seg.onnx"),
            "--input-size", "37,53", "--dynamic-size", "--fuse-bn");
        Assert.True(export.ExitCode == 0, export.StdOut + export.StdErr);
        Assert.Contains("5 classes, align_corners true", export.StdOut, StringComparison.Ordinal);
        Assert.Contains("N×H×W 1×37×53, N×H×W 1×29×47", export.StdOut, StringComparison.Ordinal);

        using var x = randn([1, 3, 19, 25], generator: generator);
        using var noGrad = no_grad();
        using var expected = model.call(x);
        var actual = RunOrt(dir.File("seg.onnx"), x);
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 1e-5 * Math.Max(1, expected.abs().max().item<float>()), $"max |ORT − TorchSharp| = {diff}");
        using (var session = new InferenceSession(dir.File("seg.onnx")))
        {
            var info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, "seg.onnx")!;
            Assert.Equal(("fused", OnnxModelInfo.SegmentationTask), (info.Form, info.Task));
            Assert.Equal(["a", "b", "c", "d", "e"], info.ClassNames!);
        }

        // Without --arch the checkpoint's records say it is a segmenter; --features does not apply to one.
        var features = CliRunner.Run("export", "onnx", "--weights", dir.File("seg.pth"), "--out", dir.File("f.onnx"), "--features");
        Assert.NotEqual(0, features.ExitCode);
        Assert.Contains("--features applies to RepLKNet classifiers and backbones", features.StdErr, StringComparison.Ordinal);
        Assert.Equal(["seg.json", "seg.onnx", "seg.pth"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());
    }
}
