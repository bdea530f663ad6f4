using System.Text.Json;
using RepLKNet.Benchmarks;
using RepLKNet.Cli;
using RepLKNet.Cli.Commands.Bench;
using RepLKNet.Models;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class BenchScaleTests
{
    [Fact]
    public void Ring_allreduce_time_is_two_n_minus_one_over_n_times_bytes_over_bandwidth()
    {
        // Hand-computed: 316 MB (79 M fp32 gradients). N = 8 at 450 GB/s: 1.75 × 316e6 / 450e9 s = 1.228889 ms;
        // N = 64 at 50 GB/s: 1.96875 × 316e6 / 50e9 s = 12.4425 ms; N = 2 at 1 GB/s: 1 × 1e9 / 1e9 = 1 s; N = 1: nothing sent.
        Assert.Equal(1.228888889e-3, ScaleBenchmark.RingAllReduceSeconds(316_000_000, 8, 450e9), 12);
        Assert.Equal(12.4425e-3, ScaleBenchmark.RingAllReduceSeconds(316_000_000, 64, 50e9), 12);
        Assert.Equal(1.0, ScaleBenchmark.RingAllReduceSeconds(1_000_000_000, 2, 1e9), 12);
        Assert.Equal(0.0, ScaleBenchmark.RingAllReduceSeconds(316_000_000, 1, 450e9));
        Assert.Throws<ArgumentOutOfRangeException>(() => ScaleBenchmark.RingAllReduceSeconds(1, 0, 1e9));
        Assert.Throws<ArgumentOutOfRangeException>(() => ScaleBenchmark.RingAllReduceSeconds(1, 2, 0));
    }

    [Fact]
    public void The_paper_estimate_adds_the_allreduce_without_overlap_and_takes_the_larger_with_it()
    {
        var e = ScaleBenchmark.Estimate(79_000_000, 592.3, 64);
        Assert.Equal([8, 64], e.Select(x => x.Gpus));
        Assert.Equal(450e9, e[0].BytesPerSecond); // NVLink 4 per GPU and direction
        Assert.Equal(50e9, e[1].BytesPerSecond);  // InfiniBand NDR 400 Gb/s
        Assert.All(e, x => Assert.Equal(316_000_000, x.GradientBytes));
        Assert.Equal(1.228888889, e[0].AllReduceMs, 6);
        Assert.Equal(593.528888889, e[0].NoOverlapMs, 6);
        Assert.Equal(592.3, e[0].OverlapMs, 9);
        Assert.Equal(862.637033, e[0].NoOverlapImagesPerSecond, 3);   // 8 × 64 / 0.593528889 s
        Assert.Equal(864.426811, e[0].OverlapImagesPerSecond, 3);     // 8 × 64 / 0.5923 s
        Assert.Equal(12.4425, e[1].AllReduceMs, 9);
        Assert.Equal(604.7425, e[1].NoOverlapMs, 9);
        Assert.Equal(6773.130713, e[1].NoOverlapImagesPerSecond, 3);  // 64 × 64 / 0.6047425 s
        // A step shorter than the allreduce: with overlap the allreduce sets the pace.
        var fast = ScaleBenchmark.Estimate(79_000_000, 5, 64);
        Assert.Equal(12.4425, fast[1].OverlapMs, 9);
        Assert.Equal(17.4425, fast[1].NoOverlapMs, 9);
        Assert.Throws<ArgumentOutOfRangeException>(() => ScaleBenchmark.Estimate(79_000_000, 0, 64));
    }

    [Fact]
    public void Ranks_are_positive_distinct_counts()
    {
        Assert.Equal([1, 2, 4], BenchScaleCommand.ParseRanks(" 1, 2,4"));
        Assert.Throws<UsageException>(() => BenchScaleCommand.ParseRanks("0,2"));
        Assert.Throws<UsageException>(() => BenchScaleCommand.ParseRanks("1,x"));
        Assert.Throws<UsageException>(() => BenchScaleCommand.ParseRanks("2,2"));
        Assert.Throws<UsageException>(() => BenchScaleCommand.ParseRanks(""));
    }

    [MpiFact]
    public void Bench_scale_runs_one_and_two_rank_jobs_under_mpiexec_and_writes_both_rows()
    {
        using var dir = new TempDirectory();
        string json = dir.File("scale.json");
        const int batch = 32;
        var result = CliRunner.Run("bench", "scale", "--ranks", "1,2", "--steps", "3", "--warmup", "1", "--repeat", "1", "--batch", "32", "--json", json,
            "--mpiexec", MpiRunner.Mpiexec!);

        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        Assert.Contains("not a speed-up", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("| 8 | NVLink 4", result.StdOut, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToList();
        Assert.Equal([1, 2], rows.Select(r => r.GetProperty("ranks").GetInt32()));
        Assert.All(rows, r =>
        {
            Assert.Equal(1, r.GetProperty("warmup").GetInt32()); // exactly as asked
            Assert.Equal(batch, r.GetProperty("batch_per_process").GetInt32());
            Assert.Equal(batch * r.GetProperty("ranks").GetInt32(), r.GetProperty("global_batch").GetInt32());
            Assert.True(r.GetProperty("images_per_s").GetDouble() > 0);
            Assert.True(r.GetProperty("step_ms").GetDouble() > 0);
            Assert.True(r.GetProperty("efficiency").GetDouble() > 0);
            Assert.Equal(1, r.GetProperty("images_per_s_repeats").GetArrayLength());
            Assert.InRange(r.GetProperty("peak_rss_bytes").GetInt64(), BenchCommandsTests.MinProcessBytes, BenchCommandsTests.MaxProcessBytes);
            Assert.True(r.GetProperty("peak_rss_since_reset").GetBoolean());
        });
        Assert.Equal(0, rows[0].GetProperty("allreduce_bytes").GetInt64());
        Assert.True(rows[1].GetProperty("allreduce_ms").GetDouble() > 0);
        // Two ranks average every trainable parameter's fp32 gradient once per step.
        long fmnist = Complexity.Parameters(ModelRegistry.Find("RepLKNet-FMNIST")!.Config, ModelForm.Train);
        Assert.Equal(4 * fmnist, rows[1].GetProperty("allreduce_bytes").GetInt64());
        var estimate = doc.RootElement.GetProperty("estimate");
        long parameters = estimate.GetProperty("parameters").GetInt64();
        // The trained (train-form) RepLKNet-31B: the paper's "79M", with the small-kernel branches (79,864,168 here).
        Assert.Equal(Complexity.Parameters(ModelRegistry.Find("RepLKNet-31B")!.Config, ModelForm.Train), parameters);
        Assert.InRange(parameters, 78_500_000, 80_500_000);
        Assert.Equal(4 * parameters, estimate.GetProperty("gradient_bytes").GetInt64());
        Assert.Equal(2, estimate.GetProperty("settings").GetArrayLength());
    }

    [MpiFact]
    public void By_default_the_ranks_warm_up_until_the_jit_has_settled_on_all_of_them_and_agree_on_the_count()
    {
        using var dir = new TempDirectory();
        string json = dir.File("scale.json");
        var result = CliRunner.Run("bench", "scale", "--ranks", "2", "--steps", "1", "--repeat", "1", "--batch", "8", "--json", json,
            "--collective-timeout", "60", "--mpiexec", MpiRunner.Mpiexec!); // a rank left waiting fails with its own message

        // Both ranks ran the same warm-up steps (else their gradient allreduces would not pair up and the job would hang
        // until the collective timeout): 3, then at least 2 settled ones.
        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var row = Assert.Single(doc.RootElement.GetProperty("rows").EnumerateArray());
        int warmup = row.GetProperty("warmup").GetInt32();
        Assert.True(warmup >= 3 + 2, $"{warmup} warm-up steps");
        Assert.Contains($"after {warmup} warm-up", result.StdOut, StringComparison.Ordinal);
    }
}
