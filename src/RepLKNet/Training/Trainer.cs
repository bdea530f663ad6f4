using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.IO;
using RepLKNet.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Training;

/// <summary>What to train and how (the official recipe's knobs, §8 of the spec).</summary>
public sealed record TrainOptions
{
    /// <summary>Display name of the architecture.</summary>
    public required string Arch { get; init; }

    /// <summary>The architecture.</summary>
    public required RepLKNetConfig Config { get; init; }

    /// <summary>Run folder (checkpoints, metrics).</summary>
    public required string OutDir { get; init; }

    /// <summary>Epochs.</summary>
    public int Epochs { get; init; } = 10;

    /// <summary>Batch size.</summary>
    public int BatchSize { get; init; } = 128;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 4e-3;

    /// <summary>Final learning rate of the cosine.</summary>
    public double MinLearningRate { get; init; } = 1e-6;

    /// <summary>Warm-up epochs.</summary>
    public int WarmupEpochs { get; init; } = 1;

    /// <summary>AdamW weight decay (not applied to biases and 1-D parameters).</summary>
    public double WeightDecay { get; init; } = 0.05;

    /// <summary>EMA decay; 0 disables the EMA.</summary>
    public double EmaDecay { get; init; } = 0.999;

    /// <summary>Seed of initialization and data order.</summary>
    public long Seed { get; init; }

    /// <summary>Stop after this many optimizer steps (smoke runs); null: no limit.</summary>
    public long? MaxSteps { get; init; }

    /// <summary>Save a checkpoint every this many steps as well as at each epoch end; null: epochs only.</summary>
    public long? SaveEvery { get; init; }

    /// <summary>Continue from the run folder's last checkpoint.</summary>
    public bool Resume { get; init; }

    /// <summary>Per-channel normalization of [0, 1] inputs.</summary>
    public required Normalization Normalization { get; init; }

    /// <summary>Train/eval pipelines and Mixup/CutMix (label smoothing lives here too).</summary>
    public AugmentOptions Augment { get; init; } = new();

    /// <summary>Micro-batches per optimizer step (the official <c>update_freq</c>); the loss is divided by it.</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>Clip the global gradient norm to this value; null: no clipping (the official default).</summary>
    public double? ClipGradNorm { get; init; }

    /// <summary>Layer-wise learning-rate decay (fine-tuning; e.g. 0.7); null or 1: off.</summary>
    public double? LayerDecay { get; init; }

    /// <summary>Initial weights for fine-tuning (any readable checkpoint; a head of another size is skipped).</summary>
    public string? InitialWeights { get; init; }

    /// <summary>Background threads preparing batches.</summary>
    public int Workers { get; init; } = LoaderPlan.DefaultWorkers;

    /// <summary>Device.</summary>
    public Device Device { get; init; } = CPU;

    /// <summary>
    /// Soak mode: a background thread forces garbage collections (young generation back to back, a full one every 64th) and
    /// runs finalizers without pause for the whole run, and the training thread forces a full one between steps, so a TorchSharp object the GC could free while libtorch uses it
    /// shows up within minutes instead of once in hours (docs/training.md, "Dependable runs"). Results are unchanged; slower.
    /// </summary>
    public bool GcStress { get; init; }
}

/// <summary>An epoch whose steps are done but whose evaluation was interrupted: its figures, kept for the resumed run.</summary>
/// <param name="LossSum">Sum of the epoch's step losses.</param>
/// <param name="Steps">Steps in the sum.</param>
/// <param name="Images">Training images of the epoch (this process's part).</param>
/// <param name="Seconds">Training seconds of the epoch.</param>
/// <param name="Skipped">Unreadable images skipped.</param>
/// <param name="WaitSeconds">Time the loop waited for data.</param>
public sealed record PendingEvaluation(double LossSum, long Steps, long Images, double Seconds, int Skipped, double WaitSeconds);

/// <summary>What a training step was doing when it failed.</summary>
public enum TrainingPhase
{
    /// <summary>Waiting for or receiving a batch from the loader.</summary>
    Data,

    /// <summary>The model's forward pass and the loss.</summary>
    Forward,

    /// <summary>Back-propagation.</summary>
    Backward,

    /// <summary>Gradient clipping and the optimizer update.</summary>
    Optimizer,

    /// <summary>The weight EMA update.</summary>
    Ema,

    /// <summary>Evaluating on the test set.</summary>
    Evaluation,

    /// <summary>Writing checkpoints and the resume state.</summary>
    Checkpoint,

    /// <summary>Reporting progress (the caller's step callback).</summary>
    Progress,
}

/// <summary>
/// An unexpected error inside <see cref="Trainer.Run"/>: where it happened (step, epoch, phase) and the last resumable
/// state on disk, which the failure did not touch. <see cref="Exception.InnerException"/> is the original error.
/// </summary>
public sealed class TrainingFailedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TrainingFailedException(long step, int epoch, TrainingPhase phase, long? lastSavedStep, Exception inner)
        : base(string.Create(CultureInfo.InvariantCulture,
            $"training failed at step {step} (epoch {epoch}) in the {phase.ToString().ToLowerInvariant()} phase: {Short(inner)}"), inner)
    {
        Step = step;
        Epoch = epoch;
        Phase = phase;
        LastSavedStep = lastSavedStep;
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public TrainingFailedException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public TrainingFailedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public TrainingFailedException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>The error's message on one line, without the C++ stack libtorch appends (that stays in the crash report).</summary>
    private static string Short(Exception? e) => Runtime.LibTorchLog.WithoutNativeStack(e?.Message ?? "").TrimEnd('.');

    /// <summary>The optimizer step (1-based) that failed.</summary>
    public long Step { get; }

    /// <summary>The epoch (1-based) of that step.</summary>
    public int Epoch { get; }

    /// <summary>What the step was doing.</summary>
    public TrainingPhase Phase { get; }

    /// <summary>The step of the resume state on disk (<c>state.json</c>), or null when none was written yet.</summary>
    public long? LastSavedStep { get; }
}

/// <summary>One epoch's (or final) metrics.</summary>
/// <param name="Epoch">Epoch (1-based).</param>
/// <param name="Step">Optimizer steps so far.</param>
/// <param name="TrainLoss">Mean training loss over the epoch.</param>
/// <param name="LearningRate">Learning rate at the end of the epoch.</param>
/// <param name="Top1">Test top-1 accuracy of the model.</param>
/// <param name="EmaTop1">Test top-1 accuracy of the EMA model (NaN without EMA).</param>
/// <param name="ImagesPerSecond">Training throughput.</param>
/// <param name="Seconds">Wall time of the epoch.</param>
/// <param name="Skipped">Unreadable training images skipped in the epoch.</param>
/// <param name="DataWaitSeconds">Time the training loop waited for batches.</param>
public sealed record EpochMetrics(int Epoch, long Step, double TrainLoss, double LearningRate, double Top1, double EmaTop1, double ImagesPerSecond, double Seconds,
    long Skipped = 0, double DataWaitSeconds = 0);

/// <summary>Progress of one optimizer step.</summary>
/// <param name="Step">Optimizer steps done (1-based).</param>
/// <param name="TotalSteps">Steps the run will take.</param>
/// <param name="StepInEpoch">Steps done in this epoch.</param>
/// <param name="StepsPerEpoch">Steps per epoch.</param>
/// <param name="Epoch">Epoch (1-based).</param>
/// <param name="Loss">Loss of the step.</param>
/// <param name="LearningRate">Base learning rate of the step.</param>
/// <param name="ImagesPerSecond">Throughput since the run (or resume) started.</param>
/// <param name="Remaining">Estimated time to the end of training (evaluation included at the measured rate).</param>
public sealed record StepProgress(long Step, long TotalSteps, long StepInEpoch, long StepsPerEpoch, int Epoch, double Loss, double LearningRate,
    double ImagesPerSecond, TimeSpan Remaining);

/// <summary>The training loss became NaN or infinite; the last good checkpoint is intact.</summary>
public sealed class NonFiniteLossException : Exception
{
    /// <summary>Creates the exception.</summary>
    public NonFiniteLossException(string message)
        : base(message)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public NonFiniteLossException()
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public NonFiniteLossException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// Supervised training with the official recipe: AdamW with the no-decay groups (and optional layer-wise lr decay),
/// per-iteration warm-up + cosine learning rate, label-smoothed or soft-target (Mixup/CutMix) cross-entropy, gradient
/// accumulation and clipping, drop path, weight EMA, evaluation each epoch, and atomic checkpoints. Resumption is exact:
/// the data order and every augmentation draw are functions of (seed, epoch, position), libtorch's generator (drop path) is
/// saved, and each checkpoint's resume files live in one folder that <c>state.json</c> points at, so a process killed at any
/// moment leaves a consistent state behind.
/// </summary>
public sealed class Trainer
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
    private readonly TrainOptions _o;
    private readonly IImageDataset _train;
    private readonly IImageDataset _test;
    private readonly SamplePipeline _pipeline;

    /// <summary>Creates a trainer over <paramref name="train"/> and <paramref name="test"/>.</summary>
    /// <exception cref="DatasetException">A set is empty, or the sets disagree on classes or channels.</exception>
    public Trainer(TrainOptions options, IImageDataset train, IImageDataset test)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        _train = train ?? throw new ArgumentNullException(nameof(train));
        _test = test ?? throw new ArgumentNullException(nameof(test));
        if (_train.Count == 0 || _test.Count == 0)
        {
            throw new DatasetException("the training or test set holds no images");
        }

        if (!_train.ClassNames.SequenceEqual(_test.ClassNames) || _train.Channels != _test.Channels)
        {
            throw new DatasetException("the training and test sets have different classes or channels");
        }

        if (_o.AccumulationSteps < 1)
        {
            throw new ArgumentException("AccumulationSteps must be ≥ 1");
        }

        _o.Augment.Validate();
        int size = _o.Augment.InputSize ?? _train.FixedSize?.Height
            ?? throw new DatasetException("images of varying sizes need an input size (--input-size)");
        _pipeline = new SamplePipeline(_o.Augment, _o.Normalization, _train.Channels, size);
        if (_o.Augment.Mixes && _o.BatchSize % 2 != 0)
        {
            throw new ArgumentException($"Mixup/CutMix pair each image with the batch reversed: --batch-size must be even, got {_o.BatchSize}");
        }
    }

    /// <summary>The sample pipeline (size, channels) both splits go through.</summary>
    public SamplePipeline Pipeline => _pipeline;

    /// <summary>What predict/eval must do to inputs of a checkpoint from this run.</summary>
    public Preprocessing Preprocessing => new(_pipeline.Size,
        [.. Enumerable.Range(0, _pipeline.Channels).Select(c => _o.Normalization.At(c, _pipeline.Channels).Mean)],
        [.. Enumerable.Range(0, _pipeline.Channels).Select(c => _o.Normalization.At(c, _pipeline.Channels).Std)],
        _o.Augment.CropPct);

    /// <summary>Path of the last checkpoint (project format).</summary>
    public string LastCheckpoint => Path.Combine(_o.OutDir, "last.safetensors");

    /// <summary>Path of the best checkpoint (by test top-1, EMA or not, whichever is higher).</summary>
    public string BestCheckpoint => Path.Combine(_o.OutDir, "best.safetensors");

    /// <summary>Path of the EMA weights of the last checkpoint.</summary>
    public string EmaCheckpoint => Path.Combine(_o.OutDir, "last-ema.safetensors");

    private string StateFile => Path.Combine(_o.OutDir, "state.json");

    private string ResumeRoot => Path.Combine(_o.OutDir, "resume");

    /// <summary>Optimizer steps per epoch (the last partial batch is dropped, as the official loader does).</summary>
    public long StepsPerEpoch => Math.Max(1, _train.Count / ((long)_o.BatchSize * _o.AccumulationSteps));

    /// <summary>Steps the whole run takes.</summary>
    public long TotalSteps => Math.Min(_o.Epochs * StepsPerEpoch, _o.MaxSteps ?? long.MaxValue);

    /// <summary>Trains; <paramref name="onEpoch"/> and <paramref name="onStep"/> report progress.</summary>
    public List<EpochMetrics> Run(Action<EpochMetrics>? onEpoch = null, Action<StepProgress>? onStep = null, Action<string>? onNotice = null,
        CancellationToken cancel = default)
    {
        Directory.CreateDirectory(_o.OutDir);
        AtomicFile.RemoveLeftovers(_o.OutDir);
        torch.manual_seed(_o.Seed);
        using var model = new RepLKNetModel(_o.Config).to(_o.Device);
        using var emaModel = new RepLKNetModel(_o.Config).to(_o.Device);
        bool resuming = _o.Resume && File.Exists(StateFile);
        if (_o.InitialWeights is { } weights && !resuming)
        {
            onNotice?.Invoke(LoadInitialWeights(model, weights));
        }

        var ema = _o.EmaDecay > 0 ? new ModelEma(model, emaModel, _o.EmaDecay, warmup: true) : null;
        var (optimizer, scales) = CreateOptimizer(model);
        var schedule = new CosineSchedule(_o.LearningRate, _o.MinLearningRate, _o.Epochs, (int)StepsPerEpoch, _o.WarmupEpochs);

        var history = new List<EpochMetrics>();
        long step = 0;
        double best = double.NegativeInfinity;
        (double LossSum, long Steps) partial = (0, 0);
        PendingEvaluation? pendingEvaluation = null;
        if (_o.Resume && !resuming)
        {
            throw new CheckpointException($"resume was requested but '{StateFile}' does not exist: there is no run to continue in '{_o.OutDir}' (start a new run without resuming)");
        }

        if (resuming)
        {
            (step, best, history, partial, pendingEvaluation) = Restore(model, ema, optimizer);
            if (ema is not null)
            {
                ema.Updates = step;
            }

            onNotice?.Invoke($"resumed from '{StateFile}' at step {step} (epoch {step / StepsPerEpoch + 1}, {step % StepsPerEpoch} of {StepsPerEpoch} steps done)");
        }

        var metadata = new CheckpointMetadata(_o.Arch, _o.Config, ModelForm.Train, _train.ClassNames, Preprocessing: Preprocessing);
        long totalSteps = TotalSteps;
        long startStep = step;
        var runClock = Stopwatch.StartNew();
        double evalSeconds = double.NaN;
        long imagesThisRun = 0;
        _lastSaved = resuming ? step : null;
        StepsDone = step;
        var phase = TrainingPhase.Data;
        long failingStep = step + 1; // the step a failure is reported at: the one in progress, or the last one done at an epoch end
        int currentEpoch = (int)(step / StepsPerEpoch) + 1;
        using var stress = _o.GcStress ? new GcStressThread() : null;

        // The epoch-end work: evaluate model and EMA, keep the best, save, report. A stop requested during the evaluation
        // saves the epoch's figures as a pending evaluation, which a resumed run does first (returns false then).
        bool EndEpoch(int epoch, PendingEvaluation done)
        {
            phase = TrainingPhase.Evaluation;
            failingStep = step;
            var evalClock = Stopwatch.StartNew();
            double top1, emaTop1;
            try
            {
                top1 = Evaluate(model, onNotice, cancel);
                emaTop1 = ema is null ? double.NaN : Evaluate(emaModel, null, cancel);
            }
            catch (OperationCanceledException) when (cancel.IsCancellationRequested)
            {
                phase = TrainingPhase.Checkpoint;
                if (_lastSaved != step)
                {
                    Save(model, ema, optimizer, metadata, step, best, history, (done.LossSum, done.Steps), done);
                }

                return false;
            }

            evalSeconds = evalClock.Elapsed.TotalSeconds;
            var metrics = new EpochMetrics(epoch + 1, step, done.Steps == 0 ? double.NaN : done.LossSum / done.Steps, schedule[step - 1], top1, emaTop1,
                done.Images / Math.Max(done.Seconds, 1e-9), done.Seconds, done.Skipped, done.WaitSeconds);
            history.Add(metrics);
            double score = Math.Max(top1, double.IsNaN(emaTop1) ? double.NegativeInfinity : emaTop1);
            if (score > best)
            {
                best = score;
                var winner = ema is not null && emaTop1 >= top1 ? emaModel : model;
                phase = TrainingPhase.Checkpoint;
                CheckpointFile.WriteRepLKNet(BestCheckpoint, StateDicts.Ordered(winner), metadata);
            }

            phase = TrainingPhase.Checkpoint;
            Save(model, ema, optimizer, metadata, step, best, history);
            WriteMetrics(history);
            onEpoch?.Invoke(metrics);
            return true;
        }

        try
        {
            if (pendingEvaluation is { } pending && step > 0 && step % StepsPerEpoch == 0)
            {
                // Stopped during the evaluation of the epoch that ends at this step: evaluate it now.
                currentEpoch = (int)(step / StepsPerEpoch);
                using var pendingScope = NewDisposeScope();
                EndEpoch(currentEpoch - 1, pending);
            }

            while (step < totalSteps && !cancel.IsCancellationRequested)
            {
                int epoch = (int)(step / StepsPerEpoch);
                currentEpoch = epoch + 1;
                phase = TrainingPhase.Data;
                failingStep = step + 1;
                long first = step % StepsPerEpoch;
                model.train();
                var sw = Stopwatch.StartNew();
                // A resumed epoch continues the loss average of the steps done before the interruption.
                double lossSum = first > 0 ? partial.LossSum : 0;
                long seen = first > 0 ? partial.Steps : 0, images = 0;
                var skipped = new List<SkippedImage>();
                var plan = new LoaderPlan
                {
                    Order = EpochOrder(epoch), BatchSize = _o.BatchSize, FirstBatch = first * _o.AccumulationSteps,
                    BatchCount = StepsPerEpoch * _o.AccumulationSteps, Train = true, Key = (_o.Seed, epoch), Workers = _o.Workers,
                };
                TimeSpan waited;
                using (var loader = new BatchLoader(_train, _pipeline, _o.Augment, plan))
                {
                    using var batches = loader.Batches().GetEnumerator();
                    for (long b = first; b < StepsPerEpoch && step < totalSteps && !cancel.IsCancellationRequested; b++)
                    {
                        // Every TorchSharp object made during the step (gradients, optimizer and EMA temporaries) belongs to this
                        // scope: reachable until the step ends, then freed here on this thread, never by the GC's finalizer
                        // while libtorch uses it (docs/runtime.md, "Object lifetimes").
                        using var stepScope = NewDisposeScope();
                        long unscopedBefore = DisposeScopeManager.Statistics.CreatedOutsideScopeCount;
                        double lr = schedule[step];
                        var groups = optimizer.ParamGroups.ToList();
                        for (int g = 0; g < groups.Count; g++)
                        {
                            groups[g].LearningRate = lr * scales[g];
                        }

                        failingStep = step + 1;
                        phase = TrainingPhase.Optimizer;
                        optimizer.zero_grad();
                        double value = 0;
                        for (int micro = 0; micro < _o.AccumulationSteps; micro++)
                        {
                            phase = TrainingPhase.Data;
                            if (!batches.MoveNext())
                            {
                                throw new InvalidOperationException($"the loader ran out of batches at step {step + 1}");
                            }

                            var batch = batches.Current;
                            skipped.AddRange(batch.Skipped);
                            if (batch.Count == 0)
                            {
                                continue;
                            }

                            using var scope = NewDisposeScope();
                            phase = TrainingPhase.Forward;
                            var x = tensor(batch.Images, [batch.Count, batch.Channels, batch.Size, batch.Size]).to(_o.Device);
                            var logits = model.call(x);
                            Tensor loss;
                            if (batch.Targets is { } soft)
                            {
                                var targets = tensor(soft, [batch.Count, soft.Length / batch.Count]).to(_o.Device);
                                loss = (-targets * nn.functional.log_softmax(logits, 1)).sum(1).mean();
                            }
                            else
                            {
                                loss = nn.functional.cross_entropy(logits, tensor(batch.Labels).to(_o.Device), label_smoothing: _o.Augment.LabelSmoothing);
                            }

                            double microValue = loss.item<float>();
                            if (!double.IsFinite(microValue))
                            {
                                throw new NonFiniteLossException(string.Create(CultureInfo.InvariantCulture,
                                    $"the training loss became {microValue} at step {step + 1} (epoch {epoch + 1}); the last good checkpoint '{LastCheckpoint}' is intact. Try a lower --lr."));
                            }

                            phase = TrainingPhase.Backward;
                            (_o.AccumulationSteps == 1 ? loss : Scalars.Div(loss, _o.AccumulationSteps)).backward();
                            Ops.DepthwiseConv2d.ReleaseBackwardOutputs();
                            value += microValue / _o.AccumulationSteps;
                            images += batch.Count;
                        }

                        phase = TrainingPhase.Optimizer;
                        if (_o.ClipGradNorm is double clip)
                        {
                            nn.utils.clip_grad_norm_(model.parameters(), clip);
                        }

                        AdamWStep.Apply(optimizer);
                        phase = TrainingPhase.Ema;
                        ema?.Update(model);
                        UnscopedTensors += DisposeScopeManager.Statistics.CreatedOutsideScopeCount - unscopedBefore;
                        step++;
                        StepsDone = step;
                        lossSum += value;
                        seen++;
                        phase = TrainingPhase.Progress;
                        failingStep = step;
                        if (onStep is not null)
                        {
                            double elapsed = runClock.Elapsed.TotalSeconds;
                            long done = step - startStep;
                            double perStep = elapsed / Math.Max(done, 1);
                            long epochsLeft = (totalSteps - 1) / StepsPerEpoch - (step - 1) / StepsPerEpoch + (step % StepsPerEpoch == 0 ? 1 : 0);
                            double evalGuess = double.IsNaN(evalSeconds) ? 0 : evalSeconds * epochsLeft;
                            onStep(new StepProgress(step, totalSteps, (step - 1) % StepsPerEpoch + 1, StepsPerEpoch, epoch + 1, value, lr,
                                (imagesThisRun + images) / Math.Max(elapsed, 1e-9), TimeSpan.FromSeconds(perStep * (totalSteps - step) + evalGuess)));
                        }

                        if (_o.SaveEvery is long every && step % every == 0 && step % StepsPerEpoch != 0)
                        {
                            phase = TrainingPhase.Checkpoint;
                            Save(model, ema, optimizer, metadata, step, best, history, (lossSum, seen));
                        }

                        if (_o.GcStress)
                        {
                            GC.Collect();
                            GC.WaitForPendingFinalizers();
                        }
                    }

                    waited = loader.WaitTime;
                }

                imagesThisRun += images;
                double seconds = sw.Elapsed.TotalSeconds;
                if (skipped.Count > 0)
                {
                    onNotice?.Invoke($"epoch {epoch + 1}: skipped {skipped.Count} unreadable image(s), e.g. {skipped[0].Source}: {skipped[0].Reason}");
                }

                // Evaluation and checkpoints own their temporaries too (docs/runtime.md, "Object lifetimes").
                using var endScope = NewDisposeScope();
                if (step % StepsPerEpoch == 0)
                {
                    EndEpoch(epoch, new PendingEvaluation(lossSum, seen, images, seconds, skipped.Count, waited.TotalSeconds));
                }
                else
                {
                    // Stopped inside an epoch (--max-steps or cancellation): keep the position so --resume continues here
                    // (unless that very state is already on disk, e.g. a resumed run stopped before its first step).
                    phase = TrainingPhase.Checkpoint;
                    failingStep = step;
                    if (_lastSaved != step)
                    {
                        Save(model, ema, optimizer, metadata, step, best, history, (lossSum, seen));
                    }
                }
            }
        }
        catch (Exception e) when (e is not (NonFiniteLossException or OperationCanceledException or OutOfMemoryException))
        {
            // Where it failed; the resume state on disk is the last complete one (each save is atomic and written last).
            throw new TrainingFailedException(failingStep, currentEpoch, phase, _lastSaved, e);
        }

        return history;
    }

    /// <summary>
    /// Tensors the training thread created outside any dispose scope during the optimizer steps of <see cref="Run"/> (from
    /// TorchSharp's per-thread statistics). Such a tensor is freed by the GC's finalizer thread at a time nobody chooses,
    /// and while a native call still reads it if it was a temporary argument; the step keeps this at 0.
    /// </summary>
    public long UnscopedTensors { get; private set; }

    private long? _lastSaved; // the step state.json points at (set the moment it is replaced)

    /// <summary>Optimizer steps done so far (of the whole run, a resumed part included).</summary>
    public long StepsDone { get; private set; }

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

    /// <summary>Top-1 accuracy of <paramref name="model"/> on the test set (eval mode, no gradients).</summary>
    public double Evaluate(RepLKNetModel model, Action<string>? onNotice = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        int classes = model.Config.NumClasses ?? throw new InvalidOperationException("a backbone has no classifier to evaluate");
        var result = Evaluation.Run(model, classes, _test, _pipeline, Math.Max(1, _o.BatchSize * 3 / 2), _o.Device, _o.Workers, cancel);
        if (result.Skipped.Count > 0)
        {
            onNotice?.Invoke($"evaluation skipped {result.Skipped.Count} unreadable image(s), e.g. {result.Skipped[0].Source}: {result.Skipped[0].Reason}");
        }

        return result.Top1;
    }

    /// <summary>The permutation of training indices for <paramref name="epoch"/>: a function of (seed, epoch) only.</summary>
    public long[] EpochOrder(int epoch)
    {
        var order = new long[_train.Count];
        for (long i = 0; i < order.LongLength; i++)
        {
            order[i] = i;
        }

        new SampleRandom((ulong)_o.Seed, (ulong)epoch, 0x0DE5).Shuffle(order);
        return order;
    }

    private static string LoadInitialWeights(RepLKNetModel model, string weights)
    {
        using var checkpoint = CheckpointFile.Read(weights);
        if (checkpoint.Form != ModelForm.Train)
        {
            throw new CheckpointException($"--weights '{weights}' is a {checkpoint.Form.Name()}-form checkpoint; fine-tuning needs the train form (before re-parameterization)");
        }

        var report = StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: true, $"--weights '{weights}'");
        return report.SkippedHead.Count > 0
            ? $"initialized from '{weights}' ({report.Loaded.Count} tensors); its classifier ({string.Join(", ", report.SkippedHead)}) has another size and was left at random"
            : $"initialized from '{weights}' ({report.Loaded.Count} tensors)";
    }

    private (AdamW Optimizer, double[] Scales) CreateOptimizer(RepLKNetModel model)
    {
        var groups = new List<(List<Parameter> Params, double Decay, double Scale)>();
        bool layered = _o.LayerDecay is double d && d != 1;
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            double decay = ParameterGroups.IsNoDecay(name, parameter) ? 0 : _o.WeightDecay;
            double scale = layered ? LayerDecay.Scale(name, _o.Config.Layers, _o.LayerDecay!.Value) : 1.0;
            int g = groups.FindIndex(x => x.Decay == decay && x.Scale == scale);
            if (g < 0)
            {
                groups.Add(([], decay, scale));
                g = groups.Count - 1;
            }

            groups[g].Params.Add(parameter);
        }

        // Decayed group first, as before (the optimizer state file's group order depends on it).
        groups = [.. groups.OrderBy(x => x.Decay == 0).ThenBy(x => x.Scale)];
        var optimizer = optim.AdamW(
            [.. groups.Select(x => new AdamW.ParamGroup(x.Params, new AdamW.Options { LearningRate = _o.LearningRate * x.Scale, weight_decay = x.Decay }))],
            _o.LearningRate, 0.9, 0.999, 1e-8, _o.WeightDecay);
        return (optimizer, [.. groups.Select(x => x.Scale)]);
    }

    private void Save(RepLKNetModel model, ModelEma? ema, AdamW optimizer, CheckpointMetadata metadata, long step, double best, List<EpochMetrics> history,
        (double LossSum, long Steps) epochSoFar = default, PendingEvaluation? pending = null)
    {
        using var scope = NewDisposeScope();
        // The resume set first: written into a fresh folder, renamed into place, then pointed at by state.json. A failure
        // anywhere (disk full, read-only folder) leaves state.json pointing at the previous complete set.
        string name = string.Create(CultureInfo.InvariantCulture, $"step-{step:D9}");
        string folder = Path.Combine(ResumeRoot, name);
        string staging = folder + ".partial";
        if (Directory.Exists(staging))
        {
            Directory.Delete(staging, recursive: true);
        }

        try
        {
            Directory.CreateDirectory(staging);
            CheckpointFile.WriteRepLKNet(Path.Combine(staging, "model.safetensors"), StateDicts.Ordered(model), metadata);
            if (ema is not null)
            {
                CheckpointFile.WriteRepLKNet(Path.Combine(staging, "ema.safetensors"), StateDicts.Ordered(ema.Average), metadata);
            }

            optimizer.save_state_dict(Path.Combine(staging, "optimizer.bin"));
            // The global CPU generator drives drop path: saving it makes a resumed run draw the same masks.
            using (var rng = torch.get_rng_state())
            {
                File.WriteAllBytes(Path.Combine(staging, "rng.bin"), rng.bytes.ToArray());
            }

            AtomicFile.FlushDirectory(staging);
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true); // only a set that state.json does not point at (never the same step twice)
            }

            Directory.Move(staging, folder);
            AtomicFile.SyncDirectory(ResumeRoot);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(staging);
            throw new IOException($"cannot write the resume state into '{staging}': {e.Message}; the previous state ('{StateFile}') is intact", e);
        }

        var state = new JsonObject
        {
            ["step"] = step,
            ["steps_per_epoch"] = StepsPerEpoch,
            ["seed"] = _o.Seed,
            ["batch_size"] = _o.BatchSize,
            ["accumulation_steps"] = _o.AccumulationSteps,
            ["resume"] = Path.Combine("resume", name),
            ["best_top1"] = double.IsFinite(best) ? best : null,
            ["epoch_loss_sum"] = epochSoFar.LossSum,
            ["epoch_steps"] = epochSoFar.Steps,
            ["pending_evaluation"] = pending is null ? null : JsonSerializer.SerializeToNode(pending, JsonOptions),
            ["history"] = JsonSerializer.SerializeToNode(history, JsonOptions),
        };
        AtomicFile.Write(StateFile, s => s.Write(System.Text.Encoding.UTF8.GetBytes(state.ToJsonString(JsonOptions))));
        _lastSaved = step; // from here on a failure leaves this step's state as the resumable one
        foreach (var old in Directory.EnumerateDirectories(ResumeRoot).Where(d => Path.GetFileName(d) != name))
        {
            Directory.Delete(old, recursive: true);
        }

        // The user-facing copies (atomic each), after the resume state they describe.
        CheckpointFile.WriteRepLKNet(LastCheckpoint, StateDicts.Ordered(model), metadata with { TrainingState = Path.GetFileName(StateFile) });
        if (ema is not null)
        {
            CheckpointFile.WriteRepLKNet(EmaCheckpoint, StateDicts.Ordered(ema.Average), metadata);
        }
    }

    private static void TryDelete(string folder)
    {
        try
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover staging folder is removed by the next save or ignored by resume.
        }
    }

    private (long Step, double Best, List<EpochMetrics> History, (double LossSum, long Steps) Partial, PendingEvaluation? Pending) Restore(RepLKNetModel model, ModelEma? ema, AdamW optimizer)
    {
        JsonObject state;
        try
        {
            state = JsonNode.Parse(File.ReadAllText(StateFile))!.AsObject();
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"'{StateFile}' is damaged: {e.Message}", e);
        }

        long steps = (long)state["steps_per_epoch"]!;
        if (steps != StepsPerEpoch || (long)state["seed"]! != _o.Seed)
        {
            throw new CheckpointException($"'{StateFile}' was written with another batch size, accumulation, dataset size or seed ({steps} steps per epoch, seed {(long)state["seed"]!}; now {StepsPerEpoch}, seed {_o.Seed}); resume with the same settings");
        }

        string folder = Path.Combine(_o.OutDir, (string?)state["resume"] ?? throw new CheckpointException($"'{StateFile}' names no resume folder"));
        foreach (var required in new[] { "model.safetensors", "optimizer.bin", "rng.bin" })
        {
            if (!File.Exists(Path.Combine(folder, required)))
            {
                throw new CheckpointException($"the resume state '{folder}' (named by '{StateFile}') is incomplete: {required} is missing");
            }
        }
        using (var last = CheckpointFile.Read(Path.Combine(folder, "model.safetensors")))
        {
            StateDictLoader.Load(model, last.State, strict: true, skipHead: false, $"'{folder}/model.safetensors'");
        }

        string emaFile = Path.Combine(folder, "ema.safetensors");
        if (ema is not null && File.Exists(emaFile))
        {
            using var averaged = CheckpointFile.Read(emaFile);
            StateDictLoader.Load(ema.Average, averaged.State, strict: true, skipHead: false, $"'{emaFile}'");
        }

        optimizer.load_state_dict(Path.Combine(folder, "optimizer.bin"));
        byte[] bytes = File.ReadAllBytes(Path.Combine(folder, "rng.bin"));
        using (var rng = tensor(bytes, dtype: ScalarType.Byte))
        {
            torch.set_rng_state(rng);
        }

        var history = state["history"]!.Deserialize<List<EpochMetrics>>(JsonOptions) ?? [];
        double best = state["best_top1"] is JsonNode b ? (double)b : double.NegativeInfinity;
        var partial = ((double?)state["epoch_loss_sum"] ?? 0, (long?)state["epoch_steps"] ?? 0);
        var pending = state["pending_evaluation"] is JsonNode p ? p.Deserialize<PendingEvaluation>(JsonOptions) : null;
        return ((long)state["step"]!, best, history, partial, pending);
    }

    private void WriteMetrics(List<EpochMetrics> history)
    {
        var csv = new System.Text.StringBuilder("epoch,step,train_loss,lr,top1,ema_top1,images_per_s,seconds,skipped,data_wait_s\n");
        foreach (var m in history)
        {
            csv.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{m.Epoch},{m.Step},{m.TrainLoss:R},{m.LearningRate:R},{m.Top1:R},{m.EmaTop1:R},{m.ImagesPerSecond:F1},{m.Seconds:F1},{m.Skipped},{m.DataWaitSeconds:F2}"));
        }

        AtomicFile.Write(Path.Combine(_o.OutDir, "metrics.csv"), s => s.Write(System.Text.Encoding.UTF8.GetBytes(csv.ToString())));
        AtomicFile.Write(Path.Combine(_o.OutDir, "metrics.json"), s => s.Write(JsonSerializer.SerializeToUtf8Bytes(history, JsonOptions)));
    }
}
