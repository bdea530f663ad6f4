using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Tests.Training;

/// <summary>
/// The task-agnostic loop with a task that is not classification (least-squares regression), the shared optimizer step,
/// the finish step and the recipes' defaults. Runs alone: the loop seeds and saves libtorch's global generator.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class TrainingLoopTests
{
    public TrainingLoopTests() => Torch.EnsureLoaded();

    /// <summary>y = x·w + 0.3 on 64 training and 32 held-out samples of 4 features; batch k's rows are the order's k-th slice.</summary>
    private sealed class RegressionTask : ITrainingTask
    {
        private readonly Tensor _x;
        private readonly Tensor _y;
        private readonly Tensor _testX;
        private readonly Tensor _testY;

        public RegressionTask()
        {
            var g = new Generator(11);
            var w = tensor(new float[] { 1.5f, -2f, 0.5f, 3f }).view(4, 1);
            _x = randn([64, 4], generator: g);
            _y = _x.matmul(w).add(0.3f);
            _testX = randn([32, 4], generator: g);
            _testY = _testX.matmul(w).add(0.3f);
        }

        public IReadOnlyList<long> Pool { get; } = TrainingPool.All(64);

        public int EpochsOpened { get; private set; }

        public ITrainingEpoch OpenEpoch(long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, DataShard shard)
        {
            EpochsOpened++;
            return new Epoch(this, order, batchSize, firstBatch, batchCount);
        }

        public double Evaluate(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel)
        {
            using var noGrad = no_grad();
            model.eval();
            return -nn.functional.mse_loss(model.call(_testX), _testY).item<float>();
        }

        public void SaveWeights(string path, Module model, string? trainingState = null) =>
            SafetensorsFile.Write(path, StateDicts.Ordered(model), null);

        public void LoadWeights(string path, Module model)
        {
            using var checkpoint = CheckpointFile.Read(path);
            StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, path);
        }

        private sealed class Epoch(RegressionTask task, long[] order, int batchSize, long firstBatch, long batchCount) : ITrainingEpoch
        {
            private long _next = firstBatch;
            private Tensor? _rows;

            public int Count => batchSize;

            public IReadOnlyList<SkippedImage> Skipped => [];

            public TimeSpan WaitTime => TimeSpan.Zero;

            public bool MoveNext()
            {
                if (_next >= batchCount)
                {
                    return false;
                }

                _rows = tensor(order[(int)(_next * batchSize)..(int)((_next + 1) * batchSize)]);
                _next++;
                return true;
            }

            public Tensor Loss(Module<Tensor, Tensor> model, Device device) =>
                nn.functional.mse_loss(model.call(task._x.index_select(0, _rows!)), task._y.index_select(0, _rows!));

            public void Dispose()
            {
            }
        }
    }

    private static TrainingLoopOptions Options(string? outDir, long? maxSteps = null, bool resume = false) => new()
    {
        Budget = new TrainingBudget(3, null), BatchSize = 8, LearningRate = 0.2, WeightDecay = 0.01, Seed = 5, EmaDecay = 0.5,
        Schedule = stepsPerEpoch => new CosineSchedule(0.2, 1e-4, 3, (int)stepsPerEpoch, 1), OutDir = outDir, MaxSteps = maxSteps, Resume = resume,
    };

    private static Module<Tensor, Tensor> NewModel()
    {
        manual_seed(3);
        return nn.Linear(4, 1);
    }

    private static float[] Weights(Module model) => [.. model.parameters().SelectMany(p => p.detach().cpu().data<float>().ToArray())];

    [Fact]
    public void A_regression_task_trains_evaluates_each_epoch_and_resumes_bit_identically_after_a_stop_inside_an_epoch()
    {
        using var dir = new TempDirectory();
        var task = new RegressionTask();

        using var straightModel = NewModel();
        using var straightEma = nn.Linear(4, 1);
        double before = task.Evaluate(straightModel, null, default);
        var loop = new TrainingLoop(task, Options(dir.File("straight")));
        Assert.Equal(8, loop.StepsPerEpoch);
        Assert.Equal(24, loop.TotalSteps);
        var steps = new List<StepProgress>();
        var straight = loop.Run(straightModel, straightEma, onStep: steps.Add);

        Assert.Equal(3, straight.History.Count);
        Assert.Equal(Enumerable.Range(1, 24).Select(i => (long)i), steps.Select(s => s.Step));
        Assert.Equal(1.0, steps[^1].BudgetFraction);
        Assert.True(steps.Zip(steps.Skip(1)).All(p => p.First.BudgetFraction < p.Second.BudgetFraction));
        Assert.True(straight.History[^1].Top1 > before / 4, $"score {straight.History[^1].Top1} vs {before} before training");
        Assert.True(File.Exists(Path.Combine(dir.File("straight"), "best.safetensors")));
        Assert.Equal(0, loop.UnscopedTensors);

        // Stopped at step 11 (inside epoch 2), then resumed by fresh objects: the same weights and history to the last bit.
        using (var firstModel = NewModel())
        using (var firstEma = nn.Linear(4, 1))
        {
            var first = new TrainingLoop(task, Options(dir.File("resumed"), maxSteps: 11)).Run(firstModel, firstEma);
            Assert.Equal(11, first.Steps);
            Assert.Single(first.History);
        }

        using var resumedModel = nn.Linear(4, 1);
        using var resumedEma = nn.Linear(4, 1);
        var resumedLoop = new TrainingLoop(task, Options(dir.File("resumed"), resume: true));
        var resumed = resumedLoop.Run(resumedModel, resumedEma);
        Assert.Equal(13, resumed.StepsThisRun);
        Assert.Equal(Weights(straightModel), Weights(resumedModel));
        Assert.Equal(Weights(straightEma), Weights(resumedEma));
        Assert.Equal(straight.History.Select(h => (h.Step, h.TrainLoss, h.LearningRate, h.Top1, h.EmaTop1)),
            resumed.History.Select(h => (h.Step, h.TrainLoss, h.LearningRate, h.Top1, h.EmaTop1)));
    }

    [Fact]
    public void Without_a_run_folder_the_loop_writes_nothing_and_refuses_to_resume_and_a_time_budget_stops_it()
    {
        var task = new RegressionTask();
        using var model = NewModel();
        var e = Assert.Throws<ArgumentException>(() => new TrainingLoop(task, Options(null, resume: true)));
        Assert.Equal("Resume", e.ParamName);

        var timed = new TrainingLoop(task, Options(null) with { Budget = new TrainingBudget(null, TimeSpan.FromMilliseconds(300)), EmaDecay = 0, EvaluateEachEpoch = false });
        Assert.Equal(long.MaxValue, timed.TotalSteps);
        var run = timed.Run(model);
        Assert.Empty(run.History);
        Assert.InRange(run.Seconds, 0.3, 30);
        Assert.True(run.Steps > 0);
        Assert.Null(timed.LastSavedStep);
    }

    [Fact]
    public void Options_that_cannot_work_are_refused_by_name_and_an_epoch_end_without_evaluation_still_saves_a_resume_state()
    {
        using var dir = new TempDirectory();
        var task = new RegressionTask();
        Assert.Equal("Resume", Assert.Throws<ArgumentException>(() => new TrainingLoop(task,
            Options(dir.Path, resume: true) with { Budget = new TrainingBudget(null, TimeSpan.FromMinutes(1)) })).ParamName);
        Assert.Equal("Budget", Assert.Throws<ArgumentException>(() => new TrainingLoop(task, Options(null) with { Budget = new TrainingBudget(null, null) })).ParamName);
        Assert.Equal("SaveEvery", Assert.Throws<ArgumentException>(() => new TrainingLoop(task, Options(null) with { SaveEvery = 0 })).ParamName);
        Assert.Equal("BatchSize", Assert.Throws<ArgumentException>(() => new TrainingLoop(task, Options(null) with { BatchSize = 0 })).ParamName);

        using var model = NewModel();
        var loop = new TrainingLoop(task, Options(dir.Path) with { EvaluateEachEpoch = false, EmaDecay = 0, Budget = new TrainingBudget(1, null) });
        var run = loop.Run(model);
        Assert.Empty(run.History);
        Assert.Equal(8, loop.LastSavedStep);
        Assert.True(File.Exists(Path.Combine(dir.Path, "state.json")));
    }

    [Fact]
    public void The_official_recipe_refuses_a_classifier_that_does_not_fit_the_data()
    {
        using var dir = new TempDirectory();
        var images = randint(0, 255, [8, 1, 8, 8], dtype: ScalarType.Byte);
        using var data = new ImageTensorDataset(images, tensor(new long[] { 0, 1, 0, 1, 0, 1, 0, 1 }), ["a", "b"]);
        var config = new RepLKNetConfig { LargeKernelSizes = [5], Layers = [1], Channels = [8], SmallKernel = 3, InChannels = 1, NumClasses = 5 };
        var options = new TrainOptions { Arch = "tiny", Config = config, OutDir = dir.Path, Normalization = new Normalization([0.5], [0.3]) };
        var e = Assert.Throws<ArgumentException>(() => new Trainer(options, data, data));
        Assert.Equal("Config", e.ParamName);
        Assert.Contains("5 classes but the data has 2", e.Message, StringComparison.Ordinal);
        Assert.Equal("Config", Assert.Throws<ArgumentException>(() => new Trainer(options with { Config = config with { NumClasses = null, OutIndices = [0] } }, data, data)).ParamName);
        _ = new Trainer(options with { Config = config with { NumClasses = 2 } }, data, data); // fitted: accepted
    }

    /// <summary>Micro-batches of fixed rows for <see cref="TrainStep"/>: each call to MoveNext takes the next slice.</summary>
    private sealed class Slices(Tensor x, Tensor y, int size) : ITrainingEpoch
    {
        private int _at = -1;

        public int Count => size;

        public IReadOnlyList<SkippedImage> Skipped => [];

        public TimeSpan WaitTime => TimeSpan.Zero;

        public bool MoveNext()
        {
            _at++;
            return (_at + 1) * size <= x.shape[0];
        }

        public Tensor Loss(Module<Tensor, Tensor> model, Device device) =>
            nn.functional.mse_loss(model.call(x.narrow(0, _at * size, size)), y.narrow(0, _at * size, size));

        public void Dispose()
        {
        }
    }

    [Fact]
    public void Two_accumulated_half_batches_make_the_same_step_as_one_full_batch_and_a_non_finite_loss_changes_nothing()
    {
        var g = new Generator(4);
        var x = randn([16, 4], dtype: float64, generator: g);
        var y = randn([16, 1], dtype: float64, generator: g);
        (Tensor Weight, Tensor Grad) Step(int accumulation, int size, int rows = 16)
        {
            manual_seed(9);
            using var model = nn.Linear(4, 1, dtype: float64);
            var (optimizer, scales) = TrainStep.CreateOptimizer(model, 0.1, 0.05);
            Assert.Equal([1.0, 1.0], scales); // decayed weight, undecayed bias
            var step = new TrainStep(model, optimizer, scales, CPU, accumulation, clipGradNorm: 0.5);
            using var data = new Slices(x.narrow(0, 0, rows), y.narrow(0, 0, rows), size);
            var outcome = step.Run(data, 0.1, 1);
            Assert.Equal(rows, outcome.Samples);
            return (model.weight!.detach().clone(), model.weight!.grad!.clone());
        }

        var full = Step(1, 16);
        var halves = Step(2, 8);
        Assert.True(full.Grad.allclose(halves.Grad, rtol: 0, atol: 1e-12), $"max diff {(full.Grad - halves.Grad).abs().max().item<double>()}");
        Assert.True(full.Weight.allclose(halves.Weight, rtol: 0, atol: 1e-12));
        Assert.False(full.Grad.allclose(Step(1, 8, rows: 8).Grad, rtol: 0, atol: 1e-6)); // half the data gives another gradient: the check can fail

        manual_seed(9);
        using var model = nn.Linear(4, 1, dtype: float64);
        var before = model.weight!.detach().clone();
        var (opt, s) = TrainStep.CreateOptimizer(model, 0.1, 0.05);
        var nan = new TrainStep(model, opt, s, CPU);
        using var bad = new Slices(x * double.NaN, y, 16);
        var error = Assert.Throws<NonFiniteLossException>(() => nan.Run(bad, 0.1, 7));
        Assert.Contains("at step 7", error.Message, StringComparison.Ordinal);
        Assert.Equal(TrainingPhase.Forward, nan.Phase);
        Assert.True(before.allclose(model.weight!.detach(), rtol: 0, atol: 0));
    }

    [Fact]
    public void The_finish_step_writes_a_verified_deploy_checkpoint_and_refuses_one_beyond_the_tolerance()
    {
        using var dir = new TempDirectory();
        var config = new RepLKNetConfig
        {
            LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 1, NumClasses = 3,
        };
        manual_seed(2);
        using (var model = new RepLKNetModel(config))
        {
            // Non-trivial BatchNorm statistics, so folding them matters.
            foreach (var bn in model.modules().OfType<RepLKNet.Layers.BatchNorm2d>())
            {
                using var noGrad = no_grad();
                bn.running_mean!.copy_(randn(bn.running_mean.shape) * 0.1);
                bn.running_var!.copy_(rand(bn.running_var.shape) + 0.5);
            }

            CheckpointFile.WriteRepLKNet(dir.File("best.safetensors"), StateDicts.Ordered(model),
                new CheckpointMetadata("tiny", config, ModelForm.Train, ["a", "b", "c"]));
        }

        string refused = dir.File("refused.safetensors");
        Assert.Throws<InvalidOperationException>(() => DeployStep.Write(dir.File("best.safetensors"), refused, 16, tolerance: -1));
        Assert.False(File.Exists(refused));

        var report = DeployStep.Write(dir.File("best.safetensors"), dir.File("deploy.safetensors"), 16);
        Assert.InRange(report.RelativeEndToEnd, 0, EquivalenceCheck.DefaultTolerance);
        using var deploy = CheckpointFile.Read(dir.File("deploy.safetensors"));
        Assert.Equal(ModelForm.Deploy, deploy.Form);
        Assert.Equal(["a", "b", "c"], deploy.Metadata!.ClassNames);
        Assert.Contains(deploy.State.Keys, k => k.EndsWith("lkb_reparam.weight", StringComparison.Ordinal));
        Assert.DoesNotContain(deploy.State.Keys, k => k.Contains("small_conv", StringComparison.Ordinal));
    }

    [Fact]
    public void The_recipes_hold_the_official_augmentation_and_each_datasets_defaults()
    {
        var official = Recipes.OfficialAugment(224);
        Assert.Equal((224, (0.08, 1.0), 0.5, "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1, 0.875),
            (official.InputSize, official.CropScale!.Value, official.HorizontalFlip, official.RandAugment, official.EraseProbability, official.Mixup,
                official.CutMix, official.LabelSmoothing, official.CropPct));
        Assert.Equal(new AugmentOptions { LabelSmoothing = 0.1 }, Recipes.DatasetAugment("FMNIST"));
        Assert.Equal((0.35, 1.0), Recipes.DatasetAugment("cifar-10").CropScale);
        Assert.Equal(official, Recipes.DatasetAugment("folder"));
        Assert.Equal(28, Recipes.Augmentation("official", "fashion-mnist", 28).InputSize);
        Assert.Equal(224, Recipes.Augmentation("official", "folder", null).InputSize);
        Assert.Equal("preset", Assert.Throws<ArgumentException>(() => Recipes.Augmentation("heavy", "cifar10", 32)).ParamName);
        Assert.Equal("dataset", Assert.Throws<ArgumentException>(() => Recipes.DatasetAugment("mnist")).ParamName);
        Assert.Equal(12, new TrainOptions { Arch = "a", Config = ModelRegistry.Find("RepLKNet-FMNIST")!.Config, OutDir = "o", Normalization = Normalization.ImageNet }.Epochs);
    }
}
