using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

/// <summary>Runs alone: training draws drop-path masks from libtorch's global generator, which parallel tests also use.</summary>
[Collection(SerialTests.Name)]
public sealed class TrainerTests
{
    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 1, NumClasses = 2,
        DropPathRate = 0.1,
    };

    public TrainerTests() => Torch.EnsureLoaded();

    /// <summary>Two classes a small conv net separates easily: bright upper half vs bright lower half, plus noise.</summary>
    private static ImageTensorDataset Synthetic(int count, int seed)
    {
        var g = new Generator((ulong)seed);
        var labels = randint(0, 2, [count], generator: g, dtype: int64);
        var images = rand([count, 1, 16, 16], generator: g) * 80;
        var rows = arange(16).view(1, 1, 16, 1);
        var upper = rows.lt(8).to(float32) * 150;
        var lower = rows.ge(8).to(float32) * 150;
        var pattern = where(labels.view(-1, 1, 1, 1).eq(0), upper, lower);
        return new ImageTensorDataset((images + pattern).clamp(0, 255).to(ScalarType.Byte), labels, ["up", "down"]);
    }

    private static TrainOptions Options(string outDir, long? maxSteps = null, bool resume = false) => new()
    {
        Arch = "tiny", Config = Tiny, OutDir = outDir, Epochs = 3, BatchSize = 16, LearningRate = 2e-3, WarmupEpochs = 1,
        Seed = 7, Normalization = new Normalization([0.5], [0.3]), MaxSteps = maxSteps, Resume = resume, EmaDecay = 0.9,
    };

    [Fact]
    public void A_few_epochs_drive_the_loss_down_and_write_checkpoints_and_metrics()
    {
        using var dir = new TempDirectory();
        using var train = Synthetic(192, 1);
        using var test = Synthetic(64, 2);
        var trainer = new Trainer(Options(dir.Path) with { Epochs = 4 }, train, test);

        var history = trainer.Run();

        Assert.Equal(4, history.Count);
        Assert.True(history[^1].TrainLoss < history[0].TrainLoss * 0.8, $"loss {history[0].TrainLoss:F3} → {history[^1].TrainLoss:F3}");
        Assert.True(history[^1].Top1 > 0.85, $"top-1 {history[^1].Top1:P1}");
        Assert.Equal(48, history[^1].Step);
        foreach (var file in new[] { "last.safetensors", "last-ema.safetensors", "best.safetensors", "state.json", "metrics.csv", "metrics.json" })
        {
            Assert.True(File.Exists(Path.Combine(dir.Path, file)), file);
        }

        Assert.Equal(5, File.ReadAllLines(Path.Combine(dir.Path, "metrics.csv")).Length);
        using var best = CheckpointFile.Read(trainer.BestCheckpoint);
        Assert.Equal(["up", "down"], best.Metadata!.ClassNames);
    }

    [Fact]
    public void A_run_stopped_mid_epoch_and_resumed_ends_with_the_same_weights_as_an_uninterrupted_run()
    {
        using var straightDir = new TempDirectory();
        using var resumedDir = new TempDirectory();
        using var train = Synthetic(160, 3);
        using var test = Synthetic(32, 4);

        new Trainer(Options(straightDir.Path), train, test).Run();
        new Trainer(Options(resumedDir.Path, maxSteps: 13), train, test).Run(); // stops inside epoch 2 (10 steps per epoch)
        new Trainer(Options(resumedDir.Path, resume: true), train, test).Run();

        using var a = CheckpointFile.Read(Path.Combine(straightDir.Path, "last.safetensors"));
        using var b = CheckpointFile.Read(Path.Combine(resumedDir.Path, "last.safetensors"));
        using var aEma = CheckpointFile.Read(Path.Combine(straightDir.Path, "last-ema.safetensors"));
        using var bEma = CheckpointFile.Read(Path.Combine(resumedDir.Path, "last-ema.safetensors"));
        foreach (var (key, tensor) in a.State)
        {
            Assert.True(tensor.equal(b.State[key]).all().item<bool>(), $"model {key} differs after resume");
            Assert.True(aEma.State[key].equal(bEma.State[key]).all().item<bool>(), $"EMA {key} differs after resume");
        }
    }

    [Fact]
    public void A_non_finite_loss_stops_with_the_step_named()
    {
        using var dir = new TempDirectory();
        using var train = Synthetic(64, 5);
        using var test = Synthetic(16, 6);
        var options = Options(dir.Path) with { LearningRate = 1e30, WarmupEpochs = 0 };
        var e = Assert.Throws<NonFiniteLossException>(() => new Trainer(options, train, test).Run());
        Assert.Matches(@"at step \d+ \(epoch \d+\)", e.Message);
    }

    [Fact]
    public void Fine_tuning_starts_from_the_given_weights_and_skips_a_head_of_another_size()
    {
        using var dir = new TempDirectory();
        using var train = Synthetic(64, 7);
        using var test = Synthetic(16, 8);
        string source = dir.File("pretrained.safetensors");
        manual_seed(99);
        using (var pretrained = new RepLKNetModel(Tiny with { NumClasses = 5 }))
        {
            CheckpointFile.WriteRepLKNet(source, StateDicts.Ordered(pretrained), new CheckpointMetadata("tiny", Tiny with { NumClasses = 5 }, ModelForm.Train));
        }

        var options = Options(dir.File("run")) with { InitialWeights = source, LearningRate = 1e-12, WarmupEpochs = 0, MaxSteps = 1, EmaDecay = 0 };
        var notices = new List<string>();
        new Trainer(options, train, test).Run(onNotice: notices.Add);

        Assert.Contains(notices, n => n.Contains("head.weight", StringComparison.Ordinal) && n.Contains("left at random", StringComparison.Ordinal));
        using var before = CheckpointFile.Read(source);
        using var after = CheckpointFile.Read(Path.Combine(options.OutDir, "last.safetensors"));
        foreach (var (key, value) in before.State.Where(kv => kv.Key.EndsWith("conv.weight", StringComparison.Ordinal)))
        {
            Assert.True(value.allclose(after.State[key], 1e-6, 1e-7), $"{key} was not loaded");
        }

        Assert.Equal([2L, 16L], after.State["head.weight"].shape);
    }

    [Fact]
    public void Gradient_clipping_shrinks_the_step_and_accumulation_with_mixing_trains()
    {
        using var train = Synthetic(192, 9);
        using var test = Synthetic(32, 10);
        double Moved(double? clip)
        {
            using var dir = new TempDirectory();
            var options = Options(dir.Path) with { ClipGradNorm = clip, MaxSteps = 1, WarmupEpochs = 0, EmaDecay = 0, LearningRate = 1e-3 };
            new Trainer(options, train, test).Run();
            using var after = CheckpointFile.Read(Path.Combine(dir.Path, "last.safetensors"));
            manual_seed(options.Seed);
            using var initial = new RepLKNetModel(Tiny);
            var start = StateDicts.Ordered(initial).ToDictionary();
            return after.State.Where(kv => kv.Key.EndsWith("conv.weight", StringComparison.Ordinal))
                .Sum(kv => (kv.Value - start[kv.Key]).abs().sum().item<float>());
        }

        // Adam normalizes the gradient's scale, except against eps = 1e-8: a 1e-12 clip makes the step tiny.
        double free = Moved(null), clipped = Moved(1e-12);
        Assert.True(clipped < free * 0.05, $"clipped step moved {clipped:E2}, unclipped {free:E2}");

        using var run = new TempDirectory();
        var augment = new RepLKNet.Data.Transforms.AugmentOptions { Mixup = 0.8, CutMix = 1.0, HorizontalFlip = 0.5, LabelSmoothing = 0.1 };
        var trainer = new Trainer(Options(run.Path) with { AccumulationSteps = 2, ClipGradNorm = 5, Augment = augment, Epochs = 4 }, train, test);
        Assert.Equal(6, trainer.StepsPerEpoch); // 192 images / (16 × 2)
        var history = trainer.Run();
        Assert.Equal(24, history[^1].Step);
        Assert.All(history, h => Assert.True(double.IsFinite(h.TrainLoss)));
        Assert.True(history[^1].Top1 > 0.7, $"top-1 {history[^1].Top1:P1} after mixing training");
    }
}
