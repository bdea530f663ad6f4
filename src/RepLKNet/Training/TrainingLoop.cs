using System.Diagnostics;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Distributed;
using RepLKNet.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>A learning rate as a function of the optimizer step and of the fraction of the budget used.</summary>
public interface ILearningRateSchedule
{
    /// <summary>The learning rate of step <paramref name="stepIndex"/> (0-based) taken when <paramref name="budgetFraction"/> of the budget is used.</summary>
    double At(long stepIndex, double budgetFraction);
}

/// <summary>Linear warm-up from 0 over the first <paramref name="WarmupFraction"/> of the budget, then cosine to 0 (steps or time alike).</summary>
/// <param name="Peak">Learning rate at the end of the warm-up.</param>
/// <param name="WarmupFraction">Fraction of the budget spent warming up, in [0, 1).</param>
public sealed record BudgetCosineSchedule(double Peak, double WarmupFraction) : ILearningRateSchedule
{
    /// <inheritdoc />
    public double At(long stepIndex, double budgetFraction)
    {
        double w = WarmupFraction;
        if (budgetFraction < w)
        {
            return Peak * budgetFraction / w;
        }

        double p = Math.Clamp((budgetFraction - w) / Math.Max(1e-12, 1 - w), 0, 1);
        return Peak * 0.5 * (1 + Math.Cos(Math.PI * p));
    }
}

/// <summary>How the task-agnostic loop trains: budget, batches, optimizer, schedule, EMA, evaluation and checkpoints.</summary>
public sealed record TrainingLoopOptions
{
    /// <summary>How long: epochs (fractions allowed) or wall-clock time.</summary>
    public required TrainingBudget Budget { get; init; }

    /// <summary>Samples per micro-batch.</summary>
    public required int BatchSize { get; init; }

    /// <summary>The schedule for a run of the given steps per epoch.</summary>
    public required Func<long, ILearningRateSchedule> Schedule { get; init; }

    /// <summary>Peak learning rate (the optimizer's groups start at it).</summary>
    public required double LearningRate { get; init; }

    /// <summary>AdamW weight decay of the decayed groups.</summary>
    public required double WeightDecay { get; init; }

    /// <summary>Learning-rate multiplier of a parameter by name (layer-wise decay), or null.</summary>
    public Func<string, double>? ParameterScale { get; init; }

    /// <summary>
    /// The rule exempting parameters from weight decay, made for the model being trained (e.g.
    /// <see cref="ParameterGroups.NormLayers"/>, mmcv's <c>norm_decay_mult=0</c>); null: the official classification rule
    /// (<see cref="ParameterGroups.IsNoDecay"/>: every bias and 1-D parameter).
    /// </summary>
    public Func<Module, Func<string, Parameter, bool>>? NoWeightDecay { get; init; }

    /// <summary>AdamW's (β₁, β₂).</summary>
    public (double Beta1, double Beta2) Betas { get; init; } = TrainStep.DefaultBetas;

    /// <summary>Micro-batches per optimizer step.</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>Global gradient-norm clip, or null.</summary>
    public double? ClipGradNorm { get; init; }

    /// <summary>EMA decay; 0: no EMA.</summary>
    public double EmaDecay { get; init; }

    /// <summary>Seed of the data order (and of every augmentation draw through the task).</summary>
    public long Seed { get; init; }

    /// <summary>Stop after this many optimizer steps; null: the budget decides.</summary>
    public long? MaxSteps { get; init; }

    /// <summary>Evaluate (and keep the best, save, report) at each epoch end; false: no evaluation inside the loop. Ignored when <see cref="EvaluateEvery"/> is set.</summary>
    public bool EvaluateEachEpoch { get; init; } = true;

    /// <summary>
    /// Iteration-based evaluation (mmcv's <c>EvalHook(interval=N, by_epoch=False)</c>): evaluate, keep the best, save and
    /// report every this many optimizer steps, and once more at the last step of a run that completes (not one that is
    /// cancelled), wherever epochs end; each report's loss is the mean over the steps since the previous evaluation.
    /// Replaces the epoch-end evaluation; null: evaluate at epoch ends (<see cref="EvaluateEachEpoch"/>).
    /// </summary>
    public long? EvaluateEvery { get; init; }

    /// <summary>Run folder for checkpoints, resume state and metrics; null: nothing is written (and nothing can resume).</summary>
    public string? OutDir { get; init; }

    /// <summary>Also save every this many steps (inside epochs); null: at epoch ends only.</summary>
    public long? SaveEvery { get; init; }

    /// <summary>Continue from <see cref="OutDir"/>'s resume state (it must exist).</summary>
    public bool Resume { get; init; }

    /// <summary>Soak mode: forced collections and finalizer runs throughout (docs/training.md, "Dependable runs").</summary>
    public bool GcStress { get; init; }

    /// <summary>Device of the model and batches.</summary>
    public Device Device { get; init; } = CPU;

    /// <summary>
    /// The processes of a data-parallel job (docs/distributed.md); <see cref="ProcessGroup.Single"/> for one process.
    /// With more than one: <see cref="BatchSize"/> is per process (the global batch is BatchSize × WorldSize, as in the
    /// official DDP code), rank 0's initial weights are broadcast, each process reads its <see cref="DataShard"/> of every
    /// global batch, gradients are averaged with bucketed allreduce before clipping and the (identical) optimizer step,
    /// losses, sample counts, the stop decision and the time budget are agreed after every step, evaluation is sharded,
    /// and only rank 0 writes files.
    /// </summary>
    public ProcessGroup Group { get; init; } = ProcessGroup.Single;

    /// <summary>Resume a state written by a job of another world size, provided the global batch is the same.</summary>
    public bool AllowWorldSizeChange { get; init; }

    /// <summary>
    /// SyncBN: the trained model's BatchNorm layers normalize over the global batch of <see cref="Group"/>
    /// (<c>torch.nn.SyncBatchNorm.convert_sync_batchnorm</c>, in place, when <see cref="TrainingLoop.Run"/> starts; the EMA
    /// only averages). No effect in one process.
    /// </summary>
    public bool SyncBatchNorm { get; init; }
}

/// <summary>What a run of the loop did.</summary>
/// <param name="History">Each evaluated epoch's metrics (of the whole run, a resumed part included).</param>
/// <param name="Steps">Optimizer steps done (of the whole run).</param>
/// <param name="StepsThisRun">Steps this call took.</param>
/// <param name="Seconds">Training wall time of this call, evaluations excluded.</param>
/// <param name="Samples">Samples trained on in this call.</param>
public sealed record TrainingRun(IReadOnlyList<EpochMetrics> History, long Steps, long StepsThisRun, double Seconds, long Samples);

/// <summary>
/// The one training loop: data → forward → loss → backward → accumulation → clipping → optimizer → schedule → EMA →
/// evaluation at epoch ends → atomic checkpoints with exact resume → progress and metrics events, for any
/// <see cref="ITrainingTask"/>. Resumption is exact: the data order and every augmentation draw are functions of
/// (seed, epoch, position), libtorch's generator (drop path) is saved, and each checkpoint's resume files live in one
/// folder that <c>state.json</c> points at, so a process killed at any moment leaves a consistent state behind.
/// </summary>
public sealed class TrainingLoop
{
    private readonly ITrainingTask _task;
    private readonly TrainingLoopOptions _o;
    private readonly RunFolder? _folder;
    private RunState? _saver;

    /// <summary>Creates the loop for <paramref name="task"/>.</summary>
    /// <exception cref="ArgumentException">An option is out of range (the parameter name says which).</exception>
    public TrainingLoop(ITrainingTask task, TrainingLoopOptions options)
    {
        _task = task ?? throw new ArgumentNullException(nameof(task));
        _o = options ?? throw new ArgumentNullException(nameof(options));
        OptionCheck.That(_o.AccumulationSteps >= 1, nameof(options.AccumulationSteps), $"must be ≥ 1, got {_o.AccumulationSteps}");
        OptionCheck.That(_o.BatchSize >= 1, nameof(options.BatchSize), $"must be ≥ 1, got {_o.BatchSize}");
        OptionCheck.That(_o.SaveEvery is null or >= 1, nameof(options.SaveEvery), $"must be ≥ 1, got {_o.SaveEvery}");
        OptionCheck.That(_o.EvaluateEvery is null or >= 1, nameof(options.EvaluateEvery), $"must be ≥ 1, got {_o.EvaluateEvery}");
        OptionCheck.That(_o.Budget.Epochs is not null || _o.Budget.Time is not null || _o.MaxSteps is not null, nameof(options.Budget),
            "names neither epochs nor time and no MaxSteps bounds the run");
        _folder = _o.OutDir is { } dir ? new RunFolder(dir) { WeightsExtension = _task.WeightsExtension } : null;
        OptionCheck.That(!_o.Resume || _folder is not null, nameof(options.Resume), "needs an OutDir holding the run to continue");
        // The schedule of a time budget follows the wall clock, which a resumed process cannot continue exactly.
        OptionCheck.That(!_o.Resume || _o.Budget.Time is null, nameof(options.Resume), "works with a budget in epochs; a time budget's schedule cannot continue exactly");
        if (_task.Pool.Count == 0)
        {
            throw new DatasetException("the training set holds no images");
        }

        // The pool does not change: the epoch length is fixed for the run.
        ArgumentNullException.ThrowIfNull(_o.Group, nameof(options.Group));
        long globalBatch = (long)_o.BatchSize * _o.AccumulationSteps * _o.Group.WorldSize;
        if (_o.Group.IsDistributed && _task.Pool.Count < globalBatch)
        {
            // One process trains a last partial batch; the shards of a job need one whole global batch.
            throw new ArgumentException(
                $"BatchSize {_o.BatchSize} × {_o.AccumulationSteps} accumulated × {_o.Group.WorldSize} processes = a global batch of {globalBatch}, more than the {_task.Pool.Count} training images",
                nameof(options.BatchSize));
        }

        StepsPerEpoch = Math.Max(1, _task.Pool.Count / ((long)_o.BatchSize * _o.AccumulationSteps * _o.Group.WorldSize));
    }

    /// <summary>Optimizer steps per epoch (the last partial global batch is dropped, as the official loader does).</summary>
    public long StepsPerEpoch { get; }

    /// <summary>Steps the whole run takes at most (a time budget may stop it sooner; long.MaxValue when only time bounds it).</summary>
    public long TotalSteps
    {
        get
        {
            long byBudget = _o.Budget.Epochs is double e ? Math.Max(1, (long)Math.Round(e * StepsPerEpoch)) : long.MaxValue;
            return Math.Min(byBudget, _o.MaxSteps ?? long.MaxValue);
        }
    }

    /// <summary>The run folder's layout, or null when the loop writes nothing.</summary>
    public RunFolder? Folder => _folder;

    /// <summary>Optimizer steps done so far (of the whole run, a resumed part included).</summary>
    public long StepsDone { get; private set; }

    /// <summary>
    /// Tensors the training thread created outside any dispose scope during the optimizer steps (TorchSharp's per-thread
    /// statistics). Such a tensor is freed by the GC's finalizer thread at a time nobody chooses, and while a native call
    /// still reads it if it was a temporary argument; the step keeps this at 0.
    /// </summary>
    public long UnscopedTensors { get; private set; }

    /// <summary>The step of the resume state on disk, or null when none was written (set the moment <c>state.json</c> is replaced).</summary>
    public long? LastSavedStep => _saver?.LastSavedStep;

    /// <summary>The gradient averaging of a data-parallel run (its last allreduce time and volume), or null for one process.</summary>
    public GradientReducer? Reducer { get; private set; }

    /// <summary>The permutation of the pool for <paramref name="epoch"/>: a function of (seed, epoch) only.</summary>
    public long[] EpochOrder(int epoch)
    {
        var order = _task.Pool.ToArray();
        new SampleRandom((ulong)_o.Seed, (ulong)epoch, 0x0DE5).Shuffle(order);
        return order;
    }

    /// <summary>
    /// Trains <paramref name="model"/> (already on the device; <paramref name="emaModel"/>, of the same architecture, holds the
    /// EMA when <see cref="TrainingLoopOptions.EmaDecay"/> &gt; 0). Returns when the budget is used, or after the current
    /// step once <paramref name="cancel"/> is cancelled (having saved a resume state when a run folder is set).
    /// </summary>
    /// <remarks>
    /// One <c>Run</c> at a time per process: it seeds nothing but saves and restores libtorch's global generator (drop
    /// path), and the progress properties are meant to be read on the training thread (in the callbacks) or after it returns.
    /// </remarks>
    /// <exception cref="ArgumentException">An EMA decay is set but <paramref name="emaModel"/> is null.</exception>
    /// <exception cref="NonFiniteLossException">The loss diverged; the last checkpoint on disk is intact.</exception>
    /// <exception cref="TrainingFailedException">Any other failure: where it happened and the last resumable step.</exception>
    /// <exception cref="CheckpointException">Resume was asked for without a resume state, or the state does not fit the run.</exception>
    public TrainingRun Run(Module<Tensor, Tensor> model, Module<Tensor, Tensor>? emaModel = null, Action<EpochMetrics>? onEpoch = null,
        Action<StepProgress>? onStep = null, Action<string>? onNotice = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        var group = _o.Group;
        bool distributed = group.IsDistributed;
        // DDP's start: every process begins from rank 0's weights and buffers (a resumed run then loads the same files everywhere).
        GradientReducer.BroadcastState(group, model);
        if (_o.SyncBatchNorm && distributed)
        {
            int layers = Distributed.SyncBatchNorm.Convert(model, group);
            onNotice?.Invoke($"SyncBN: {layers} BatchNorm layers normalize over the global batch of {group.WorldSize} processes");
        }
        var ema = _o.EmaDecay > 0
            ? new ModelEma(model, emaModel ?? throw new ArgumentException("an EMA decay needs an emaModel", nameof(emaModel)), _o.EmaDecay, warmup: true)
            : null;
        var (optimizer, scales) = TrainStep.CreateOptimizer(model, _o.LearningRate, _o.WeightDecay, _o.ParameterScale, _o.NoWeightDecay?.Invoke(model), _o.Betas);
        using var disposeOptimizer = optimizer; // its state (two tensors per parameter) is freed here, not by the finalizer
        Reducer = distributed ? new GradientReducer(group, model.parameters()) : null;
        var trainStep = new TrainStep(model, optimizer, scales, _o.Device, _o.AccumulationSteps, _o.ClipGradNorm, ema) { Reducer = Reducer, Group = group };
        var shard = new DataShard(group.Rank, group.WorldSize);
        // A data-parallel job decides together: a stop (signal) and the time used (rank 0's clock) are agreed after every
        // step, so that no process starts a step, an evaluation or a collective the others skip.
        bool agreedStop = false;
        double agreedSeconds = 0;
        var schedule = _o.Schedule(StepsPerEpoch);
        var saver = _saver = _folder is null ? null : new RunState(_folder, _task, model, ema, optimizer, StepsPerEpoch, _o);

        var history = new List<EpochMetrics>();
        long step = 0;
        double best = double.NegativeInfinity;
        (double LossSum, long Steps) partial = (0, 0);
        PendingEvaluation? pendingEvaluation = null;
        if (saver is not null)
        {
            saver.Prepare();
            if (_o.Resume)
            {
                (step, best, history, partial, pendingEvaluation) = saver.Restore();
                if (ema is not null)
                {
                    ema.Updates = step;
                }

                onNotice?.Invoke($"resumed from '{_folder!.StateFile}' at step {step} (epoch {step / StepsPerEpoch + 1}, {step % StepsPerEpoch} of {StepsPerEpoch} steps done)");
            }
        }

        long totalSteps = TotalSteps;
        long? every = _o.EvaluateEvery;
        string? scoreName = _task.ScoreName == ITrainingTask.DefaultScoreName ? null : _task.ScoreName;
        long startStep = step;
        var runClock = Stopwatch.StartNew();
        var trainClock = new Stopwatch();
        double evalSeconds = double.NaN;
        long imagesThisRun = 0;
        StepsDone = step;
        var phase = TrainingPhase.Data;
        long failingStep = step + 1; // the step a failure is reported at: the one in progress, or the last one done at an epoch end
        int currentEpoch = (int)(step / StepsPerEpoch) + 1;
        using var stress = _o.GcStress ? new GcStressThread() : null;

        // The loss average a report gives: over the epoch (epoch-end evaluation), or since the previous evaluation
        // (EvaluateEvery; then it runs across epochs). A resumed run continues the one interrupted.
        double lossSum = every is null ? 0 : partial.LossSum;
        long seen = every is null ? 0 : partial.Steps;

        // Under EvaluateEvery, the other figures of the report cover the steps since the previous evaluation in this process.
        long windowImages = 0;
        int windowSkipped = 0;
        double windowWait = 0;
        var windowClock = new Stopwatch();

        double Fraction()
        {
            double bySteps = totalSteps == long.MaxValue ? 0 : (double)step / totalSteps;
            double seconds = distributed ? agreedSeconds : trainClock.Elapsed.TotalSeconds;
            return _o.Budget.Time is { } time ? Math.Max(seconds / time.TotalSeconds, bySteps) : bySteps;
        }

        bool Finished(double fraction) => step >= totalSteps || fraction >= 1 || (distributed ? agreedStop : cancel.IsCancellationRequested);

        // Whether the evaluation follows step s: every N steps and at the run's last step (EvaluateEvery), or at epoch ends.
        bool EvaluatesAt(long s) => every is long n ? s % n == 0 || s == totalSteps : s % StepsPerEpoch == 0 && _o.EvaluateEachEpoch;

        void Save((double LossSum, long Steps) epochSoFar = default, PendingEvaluation? pending = null)
        {
            saver!.Save(step, best, history, epochSoFar, pending);
            if (distributed)
            {
                // Every process knows the state is on disk before it goes on (a failure report names it as intact).
                group.Barrier();
            }
        }

        // The evaluation work (at an epoch end, or every N steps): evaluate model and EMA, keep the best, save, report. A
        // stop requested during the evaluation saves the figures as a pending evaluation, which a resumed run does first
        // (returns false then).
        bool EndEpoch(PendingEvaluation done)
        {
            int epoch = (int)((step - 1) / StepsPerEpoch);
            phase = TrainingPhase.Evaluation;
            failingStep = step;
            var evalClock = Stopwatch.StartNew();
            TaskScore score;
            double emaTop1;
            try
            {
                // Sharded over the processes; a distributed evaluation runs to its end (a half-done collective would hang the
                // others), and the stop is agreed after the next step.
                var evalCancel = distributed ? CancellationToken.None : cancel;
                score = _task.Score(model, group, onNotice, evalCancel);
                emaTop1 = ema is null ? double.NaN : _task.Score(emaModel!, group, null, evalCancel).Value;
            }
            catch (OperationCanceledException) when (cancel.IsCancellationRequested)
            {
                phase = TrainingPhase.Checkpoint;
                if (saver is not null && LastSavedStep != step)
                {
                    Save((done.LossSum, done.Steps), done);
                }

                return false;
            }

            double top1 = score.Value;
            evalSeconds = evalClock.Elapsed.TotalSeconds;
            var metrics = new EpochMetrics(epoch + 1, step, done.Steps == 0 ? double.NaN : done.LossSum / done.Steps, schedule.At(step - 1, Fraction()), top1, emaTop1,
                done.Images / Math.Max(done.Seconds, 1e-9), done.Seconds, done.Skipped, done.WaitSeconds)
            {
                ScoreName = scoreName, Details = score.Details, PeakResidentBytes = PeakMemory.ProcessPeak()?.Bytes,
            };
            history.Add(metrics);
            double bestOfTwo = Math.Max(top1, double.IsNaN(emaTop1) ? double.NegativeInfinity : emaTop1);
            phase = TrainingPhase.Checkpoint;
            if (bestOfTwo > best)
            {
                best = bestOfTwo;
                if (saver is { Writes: true })
                {
                    _task.SaveWeights(_folder!.BestCheckpoint, ema is not null && emaTop1 >= top1 ? emaModel! : model);
                }
            }

            if (saver is not null)
            {
                Save();
                saver.WriteMetrics(history);
            }

            onEpoch?.Invoke(metrics);
            return true;
        }

        void ResetWindow()
        {
            lossSum = 0;
            seen = 0;
            windowImages = 0;
            windowSkipped = 0;
            windowWait = 0;
            windowClock.Reset();
        }

        try
        {
            if (pendingEvaluation is { } pending && step > 0 && (every is null ? step % StepsPerEpoch == 0 : EvaluatesAt(step)))
            {
                // Stopped during the evaluation that follows this step: evaluate now.
                currentEpoch = (int)((step - 1) / StepsPerEpoch) + 1;
                using var pendingScope = NewDisposeScope();
                if (EndEpoch(pending) && every is not null)
                {
                    ResetWindow();
                }
            }

            while (!Finished(Fraction()))
            {
                int epoch = (int)(step / StepsPerEpoch);
                currentEpoch = epoch + 1;
                phase = TrainingPhase.Data;
                failingStep = step + 1;
                long first = step % StepsPerEpoch;
                long epochStart = step;
                model.train();
                var sw = Stopwatch.StartNew();
                trainClock.Start();
                windowClock.Start();
                if (every is null)
                {
                    // A resumed epoch continues the loss average of the steps done before the interruption.
                    lossSum = first > 0 ? partial.LossSum : 0;
                    seen = first > 0 ? partial.Steps : 0;
                }

                long images = 0;
                var skipped = new List<SkippedImage>();
                TimeSpan waited;
                using (var data = _task.OpenEpoch(EpochOrder(epoch), epoch, _o.BatchSize, first * _o.AccumulationSteps, StepsPerEpoch * _o.AccumulationSteps, _o.Seed, shard))
                {
                    TimeSpan waitMark = TimeSpan.Zero; // the epoch's data wait already counted in an evaluation window
                    for (long b = first; b < StepsPerEpoch; b++)
                    {
                        // One reading of the budget per step: it decides whether to stop and sets the step's learning rate.
                        double fraction = Fraction();
                        if (Finished(fraction))
                        {
                            break;
                        }

                        // Every TorchSharp object made during the step (gradients, optimizer and EMA temporaries) belongs to this
                        // scope: reachable until the step ends, then freed here on this thread, never by the GC's finalizer
                        // while libtorch uses it (docs/runtime.md, "Object lifetimes").
                        using var stepScope = NewDisposeScope();
                        long unscopedBefore = DisposeScopeManager.Statistics.CreatedOutsideScopeCount;
                        double lr = schedule.At(step, fraction);
                        failingStep = step + 1;
                        StepOutcome outcome;
                        try
                        {
                            if (distributed)
                            {
                                // Each process draws its own drop-path masks (the official code seeds seed + rank), keyed by the
                                // step so that a resumed job draws the same ones without the other ranks' generator states.
                                torch.manual_seed(StepSeed(_o.Seed, step, group.Rank));
                            }

                            outcome = trainStep.Run(data, lr, step + 1);
                            if (distributed)
                            {
                                phase = TrainingPhase.Collective;
                                (outcome, agreedStop, agreedSeconds) = Agree(group, outcome, cancel.IsCancellationRequested, trainClock.Elapsed.TotalSeconds);
                            }
                        }
                        finally
                        {
                            phase = trainStep.Phase;
                        }

                        skipped.AddRange(outcome.Skipped);
                        UnscopedTensors += DisposeScopeManager.Statistics.CreatedOutsideScopeCount - unscopedBefore;
                        step++;
                        StepsDone = step;
                        lossSum += outcome.Loss;
                        seen++;
                        images += outcome.Samples;
                        windowImages += outcome.Samples;
                        windowSkipped += outcome.Skipped.Count;
                        phase = TrainingPhase.Progress;
                        failingStep = step;
                        if (onStep is not null)
                        {
                            double elapsed = runClock.Elapsed.TotalSeconds;
                            double perStep = elapsed / Math.Max(step - startStep, 1);
                            long evaluationsLeft = totalSteps == long.MaxValue ? 0
                                : every is long n ? totalSteps / n - (step - 1) / n + (totalSteps % n == 0 ? 0 : 1)
                                : (totalSteps - 1) / StepsPerEpoch - (step - 1) / StepsPerEpoch + (step % StepsPerEpoch == 0 ? 1 : 0);
                            double evalGuess = double.IsNaN(evalSeconds) ? 0 : evalSeconds * evaluationsLeft;
                            var remaining = _o.Budget.Time is { } time
                                ? time - trainClock.Elapsed
                                : TimeSpan.FromSeconds(perStep * (totalSteps - step) + evalGuess);
                            onStep(new StepProgress(step, totalSteps, (step - 1) % StepsPerEpoch + 1, StepsPerEpoch, epoch + 1, outcome.Loss, lr,
                                (imagesThisRun + images) / Math.Max(elapsed, 1e-9), remaining < TimeSpan.Zero ? TimeSpan.Zero : remaining)
                            {
                                BudgetFraction = Math.Min(1, Fraction()),
                                Samples = outcome.Samples,
                            });
                        }

                        bool evaluatesHere = every is not null && EvaluatesAt(step);
                        // Classification's epoch ends save (or evaluate) anyway; under EvaluateEvery they are ordinary steps.
                        if (saver is not null && _o.SaveEvery is long saveEvery && step % saveEvery == 0 && (every is not null || step % StepsPerEpoch != 0) && !evaluatesHere)
                        {
                            phase = TrainingPhase.Checkpoint;
                            Save((lossSum, seen));
                        }

                        if (evaluatesHere)
                        {
                            trainClock.Stop();
                            windowClock.Stop();
                            var wait = data.WaitTime;
                            var window = new PendingEvaluation(lossSum, seen, windowImages, windowClock.Elapsed.TotalSeconds, windowSkipped,
                                windowWait + (wait - waitMark).TotalSeconds);
                            waitMark = wait;
                            if (!EndEpoch(window))
                            {
                                break; // stopped during the evaluation; its pending state is saved
                            }

                            ResetWindow();
                            model.train();
                            phase = TrainingPhase.Data;
                            trainClock.Start();
                            windowClock.Start();
                        }

                        if (_o.GcStress)
                        {
                            GC.Collect();
                            GC.WaitForPendingFinalizers();
                        }
                    }

                    waited = data.WaitTime;
                    windowWait += (waited - waitMark).TotalSeconds;
                }

                trainClock.Stop();
                windowClock.Stop();
                imagesThisRun += images;
                double seconds = sw.Elapsed.TotalSeconds;
                if (skipped.Count > 0)
                {
                    onNotice?.Invoke($"epoch {epoch + 1}: skipped {skipped.Count} unreadable image(s), e.g. {skipped[0].Source}: {skipped[0].Reason}");
                }

                // Evaluation and checkpoints own their temporaries too (docs/runtime.md, "Object lifetimes").
                using var endScope = NewDisposeScope();
                if (step == epochStart)
                {
                    // No step was taken (the budget ran out or a stop came while the epoch's data opened): nothing to report.
                    continue;
                }

                if (every is null && step % StepsPerEpoch == 0 && _o.EvaluateEachEpoch)
                {
                    EndEpoch(new PendingEvaluation(lossSum, seen, images, seconds, skipped.Count, waited.TotalSeconds));
                }
                else if (saver is not null && (every is null || Finished(Fraction())))
                {
                    // Stopped inside an epoch (a step limit or cancellation), or an epoch end without evaluation: keep the
                    // position so a resumed run continues here (unless that very state is already on disk). Under
                    // EvaluateEvery, epoch ends mean nothing and only a stop saves here.
                    phase = TrainingPhase.Checkpoint;
                    failingStep = step;
                    if (LastSavedStep != step)
                    {
                        Save((lossSum, seen));
                    }
                }
            }
        }
        catch (NonFiniteLossException e)
        {
            string intact = LastSavedStep is null ? "" : $"; the last good checkpoint '{_folder!.LastCheckpoint}' (step {LastSavedStep}) is intact";
            throw new NonFiniteLossException($"{e.Message} (epoch {currentEpoch}){intact}; try a lower learning rate", e);
        }
        catch (Exception e) when (e is not (OperationCanceledException or OutOfMemoryException))
        {
            // Where it failed; the resume state on disk is the last complete one (each save is atomic and written last).
            throw new TrainingFailedException(failingStep, currentEpoch, phase, LastSavedStep, e);
        }

        if (distributed)
        {
            group.Barrier(); // rank 0 has written the last files when every process returns
        }

        return new TrainingRun(history, step, step - startStep, trainClock.Elapsed.TotalSeconds, imagesThisRun);
    }

    /// <summary>The drop-path seed of process <paramref name="rank"/> at step <paramref name="step"/> of a data-parallel run (SplitMix64 of the three).</summary>
    internal static long StepSeed(long seed, long step, int rank)
    {
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)step * 0xBF58476D1CE4E5B9UL ^ (ulong)(rank + 1) * 0x94D049BB133111EBUL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (long)((z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFFUL);
    }

    /// <summary>
    /// After each step of a data-parallel run, one small allreduce: the loss (mean over processes, each its local mean, as
    /// DDP's averaged gradient implies), the samples (summed), whether any process was asked to stop, and rank 0's training
    /// time (which decides a time budget for all).
    /// </summary>
    private static (StepOutcome Outcome, bool Stop, double Seconds) Agree(ProcessGroup group, StepOutcome local, bool stop, double seconds)
    {
        var values = new[] { local.Loss, local.Samples, stop ? 1.0 : 0.0, group.IsMain ? seconds : 0.0 };
        group.AllReduce(values);
        var outcome = local with { Loss = values[0] / group.WorldSize, Samples = (long)values[1] };
        return (outcome, values[2] > 0, values[3]);
    }

    /// <summary>Forces collections and finalizer runs back to back on a background thread (soak mode).</summary>
    private sealed class GcStressThread : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;

        public GcStressThread()
        {
            _thread = new Thread(() =>
            {
                // Young-generation collections back to back (a temporary Scalar or Tensor is young, so each one finds it and
                // queues its finalizer, which then runs at once), and a full collection every 64th time.
                for (long i = 1; !_stop; i++)
                {
                    GC.Collect(i % 64 == 0 ? GC.MaxGeneration : 0, GCCollectionMode.Forced, blocking: true);
                    GC.WaitForPendingFinalizers();
                }
            })
            { IsBackground = true, Name = "replknet gc-stress" };
            _thread.Start();
        }

        public void Dispose()
        {
            _stop = true;
            _thread.Join();
        }
    }
}
