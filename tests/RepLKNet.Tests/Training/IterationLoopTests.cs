using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Tests.Training;

/// <summary>
/// The loop's iteration-based mode (evaluation every N steps, across epoch ends; MMSeg's IterBasedRunner + EvalHook) with a
/// named score and detail figures, exact resumption from a stop between evaluations and from a stop during one, and the
/// unchanged files of the default (classification) score. Runs alone: the loop saves libtorch's global generator.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class IterationLoopTests
{
    public IterationLoopTests() => Torch.EnsureLoaded();

    /// <summary>y = x·w − 0.7 on 40 training and 16 held-out samples; score −MSE named <c>negmse</c>, details mse and mae.</summary>
    private sealed class Regression(string? scoreName = "negmse") : ITrainingTask
    {
        private readonly Tensor _x = Data(40, 21).X;
        private readonly Tensor _y = Data(40, 21).Y;
        private readonly Tensor _testX = Data(16, 22).X;
        private readonly Tensor _testY = Data(16, 22).Y;

        /// <summary>When set, the evaluation after this step throws <see cref="OperationCanceledException"/> (a stop during it).</summary>
        public Func<bool>? CancelEvaluation { get; set; }

        public IReadOnlyList<long> Pool { get; } = TrainingPool.All(40);

        public string ScoreName => scoreName ?? ITrainingTask.DefaultScoreName;

        private static (Tensor X, Tensor Y) Data(int n, ulong seed)
        {
            var g = new Generator(seed);
            var x = randn([n, 3], generator: g);
            return (x, x.matmul(tensor(new float[] { 0.5f, -1f, 2f }).view(3, 1)).sub(0.7f));
        }

        public ITrainingEpoch OpenEpoch(long[] order, int epoch, int batchSize, long firstBatch, long batchCount, long seed, DataShard shard) =>
            new Epoch(this, order, batchSize, firstBatch, batchCount);

        public double Evaluate(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel) => Score(model, onNotice, cancel).Value;

        public TaskScore Score(Module<Tensor, Tensor> model, Action<string>? onNotice, CancellationToken cancel)
        {
            if (CancelEvaluation?.Invoke() == true)
            {
                throw new OperationCanceledException(cancel);
            }

            using var noGrad = no_grad();
            model.eval();
            var prediction = model.call(_testX);
            double mse = nn.functional.mse_loss(prediction, _testY).item<float>();
            double mae = nn.functional.l1_loss(prediction, _testY).item<float>();
            return scoreName is null ? new TaskScore(-mse) : new TaskScore(-mse, new Dictionary<string, double> { ["mse"] = mse, ["mae"] = mae });
        }

        public void SaveWeights(string path, Module model, string? trainingState = null) => SafetensorsFile.Write(path, StateDicts.Ordered(model), null);

        public void LoadWeights(string path, Module model)
        {
            using var checkpoint = CheckpointFile.Read(path);
            StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, path);
        }

        private sealed class Epoch(Regression task, long[] order, int batchSize, long firstBatch, long batchCount) : ITrainingEpoch
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

    private static TrainingLoopOptions Options(string? outDir, bool resume = false) => new()
    {
        // 40 samples / batch 8 = 5 steps per epoch; 17 steps; evaluations at 6, 12 and the last step 17.
        Budget = new TrainingBudget(null, null), MaxSteps = 17, EvaluateEvery = 6, BatchSize = 8, LearningRate = 0.05, WeightDecay = 0.01,
        Seed = 3, EmaDecay = 0.6, Schedule = _ => new PolySchedule(0.05, 17, warmupIterations: 4, warmupRatio: 0.1), OutDir = outDir, Resume = resume,
    };

    private static Module<Tensor, Tensor> NewModel()
    {
        manual_seed(8);
        return nn.Linear(3, 1);
    }

    private static float[] Weights(Module model) => [.. model.parameters().SelectMany(p => p.detach().cpu().data<float>().ToArray())];

    private static (long, double, double, double, double, int) Row(EpochMetrics m) => (m.Step, m.TrainLoss, m.LearningRate, m.Top1, m.EmaTop1, m.Epoch);

    [Fact]
    public void Evaluation_every_n_steps_runs_across_epoch_ends_and_reports_the_named_score_with_its_details()
    {
        using var dir = new TempDirectory();
        var task = new Regression();
        using var model = NewModel();
        using var ema = nn.Linear(3, 1);
        var losses = new List<double>();
        var lrs = new List<double>();
        var loop = new TrainingLoop(task, Options(dir.Path));
        Assert.Equal(5, loop.StepsPerEpoch);
        Assert.Equal(17, loop.TotalSteps);
        var run = loop.Run(model, ema, onStep: p =>
        {
            losses.Add(p.Loss);
            lrs.Add(p.LearningRate);
        });

        Assert.Equal([6L, 12, 17], run.History.Select(h => h.Step));
        Assert.Equal([2, 3, 4], run.History.Select(h => h.Epoch)); // step 6 is in epoch 2, 12 in 3, 17 in 4
        // Each report's loss: the mean over the steps since the previous evaluation.
        Assert.Equal(losses.Take(6).Sum() / 6, run.History[0].TrainLoss, 12);
        Assert.Equal(losses.Skip(6).Take(6).Sum() / 6, run.History[1].TrainLoss, 12);
        Assert.Equal(losses.Skip(12).Sum() / 5, run.History[2].TrainLoss, 12);
        // The poly schedule with warm-up drives the steps: step index 0 at ratio 0.1 of the regular rate, the last one at 0.05/17.
        Assert.Equal(0.05 * 0.1, lrs[0], 15);
        Assert.Equal(0.05 * (1 - 16.0 / 17), lrs[16], 15);
        Assert.All(run.History, h => Assert.Equal("negmse", h.Score));
        Assert.Equal(-run.History[^1].Details!["mse"], run.History[^1].Top1, 12);
        Assert.True(run.History[^1].Top1 > run.History[0].Top1);

        string[] csv = File.ReadAllLines(Path.Combine(dir.Path, "metrics.csv"));
        Assert.Equal("epoch,step,train_loss,lr,negmse,ema_negmse,images_per_s,seconds,skipped,data_wait_s,mse,mae,peak_rss_bytes", csv[0]);
        Assert.Equal(4, csv.Length);
        // Each report carries the process's peak RSS so far (VmHWM; nothing reset it during the run): resident memory
        // of a .NET + libtorch process, never above the peak read after the run, in the file as in the history.
        long peakAfter = PeakMemory.ProcessPeak()!.Value.Bytes;
        Assert.All(run.History, h => Assert.InRange(h.PeakResidentBytes!.Value, 50L << 20, peakAfter));
        Assert.Equal(run.History.Select(h => h.PeakResidentBytes!.Value), csv.Skip(1).Select(l => long.Parse(l.Split(',')[^1], CultureInfo.InvariantCulture)));
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "state.json")))!.AsObject();
        Assert.Equal(17, (long)state["step"]!);
        Assert.Equal(run.History.Max(h => Math.Max(h.Top1, h.EmaTop1)), (double)state["best_negmse"]!, 12);
        Assert.False(state.ContainsKey("best_top1"));
        var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "metrics.json")))!.AsArray();
        Assert.Equal("negmse", (string?)metrics[0]!["ScoreName"]);
        Assert.NotNull(metrics[0]!["Details"]!["mae"]);
        Assert.Equal(0, loop.UnscopedTensors);
    }

    [Fact]
    public void A_run_stopped_between_evaluations_or_during_one_resumes_to_the_same_weights_and_reports()
    {
        using var dir = new TempDirectory();
        var task = new Regression();
        using var straightModel = NewModel();
        using var straightEma = nn.Linear(3, 1);
        var straight = new TrainingLoop(task, Options(dir.File("straight"))).Run(straightModel, straightEma);

        // Stopped after step 9 (inside epoch 2, between the evaluations at 6 and 12), then by fresh objects after the
        // evaluation at 12 had begun (a pending evaluation), then to the end.
        using (var model = NewModel())
        using (var ema = nn.Linear(3, 1))
        {
            using var stop = new CancellationTokenSource();
            var first = new TrainingLoop(task, Options(dir.File("resumed"))).Run(model, ema, onStep: p =>
            {
                if (p.Step == 9)
                {
                    stop.Cancel();
                }
            }, cancel: stop.Token);
            Assert.Equal(9, first.Steps);
            Assert.Single(first.History);
        }

        using (var model = nn.Linear(3, 1))
        using (var ema = nn.Linear(3, 1))
        {
            using var stop = new CancellationTokenSource();
            var loop = new TrainingLoop(task, Options(dir.File("resumed"), resume: true));
            task.CancelEvaluation = () =>
            {
                if (loop.StepsDone == 12)
                {
                    stop.Cancel();
                    return true;
                }

                return false;
            };
            var second = loop.Run(model, ema, cancel: stop.Token);
            task.CancelEvaluation = null;
            Assert.Equal(12, second.Steps);
            Assert.Single(second.History); // the evaluation at 12 did not finish
            var pending = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("resumed"), "state.json")))!["pending_evaluation"];
            Assert.NotNull(pending);
            Assert.Equal(6, (long)pending!["Steps"]!);
        }

        using var resumedModel = nn.Linear(3, 1);
        using var resumedEma = nn.Linear(3, 1);
        var resumed = new TrainingLoop(task, Options(dir.File("resumed"), resume: true)).Run(resumedModel, resumedEma);
        Assert.Equal(5, resumed.StepsThisRun);
        Assert.Equal(Weights(straightModel), Weights(resumedModel));
        Assert.Equal(Weights(straightEma), Weights(resumedEma));
        Assert.Equal(straight.History.Select(Row), resumed.History.Select(Row));
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("straight"), "best.safetensors")), File.ReadAllBytes(Path.Combine(dir.File("resumed"), "best.safetensors")));
    }

    [Fact]
    public void The_default_score_keeps_the_classification_files_and_evaluate_every_is_range_checked()
    {
        using var dir = new TempDirectory();
        var task = new Regression(scoreName: null);
        Assert.Equal("EvaluateEvery", Assert.Throws<ArgumentException>(() => new TrainingLoop(task, Options(null) with { EvaluateEvery = 0 })).ParamName);

        using var model = NewModel();
        var run = new TrainingLoop(task, Options(dir.Path) with { EvaluateEvery = null, EmaDecay = 0, MaxSteps = null, Budget = new TrainingBudget(2, null) }).Run(model);
        Assert.Equal([5L, 10], run.History.Select(h => h.Step));
        Assert.All(run.History, h => Assert.Null(h.ScoreName));
        Assert.Equal("epoch,step,train_loss,lr,top1,ema_top1,images_per_s,seconds,skipped,data_wait_s,peak_rss_bytes", File.ReadLines(Path.Combine(dir.Path, "metrics.csv")).First());
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "state.json")))!.AsObject();
        Assert.Equal(
            ["step", "steps_per_epoch", "seed", "batch_size", "accumulation_steps", "resume", "best_top1", "epoch_loss_sum", "epoch_steps", "pending_evaluation", "history"],
            state.Select(p => p.Key));
        Assert.Equal(
            ["Epoch", "Step", "TrainLoss", "LearningRate", "Top1", "EmaTop1", "ImagesPerSecond", "Seconds", "Skipped", "DataWaitSeconds", "PeakResidentBytes"],
            state["history"]![0]!.AsObject().Select(p => p.Key));
        Assert.True(File.Exists(Path.Combine(dir.Path, "best.safetensors")));
    }
}
