using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Distributed;

/// <summary>
/// Data-parallel jobs of the real CLI under MPICH's <c>mpiexec</c> (2 ranks on this 2-core machine): equivalence with one
/// process of the global batch, a killed and a hung rank, resuming with another world size, and what refuses to run.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class MpiJobTests(ITestOutputHelper output)
{
    /// <summary>
    /// The issue's equivalence: 2 ranks × batch 32 with SyncBN end with the weights of 1 process × batch 64 after 20 steps
    /// (augmentation and drop path off), and report the same metrics. Everything that makes data-parallel training right
    /// is on this path: rank 0's weights broadcast, the shards of each global batch, SyncBN's global statistics and
    /// backward, the averaged gradients, the agreed loss, the sharded evaluation. In float64 (<c>--dtype float64</c>): in
    /// float32, AdamW turns the rounding noise of parameters whose true gradient is zero (a BatchNorm bias feeding another
    /// BatchNorm) into full-size steps, and the runs drift apart as much as one process with 1 or 2 threads does
    /// (docs/distributed.md, "Equivalence").
    /// </summary>
    [MpiFact]
    public void Two_ranks_of_batch_32_with_SyncBN_end_where_one_process_of_batch_64_ends()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 1280, test: 200);
        string[] common = ["train", "--data", data, "--epochs", "1", "--aug", "none", "--drop-path", "0", "--seed", "3", "--sync-bn", "--device", "cpu", "--dtype", "float64"];

        var one = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "64", "--out", dir.File("one")]);
        Assert.True(one.ExitCode == 0, one.StdErr + one.StdOut);
        var two = MpiRunner.Run(2, [.. common, "--batch-size", "32", "--out", dir.File("two")]);
        Assert.True(two.ExitCode == 0, two.StdErr + two.StdOut);
        string header = System.Text.RegularExpressions.Regex.Replace(two.StdOut, @"\s+", " "); // the console wraps long lines
        Assert.Contains("2 processes (mpi, MPICH", header, StringComparison.Ordinal);
        Assert.Contains("global batch 64 = 32 per process × 2, SyncBN", header, StringComparison.Ordinal);
        Assert.Contains("1 epoch × 20 steps", header, StringComparison.Ordinal);
        Assert.Contains("SyncBN: ", two.StdOut, StringComparison.Ordinal);
        Assert.Contains("1 epoch × 20 steps", one.StdOut, StringComparison.Ordinal);

        var (relative, zero) = Difference(Path.Combine(dir.File("one"), "last.safetensors"), Path.Combine(dir.File("two"), "last.safetensors"), output);
        Assert.True(relative <= 1e-3, $"weights differ by {relative:E2} (relative to each tensor's largest value)");
        Assert.True(relative <= 1e-8 && zero <= 1e-9, $"in float64 the weights should agree to rounding: {relative:E2} relative, {zero:E2} on zero tensors");

        // The same metrics: the loss of the epoch and the test top-1 (sharded evaluation, counts summed over the ranks).
        var m1 = File.ReadAllLines(Path.Combine(dir.File("one"), "metrics.csv"))[1].Split(',');
        var m2 = File.ReadAllLines(Path.Combine(dir.File("two"), "metrics.csv"))[1].Split(',');
        double loss1 = double.Parse(m1[2], CultureInfo.InvariantCulture), loss2 = double.Parse(m2[2], CultureInfo.InvariantCulture);
        output.WriteLine($"epoch loss: one process {loss1:R}, two ranks {loss2:R}; top-1 {m1[4]} vs {m2[4]}");
        Assert.True(Math.Abs(loss1 - loss2) <= 1e-9 * Math.Abs(loss1), $"epoch loss {loss1} vs {loss2}");
        Assert.Equal(m1[4], m2[4]); // test top-1: the same count of the 200 test images
        Assert.Equal(m1[5], m2[5]); // and of the EMA

        // Only rank 0 wrote: one set of files, a state that records the world size.
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("two"), "state.json")))!;
        Assert.Equal(2, (int)state["world_size"]!);
        Assert.Equal(32, (int)state["batch_size"]!);
    }

    /// <summary>
    /// Segmentation on the same core: 2 ranks × 2 crops with SyncBN end where 1 process × 4 crops ends after 8 iterations
    /// (float64; drop path and the decode heads' Dropout2d off, since each rank draws its own masks), with MMSeg's random crops, flips and
    /// photometric distortion on — every draw is keyed by the sample's global position — and the same val mIoU.
    /// </summary>
    [MpiFact]
    public void Segmentation_two_ranks_of_2_crops_with_SyncBN_end_where_one_process_of_4_ends()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        var synth = CliRunner.Run("seg", "synthetic", "--out", data, "--layout", "ade20k", "--train", "24", "--val", "6", "--size", "56", "--seed", "2");
        Assert.True(synth.ExitCode == 0, synth.StdErr);
        var (_, tiny) = RepLKNet.Models.Segmentation.SegmentorRegistry.Resolve("upernet-tiny");
        var config = tiny with
        {
            Backbone = tiny.Backbone with { DropPathRate = 0 },
            DecodeHead = tiny.DecodeHead with { DropoutRatio = 0 },
            AuxiliaryHead = tiny.AuxiliaryHead is { } aux ? aux with { DropoutRatio = 0 } : null,
        };
        string arch = dir.File("tiny-no-dropout.json");
        File.WriteAllText(arch, config.ToJson());
        string[] common = ["seg", "train", "--arch", arch, "--dataset", "ade20k", "--data", data, "--crop-size", "40", "--max-steps", "8", "--eval-every", "8",
            "--lr", "1e-3", "--warmup-iters", "2", "--sync-bn", "--dtype", "float64", "--seed", "1", "--device", "cpu"];

        var one = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "4", "--out", dir.File("one")]);
        Assert.True(one.ExitCode == 0, one.StdErr + one.StdOut);
        var two = MpiRunner.Run(2, [.. common, "--batch-size", "2", "--out", dir.File("two")]);
        Assert.True(two.ExitCode == 0, two.StdErr + two.StdOut);

        var (relative, zero) = Difference(Path.Combine(dir.File("one"), "last.pth"), Path.Combine(dir.File("two"), "last.pth"), output, wholeModel: true);
        Assert.True(relative <= 1e-8 && zero <= 1e-9, $"weights differ: {relative:E2} relative, {zero:E2} on zero tensors");
        var m1 = File.ReadAllLines(Path.Combine(dir.File("one"), "metrics.csv"))[1].Split(',');
        var m2 = File.ReadAllLines(Path.Combine(dir.File("two"), "metrics.csv"))[1].Split(',');
        output.WriteLine($"loss {m1[2]} vs {m2[2]}; mIoU {m1[4]} vs {m2[4]}");
        Assert.True(Math.Abs(double.Parse(m1[2], CultureInfo.InvariantCulture) - double.Parse(m2[2], CultureInfo.InvariantCulture)) <= 1e-9, $"loss {m1[2]} vs {m2[2]}");
        Assert.Equal(m1[4], m2[4]);
    }

    /// <summary>
    /// SyncBN over the processes lets each take one crop (the 31L config's one per GPU); without it one crop per process is
    /// refused up front; data smaller than one global batch is refused naming the flags.
    /// </summary>
    [MpiFact]
    public void Segmentation_takes_one_crop_per_process_with_SyncBN_and_refuses_a_global_batch_larger_than_the_data()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        var synth = CliRunner.Run("seg", "synthetic", "--out", data, "--layout", "ade20k", "--train", "6", "--val", "2", "--size", "48", "--seed", "4");
        Assert.True(synth.ExitCode == 0, synth.StdErr);
        string[] common = ["seg", "train", "--dataset", "ade20k", "--data", data, "--crop-size", "32", "--max-steps", "3", "--eval-every", "3", "--device", "cpu"];

        var one = MpiRunner.Run(2, [.. common, "--batch-size", "1", "--sync-bn", "--out", dir.File("one-crop")]);
        Assert.True(one.ExitCode == 0, one.StdErr + one.StdOut);
        Assert.Contains("global batch 2 = 1 per process × 2, SyncBN", System.Text.RegularExpressions.Regex.Replace(one.StdOut, @"\s+", " "), StringComparison.Ordinal);
        // The crops trained: a real loss (a micro-batch left out would report 0).
        var loss = System.Text.RegularExpressions.Regex.Match(one.StdOut, @"iter\s+3/3: loss (\d+\.\d+)");
        Assert.True(loss.Success && double.Parse(loss.Groups[1].Value, CultureInfo.InvariantCulture) > 0.1, one.StdOut);

        var noSync = MpiRunner.Run(2, [.. common, "--batch-size", "1", "--out", dir.File("no-sync")]);
        Assert.Equal(2, noSync.ExitCode);
        Assert.Contains("--batch-size must be ≥ 2", noSync.StdErr, StringComparison.Ordinal);

        var tooBig = MpiRunner.Run(2, [.. common, "--batch-size", "4", "--out", dir.File("too-big")]);
        Assert.Equal(2, tooBig.ExitCode);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(tooBig.StdErr, "replknet: usage:")); // said once, by rank 0
        Assert.Contains("--batch-size 4 × 1 accumulated × 2 processes = a global batch of 8, more than the 6 training images", tooBig.StdErr, StringComparison.Ordinal);
    }

    /// <summary>Without SyncBN each rank normalizes its own half: the weights must then differ from the global-batch run (the SyncBN test above is not vacuous).</summary>
    [MpiFact]
    public void Without_SyncBN_two_ranks_normalize_their_own_halves()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 640, test: 40);
        string[] common = ["train", "--data", data, "--epochs", "1", "--aug", "none", "--drop-path", "0", "--seed", "3", "--device", "cpu", "--dtype", "float64"];
        var one = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "64", "--out", dir.File("one")]);
        Assert.True(one.ExitCode == 0, one.StdErr + one.StdOut);
        var two = MpiRunner.Run(2, [.. common, "--batch-size", "32", "--out", dir.File("two")]);
        Assert.True(two.ExitCode == 0, two.StdErr + two.StdOut);
        var (relative, _) = Difference(Path.Combine(dir.File("one"), "last.safetensors"), Path.Combine(dir.File("two"), "last.safetensors"), output);
        Assert.True(relative > 1e-3, $"per-rank BatchNorm should change the result, got {relative:E2}");
    }

    /// <summary>A rank killed mid-run ends the job at once (the launcher ends the others), and the run resumes from the intact checkpoint.</summary>
    [MpiFact]
    public void A_killed_rank_ends_the_job_and_the_checkpoint_stays_resumable()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 2048, test: 40);
        string run = dir.File("killed-run");
        string[] args = ["train", "--data", data, "--epochs", "2", "--batch-size", "16", "--save-every", "4", "--collective-timeout", "60", "--out", run, "--device", "cpu"];
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using (var job = MpiRunner.Start(2, stdout, stderr, args))
        {
            string state = Path.Combine(run, "state.json");
            var clock = Stopwatch.StartNew();
            while (!File.Exists(state) && clock.Elapsed < TimeSpan.FromMinutes(2) && !job.HasExited)
            {
                Thread.Sleep(100);
            }

            Assert.True(File.Exists(state), $"no state after {clock.Elapsed}: {stderr}");
            int victim = MpiRunner.RankProcess(1, run) ?? throw new InvalidOperationException($"rank 1 not found: {stderr}");
            Process.GetProcessById(victim).Kill();
            clock.Restart();
            Assert.True(job.WaitForExit(TimeSpan.FromSeconds(60)), "the job did not end after a rank was killed");
            output.WriteLine($"the job ended {clock.Elapsed.TotalSeconds:F1} s after rank 1 was killed, exit code {job.ExitCode}");
            Assert.NotEqual(0, job.ExitCode);
        }

        Assert.Null(MpiRunner.RankProcess(0, run));
        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "state.json")))!;
        long step = (long)saved["step"]!;
        Assert.True(Directory.Exists(Path.Combine(run, (string)saved["resume"]!)));
        var resumed = MpiRunner.Run(2, [.. args, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
        Assert.Contains($"resumed from '{Path.Combine(run, "state.json")}' at step {step}", resumed.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"epoch\s+2/2: loss", resumed.StdOut);
    }

    /// <summary>
    /// Ctrl-C to mpiexec reaches every rank; they agree to stop after the same step, rank 0 saves and prints the mpiexec
    /// command that continues it, which finishes the run.
    /// </summary>
    [MpiFact]
    public void Ctrl_C_stops_every_rank_after_the_same_step_and_the_printed_command_resumes()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 4096, test: 40);
        string run = dir.File("sigint-run");
        string[] args = ["train", "--data", data, "--epochs", "1", "--batch-size", "16", "--save-every", "8", "--out", run, "--device", "cpu"];
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using (var job = MpiRunner.Start(2, stdout, stderr, args))
        {
            var clock = Stopwatch.StartNew();
            while (!File.Exists(Path.Combine(run, "state.json")) && clock.Elapsed < TimeSpan.FromMinutes(2) && !job.HasExited)
            {
                Thread.Sleep(100);
            }

            Assert.False(job.HasExited, stderr.ToString());
            Assert.Equal(0, Kill(job.Id, "INT"));
            Assert.True(job.WaitForExit(TimeSpan.FromSeconds(60)), "the job did not stop after SIGINT");
            job.WaitForExit();
            // Every rank exits 130; MPICH's Hydra itself then returns 130 or 0 (measured with a plain shell script as the
            // program too: its status after a forwarded Ctrl-C is not reliable), so the stop is checked by what was written.
            Assert.True(job.ExitCode is 130 or 0, $"exit {job.ExitCode}: {stdout}\n{stderr}");
        }

        string text = stdout.ToString();
        var stopped = System.Text.RegularExpressions.Regex.Match(text, @"stopped by SIGINT after step (\d+)");
        Assert.True(stopped.Success, text + stderr);
        Assert.Contains("Continue with: mpiexec -n 2 ./replknet train", text, StringComparison.Ordinal);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(stderr.ToString(), "SIGINT received"));
        long step = long.Parse(stopped.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.Equal(step, (long)JsonNode.Parse(File.ReadAllText(Path.Combine(run, "state.json")))!["step"]!);
        var resumed = MpiRunner.Run(2, [.. args, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
        Assert.Contains($"at step {step}", resumed.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"epoch\s+1/1: loss", resumed.StdOut);
    }

    /// <summary>A rank that hangs (stopped with SIGSTOP: alive, silent) makes the others end within the collective timeout, with a message.</summary>
    [MpiFact]
    public void A_hung_rank_ends_the_job_within_the_collective_timeout()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 2048, test: 40);
        string run = dir.File("hung-run");
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var job = MpiRunner.Start(2, stdout, stderr, "train", "--data", data, "--epochs", "2", "--batch-size", "16", "--save-every", "4",
            "--collective-timeout", "5", "--out", run, "--device", "cpu");
        try
        {
            var clock = Stopwatch.StartNew();
            while (!File.Exists(Path.Combine(run, "state.json")) && clock.Elapsed < TimeSpan.FromMinutes(2) && !job.HasExited)
            {
                Thread.Sleep(100);
            }

            int victim = MpiRunner.RankProcess(1, run) ?? throw new InvalidOperationException($"rank 1 not found: {stderr}");
            Assert.Equal(0, Kill(victim, "STOP"));
            clock.Restart();
            Assert.True(job.WaitForExit(TimeSpan.FromSeconds(60)), "the job did not end after a rank hung");
            job.WaitForExit();
            output.WriteLine($"the job ended {clock.Elapsed.TotalSeconds:F1} s after rank 1 stopped (timeout 5 s), exit code {job.ExitCode}");
            Assert.NotEqual(0, job.ExitCode);
            Assert.Contains("rank 0: the collective", stderr.ToString(), StringComparison.Ordinal);
            Assert.Contains("did not complete within 5 s", stderr.ToString(), StringComparison.Ordinal);
            Assert.NotNull(JsonNode.Parse(File.ReadAllText(Path.Combine(run, "state.json")))!["step"]);
        }
        finally
        {
            if (MpiRunner.RankProcess(1, run) is int left)
            {
                Kill(left, "KILL");
            }
        }
    }

    /// <summary>A run of 2 ranks resumes in 1 process only when allowed, and only with the same global batch.</summary>
    [MpiFact]
    public void Resuming_with_another_world_size_needs_the_flag_and_the_same_global_batch()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 512, test: 40);
        string run = dir.File("run");
        string[] common = ["train", "--data", data, "--epochs", "2", "--aug", "none", "--out", run, "--device", "cpu"];
        var first = MpiRunner.Run(2, [.. common, "--batch-size", "32", "--max-steps", "3"]);
        Assert.True(first.ExitCode == 0, first.StdErr + first.StdOut);

        var refused = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "64", "--resume"]);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("--allow-world-size-change", refused.StdErr, StringComparison.Ordinal);
        Assert.Contains("2 process(es), this one has 1", refused.StdErr, StringComparison.Ordinal);

        var otherBatch = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "32", "--resume", "--allow-world-size-change"]);
        Assert.Equal(1, otherBatch.ExitCode);
        Assert.Contains("another batch size", otherBatch.StdErr, StringComparison.Ordinal);

        var allowed = CliRunner.Run([.. common, "--threads", "1", "--batch-size", "64", "--resume", "--allow-world-size-change"]);
        Assert.True(allowed.ExitCode == 0, allowed.StdErr + allowed.StdOut);
        Assert.Contains("at step 3", allowed.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"epoch\s+2/2: loss", allowed.StdOut);
    }

    /// <summary>
    /// <c>distributed check</c> over 2 MPI ranks: MpiProcessGroup's allreduce (sum, max) and broadcast of every dtype,
    /// on 1 M elements and on a view, exact against the float64 result every rank computes itself.
    /// </summary>
    [MpiFact]
    public void The_MPI_collectives_are_exact_over_two_ranks()
    {
        var result = MpiRunner.Run(2, "distributed", "check", "--device", "cpu");
        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        Assert.Contains("2 process(es), mpi, MPICH", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("allreduce sum Float32 1048576: ok", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("broadcast from 1 Int64 7 (offset view): ok", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("all collectives exact", result.StdOut, StringComparison.Ordinal);
        Assert.DoesNotContain(": differ", result.StdOut, StringComparison.Ordinal);
    }

    /// <summary>Commands that do not run data-parallel refuse to run as several processes; Open MPI's launcher is named.</summary>
    [MpiFact]
    public void Commands_that_are_not_data_parallel_refuse_several_processes()
    {
        var eval = MpiRunner.Run(2, "models");
        Assert.Equal(2, eval.ExitCode);
        Assert.Contains("'models' does not run data-parallel", eval.StdErr, StringComparison.Ordinal);

        var help = MpiRunner.Run(2, "train", "--help");
        Assert.True(help.ExitCode == 0, help.StdErr);
        Assert.Contains("--sync-bn", help.StdOut, StringComparison.Ordinal);

        var openMpi = CliRunner.Run(new Dictionary<string, string?> { ["OMPI_COMM_WORLD_SIZE"] = "2", ["OMPI_COMM_WORLD_RANK"] = "0" }, "train", "--max-steps", "1");
        Assert.Equal(1, openMpi.ExitCode);
        Assert.Contains("Open MPI", openMpi.StdErr, StringComparison.Ordinal);
        Assert.Contains("mpiexec.mpich", openMpi.StdErr, StringComparison.Ordinal);
    }

    /// <summary>
    /// How far two checkpoints are apart (the same keys required): the largest |a − b| / max|a| over the tensors whose
    /// largest value is at least 1e-6, and the largest |a − b| over the others — numerically zero tensors, in float64
    /// parameters only rounding noise ever moved (e.g. a BatchNorm bias feeding another BatchNorm: its gradient is zero),
    /// whose relative difference means nothing.
    /// </summary>
    internal static (double Relative, double ZeroAbsolute) Difference(string a, string b, ITestOutputHelper? log, bool wholeModel = false)
    {
        using var x = CheckpointFile.Read(a, false, wholeModel);
        using var y = CheckpointFile.Read(b, false, wholeModel);
        Assert.Equal(x.State.Keys.Order(StringComparer.Ordinal), y.State.Keys.Order(StringComparer.Ordinal));
        double relative = 0, zero = 0;
        string worstKey = "";
        foreach (var (key, t) in x.State)
        {
            if (!t.is_floating_point())
            {
                Assert.True(t.equal(y.State[key]).item<bool>(), $"{key} differs");
                continue;
            }

            using var scope = NewDisposeScope();
            var u = t.to(ScalarType.Float64);
            var v = y.State[key].to(ScalarType.Float64);
            double scale = u.abs().max().item<double>();
            double diff = (u - v).abs().max().item<double>();
            if (scale < 1e-6)
            {
                zero = Math.Max(zero, diff);
            }
            else if (diff / scale > relative)
            {
                relative = diff / scale;
                worstKey = key;
            }
        }

        log?.WriteLine($"largest relative difference {relative:E2} at {worstKey}; numerically zero tensors differ by at most {zero:E2}");
        return (relative, zero);
    }

    private static int Kill(int pid, string signal)
    {
        using var kill = Process.Start("kill", ["-" + signal, pid.ToString(CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
        return kill.ExitCode;
    }
}
