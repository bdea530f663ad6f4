using Microsoft.ML.OnnxRuntime;
using RepLKNet.Checkpoints;
using RepLKNet.Export;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Export;

using static OnnxTestModels;

/// <summary>ONNX export against the official fixture and TorchSharp, ONNX Runtime inference, bad input.</summary>
public sealed class OnnxExportTests
{
    public OnnxExportTests() => Torch.EnsureLoaded();

    private static OnnxModelInfo Info(RepLKNetModel model, int size, IReadOnlyList<string>? names = null, string form = "deploy") =>
        new("custom", model.Config.ToJson(), size, model.Config.InChannels, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.875, names, form);

    private static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [InlineData(false, 17)]
    [InlineData(true, 17)]
    [InlineData(false, 20)]
    public void Official_train_checkpoint_exports_to_the_official_deploy_logits(bool fuseBn, int opset)
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string path = dir.File("small.onnx");
        var report = OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Opset = opset, Batch = 2 }, fuseBn, path);
        Assert.Equal(5, report.Switched);
        Assert.True(report.Relative <= OnnxExport.Tolerance);
        var logits = RunOrt(path, OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64)).Single();
        var official = OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10);
        Assert.True(MaxAbs(logits, official) <= 1e-5, $"max |ORT − official deploy| = {MaxAbs(logits, official)}");
        // The graph really is the requested form: BatchNormalization only for pre-BNs and the head norm when fused.
        var graph = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph;
        int bns = graph.Node.Count(n => n.OpType == "BatchNormalization");
        int preBns = 2 * (1 + 1 + 2 + 1) + 1;
        Assert.Equal(fuseBn ? preBns : preBns + graph.Node.Count(n => n.OpType == "Conv") - 5, bns);
        Assert.Equal(opset >= 20, graph.Node.Any(n => n.OpType == "Gelu"));
        Assert.Equal(opset < 20, graph.Node.Any(n => n.OpType == "Erf"));
        Assert.Contains(graph.Node, n => n.OpType == "Conv" && n.Attribute.Any(a => a.Name == "group" && a.I == 24) &&
                                          n.Attribute.Any(a => a.Name == "kernel_shape" && a.Ints[0] == 13));
    }

    [Fact]
    public void Dynamic_batch_runs_two_batch_sizes_and_small_kernel_null_exports()
    {
        using var dir = new TempDirectory();
        var generator = new Generator((ulong)Environment.TickCount);
        using var model = new RepLKNetModel(OfficialFixture.Config with { SmallKernel = null, LargeKernelSizes = [7, 9, 5, 3] });
        RandomModels.RandomizeBatchNorms(model, generator);
        model.eval();
        string path = dir.File("dyn.onnx");
        var report = OnnxExport.Run(model, Info(model, 96), new OnnxExportOptions { DynamicBatch = true }, fuseBn: false, path, seed: 5);
        Assert.Equal([1, 3], report.CheckBatches);
        foreach (int batch in (int[])[1, 4])
        {
            using var x = randn([batch, 3, 96, 96], generator: generator);
            var onnx = RunOrt(path, x).Single();
            using var noGrad = no_grad();
            using var expected = model.call(x);
            Assert.Equal(expected.shape, onnx.shape);
            Assert.True(MaxAbs(onnx, expected) <= 1e-5 * Math.Max(1, expected.abs().max().item<float>()), $"batch {batch}: {MaxAbs(onnx, expected)}");
        }

        var input = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph.Input.Single();
        Assert.Equal("batch", input.Type.TensorType.Shape.Dim[0].DimParam);
    }

    [Fact]
    public void Features_export_gives_every_out_index_like_the_official_backbone()
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string path = dir.File("features.onnx");
        OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Batch = 2, Features = true }, fuseBn: false, path);
        var features = RunOrt(path, OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64));
        Assert.Equal(4, features.Count);
        long[][] shapes = [[2, 16, 16, 16], [2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]];
        for (int i = 0; i < 4; i++)
        {
            var official = OfficialFixture.ReadBin($"small-features-train-s{i}.bin", shapes[i]);
            Assert.True(MaxAbs(features[i], official) <= 2e-6, $"stage {i}: {MaxAbs(features[i], official)}");
        }

        using var session = new InferenceSession(path);
        Assert.Equal(["features.0", "features.1", "features.2", "features.3"], session.OutputNames);

        // out_indices picks the stages, as in the official backbone.
        using var backbone = new RepLKNetModel(OfficialFixture.Config with { NumClasses = null, OutIndices = [1, 3] });
        backbone.eval();
        OnnxExport.Run(backbone, Info(backbone, 64), new OnnxExportOptions { Features = true }, fuseBn: true, dir.File("b.onnx"));
        using var s2 = new InferenceSession(dir.File("b.onnx"));
        Assert.Equal(["features.1", "features.3"], s2.OutputNames);
    }

    [Fact]
    public void Large_models_put_their_weights_in_external_data()
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string path = dir.File("ext.onnx");
        var report = OnnxExport.Run(model, Info(model, 64), new OnnxExportOptions { Batch = 2, ExternalDataThreshold = 0 }, fuseBn: false, path);
        Assert.Equal(path + ".data", report.DataPath);
        Assert.True(new FileInfo(path).Length < 100_000 && new FileInfo(report.DataPath!).Length > 1_000_000);
        var logits = RunOrt(path, OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64)).Single();
        Assert.True(MaxAbs(logits, OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10)) <= 1e-5);
        Assert.Equal(["ext.onnx", "ext.onnx.data"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());
    }

    [Fact]
    public void Unsupported_models_and_options_fail_clearly_and_leave_nothing()
    {
        using var dir = new TempDirectory();
        using var mobile = new MobileNetV2(MobileNetV2Config.SmallImages(1, 10, 0.5));
        using var model = new RepLKNetModel(OfficialFixture.Config);
        var info = Info(model, 64);
        var e = Assert.Throws<OnnxExportException>(() => OnnxExporter.Build(mobile, info, new OnnxExportOptions()));
        Assert.Contains("MobileNetV2 is not supported", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<OnnxExportException>(() => OnnxExporter.Build(model, info, new OnnxExportOptions()));
        Assert.Contains("training form", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(model, info, new OnnxExportOptions { Opset = 9 }, false, dir.File("x.onnx")));
        Assert.Contains("opset 9", e.Message, StringComparison.Ordinal);
        using var backbone = new RepLKNetModel(OfficialFixture.Config with { NumClasses = null, OutIndices = [3] });
        e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(backbone, Info(backbone, 64), new OnnxExportOptions(), false, dir.File("y.onnx")));
        Assert.Equal("Features", e.ParamName);
        Assert.StartsWith("Features is required", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<OnnxExportException>(() => OnnxExport.Run(model, info, new OnnxExportOptions(), false, dir.File("missing/z.onnx")));
        Assert.Contains("does not exist", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Onnx_classifier_reads_metadata_and_matches_the_torchsharp_model_on_images()
    {
        using var dir = new TempDirectory();
        using var model = OfficialTrainModel();
        string[] names = [.. Enumerable.Range(0, 10).Select(i => $"thing {i}")];
        string path = dir.File("cls.onnx");
        OnnxExport.Run(model, Info(model, 64, names), new OnnxExportOptions { DynamicBatch = true }, fuseBn: true, path);
        var rng = new Random(Environment.TickCount);
        var files = new List<string>();
        for (int i = 0; i < 5; i++)
        {
            using var bitmap = new SKBitmap(40 + 13 * i, 70 - 5 * i);
            for (int y = 0; y < bitmap.Height; y++)
            {
                for (int x = 0; x < bitmap.Width; x++)
                {
                    bitmap.SetPixel(x, y, new SKColor((byte)rng.Next(256), (byte)rng.Next(256), (byte)rng.Next(256)));
                }
            }

            files.Add(dir.File($"img{i}.png"));
            using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
            File.WriteAllBytes(files[^1], data.ToArray());
        }

        using var classifier = new OnnxClassifier(path);
        Assert.Equal(64, classifier.Info.InputSize);
        Assert.Equal(names, classifier.Info.ClassNames);
        Assert.Null(classifier.FixedBatch);
        var predictions = classifier.Predict(files, k: 3, batchSize: 2);
        Assert.Equal(files, predictions.Select(p => p.Source));

        // The same samples through the TorchSharp model: same top-3 and probabilities.
        var pipeline = new RepLKNet.Data.Transforms.SamplePipeline(new RepLKNet.Data.Transforms.AugmentOptions { CropPct = 0.875 },
            RepLKNet.Data.Normalization.ImageNet, 3, 64);
        for (int i = 0; i < files.Count; i++)
        {
            var sample = new float[pipeline.SampleLength];
            pipeline.Eval(RepLKNet.Data.ImageDecoder.Decode(files[i], 3), sample);
            using var noGrad = no_grad();
            using var probabilities = nn.functional.softmax(model.call(tensor(sample, [1, 3, 64, 64])), 1).squeeze(0);
            var (values, indexes) = probabilities.topk(3);
            for (int j = 0; j < 3; j++)
            {
                Assert.Equal((int)indexes[j].item<long>(), predictions[i].Top[j].Index);
                Assert.Equal($"thing {indexes[j].item<long>()}", predictions[i].Top[j].Label);
                Assert.Equal(values[j].item<float>(), predictions[i].Top[j].Probability, 1e-5f);
            }
        }
    }

    [Fact]
    public void Cli_exports_predicts_and_benchmarks_and_reports_bad_input()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("arch.json"), OfficialFixture.Config.ToJson());
        var export = CliRunner.Run("export", "onnx", "--arch", dir.File("arch.json"), "--weights", OfficialFixture.File("small-train.pth"),
            "--out", dir.File("m.onnx"), "--input-size", "64", "--dynamic-batch", "--fuse-bn");
        Assert.True(export.ExitCode == 0, export.StdOut + export.StdErr);
        Assert.Contains("of the largest output", export.StdOut, StringComparison.Ordinal);
        var logits = RunOrt(dir.File("m.onnx"), OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64)).Single();
        Assert.True(MaxAbs(logits, OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10)) <= 1e-5);

        using (var bitmap = new SKBitmap(80, 64))
        {
            bitmap.Erase(new SKColor(30, 200, 90));
            using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
            File.WriteAllBytes(dir.File("a.png"), data.ToArray());
        }

        var predict = CliRunner.Run("predict", "--onnx", dir.File("m.onnx"), dir.File("a.png"));
        Assert.True(predict.ExitCode == 0, predict.StdOut + predict.StdErr);
        Assert.Contains("1. class ", predict.StdOut, StringComparison.Ordinal);
        var bench = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--batch", "2", "--reps", "1", "--json", dir.File("b.json"));
        Assert.True(bench.ExitCode == 0, bench.StdOut + bench.StdErr);
        Assert.Contains("ONNX Runtime / TorchSharp", bench.StdOut, StringComparison.Ordinal);
        Assert.Contains("peak RSS", bench.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"warm-up runs before timing, by row: \d+, \d+, \d+, \d+ \(until the JIT had settled\)", bench.StdOut);
        using (var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("b.json"))))
        {
            foreach (string engine in new[] { "ort", "torchsharp", "torchsharp_libtorch_dw" })
            {
                Assert.True(doc.RootElement.GetProperty($"{engine}_images_per_s").GetDouble() > 0);
                Assert.InRange(doc.RootElement.GetProperty($"{engine}_peak_rss_bytes").GetInt64(), RepLKNet.Tests.Cli.BenchCommandsTests.MinProcessBytes, RepLKNet.Tests.Cli.BenchCommandsTests.MaxProcessBytes);
            }

            Assert.True(doc.RootElement.GetProperty("peak_rss_since_reset").GetBoolean());
            // The frozen copy (64×64: stage-0 maps of 16, the small-map regime), its outputs against the deploy model's.
            Assert.True(doc.RootElement.GetProperty("frozen_images_per_s").GetDouble() > 0);
            Assert.True(doc.RootElement.GetProperty("frozen_channels_last").GetBoolean());
            Assert.Equal(get_num_threads() >= 2, doc.RootElement.GetProperty("frozen_batch_parallel").GetBoolean());
            Assert.InRange(doc.RootElement.GetProperty("frozen_max_abs_diff").GetDouble(), 0, 1e-3);
            // Each of the 4 rows warmed up twice, then until the JIT had settled (at least 2 more runs).
            var warm = doc.RootElement.GetProperty("warmup_runs").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(4, warm.Length);
            Assert.All(warm, n => Assert.True(n >= RepLKNet.Benchmarks.OnnxBenchmark.DefaultWarmup + 2, $"{n} warm-up runs"));
        }

        var exact = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--batch", "2", "--reps", "1", "--warmup", "1", "--json", dir.File("w.json"));
        Assert.True(exact.ExitCode == 0, exact.StdOut + exact.StdErr);
        using (var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("w.json"))))
        {
            Assert.Equal([1, 1, 1, 1], doc.RootElement.GetProperty("warmup_runs").EnumerateArray().Select(e => e.GetInt32()));
        }

        var negative = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--warmup", "-1");
        Assert.Equal(2, negative.ExitCode);
        Assert.Contains("--warmup -1: must be 0 or more", negative.StdErr, StringComparison.Ordinal);

        // Bad options are refused before anything runs, naming the option.
        var parentIsFile = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--json", Path.Combine(dir.File("a.png"), "b.json"));
        Assert.Equal(2, parentIsFile.ExitCode);
        Assert.Contains("--json", parentIsFile.StdErr + parentIsFile.StdOut, StringComparison.Ordinal);
        var zeroBatch = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--batch", "0");
        Assert.Equal(2, zeroBatch.ExitCode);
        Assert.Contains("--batch 0", zeroBatch.StdErr + zeroBatch.StdOut, StringComparison.Ordinal);
        var cuda = CliRunner.Run("bench", "onnx", "--onnx", dir.File("m.onnx"), "--device", "cuda");
        Assert.Equal(2, cuda.ExitCode);
        Assert.Contains("--device cuda", cuda.StdErr + cuda.StdOut, StringComparison.Ordinal);

        var missing = CliRunner.Run("export", "onnx", "--arch", dir.File("arch.json"), "--weights", dir.File("nope.pth"), "--out", dir.File("n.onnx"));
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("nope.pth", missing.StdErr, StringComparison.Ordinal);
        Assert.False(File.Exists(dir.File("n.onnx")));
        var notOnnx = CliRunner.Run("predict", "--onnx", dir.File("a.png"), dir.File("a.png"));
        Assert.Equal(1, notOnnx.ExitCode);
        Assert.Contains("a.png", notOnnx.StdErr, StringComparison.Ordinal);
        Assert.Equal(["a.png", "arch.json", "b.json", "m.onnx", "w.json"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());
    }
}
