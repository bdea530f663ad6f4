using System.Diagnostics;
using System.Globalization;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>
/// The compact experiment recipe for any classifier (the kernel-size experiments and <c>experiment train</c>); the
/// property defaults are the recipe's defaults, the one place they live.
/// </summary>
public sealed record ClassifierTrainingOptions : RecipeOptions
{
    /// <summary>Creates the options with the recipe's defaults.</summary>
    public ClassifierTrainingOptions()
        : base(DefaultBatchSize, DefaultLearningRate, DefaultWeightDecay)
    {
    }

    /// <summary>Default <see cref="RecipeOptions.BatchSize"/>.</summary>
    public const int DefaultBatchSize = 128;

    /// <summary>Default <see cref="RecipeOptions.LearningRate"/>.</summary>
    public const double DefaultLearningRate = 3e-3;

    /// <summary>Default <see cref="RecipeOptions.WeightDecay"/>.</summary>
    public const double DefaultWeightDecay = 0.05;

    /// <summary>Default <see cref="WarmupFraction"/>.</summary>
    public const double DefaultWarmupFraction = 0.05;

    /// <summary>How long to train.</summary>
    public required TrainingBudget Budget { get; init; }

    /// <summary>Fraction of the budget spent in linear warm-up.</summary>
    public double WarmupFraction { get; init; } = DefaultWarmupFraction;

    /// <summary>
    /// Training images (eval view) over which the BatchNorm statistics are recomputed after training ("precise BN"); 0 keeps
    /// the running averages. Short budgets need it: the running averages lag the last steps' weights, and a network that
    /// is still moving can lose most of its accuracy in eval mode (a 48-step run measured 25 % → 100 %).
    /// </summary>
    public int PreciseBnImages { get; init; } = 2048;


    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        Check(WarmupFraction is >= 0 and < 1, nameof(WarmupFraction), $"must be in [0, 1), got {WarmupFraction}");
        Check(PreciseBnImages >= 0, nameof(PreciseBnImages), $"must be ≥ 0, got {PreciseBnImages}");
    }
}

/// <summary>What a training run gave.</summary>
/// <param name="Top1">Test top-1 of the final model.</param>
/// <param name="Steps">Optimizer steps taken.</param>
/// <param name="Epochs">Epochs seen (fractional).</param>
/// <param name="Seconds">Training wall time (evaluation excluded).</param>
/// <param name="ImagesPerSecond">Training throughput.</param>
/// <param name="FinalLoss">Mean training loss over the last 10 % of steps.</param>
public sealed record ClassifierTrainingResult(double Top1, long Steps, double Epochs, double Seconds, double ImagesPerSecond, double FinalLoss);

/// <summary>Progress of one step: fraction of the budget done, loss, learning rate.</summary>
public sealed record ClassifierTrainingProgress(long Step, double Fraction, double Loss, double LearningRate, double ImagesPerSecond);

/// <summary>
/// The compact experiment recipe on the <see cref="TrainingLoop"/>, for any classifier module: AdamW with the no-decay
/// groups, linear warm-up then cosine to zero over the budget (epochs or time), label-smoothed (or Mixup/CutMix
/// soft-target) cross-entropy, the project's loader and augmentation, then precise BatchNorm statistics and one test-set
/// evaluation. Unlike the official recipe (<see cref="Trainer"/>) it keeps no checkpoints or EMA: experiment cells are
/// short and restart from scratch.
/// </summary>
public static class ClassifierTraining
{
    /// <summary>Trains <paramref name="model"/> (already on the device, seeded by the caller) and evaluates it; <paramref name="classes"/> is its output size.</summary>
    /// <exception cref="DatasetException">The sets are empty or disagree.</exception>
    /// <exception cref="NonFiniteLossException">The loss diverged.</exception>
    /// <exception cref="TrainingFailedException">Any other failure during training.</exception>
    /// <exception cref="ArgumentException">An option is out of range (<see cref="ArgumentException.ParamName"/> names it).</exception>
    public static ClassifierTrainingResult Run(Module<Tensor, Tensor> model, int classes, IImageDataset train, IImageDataset test, ClassifierTrainingOptions options,
        Action<ClassifierTrainingProgress>? onStep = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(test);
        ArgumentNullException.ThrowIfNull(options);
        if (train.ClassNames.Count != classes)
        {
            throw new DatasetException($"the model has {classes} outputs but the data has {train.ClassNames.Count} classes");
        }

        options.Validate();
        var pipeline = ClassificationTask.CreatePipeline(options, train);
        long[] pool = TrainingPool.Random(train.Count, options.TrainSubset, options.Seed);
        int batch = (int)Math.Min(options.BatchSize, pool.LongLength);
        if (options.Augment.Mixes && batch % 2 != 0)
        {
            batch--;
        }

        if (batch < 1)
        {
            throw new DatasetException($"TrainSubset: {pool.Length} training image(s) make no batch (Mixup/CutMix pair images)", nameof(RecipeOptions.TrainSubset));
        }

        var task = new ClassificationTask(train, test, pipeline, options.Augment, pool, options.BatchSize * 2, options.Workers, options.Device, metadata: null);
        var loop = new TrainingLoop(task, new TrainingLoopOptions
        {
            Budget = options.Budget, BatchSize = batch, LearningRate = options.LearningRate, WeightDecay = options.WeightDecay,
            Schedule = _ => new BudgetCosineSchedule(options.LearningRate, options.WarmupFraction), Seed = options.Seed, MaxSteps = options.MaxSteps,
            EvaluateEachEpoch = false, Device = options.Device,
        });

        // The final loss: the mean over the last 10 % of the steps (the last 50 under a time budget).
        long? totalSteps = loop.TotalSteps == long.MaxValue ? null : loop.TotalSteps;
        int window = (int)Math.Min(int.MaxValue, totalSteps is long ts ? Math.Max(1, ts / 10) : 50);
        var recent = new Queue<double>();
        var run = loop.Run(model, null, null, p =>
        {
            if (p.Samples > 0)
            {
                recent.Enqueue(p.Loss);
                if (recent.Count > window)
                {
                    recent.Dequeue();
                }
            }

            onStep?.Invoke(new ClassifierTrainingProgress(p.Step, p.BudgetFraction, p.Loss, p.LearningRate, p.ImagesPerSecond));
        }, null, cancel);

        if (options.PreciseBnImages > 0)
        {
            RecalibrateBatchNorm(model, train, pipeline, loop.EpochOrder(-1), options.PreciseBnImages, batch, options.Device, options.Workers);
        }

        var result = Evaluation.Run(model, classes, test, pipeline, task.EvalBatchSize, options.Device, options.Workers, CancellationToken.None);
        return new ClassifierTrainingResult(result.Top1, run.Steps, (double)run.Steps / loop.StepsPerEpoch, run.Seconds, run.Samples / Math.Max(run.Seconds, 1e-9),
            recent.Count == 0 ? double.NaN : recent.Average());
    }

    /// <summary>
    /// Recomputes every BatchNorm's running mean and variance as the plain average over up to <paramref name="images"/>
    /// images of <paramref name="order"/> (eval view, train mode, no gradients): batch k gets momentum 1/(k+1). Leaves the
    /// model in eval mode. Each batch of 2 or more images weighs the same; smaller batches are skipped. Nothing is computed
    /// (the model is only put in eval mode) when it has no BatchNorm, <paramref name="images"/> ≤ 0 or <paramref name="order"/> is empty.
    /// The BatchNorm momenta are restored afterwards, also on failure.
    /// </summary>
    /// <param name="model">The model, already on <paramref name="device"/>; its BatchNorm running statistics are replaced.</param>
    /// <param name="data">The images (labels unused).</param>
    /// <param name="pipeline">The view producing [N, C, S, S] normalized float batches (read without augmentation); its channel count must be the dataset's.</param>
    /// <param name="order">Dataset indices to read, in order; the first <paramref name="images"/> are used.</param>
    /// <param name="images">Most images to read.</param>
    /// <param name="batchSize">Images per batch (≥ 1 when there is work to do); BatchNorm statistics are per batch, so small batches give noisier averages.</param>
    /// <param name="device">Where the batches go; must be the model's device.</param>
    /// <param name="workers">Background threads preparing batches (≥ 1 when there is work to do).</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> or <paramref name="order"/> is null; or, when there is work to do, <paramref name="data"/> or <paramref name="pipeline"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException">There is work to do and <paramref name="batchSize"/> or <paramref name="workers"/> is 0 or negative.</exception>
    /// <exception cref="ArgumentException">There is work to do and the pipeline's channel count differs from the dataset's.</exception>
    public static void RecalibrateBatchNorm(Module<Tensor, Tensor> model, IImageDataset data, SamplePipeline pipeline, long[] order, int images, int batchSize, Device device, int workers = 1)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(order);
        var norms = model.modules().OfType<BatchNorm>().ToList();
        if (norms.Count == 0 || images <= 0 || order.Length == 0)
        {
            model.eval();
            return;
        }

        var momenta = norms.Select(n => n.momentum).ToList();
        foreach (var n in norms)
        {
            n.reset_running_stats();
        }

        model.train();
        var plan = new LoaderPlan { Order = order[..Math.Min(images, order.Length)], BatchSize = batchSize, Workers = workers };
        try
        {
            using var noGrad = no_grad();
            using var loader = new BatchLoader(data, pipeline, new AugmentOptions(), plan);
            int k = 0;
            foreach (var b in loader.Batches())
            {
                if (b.Count < 2)
                {
                    continue;
                }

                foreach (var n in norms)
                {
                    n.momentum = 1.0 / (k + 1);
                }

                using var scope = NewDisposeScope();
                model.call(ModelInputs.Batch(b.Images, b.Count, b.Channels, b.Size, ScalarType.Float32, device));
                k++;
            }
        }
        finally
        {
            for (int i = 0; i < norms.Count; i++)
            {
                norms[i].momentum = momenta[i];
            }

            model.eval();
        }
    }

    /// <summary>Learning rate at <paramref name="fraction"/> of the budget: linear warm-up from 0, then cosine to 0 (<see cref="BudgetCosineSchedule"/>).</summary>
    public static double LearningRate(ClassifierTrainingOptions options, double fraction)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new BudgetCosineSchedule(options.LearningRate, options.WarmupFraction).At(0, fraction);
    }
}
