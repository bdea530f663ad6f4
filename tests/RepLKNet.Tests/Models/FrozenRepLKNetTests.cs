using System.Collections.Concurrent;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Reparam;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

/// <summary>
/// <see cref="FrozenRepLKNet"/>: every BatchNorm folded (pre-BNs into the next 1×1 conv, the classifier's norm into the
/// head), checked against the official PyTorch outputs, against float64, and with its two execution settings.
/// </summary>
public sealed class FrozenRepLKNetTests
{
    public FrozenRepLKNetTests() => Torch.EnsureLoaded();

    private static double MaxDiff(Tensor a, Tensor b)
    {
        Assert.Equal(a.shape, b.shape);
        return (a.to(float64) - b.to(float64)).abs().max().item<double>();
    }

    [Theory]
    [InlineData(false, false, DepthwiseBackend.Ours)]
    [InlineData(true, false, DepthwiseBackend.Ours)]
    [InlineData(false, true, DepthwiseBackend.Ours)]
    [InlineData(true, true, DepthwiseBackend.Ours)]
    [InlineData(true, true, DepthwiseBackend.Torch)]
    public void Frozen_official_train_checkpoint_reproduces_the_official_logits_and_stage_features(bool channelsLast, bool batchParallel, DepthwiseBackend backend)
    {
        // The official code's outputs for its own train-form checkpoint: the frozen model (train form in, every BN folded)
        // must give them as the unfolded model does (1e-5, the parity tests' tolerance).
        using var scope = NewDisposeScope();
        using var use = DepthwiseConv2d.Use(backend);
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        var model = new RepLKNetModel(OfficialFixture.Config);
        StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, "small-train.pth");
        model.eval();
        using var frozen = FrozenRepLKNet.Freeze(model, channelsLast, batchParallel: batchParallel);
        Assert.Equal(channelsLast, frozen.ChannelsLast);
        Assert.Equal(batchParallel, frozen.BatchParallel);
        var x = OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64);

        var logits = frozen.call(x);
        Assert.False(logits.requires_grad);
        Assert.True(MaxDiff(OfficialFixture.ReadBin("small-logits-train.bin", 2, 10), logits) <= 1e-5);
        var features = frozen.forward_intermediates(x, [0, 1, 2, 3]);
        long[][] shapes = [[2, 16, 16, 16], [2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]];
        for (int i = 0; i < 4; i++)
        {
            Assert.True(features[i].is_contiguous(), $"stage {i} feature is returned as contiguous NCHW");
            double diff = MaxDiff(OfficialFixture.ReadBin($"small-features-train-s{i}.bin", shapes[i]), features[i]);
            Assert.True(diff <= 1e-5, $"stage {i}: {diff:E2}");
        }
    }

    public static TheoryData<bool, bool, int, ModelForm> Settings => new()
    {
        { false, false, 5, ModelForm.Train }, { true, false, 5, ModelForm.Deploy }, { false, true, 5, ModelForm.Fused }, { true, true, 5, ModelForm.Train },
        { true, true, 1, ModelForm.Deploy }, { false, true, 3, ModelForm.Deploy }, { true, true, 3, ModelForm.Fused }, { false, false, 2, ModelForm.Fused },
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void Frozen_classifier_and_backbones_match_the_model_evaluated_in_float64(bool channelsLast, bool batchParallel, int batch, ModelForm form)
    {
        // Random weights and BatchNorm statistics (fresh each run), the model in the given form, three heads: a classifier
        // (norm folded into the head), a backbone with norm_intermediate_features and out_indices, and one without a norm
        // whose last stage is 1×1. Reference: the same model in float64. The frozen float32 model may not be further from
        // it than a few float32 roundings beyond the model's own float32 forward.
        ulong seed = (ulong)Environment.TickCount64;
        using var scope = NewDisposeScope();
        var cases = new (RepLKNetConfig Config, int Height, int Width)[]
        {
            (new RepLKNetConfig { LargeKernelSizes = [13, 9, 5], Layers = [1, 2, 1], Channels = [16, 32, 48], SmallKernel = 3, DwRatio = 1, FfnRatio = 2, InChannels = 1, NumClasses = 7 }, 40, 36),
            (new RepLKNetConfig
            {
                LargeKernelSizes = [11, 7, 5], Layers = [1, 1, 1], Channels = [16, 24, 32], SmallKernel = null, DwRatio = 1.5, FfnRatio = 3, InChannels = 3,
                NumClasses = null, OutIndices = [0, 2], NormIntermediateFeatures = true,
            }, 40, 36),
            (new RepLKNetConfig { LargeKernelSizes = [7, 5, 3], Layers = [1, 1, 1], Channels = [16, 32, 32], SmallKernel = 3, DwRatio = 1, FfnRatio = 2, InChannels = 2, NumClasses = null, OutIndices = [0, 1, 2] }, 16, 16),
        };
        foreach (var (config, height, width) in cases)
        {
            var generator = new Generator(seed);
            var model = new RepLKNetModel(config);
            using (no_grad())
            {
                foreach (var p in model.parameters())
                {
                    p.copy_(randn(p.shape, generator: generator) * 0.2);
                }
            }

            RandomModels.RandomizeBatchNorms(model, generator);
            model.eval();
            if (form != ModelForm.Train)
            {
                Reparameterizer.Reparameterize(model, fuseBn: form == ModelForm.Fused);
            }

            var x = randn([batch, config.InChannels, height, width], generator: generator);
            var input = x.clone();
            using var frozen = FrozenRepLKNet.Freeze(model, channelsLast, batchParallel: batchParallel);
            using var noGrad = no_grad();
            Tensor[] ours = config.NumClasses is null ? [.. frozen.forward_intermediates(x)] : [frozen.call(x)];
            Tensor[] single = config.NumClasses is null ? [.. model.forward_intermediates(x)] : [model.call(x)];
            model.to(float64);
            var x64 = x.to(float64);
            Tensor[] reference = config.NumClasses is null ? [.. model.forward_intermediates(x64)] : [model.call(x64)];
            Assert.True(x.eq(input).all().item<bool>(), "the input is not modified");
            Assert.Equal(reference.Length, ours.Length);
            for (int i = 0; i < ours.Length; i++)
            {
                double scale = reference[i].abs().max().item<double>();
                double own = MaxDiff(reference[i], single[i]);
                double diff = MaxDiff(reference[i], ours[i]);
                Assert.True(diff <= 2 * own + 1e-6 * scale, $"seed {seed}, {form}, output {i}: frozen {diff:E2} vs the float32 model's {own:E2} (scale {scale:E1})");
            }
        }
    }

    [Fact]
    public void Freezing_needs_eval_mode_leaves_the_model_alone_and_later_changes_do_not_reach_the_frozen_copy()
    {
        using var scope = NewDisposeScope();
        var config = ModelRegistry.Find("RepLKNet-FMNIST")!.Config;
        var model = new RepLKNetModel(config);
        RandomModels.RandomizeBatchNorms(model, new Generator(11));
        Assert.Throws<InvalidOperationException>(() => FrozenRepLKNet.Freeze(model));

        model.eval();
        var before = StateDicts.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using var frozen = FrozenRepLKNet.Freeze(model);
        var after = StateDicts.Ordered(model).ToList();
        Assert.Equal(before.Keys, after.Select(kv => kv.Key));
        Assert.All(after, kv => Assert.True(kv.Value.eq(before[kv.Key]).all().item<bool>(), $"{kv.Key} changed"));
        Assert.False(model.IsDeploy);
        Assert.Empty(frozen.parameters());

        using var noGrad = no_grad();
        var x = randn(4, 1, 28, 28);
        var first = frozen.call(x);
        foreach (var p in model.parameters())
        {
            RepLKNet.Runtime.Scalars.MulInPlace(p, 2);
        }

        Assert.True(frozen.call(x).eq(first).all().item<bool>(), "the frozen model keeps its own tensors");
        Assert.False(model.call(x).allclose(first), "the source model did change");
    }

    [Theory]
    [InlineData(28, true)]
    [InlineData(80, true)]
    [InlineData(84, false)]
    [InlineData(224, false)]
    public void The_automatic_settings_follow_the_map_size(int inputSize, bool small)
    {
        // Stage-0 maps (a quarter of the input) of at most 20×20 run channels_last and batch-parallel, larger ones NCHW and
        // whole batches, whatever the instruction set.
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(ModelRegistry.Find("RepLKNet-FMNIST")!.Config, deploy: true);
        model.eval();
        using var frozen = FrozenRepLKNet.Freeze(model, inputSize: inputSize);
        Assert.Equal(small, frozen.ChannelsLast);
        Assert.Equal(small, frozen.BatchParallel);
        Assert.False(frozen.SlicesBatch(1), "one image is never cut");
        Assert.Equal(small && get_num_threads() >= 2, frozen.SlicesBatch(2));
        using var forced = FrozenRepLKNet.Freeze(model, channelsLast: !small, inputSize: inputSize);
        Assert.Equal(!small, forced.ChannelsLast);
        Assert.Equal(!small, forced.BatchParallel);
    }

    [Fact]
    public async Task Batch_parallel_forward_is_safe_under_garbage_collection_and_concurrent_callers()
    {
        // Slices run on libtorch's OpenMP team threads, which create and free TorchSharp tensors; a thread forcing
        // collections all the while and two callers at once (each the master of its own team) must still get the
        // single-slice results, every time, for batches that do and do not divide by the thread count.
        int threads = get_num_threads();
        Assert.True(threads >= 2, $"this test needs 2 threads, libtorch has {threads}");
        var model = new RepLKNetModel(ModelRegistry.Find("RepLKNet-FMNIST")!.Config, deploy: true);
        RandomModels.RandomizeBatchNorms(model, new Generator(5));
        model.eval();
        using var parallel = FrozenRepLKNet.Freeze(model, channelsLast: true, batchParallel: true);
        using var serial = FrozenRepLKNet.Freeze(model, channelsLast: true, batchParallel: false);
        var inputs = Enumerable.Range(1, 7).Select(n => randn(n, 1, 28, 28)).ToArray();
        Tensor[] expected;
        using (no_grad())
        {
            expected = [.. inputs.Select(x => serial.call(x))];
        }

        var failures = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();
        var collector = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }, TaskCreationOptions.LongRunning);
        int iterations = 0;
        void Caller(int offset)
        {
            for (int i = 0; i < 150; i++)
            {
                int k = (i + offset) % inputs.Length;
                using var scope = NewDisposeScope();
                var y = parallel.call(inputs[k]);
                double diff = MaxDiff(expected[k], y);
                if (!(diff <= 1e-5))
                {
                    failures.Enqueue($"batch {k + 1}: {diff:E2}");
                }

                Interlocked.Increment(ref iterations);
            }
        }

        try
        {
            await Task.WhenAll(
                Task.Factory.StartNew(() => Caller(0), TaskCreationOptions.LongRunning),
                Task.Factory.StartNew(() => Caller(3), TaskCreationOptions.LongRunning));
        }
        finally
        {
            await stop.CancelAsync();
            await collector;
        }

        Assert.Equal(300, iterations);
        Assert.Empty(failures);
    }
}
