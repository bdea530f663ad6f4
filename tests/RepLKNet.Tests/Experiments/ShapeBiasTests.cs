using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using RepLKNet.Data;
using RepLKNet.Experiments.ShapeBias;
using RepLKNet.Tests.Support;
using SkiaSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Experiments;

/// <summary>
/// The cue-conflict shape bias: the 16-category mapping against the published lists, the decision rule against libtorch's
/// softmax, the exclusion rule and the figures, the stimulus naming, and the command end to end.
/// </summary>
public sealed partial class ShapeBiasTests
{
    // The reference's lists as published (bethgelab/model-vs-human, modelvshuman/helper/human_categories.py, class
    // HumanCategories), pasted verbatim so that the test parses them independently of the code under test.
    private const string Published = """
        airplane_indices = [404]
        bear_indices = [294, 295, 296, 297]
        bicycle_indices = [444, 671]
        bird_indices = [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23,
                        24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93,
                        94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131,
                        132, 133, 135, 136, 137, 138, 139, 140, 141, 142,
                        143, 144, 145]
        boat_indices = [472, 554, 625, 814, 914]
        bottle_indices = [440, 720, 737, 898, 899, 901, 907]
        car_indices = [436, 511, 817]
        cat_indices = [281, 282, 283, 284, 285, 286]
        chair_indices = [423, 559, 765, 857]
        clock_indices = [409, 530, 892]
        dog_indices = [152, 153, 154, 155, 156, 157, 158, 159, 160, 161,
                       162, 163, 164, 165, 166, 167, 168, 169, 170, 171,
                       172, 173, 174, 175, 176, 177, 178, 179, 180, 181,
                       182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
                       193, 194, 195, 196, 197, 198, 199, 200, 201, 202,
                       203, 205, 206, 207, 208, 209, 210, 211, 212, 213,
                       214, 215, 216, 217, 218, 219, 220, 221, 222, 223,
                       224, 225, 226, 228, 229, 230, 231, 232, 233, 234,
                       235, 236, 237, 238, 239, 240, 241, 243, 244, 245,
                       246, 247, 248, 249, 250, 252, 253, 254, 255, 256,
                       257, 259, 261, 262, 263, 265, 266, 267, 268]
        elephant_indices = [385, 386]
        keyboard_indices = [508, 878]
        knife_indices = [499]
        oven_indices = [766]
        truck_indices = [555, 569, 656, 675, 717, 734, 864, 867]
        """;

    [GeneratedRegex(@"(?<name>[a-z]+)_indices = \[(?<list>[^\]]*)\]")]
    private static partial Regex PublishedList();

    [Fact]
    public void The_mapping_is_the_published_one()
    {
        var published = PublishedList().Matches(Published).ToDictionary(
            m => m.Groups["name"].Value,
            m => m.Groups["list"].Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToList());
        Assert.Equal(16, published.Count);
        Assert.Equal(published.Keys.Order(StringComparer.Ordinal), CueConflictCategories.Names); // sorted, as the reference's sorted(...)
        foreach (var (name, indices) in published)
        {
            Assert.Equal(indices, CueConflictCategories.ImageNetIndices[name]);
        }

        Assert.Equal(49, published["bird"].Count);
        Assert.Equal(109, published["dog"].Count);
        var all = CueConflictCategories.ImageNetIndices.Values.SelectMany(v => v).ToList();
        Assert.Equal(all.Count, all.Distinct().Count()); // no ImageNet class in two categories
        Assert.All(all, i => Assert.InRange(i, 0, 999));
    }

    [Fact]
    public void Decisions_are_libtorchs_softmax_averaged_per_category_then_argmax()
    {
        var rng = new Random(19);
        for (int trial = 0; trial < 300; trial++)
        {
            var logits = new float[1000];
            for (int i = 0; i < logits.Length; i++)
            {
                logits[i] = (float)(rng.NextDouble() * 8 - 4);
            }

            if (trial % 3 == 0)
            {
                // Push one class of a random category up: the decision must follow.
                var name = CueConflictCategories.Names[rng.Next(16)];
                var list = CueConflictCategories.ImageNetIndices[name];
                logits[list[rng.Next(list.Count)]] += 12;
            }

            using var scope = NewDisposeScope();
            var p = nn.functional.softmax(tensor(logits).to(ScalarType.Float64), 0);
            var means = CueConflictCategories.Names.Select(n => p.index_select(0, tensor(CueConflictCategories.ImageNetIndices[n].Select(i => (long)i).ToArray())).mean().item<double>()).ToArray();
            int expected = Array.IndexOf(means, means.Max());
            Assert.Equal(expected, CueConflictCategories.Decide(logits));
            var mine = CueConflictCategories.Probabilities(logits);
            for (int c = 0; c < 16; c++)
            {
                Assert.Equal(means[c], mine[c], 1e-12);
            }
        }

        Assert.Throws<ArgumentException>(() => CueConflictCategories.Decide(new float[999]));
        var nan = new float[1000];
        nan[3] = float.NaN;
        Assert.Throws<ArgumentException>(() => CueConflictCategories.Decide(nan));
    }

    [Fact]
    public void Same_category_images_are_reported_but_left_out_of_the_bias()
    {
        ShapeBiasDecision D(string shape, string texture, string decision) => new($"{shape}/{shape}1-{texture}1.png", shape, texture, decision);
        var report = new ShapeBiasReport("m",
        [
            D("cat", "dog", "cat"), D("cat", "dog", "dog"), D("cat", "dog", "car"), D("cat", "cat", "cat"),
            D("car", "bird", "car"), D("car", "bird", "car"), D("car", "car", "dog"),
        ]);
        Assert.Equal(7, report.Images);
        Assert.Equal(2, report.SameCategory);
        Assert.Equal(3, report.ShapeDecisions); // cat, car, car (the same-category cat does not count)
        Assert.Equal(1, report.TextureDecisions);
        Assert.Equal(0.75, report.ShapeBias, 12);
        Assert.Equal(3.0 / 5, report.ShapeAccuracy, 12);
        Assert.Equal(1.0 / 5, report.TextureAccuracy, 12);
        Assert.Equal(3.0 / 7, report.FractionCorrectShape, 12); // model-vs-human's denominator keeps them
        var cat = report.PerCategory.Single(c => c.Category == "cat");
        Assert.Equal((4, 1, 1, 0.5), (cat.Images, cat.ShapeDecisions, cat.TextureDecisions, cat.ShapeBias));
        Assert.Equal(1.0, report.PerCategory.Single(c => c.Category == "car").ShapeBias);
        Assert.Equal(["car", "cat"], report.PerCategory.Select(c => c.Category));
        Assert.True(double.IsNaN(new ShapeBiasReport("x", [D("cat", "dog", "car")]).ShapeBias));

        // The JSON round trip keeps the decisions and so every figure.
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("r.json"), ShapeBiasJson.ToJson(report).ToJsonString());
        var back = ShapeBiasJson.Read(dir.File("r.json"));
        Assert.Equal(report.Decisions, back.Decisions);
        Assert.Equal(report.ShapeBias, back.ShapeBias);
    }

    [Theory]
    [InlineData("cat", "cat1-elephant2.png", null)]
    [InlineData("cat", "cat10-cat3.png", null)]
    [InlineData("cat", "cat1elephant2.png", "not a cue-conflict stimulus name")]
    [InlineData("cat", "Cat1-elephant2.png", "not a cue-conflict stimulus name")]
    [InlineData("cat", "cat1-elephant2.jpg", "not a cue-conflict stimulus name")]
    [InlineData("cat", "cat-elephant2.png", "not a cue-conflict stimulus name")]
    [InlineData("cat", "cat1-zebra2.png", "the texture 'zebra' is not one of the 16 categories")]
    [InlineData("cat", "dog1-elephant2.png", "its shape 'dog' is not its folder's category 'cat'")]
    public void Stimulus_names_are_parsed_or_reported_never_guessed(string folder, string name, string? error)
    {
        if (error is null)
        {
            var s = CueConflictSet.Parse(Path.Combine("d", folder, name), folder);
            Assert.Equal(folder, s.Shape);
            Assert.Equal(name.Split('-')[1].TrimEnd(".png".ToCharArray()).TrimEnd("0123456789".ToCharArray()), s.Texture);
        }
        else
        {
            var e = Assert.Throws<DatasetException>(() => CueConflictSet.Parse(Path.Combine("d", folder, name), folder));
            Assert.Contains(name, e.Message, StringComparison.Ordinal);
            Assert.Contains(error, e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Folder_layout_errors_name_the_folder_or_file()
    {
        using var dir = new TempDirectory();
        Assert.Contains("no such folder", Assert.Throws<DatasetException>(() => CueConflictSet.Read(dir.File("nope"))).Message, StringComparison.Ordinal);
        Directory.CreateDirectory(dir.File("empty"));
        Assert.Contains("no cue-conflict stimuli", Assert.Throws<DatasetException>(() => CueConflictSet.Read(dir.File("empty"))).Message, StringComparison.Ordinal);
        Directory.CreateDirectory(Path.Combine(dir.File("zoo"), "zebra"));
        Assert.Contains("'zebra' is not one of the 16 categories", Assert.Throws<DatasetException>(() => CueConflictSet.Read(dir.File("zoo"))).Message, StringComparison.Ordinal);
        Directory.CreateDirectory(dir.File("loose"));
        File.WriteAllText(Path.Combine(dir.File("loose"), "cat1-dog1.png"), "x");
        Assert.Contains("beside the category folders", Assert.Throws<DatasetException>(() => CueConflictSet.Read(dir.File("loose"))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_evaluation_decides_each_image_from_the_models_logits()
    {
        using var dir = new TempDirectory();
        string data = WriteStimuli(dir.File("stimuli"));
        var stimuli = CueConflictSet.Read(data);
        Assert.Equal(8, stimuli.Count);
        Assert.Equal(2, stimuli.Count(s => !s.IsConflict));

        // A seeded random linear "classifier" on a 4×4 average pool: the decisions must be those recomputed from the very
        // logits it produced, through libtorch's softmax (independently of the code under test).
        var generator = new Generator(seed: 7);
        using var weight = randn([1000, 48], generator: generator);
        var produced = new List<float[]>();
        var report = ShapeBiasEvaluation.Run(stimuli, "probe", 64, 0.875, Normalization.ImageNet, (samples, n, logits) =>
        {
            using var scope = NewDisposeScope();
            var x = nn.functional.adaptive_avg_pool2d(tensor(samples, [n, 3, 64, 64]), [4, 4]).reshape(n, 48);
            var y = x.matmul(weight.t()).mul(5).contiguous();
            y.data<float>().CopyTo(logits);
            for (int i = 0; i < n; i++)
            {
                produced.Add(logits.AsSpan(i * 1000, 1000).ToArray());
            }
        }, batchSize: 3);
        Assert.Equal(8, report.Decisions.Count);
        for (int i = 0; i < 8; i++)
        {
            using var scope = NewDisposeScope();
            var p = nn.functional.softmax(tensor(produced[i]).to(ScalarType.Float64), 0);
            var means = CueConflictCategories.Names.Select(n => p.index_select(0, tensor(CueConflictCategories.ImageNetIndices[n].Select(k => (long)k).ToArray())).mean().item<double>()).ToArray();
            Assert.Equal(CueConflictCategories.Names[Array.IndexOf(means, means.Max())], report.Decisions[i].Decision);
            Assert.Equal(stimuli[i].File, report.Decisions[i].File);
        }
    }

    [Fact]
    public void The_command_runs_end_to_end_with_json_figure_and_comparison()
    {
        using var dir = new TempDirectory();
        string data = WriteStimuli(dir.File("stimuli"));
        string json = dir.File("r18.json"), png = dir.File("bias.png");
        var first = CliRunner.Run("shape-bias", "--data", data, "--arch", "resnet18", "--json", json, "--device", "cpu");
        Assert.True(first.ExitCode == 0, first.StdErr + first.StdOut);
        Assert.Contains("random initialization", first.StdOut, StringComparison.Ordinal);
        Assert.Contains("8 image(s), 6 cue-conflict and 2 same-category", Flat(first.StdOut), StringComparison.Ordinal);
        Assert.Contains("reference transform: 224×224 as they are", Flat(first.StdOut), StringComparison.Ordinal);
        var doc = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal(8, doc["decisions"]!.AsArray().Count);
        Assert.Equal(Path.Combine("car", "car1-bird1.png"), (string)doc["decisions"]![0]!["file"]!); // relative to --data
        Assert.Equal("reference", (string)doc["eval_transform"]!);
        Assert.Equal(16, doc["mapping"]!.AsObject().Count);
        Assert.Equal(2, (int)doc["same_category_left_out"]!);
        int shape = (int)doc["shape_decisions"]!, texture = (int)doc["texture_decisions"]!;
        Assert.Equal(shape + texture == 0 ? null : (double)shape / (shape + texture), (double?)doc["shape_bias"]);

        var second = CliRunner.Run("shape-bias", "--data", data, "--arch", "mobilenetv2", "--label", "MNv2", "--compare", json, "--plot", png, "--device", "cpu");
        Assert.True(second.ExitCode == 0, second.StdErr + second.StdOut);
        Assert.Contains("compared: ResNet-18", second.StdOut, StringComparison.Ordinal);
        using var figure = SKBitmap.Decode(png);
        Assert.True(figure.Width > 400 && figure.Height > 400, $"{figure.Width}×{figure.Height}");

        var bad = CliRunner.Run("shape-bias", "--data", dir.File("nope"), "--arch", "resnet18");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("no such folder", bad.StdErr, StringComparison.Ordinal);
        var noModel = CliRunner.Run("shape-bias", "--data", data);
        Assert.Equal(2, noModel.ExitCode);
        Assert.Contains("name a model", noModel.StdErr, StringComparison.Ordinal);
        var fmnist = CliRunner.Run("shape-bias", "--data", data, "--arch", "RepLKNet-FMNIST");
        Assert.NotEqual(0, fmnist.ExitCode);
        Assert.Contains("ImageNet-1k classifier", fmnist.StdErr, StringComparison.Ordinal);
    }

    /// <summary>
    /// An ImageNet-1k checkpoint (a tiny RepLKNet with 1,000 classes and a recorded 64-pixel eval transform) decides the
    /// same on TorchSharp and as an ONNX export on ONNX Runtime, each with the preprocessing its file records.
    /// </summary>
    [Fact]
    public void A_checkpoint_and_its_onnx_export_decide_alike()
    {
        using var dir = new TempDirectory();
        string data = WriteStimuli(dir.File("stimuli"));
        var config = new RepLKNet.Models.RepLKNetConfig
        {
            LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 3, NumClasses = 1000,
        };
        string checkpoint = dir.File("tiny1k.safetensors");
        manual_seed(3);
        using (var model = new RepLKNet.Models.RepLKNetModel(config))
        {
            RandomModels.RandomizeBatchNorms(model, new Generator(seed: 4));
            RepLKNet.Checkpoints.CheckpointFile.WriteRepLKNet(checkpoint, RepLKNet.Checkpoints.StateDicts.Ordered(model),
                new RepLKNet.Checkpoints.CheckpointMetadata("tiny1k", config, RepLKNet.Models.ModelForm.Train,
                    Preprocessing: new RepLKNet.Checkpoints.Preprocessing(64, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 0.9)));
        }

        string onnx = dir.File("tiny1k.onnx");
        var export = CliRunner.Run("export", "onnx", "--weights", checkpoint, "--out", onnx, "--dynamic-batch", "--device", "cpu");
        Assert.True(export.ExitCode == 0, export.StdErr + export.StdOut);
        var torch = CliRunner.Run("shape-bias", "--data", data, "--weights", checkpoint, "--eval-transform", "recorded", "--json", dir.File("t.json"), "--device", "cpu");
        Assert.True(torch.ExitCode == 0, torch.StdErr + torch.StdOut);
        Assert.Contains("recorded eval transform 64×64, crop 0.9", Flat(torch.StdOut), StringComparison.Ordinal);
        var ort = CliRunner.Run("shape-bias", "--data", data, "--onnx", onnx, "--eval-transform", "recorded", "--batch-size", "3", "--json", dir.File("o.json"));
        Assert.True(ort.ExitCode == 0, ort.StdErr + ort.StdOut);
        Assert.Contains("recorded eval transform 64×64, crop 0.9", Flat(ort.StdOut), StringComparison.Ordinal);
        var a = ShapeBiasJson.Read(dir.File("t.json"));
        var b = ShapeBiasJson.Read(dir.File("o.json"));
        Assert.Equal(a.Decisions.Select(d => d.Decision), b.Decisions.Select(d => d.Decision));
        Assert.Null(a.Note); // trained (here: given) weights carry no random-initialization note
    }

    /// <summary>
    /// The reference transform (model-vs-human's for its 224-pixel stimuli) hands an image of the model's size to it
    /// unresampled: exactly (pixel / 255 − mean) / std; the recorded one resizes and crops (here: differs).
    /// </summary>
    [Fact]
    public void The_reference_transform_only_normalizes_an_image_of_the_models_size()
    {
        using var dir = new TempDirectory();
        string data = WriteStimuli(dir.File("stimuli"));
        var stimuli = CueConflictSet.Read(data).Take(1).ToList();
        var normalization = new Normalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        float[]? seen = null;
        void Capture(float[] samples, int n, float[] logits) => seen = (float[])samples.Clone();
        ShapeBiasEvaluation.Run(stimuli, "m", 96, 0.875, normalization, Capture);
        var image = ImageDecoder.Decode(stimuli[0].File, 3);
        for (int c = 0; c < 3; c++)
        {
            var plane = image.Channel(c);
            for (int i = 0; i < 96 * 96; i++)
            {
                double expected = (plane[i] / 255.0 - normalization.Mean[c]) / normalization.Std[c];
                Assert.Equal(expected, seen![c * 96 * 96 + i], 1e-5);
            }
        }

        float[] reference = seen!;
        ShapeBiasEvaluation.Run(stimuli, "m", 96, 0.875, normalization, Capture, transform: ShapeBiasTransform.Recorded);
        Assert.NotEqual(reference, seen);
    }

    [Theory]
    [InlineData(2, "--plot '{dir}' is a folder", "--arch", "resnet18", "--plot", "{dir}")]
    [InlineData(2, "--json '{dir}/none/x.json': its folder", "--arch", "resnet18", "--json", "{dir}/none/x.json")]
    [InlineData(2, "--eval-transform 'crop': use reference or recorded", "--arch", "resnet18", "--eval-transform", "crop")]
    [InlineData(2, "--onnx runs an export on its own", "--arch", "resnet18", "--onnx", "m.onnx")]
    [InlineData(2, "--batch-size 0 must be positive", "--arch", "resnet18", "--batch-size", "0")]
    [InlineData(1, "not a readable shape-bias report", "--arch", "resnet18", "--compare", "{dir}/stimuli/car/car1-bird1.png")]
    [InlineData(1, "could not be decoded", "--arch", "resnet18", "--data", "{dir}/corrupt")]
    [InlineData(1, "a file, not the folder of cue-conflict stimuli", "--arch", "resnet18", "--data", "{dir}/stimuli/car/car1-bird1.png")]
    public void Bad_input_is_one_line_naming_the_flag_or_file(int exitCode, string expected, params string[] args)
    {
        using var dir = new TempDirectory();
        string data = WriteStimuli(dir.File("stimuli"));
        Directory.CreateDirectory(Path.Combine(dir.File("corrupt"), "cat"));
        File.WriteAllBytes(Path.Combine(dir.File("corrupt"), "cat", "cat1-bird1.png"), File.ReadAllBytes(Path.Combine(data, "car", "car1-bird1.png"))[..100]);
        var full = args.Select(a => a.Replace("{dir}", dir.Path, StringComparison.Ordinal)).ToList();
        if (!full.Contains("--data"))
        {
            full.InsertRange(0, ["--data", data]);
        }

        var result = CliRunner.Run(["shape-bias", .. full, "--device", "cpu"]);
        Assert.Equal(exitCode, result.ExitCode);
        Assert.Contains(expected.Replace("{dir}", dir.Path, StringComparison.Ordinal), result.StdErr, StringComparison.Ordinal);
        Assert.Single(result.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("replknet:", StringComparison.Ordinal));
        Assert.DoesNotContain("   at ", result.StdErr, StringComparison.Ordinal);
    }

    /// <summary>The console wraps long lines: compare with runs of white space as one space.</summary>
    private static string Flat(string text) => Regex.Replace(text, @"\s+", " ");

    /// <summary>4 categories × 2 stimuli of 96×96 coloured noise (one of each pair same-category for cat and car).</summary>
    private static string WriteStimuli(string root)
    {
        var names = new[] { ("cat", "cat1-dog2.png"), ("cat", "cat2-cat1.png"), ("car", "car1-bird1.png"), ("car", "car3-car2.png"), ("dog", "dog1-elephant1.png"),
            ("dog", "dog2-knife1.png"), ("oven", "oven1-truck4.png"), ("oven", "oven2-clock1.png") };
        var rng = new Random(5);
        foreach (var (folder, name) in names)
        {
            Directory.CreateDirectory(Path.Combine(root, folder));
            using var bitmap = new SKBitmap(96, 96, SKColorType.Rgba8888, SKAlphaType.Opaque);
            for (int y = 0; y < 96; y++)
            {
                for (int x = 0; x < 96; x++)
                {
                    bitmap.SetPixel(x, y, new SKColor((byte)rng.Next(256), (byte)rng.Next(256), (byte)rng.Next(256)));
                }
            }

            using var png = bitmap.Encode(SKEncodedImageFormat.Png, 100);
            File.WriteAllBytes(Path.Combine(root, folder, name), png.ToArray());
        }

        return root;
    }
}
