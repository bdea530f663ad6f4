using System.Diagnostics;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

/// <summary>Issue 15: the GC-safe step, failures that name where they happened and leave the resume state intact.</summary>
[Collection(SerialTests.Name)]
public sealed class DependableTrainingTests
{
    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 1, NumClasses = 2, DropPathRate = 0.1,
    };

    public DependableTrainingTests() => Torch.EnsureLoaded();

    private static ImageTensorDataset Synthetic(int count, int seed)
    {
        var g = new Generator((ulong)seed);
        var labels = randint(0, 2, [count], generator: g, dtype: int64);
        var images = Scalars.MulInPlace(rand([count, 1, 16, 16], generator: g), 255).to(ScalarType.Byte);
        return new ImageTensorDataset(images, labels, ["a", "b"]);
    }

    private static TrainOptions Options(string outDir) => new()
    {
        Arch = "tiny", Config = Tiny, OutDir = outDir, Epochs = 2, BatchSize = 16, LearningRate = 2e-3, WarmupEpochs = 1, Seed = 3,
        Normalization = new Normalization([0.5], [0.3]), EmaDecay = 0.9, Workers = 2,
    };

    [Theory]
    [InlineData(DepthwiseBackend.Ours)]
    [InlineData(DepthwiseBackend.Torch)]
    public void Under_forced_garbage_collections_the_step_creates_no_unscoped_tensor_and_trains_bit_identically(DepthwiseBackend backend)
    {
        using var impl = DepthwiseConv2d.Use(backend);
        using var dir = new TempDirectory();
        using var train = Synthetic(160, 1);
        using var test = Synthetic(32, 2);
        var plain = new Trainer(Options(dir.File("plain")), train, test);
        plain.Run();
        int collections = GC.CollectionCount(0);
        var stressed = new Trainer(Options(dir.File("stressed")) with { GcStress = true }, train, test);
        stressed.Run();

        Assert.True(GC.CollectionCount(0) - collections > 200, $"only {GC.CollectionCount(0) - collections} collections ran during the stressed run");
        Assert.Equal(0, plain.UnscopedTensors);
        Assert.Equal(0, stressed.UnscopedTensors);
        Assert.Equal(20, stressed.StepsDone);
        CheckpointAssert.SameTensors(Path.Combine(dir.File("plain"), "last.safetensors"), Path.Combine(dir.File("stressed"), "last.safetensors"));
        CheckpointAssert.SameTensors(Path.Combine(dir.File("plain"), "last-ema.safetensors"), Path.Combine(dir.File("stressed"), "last-ema.safetensors"));
    }

    /// <summary>A dataset whose image <see cref="FailAt"/> throws an unexpected error (not a <see cref="DatasetException"/>, which is skipped).</summary>
    private sealed class FailingDataset(IImageDataset inner, long failAt) : IImageDataset
    {
        public long FailAt { get; set; } = failAt;

        public long Count => inner.Count;

        public IReadOnlyList<string> ClassNames => inner.ClassNames;

        public int Channels => inner.Channels;

        public (int Height, int Width)? FixedSize => inner.FixedSize;

        public long Label(long index) => inner.Label(index);

        public string Describe(long index) => inner.Describe(index);

        public ImageU8 Read(long index) => index == FailAt ? throw new InvalidOperationException($"simulated reader fault at image {index}") : inner.Read(index);
    }

    [Fact]
    public void An_unexpected_error_names_step_epoch_and_phase_keeps_the_resume_state_and_the_crash_report_has_the_details()
    {
        using var dir = new TempDirectory();
        using var inner = Synthetic(160, 1);
        using var test = Synthetic(32, 2);
        var train = new FailingDataset(inner, failAt: -1);
        var options = Options(dir.Path);
        var trainer = new Trainer(options, train, test);
        // Epoch 2 reads image order[k] at its position k: make the image of the 4th batch of epoch 2 fail.
        long victim = trainer.EpochOrder(1)[3 * 16 + 5];
        train.FailAt = victim;
        // Epoch 1 reads every image too: the fault is switched on only for the resumed run (epoch 2).
        train.FailAt = -1;
        var firstRun = new Trainer(options with { MaxSteps = 10 }, train, test);
        firstRun.Run();
        string stateBefore = File.ReadAllText(Path.Combine(dir.Path, "state.json"));
        byte[] lastBefore = File.ReadAllBytes(Path.Combine(dir.Path, "last.safetensors"));

        train.FailAt = victim;
        var resumed = new Trainer(options with { Resume = true }, train, test);
        var e = Assert.Throws<TrainingFailedException>(() => resumed.Run());

        Assert.Equal(TrainingPhase.Data, e.Phase);
        Assert.Equal(2, e.Epoch);
        Assert.Equal(10 + 4, e.Step);
        Assert.Equal(10, e.LastSavedStep);
        Assert.Contains("simulated reader fault", e.Message, StringComparison.Ordinal);
        Assert.Contains("step 14 (epoch 2) in the data phase", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        // The epoch-1 end (step 10) was saved; nothing after it was written.
        Assert.Equal(stateBefore, File.ReadAllText(Path.Combine(dir.Path, "state.json")));
        Assert.Equal(lastBefore, File.ReadAllBytes(Path.Combine(dir.Path, "last.safetensors")));

        string? log = CrashReport.Write(dir.Path, e, "./replknet train --out x", options, null, "test CPU");
        Assert.NotNull(log);
        Assert.Matches(@"crash-\d{8}T\d{6}Z\.log$", log);
        string text = File.ReadAllText(log);
        Assert.Contains("where: step 14, epoch 2, phase data; resume state on disk: step 10", text, StringComparison.Ordinal);
        Assert.Contains("simulated reader fault", text, StringComparison.Ordinal);
        Assert.Contains("at RepLKNet.", text, StringComparison.Ordinal); // the managed stack trace
        Assert.Contains("TorchSharp 0.107", text, StringComparison.Ordinal);
        Assert.Contains("process threads:", text, StringComparison.Ordinal);
        Assert.Contains("\"BatchSize\": 16", text, StringComparison.Ordinal); // the options as JSON, values not type names

        // The intact state resumes once the fault is gone.
        train.FailAt = -1;
        var again = new Trainer(options with { Resume = true }, train, test);
        again.Run();
        Assert.Equal(20, again.StepsDone);
    }

    [Fact]
    public void A_stop_during_the_epoch_end_evaluation_saves_a_pending_evaluation_that_the_resumed_run_does_first()
    {
        using var dir = new TempDirectory();
        using var train = Synthetic(160, 1);
        using var test = Synthetic(32, 2);
        var straight = new Trainer(Options(dir.File("straight")), train, test);
        var reference = straight.Run();

        string run = dir.File("stopped");
        using var stop = new CancellationTokenSource();
        // Cancel at the last step of epoch 1: the loop ends there and the cancellation reaches the evaluation.
        var first = new Trainer(Options(run), train, test);
        var partial = first.Run(onStep: p =>
        {
            if (p.Step == 10)
            {
                stop.Cancel();
            }
        }, cancel: stop.Token);
        Assert.Empty(partial);
        Assert.False(File.Exists(Path.Combine(run, "best.safetensors")));
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "state.json")))!;
        Assert.Equal(10, state["step"]!.GetValue<long>());
        Assert.NotNull(state["pending_evaluation"]);

        var resumed = new Trainer(Options(run) with { Resume = true }, train, test);
        var history = resumed.Run();
        Assert.Equal(reference.Select(m => (m.Epoch, m.Step, m.TrainLoss, m.Top1, m.EmaTop1)), history.Select(m => (m.Epoch, m.Step, m.TrainLoss, m.Top1, m.EmaTop1)));
        CheckpointAssert.SameTensors(Path.Combine(dir.File("straight"), "last.safetensors"), Path.Combine(run, "last.safetensors"));
        CheckpointAssert.SameTensors(Path.Combine(dir.File("straight"), "best.safetensors"), Path.Combine(run, "best.safetensors"));
    }

    [Fact]
    public void Resume_without_a_state_or_with_an_incomplete_one_fails_with_one_clear_line_and_changes_nothing()
    {
        using var dir = new TempDirectory();
        using var train = Synthetic(160, 1);
        using var test = Synthetic(32, 2);
        var e = Assert.Throws<CheckpointException>(() => new Trainer(Options(dir.Path) with { Resume = true }, train, test).Run());
        Assert.Contains("state.json' does not exist", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(dir.Path, "last.safetensors")));

        new Trainer(Options(dir.Path) with { MaxSteps = 4 }, train, test).Run();
        string folder = Path.Combine(dir.Path, "resume", "step-000000004");
        File.Delete(Path.Combine(folder, "optimizer.bin"));
        string stateBefore = File.ReadAllText(Path.Combine(dir.Path, "state.json"));
        e = Assert.Throws<CheckpointException>(() => new Trainer(Options(dir.Path) with { Resume = true }, train, test).Run());
        Assert.Contains("is incomplete: optimizer.bin is missing", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(stateBefore, File.ReadAllText(Path.Combine(dir.Path, "state.json")));
    }

    [RootFact]
    public void A_checkpoint_write_that_hits_a_full_disk_keeps_the_previous_state_and_stops_with_a_clear_error()
    {
        using var dir = new TempDirectory();
        string mountPoint = dir.File("disk");
        Directory.CreateDirectory(mountPoint);
        var mount = Process.Start("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", mountPoint])!;
        mount.WaitForExit();
        Assert.True(mount.ExitCode == 0, $"mount -t tmpfs failed with {mount.ExitCode}");

        try
        {
            using var train = Synthetic(160, 1);
            using var test = Synthetic(32, 2);
            string run = Path.Combine(mountPoint, "run");
            var options = Options(run) with { SaveEvery = 4 };
            string filler = Path.Combine(mountPoint, "filler");
            // After the save of step 4, fill the disk: the save of step 8 must fail.
            var trainer = new Trainer(options, train, test);
            var e = Assert.Throws<TrainingFailedException>(() => trainer.Run(onStep: p =>
            {
                if (p.Step == 5)
                {
                    FillDisk(filler);
                }
            }));

            Assert.Equal(TrainingPhase.Checkpoint, e.Phase);
            Assert.Equal(8, e.Step);
            Assert.Equal(4, e.LastSavedStep);
            Assert.Contains("the previous state", e.Message, StringComparison.Ordinal);
            var state = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "state.json")))!;
            Assert.Equal(4, state["step"]!.GetValue<long>());
            Assert.Equal(["step-000000004"], Directory.EnumerateDirectories(Path.Combine(run, "resume")).Select(Path.GetFileName));
            using (var last = CheckpointFile.Read(Path.Combine(run, "last.safetensors")))
            {
                Assert.NotEmpty(last.State);
            }

            // Space again: the run resumes from step 4 and finishes.
            File.Delete(filler);
            var resumed = new Trainer(options with { Resume = true }, train, test);
            resumed.Run();
            Assert.Equal(20, resumed.StepsDone);
        }
        finally
        {
            Process.Start("umount", ["-l", mountPoint])!.WaitForExit();
        }
    }

    private static void FillDisk(string path)
    {
        var block = new byte[64 * 1024];
        using var s = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.WriteThrough);
        try
        {
            while (true)
            {
                s.Write(block);
            }
        }
        catch (IOException)
        {
            // ENOSPC: the disk is full
        }
    }
}

/// <summary>A test that needs root on Linux (it mounts a small tmpfs to fill a disk for real).</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root" || !CanMountTmpfs())
        {
            Skip = "needs permission to mount a tmpfs (root with CAP_SYS_ADMIN on Linux; this project's CI machines have it)";
        }
    }

    private static bool CanMountTmpfs()
    {
        string probe = Path.Combine(Path.GetTempPath(), $"replknet-mount-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(probe);
        try
        {
            using var mount = Process.Start("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe])!;
            mount.WaitForExit();
            if (mount.ExitCode != 0)
            {
                return false;
            }

            using var umount = Process.Start("umount", [probe])!;
            umount.WaitForExit();
            return true;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
        finally
        {
            Directory.Delete(probe);
        }
    }
}
