using System.Text.Json;
using RepLKNet.Erf;
using RepLKNet.Tests.Support;
using SkiaSharp;

namespace RepLKNet.Tests.Cli;

public sealed class AnalysisCommandsTests
{
    [Fact]
    public void Erf_draws_a_heatmap_writes_ratios_and_the_score_matrix_and_compares_models()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 10, test: 10);
        var one = CliRunner.Run("erf", "--arch", "RepLKNet-FMNIST", "--dataset", "fashion-mnist", "--data", data, "--num-images", "3", "--size", "56",
            "--out", dir.File("a.png"), "--json", dir.File("a.json"), "--npy", dir.File("a.npy"), "--device", "cpu");
        Assert.True(one.ExitCode == 0, one.StdErr + one.StdOut);
        Assert.Contains("random weights", one.StdOut, StringComparison.Ordinal);
        using (var json = JsonDocument.Parse(File.ReadAllText(dir.File("a.json"))))
        {
            var model = json.RootElement.GetProperty("models")[0];
            Assert.False(model.GetProperty("trained").GetBoolean());
            Assert.Equal(3, model.GetProperty("images").GetInt32());
            Assert.Equal(4, model.GetProperty("areas").GetArrayLength());
            // The JSON's ratios are those of the saved score matrix.
            var (values, h, w) = NpyFile.Read(dir.File("a.npy"));
            Assert.Equal((56, 56), (h, w));
            var expected = EffectiveReceptiveField.Areas(EffectiveReceptiveField.Normalize(values), h, w);
            for (int i = 0; i < 4; i++)
            {
                var side = model.GetProperty("areas")[i].GetProperty("side");
                Assert.Equal(expected[i]?.Side, side.ValueKind == JsonValueKind.Null ? null : side.GetInt32());
            }
        }

        using (var png = SKBitmap.Decode(dir.File("a.png")))
        {
            Assert.True(png.Width > 300 && png.Height > 300);
        }

        var compare = CliRunner.Run("erf", "--compare", "resnet18", "--compare", $"mine@{dir.File("a.npy")}", "--dataset", "fashion-mnist", "--data", data,
            "--num-images", "2", "--size", "64", "--out", dir.File("b.png"), "--device", "cpu");
        Assert.True(compare.ExitCode == 0, compare.StdErr + compare.StdOut);
        Assert.Contains("ResNet-18: 2 map(s)", compare.StdOut, StringComparison.Ordinal);
        Assert.Contains("mine: score matrix", compare.StdOut, StringComparison.Ordinal);
        using var both = SKBitmap.Decode(dir.File("b.png"));
        Assert.True(both.Width > 900, $"two panels side by side: width {both.Width}");
    }

    [Theory]
    [InlineData(2, "name a model", "erf")]
    [InlineData(2, "'nosuch'", "erf", "--model", "nosuch")]
    [InlineData(1, "missing.safetensors", "erf", "--weights", "missing.safetensors")]
    [InlineData(1, "gone.npy", "erf", "--compare", "gone.npy")]
    [InlineData(2, "--num-images", "erf", "--arch", "RepLKNet-FMNIST", "--num-images", "0")]
    [InlineData(2, "--table is required", "experiment", "kernel-size")]
    [InlineData(2, "'widest'", "experiment", "kernel-size", "--table", "widest")]
    [InlineData(2, "--budget", "experiment", "kernel-size", "--table", "reparam", "--budget", "soon")]
    [InlineData(2, "--seeds", "experiment", "kernel-size", "--table", "reparam", "--seeds", "1,x")]
    [InlineData(2, "--layout 'huge'", "experiment", "kernel-size", "--table", "reparam", "--layout", "huge")]
    [InlineData(2, "'vgg16'", "experiment", "train", "--model", "vgg16", "--out", "x.safetensors")]
    public void Analysis_commands_reject_bad_input_with_a_named_reason(int exitCode, string expected, params string[] args)
    {
        var result = CliRunner.Run([.. args, "--device", "cpu"]);
        Assert.Equal(exitCode, result.ExitCode);
        Assert.Contains(expected, result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Experiment_kernel_size_runs_a_one_step_table_through_the_cli()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 40, test: 20);
        var result = CliRunner.Run("experiment", "kernel-size", "--table", "last-stage", "--data", data, "--max-steps", "1", "--batch-size", "8",
            "--width", "0.25", "--workers", "1", "--out", dir.File("out"), "--device", "cpu");
        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        Assert.Contains("| last stage 13×13 |", result.StdOut, StringComparison.Ordinal);
        Assert.True(File.Exists(dir.File("out/last-stage.md")));
        Assert.True(File.Exists(dir.File("out/last-k13-seed0.safetensors")));
    }
}
