using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

/// <summary>SIGINT/SIGTERM during <c>train</c>: finish the step, save, say how to resume, exit 130/143; a second signal quits at once.</summary>
[Collection(SerialTests.Name)]
public sealed partial class StopSignalTests
{
    private const int Sigint = 2, Sigterm = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    private static (string Data, string Arch) Setup(TempDirectory dir)
    {
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 1600, test: 100);
        string arch = dir.File("tiny.json");
        File.WriteAllText(arch, """{"large_kernel_sizes": [7, 5], "layers": [1, 1], "channels": [8, 16], "small_kernel": 3, "ffn_ratio": 2, "drop_path_rate": 0.1}""");
        return (data, arch);
    }

    private static string[] Common(string data, string arch) =>
    [
        "train", "--data", data, "--arch", arch, "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--workers", "2",
        "--crop-scale", "0.5,1", "--hflip", "0.5", "--mixup", "0.8", "--save-every", "7",
    ];

    /// <summary>Starts a run, waits for its first mid-epoch save, sends the signal(s); returns (exit code, stdout, stderr, step saved before).</summary>
    private static (int Exit, string Out, string Err, long Before) Interrupt(string[] args, string outDir, params int[] signals) =>
        Interrupt(args, outDir, waitForAcknowledgement: true, signals);

    private static (int Exit, string Out, string Err, long Before) Interrupt(string[] args, string outDir, bool waitForAcknowledgement, params int[] signals)
    {
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var process = CliRunner.StartCapturing(stdout, stderr, [.. args, "--out", outDir]);
        string state = Path.Combine(outDir, "state.json");
        var deadline = DateTime.UtcNow.AddMinutes(2);
        long before;
        while (true)
        {
            Assert.True(DateTime.UtcNow < deadline, "the run never saved a mid-epoch checkpoint");
            Assert.False(process.HasExited, "the run finished before it could be stopped: " + stderr);
            if (File.Exists(state) && ReadStep(state) is > 0 and var s)
            {
                before = s;
                break;
            }

            Thread.Sleep(5);
        }

        foreach (int signal in signals)
        {
            Assert.Equal(0, Kill(process.Id, signal));
            // Signals of one kind do not queue: wait until this one was handled before sending the next.
            var acknowledged = waitForAcknowledgement ? DateTime.UtcNow.AddSeconds(30) : DateTime.UtcNow;
            while (!process.HasExited && DateTime.UtcNow < acknowledged)
            {
                lock (stderr)
                {
                    if (stderr.ToString().Contains(" received", StringComparison.Ordinal))
                    {
                        break;
                    }
                }

                Thread.Sleep(2);
            }
        }

        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "the run did not stop");
        process.WaitForExit(); // drain the output
        return (process.ExitCode, stdout.ToString(), stderr.ToString(), before);
    }

    private static long ReadStep(string state)
    {
        try
        {
            return JsonNode.Parse(File.ReadAllText(state))!["step"]!.GetValue<long>();
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException)
        {
            return 0; // written atomically: only a read racing the rename can fail, and the next poll sees it
        }
    }

    [Fact]
    public void SIGINT_finishes_the_step_saves_prints_the_resume_command_exits_130_and_the_resumed_run_is_bit_identical()
    {
        using var dir = new TempDirectory();
        var (data, arch) = Setup(dir);
        string[] common = Common(data, arch);
        string straight = dir.File("straight");
        var full = CliRunner.Run([.. common, "--out", straight]);
        Assert.True(full.ExitCode == 0, full.StdErr + full.StdOut);

        string stopped = dir.File("stopped");
        var (exit, output, error, before) = Interrupt(common, stopped, Sigint);
        Assert.True(exit == 130, $"exit {exit}\n{output}\n{error}");
        Assert.Contains("SIGINT received: finishing the current step", error, StringComparison.Ordinal);
        long at = ReadStep(Path.Combine(stopped, "state.json"));
        Assert.InRange(at, before, 199);
        Assert.Contains($"stopped by SIGINT after step {at}", output, StringComparison.Ordinal);
        Assert.Contains("Continue with: ./replknet train --data", output, StringComparison.Ordinal);
        Assert.Contains("--resume", output, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(stopped, "best-deploy.safetensors")), "an interrupted run must not finish (re-parameterize)");

        var resumed = CliRunner.Run([.. common, "--out", stopped, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
        foreach (var file in new[] { "last.safetensors", "last-ema.safetensors" })
        {
            using var a = CheckpointFile.Read(Path.Combine(straight, file));
            using var b = CheckpointFile.Read(Path.Combine(stopped, file));
            foreach (var (key, tensor) in a.State)
            {
                Assert.True(tensor.equal(b.State[key]).all().item<bool>(), $"{file}: {key} differs after SIGINT and resume");
            }
        }
    }

    [Fact]
    public void SIGTERM_saves_and_exits_143_and_a_second_signal_quits_at_once_with_the_saved_state_intact()
    {
        using var dir = new TempDirectory();
        var (data, arch) = Setup(dir);
        string[] common = Common(data, arch);

        string term = dir.File("term");
        var (exit, output, error, before) = Interrupt(common, term, Sigterm);
        Assert.True(exit == 143, $"exit {exit}\n{output}\n{error}");
        Assert.Contains("SIGTERM received", error, StringComparison.Ordinal);
        Assert.Contains("stopped by SIGTERM after step", output, StringComparison.Ordinal);
        Assert.True(ReadStep(Path.Combine(term, "state.json")) >= before);

        // SIGINT and SIGTERM at once (signals of one kind do not queue, two kinds do; the runtime may handle either
        // first): the second one handled quits immediately with its own code.
        string twice = dir.File("twice");
        (exit, output, error, before) = Interrupt(common, twice, waitForAcknowledgement: false, Sigint, Sigterm);
        Assert.True(exit is 130 or 143, $"exit {exit}\n{output}\n{error}");
        Assert.Contains(exit == 143 ? "SIGTERM received again" : "SIGINT received again", error, StringComparison.Ordinal);
        Assert.DoesNotContain("stopped by", output, StringComparison.Ordinal);
        Assert.Contains("received again: quitting now", error, StringComparison.Ordinal);
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(twice, "state.json")))!;
        string folder = Path.Combine(twice, (string)state["resume"]!);
        using var model = CheckpointFile.Read(Path.Combine(folder, "model.safetensors"));
        Assert.NotEmpty(model.State);
        var resumed = CliRunner.Run([.. common, "--out", twice, "--resume", "--max-steps", "40"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
    }
}
