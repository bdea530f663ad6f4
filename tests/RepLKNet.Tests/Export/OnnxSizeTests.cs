using Microsoft.ML.OnnxRuntime;
using RepLKNet.Checkpoints;
using RepLKNet.Cli;
using RepLKNet.Export;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Export;

using static OnnxTestModels;

/// <summary>Non-square and dynamic-size ONNX exports (<c>--input-size H,W</c>, <c>--dynamic-size</c>), checked with ONNX Runtime.</summary>
public sealed class OnnxSizeTests
{
    public OnnxSizeTests() => Torch.EnsureLoaded();

    private static OnnxModelInfo Info(RepLKNetModel model, int size) =>
        new("custom", model.Config.ToJson(), size, model.Config.InChannels, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.875, null, "deploy");

    private static void AssertClose(Tensor expected, Tensor actual, double tolerance, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double diff = (expected - actual).abs().max().item<float>();
        double scale = Math.Max(1, expected.abs().max().item<float>());
        Assert.True(diff <= tolerance * scale, $"{what}: max |ORT − TorchSharp| = {diff} (largest output {scale})");
    }

    private static List<(string Name, long Value, string Param)> InputDims(string path) =>
        [.. Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph.Input.Single().Type.TensorType.Shape.Dim.Select(d => (d.DimParam, d.DimValue, d.DimParam))];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_72x56_export_of_the_official_checkpoint_matches_torchsharp_and_records_its_size(bool fuseBn)
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string path = dir.File("small-72x56.onnx");
        var report = OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Batch = 2, InputHeight = 72, InputWidth = 56 }, fuseBn, path, seed: 3);
        Assert.Equal([new OnnxCheck(2, 72, 56)], report.Checks);
        Assert.True(report.Relative <= OnnxExport.Tolerance);
        Assert.Equal([2L, 3, 72, 56], InputDims(path).Select(d => d.Value));

        // An independent run: ONNX Runtime and the (now deploy) TorchSharp model on another random 72×56 batch.
        using var x = randn([2, 3, 72, 56], generator: new Generator(11));
        using var noGrad = no_grad();
        using var expected = model.call(x);
        AssertClose(expected, RunOrt(path, x).Single(), 1e-5, "72×56");

        using var session = new InferenceSession(path);
        var info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, path)!;
        Assert.Equal((64, 72, 56, false), (info.InputSize, info.InputHeight, info.InputWidth, info.DynamicSize));

        // OnnxClassifier crops squares: a fixed non-square classifier is refused in words.
        var e = Assert.Throws<OnnxExportException>(() => new OnnxClassifier(path));
        Assert.Contains("72×56", e.Message, StringComparison.Ordinal);
        Assert.Contains("square", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_dynamic_size_and_batch_export_is_checked_at_two_sizes_and_runs_at_others()
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string path = dir.File("dyn.onnx");
        var options = new OnnxExportOptions { DynamicBatch = true, DynamicSize = true, InputHeight = 72, InputWidth = 56 };
        var report = OnnxExport.Run(model, Info(model, 64), options, fuseBn: true, path, seed: 4);
        Assert.Equal([new OnnxCheck(1, 72, 56), new OnnxCheck(3, 55, 49)], report.Checks);
        Assert.Equal(["batch", "", "height", "width"], InputDims(path).Select(d => d.Param));
        var output = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph.Output.Single();
        Assert.Equal(["batch", ""], output.Type.TensorType.Shape.Dim.Select(d => d.DimParam));

        // Sizes the export was not checked at: odd, non-square, tiny (1×1) and one larger than the export size.
        var generator = new Generator(12);
        foreach (var (n, h, w) in new[] { (2, 33, 47), (1, 1, 1), (1, 97, 81) })
        {
            using var scope = NewDisposeScope();
            var x = randn([n, 3, h, w], generator: generator);
            using var noGrad = no_grad();
            AssertClose(model.call(x), RunOrt(path, x).Single(), 1e-5, $"{n}×{h}×{w}");
        }

        // The metadata records the export size and the flag; OnnxClassifier runs it at the eval crop size.
        using var classifier = new OnnxClassifier(path);
        Assert.Equal((72, 56, true), (classifier.Info.InputHeight, classifier.Info.InputWidth, classifier.Info.DynamicSize));
        Assert.Equal(64, classifier.InputSize);
        var logits = new float[10];
        classifier.Run(new float[3 * 64 * 64], 1, logits);
        using var zeros64 = zeros(1, 3, 64, 64);
        using var noGrad2 = no_grad();
        using var expected = model.call(zeros64);
        AssertClose(expected, tensor(logits, [1, 10]), 1e-5, "OnnxClassifier");
    }

    [Fact]
    public void A_dynamic_size_features_export_gives_every_stage_at_two_sizes()
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel(OfficialFixture.Config with { NumClasses = null, OutIndices = [0, 1, 2, 3] });
        string path = dir.File("features.onnx");
        var report = OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Features = true, DynamicSize = true, InputHeight = 45, InputWidth = 70 },
            fuseBn: false, path, seed: 5);
        Assert.Equal([new OnnxCheck(1, 45, 70), new OnnxCheck(1, 35, 63)], report.Checks);
        foreach (var (h, w) in new[] { (45, 70), (29, 17) })
        {
            using var scope = NewDisposeScope();
            var x = randn([1, 3, h, w], generator: new Generator(6));
            using var noGrad = no_grad();
            var expected = model.forward_intermediates(x).ToList();
            var actual = RunOrt(path, x);
            Assert.Equal(4, actual.Count);
            for (int i = 0; i < 4; i++)
            {
                AssertClose(expected[i], actual[i], 1e-5, $"{h}×{w} stage {i}");
            }
        }
    }

    [Fact]
    public void Metadata_written_before_non_square_exports_reads_as_a_fixed_square()
    {
        var old = new Dictionary<string, string>
        {
            ["replknet.arch"] = "custom", ["replknet.config"] = "{}", ["replknet.form"] = "deploy", ["replknet.input_size"] = "96",
            ["replknet.channels"] = "3", ["replknet.mean"] = "[0.5,0.5,0.5]", ["replknet.std"] = "[0.5,0.5,0.5]", ["replknet.crop_pct"] = "0.875",
        };
        var info = OnnxModelInfo.FromMetadata(old, "old.onnx")!;
        Assert.Equal((96, 96, 96, false), (info.InputSize, info.InputHeight, info.InputWidth, info.DynamicSize));

        var written = (info with { InputHeight = 72, InputWidth = 56, DynamicSize = true }).ToMetadata().ToDictionary();
        Assert.Equal(("72", "56", "true", "96"), (written["replknet.input_height"], written["replknet.input_width"], written["replknet.dynamic_size"], written["replknet.input_size"]));
        var back = OnnxModelInfo.FromMetadata(written, "new.onnx")!;
        Assert.Equal((96, 72, 56, true), (back.InputSize, back.InputHeight, back.InputWidth, back.DynamicSize));
    }

    [Fact]
    public void Bad_sizes_fail_in_library_words_that_the_cli_reads_as_its_flags()
    {
        using var dir = new TempDirectory();
        using var model = new RepLKNetModel(OfficialFixture.Config);
        var info = Info(model, 64);
        (OnnxExportOptions Options, string Param, string Message, string Cli)[] cases =
        [
            (new OnnxExportOptions { InputHeight = 0, InputWidth = 56 }, "InputHeight", "InputHeight must be positive, got 0", "--input-size must be positive, got 0"),
            (new OnnxExportOptions { InputHeight = 72, InputWidth = -3, DynamicSize = true }, "InputWidth", "InputWidth must be positive, got -3", "--input-size must be positive, got -3"),
            (new OnnxExportOptions { Batch = 0 }, "Batch", "Batch must be positive, got 0", "--batch must be positive, got 0"),
        ];
        foreach (var (options, param, message, cli) in cases)
        {
            var e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(model, info, options, false, dir.File("x.onnx")));
            Assert.Equal(param, e.ParamName);
            Assert.Equal(message, e.Message);
            Assert.Equal(cli, OptionNames.Rewrite(e, e.Message));
        }

        var fromInfo = Assert.Throws<OnnxExportException>(() => OnnxExporter.Build(model, Info(model, 0), new OnnxExportOptions { InputWidth = 5 }));
        Assert.Equal("InputHeight must be positive, got 0 (the info's InputSize)", fromInfo.Message);
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Second_check_sizes_are_odd_non_square_and_new()
    {
        foreach (var (h, w) in new[] { (64, 64), (72, 56), (1, 1), (2, 2), (224, 224), (512, 512), (3, 5), (769, 769) })
        {
            var (h2, w2) = OnnxExport.SecondCheckSize(h, w);
            Assert.True(h2 % 2 == 1 && w2 % 2 == 1 && h2 != w2 && (h2, w2) != (h, w) && h2 >= 1 && w2 >= 1, $"{h}×{w} → {h2}×{w2}");
        }
    }

    [Fact]
    public void Cli_exports_72x56_with_a_dynamic_size_and_refuses_bad_sizes()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("arch.json"), OfficialFixture.Config.ToJson());
        var export = CliRunner.Run("export", "onnx", "--arch", dir.File("arch.json"), "--weights", OfficialFixture.File("small-train.pth"),
            "--out", dir.File("m.onnx"), "--input-size", "72,56", "--dynamic-size", "--dynamic-batch");
        Assert.True(export.ExitCode == 0, export.StdOut + export.StdErr);
        Assert.Contains("height×width (exported at 72×56)", export.StdOut, StringComparison.Ordinal);
        Assert.Contains("N×H×W 1×72×56, N×H×W 3×55×49", export.StdOut, StringComparison.Ordinal);
        Assert.Equal(["batch", "", "height", "width"], InputDims(dir.File("m.onnx")).Select(d => d.Param));

        var square = CliRunner.Run("export", "onnx", "--arch", dir.File("arch.json"), "--weights", OfficialFixture.File("small-train.pth"),
            "--out", dir.File("s.onnx"), "--input-size", "40");
        Assert.True(square.ExitCode == 0, square.StdOut + square.StdErr);
        Assert.Equal([1L, 3, 40, 40], InputDims(dir.File("s.onnx")).Select(d => d.Value));

        foreach (var (size, message) in new[] { ("72,56,3", "--input-size '72,56,3': give one size (square) or two, H,W"), ("72,0", "--input-size '72,0': '0' is not a positive integer") })
        {
            var bad = CliRunner.Run("export", "onnx", "--arch", dir.File("arch.json"), "--weights", OfficialFixture.File("small-train.pth"),
                "--out", dir.File("bad.onnx"), "--input-size", size);
            Assert.NotEqual(0, bad.ExitCode);
            Assert.Contains(message, bad.StdErr, StringComparison.Ordinal);
        }

        Assert.Equal(["arch.json", "m.onnx", "s.onnx"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());
    }
}
