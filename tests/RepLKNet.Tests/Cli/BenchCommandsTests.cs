using System.Text.Json;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class BenchCommandsTests
{
    private static readonly string[] Implementations = ["ours", "torch"];

    /// <summary>Bounds of a small run's peak RSS: above any .NET process with libtorch loaded, below this machine's memory (bytes, not KiB or MiB).</summary>
    internal const long MinProcessBytes = 50L << 20, MaxProcessBytes = 64L << 30;

    [Fact]
    public void Bench_dwconv_checks_times_both_implementations_and_writes_the_documented_json()
    {
        using var dir = new TempDirectory();
        string json = dir.File("dw.json");
        string png = dir.File("dw.png");
        var result = CliRunner.Run("bench", "dwconv", "--device", "cpu", "--batch", "2", "--channels", "4", "--sizes", "8,11",
            "--kernels", "3,9", "--layers", "2", "--reps", "1", "--pass", "all", "--check", "--json", json, "--plot", png);

        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Contains("Measured FMA peak", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("speed-up", result.StdOut, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var machine = doc.RootElement.GetProperty("machine");
        Assert.Equal("cpu", machine.GetProperty("device").GetString());
        Assert.True(machine.GetProperty("peak_gflops").GetDouble() > 0);
        var rows = doc.RootElement.GetProperty("results").EnumerateArray().ToList();
        // 2 sizes × 2 kernels × 4 passes × 2 implementations.
        Assert.Equal(32, rows.Count);
        Assert.Equal(["bwd", "dgrad", "fwd", "wgrad"], rows.Select(r => r.GetProperty("pass").GetString()!).Distinct().Order());
        Assert.All(rows, r =>
        {
            Assert.Contains(r.GetProperty("impl").GetString(), Implementations);
            Assert.Equal(2, r.GetProperty("N").GetInt32());
            Assert.Equal(4, r.GetProperty("C").GetInt32());
            Assert.Equal(2, r.GetProperty("layers").GetInt32());
            Assert.True(r.GetProperty("ms").GetDouble() > 0);
            Assert.True(r.GetProperty("gflops").GetDouble() > 0);
            // The process's peak RSS over the cell's timed runs: a .NET + libtorch process, in bytes, since a reset.
            Assert.InRange(r.GetProperty("peak_rss_bytes").GetInt64(), MinProcessBytes, MaxProcessBytes);
            Assert.True(r.GetProperty("peak_rss_since_reset").GetBoolean());
        });
        Assert.Contains("peak RSS", result.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"\d+ MiB", result.StdOut);
        Assert.True(new FileInfo(png).Length > 1000);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(png)[..4]);
    }

    [Fact]
    public void Bench_model_times_a_training_step_both_ways()
    {
        using var dir = new TempDirectory();
        string config = dir.File("tiny.json");
        File.WriteAllText(config, """{"large_kernel_sizes":[7,5],"layers":[1,1],"channels":[8,16],"small_kernel":3,"num_classes":5}""");
        string json = dir.File("model.json");
        var result = CliRunner.Run("bench", "model", "--arch", config, "--batch", "2", "--resolution", "32", "--mode", "train", "--reps", "1", "--json", json);

        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Contains("speed-up ours/torch", result.StdOut, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var rows = doc.RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["ours", "torch"], rows.Select(r => r.GetProperty("impl").GetString()));
        Assert.All(rows, r =>
        {
            Assert.True(r.GetProperty("images_per_s").GetDouble() > 0);
            Assert.InRange(r.GetProperty("peak_rss_bytes").GetInt64(), MinProcessBytes, MaxProcessBytes);
            Assert.True(r.GetProperty("peak_rss_since_reset").GetBoolean());
            Assert.True(r.GetProperty("warmup").GetInt32() >= 3 + 2); // training's default, then at least 2 runs while the JIT settles
            Assert.True(r.GetProperty("minor_faults_per_rep").GetInt64() >= 0);
        });
        Assert.Contains("page faults/rep", result.StdOut, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("infer", null, 1)]
    [InlineData("infer", "0", 0)]
    [InlineData("train", "2", 2)]
    public void Bench_model_warms_up_as_asked_or_by_mode(string mode, string? warmup, int expected)
    {
        using var dir = new TempDirectory();
        string config = dir.File("tiny.json");
        File.WriteAllText(config, """{"large_kernel_sizes":[7,5],"layers":[1,1],"channels":[8,16],"small_kernel":3,"num_classes":5}""");
        string json = dir.File("model.json");
        string[] args = ["bench", "model", "--arch", config, "--batch", "2", "--resolution", "32", "--mode", mode, "--impl", "ours", "--reps", "1", "--json", json];
        var result = CliRunner.Run(warmup is null ? args : [.. args, "--warmup", warmup]);

        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var row = Assert.Single(doc.RootElement.GetProperty("results").EnumerateArray());
        int runs = row.GetProperty("warmup").GetInt32();
        Assert.Contains($"after {runs} warm-up", result.StdOut, StringComparison.Ordinal);
        if (warmup is null)
        {
            // The mode's count, then runs until the JIT has settled (at least 2).
            Assert.True(runs >= expected + 2, $"{runs} warm-up runs");
        }
        else
        {
            Assert.Equal(expected, runs); // exactly as asked
        }
    }

    [Fact]
    public void The_library_rejects_a_negative_warmup_and_an_unknown_mode()
    {
        var config = RepLKNet.Models.ModelRegistry.Resolve("RepLKNet-FMNIST").Config;
        Assert.Throws<ArgumentException>("warmup", () => RepLKNet.Benchmarks.ModelBenchmark.Run(config, 1, 28, "train", [RepLKNet.Ops.DepthwiseBackend.Ours], TorchSharp.torch.CPU, 1, 1, warmup: -1));
        Assert.Throws<ArgumentException>("mode", () => RepLKNet.Benchmarks.ModelBenchmark.DefaultWarmup("sideways"));
    }

    [Theory]
    [InlineData("fwd", "fwd")]
    [InlineData("bwd", "dgrad,wgrad,bwd")]
    [InlineData("all", "fwd,dgrad,wgrad,bwd")]
    [InlineData("wgrad, FWD", "fwd,wgrad")]
    [InlineData("dgrad,bwd", "dgrad,wgrad,bwd")]
    public void Bench_passes_parse_lists_in_a_fixed_order(string pass, string expected) =>
        Assert.Equal(expected.Split(','), RepLKNet.Benchmarks.BenchPasses.Parse(pass));

    [Theory]
    [InlineData("dwconv", "--kernels", "4")]
    [InlineData("dwconv", "--pass", "sideways")]
    [InlineData("dwconv", "--impl", "cudnn")]
    [InlineData("dwconv", "--sizes", "0")]
    [InlineData("model", "--warmup", "-1")]
    [InlineData("scale", "--warmup", "-1")]
    [InlineData("model", "--reps", "0")]
    [InlineData("model", "--mode", "sideways")]
    public void Bench_rejects_bad_options_with_exit_2(string bench, string option, string value)
    {
        var result = CliRunner.Run("bench", bench, "--device", "cpu", option, value);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(option, result.StdErr, StringComparison.Ordinal);
    }
}
