using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models.Segmentation;
using RepLKNet.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Segmentation;

/// <summary>
/// The official RepLKNet UperNet recipe (DingXiaoH/RepLKNet-pytorch <c>segmentation/configs/*.py</c> on MMSeg 0.x): AdamW
/// lr 2e-4, betas (0.9, 0.999), weight decay 0.05 with <c>norm_decay_mult=0</c>; poly schedule (power 1, min 0) with a
/// linear warm-up of 400 iterations from ratio 1e-6; iteration-based (<c>IterBasedRunner</c>) with evaluation every 2000
/// iterations, best checkpoint by mIoU; decode loss weight 1.0 + auxiliary 0.4. The property defaults are the official
/// values (the CLI starts from a preset's recipe instead: its crop, scale, batch and iterations).
/// </summary>
public sealed record SegmentationTrainOptions
{
    /// <summary>Default <see cref="LearningRate"/> (official 2e-4).</summary>
    public const double DefaultLearningRate = 2e-4;

    /// <summary>Default <see cref="WeightDecay"/> (official 0.05).</summary>
    public const double DefaultWeightDecay = 0.05;

    /// <summary>Default <see cref="WarmupIterations"/> (official 400 for 31B; 800 for 31L, 1500 for XL).</summary>
    public const long DefaultWarmupIterations = 400;

    /// <summary>Default <see cref="WarmupRatio"/> (official 1e-6).</summary>
    public const double DefaultWarmupRatio = 1e-6;

    /// <summary>Default <see cref="Power"/> (official 1.0).</summary>
    public const double DefaultPower = 1.0;

    /// <summary>Default <see cref="AuxiliaryWeight"/> (official 0.4).</summary>
    public const double DefaultAuxiliaryWeight = SegmentationLoss.DefaultAuxiliaryWeight;

    /// <summary>Default <see cref="BatchSize"/> (official 2 per GPU).</summary>
    public const int DefaultBatchSize = 2;

    /// <summary>Default <see cref="MaxSteps"/> (the official 31B ADE20K run: 40000 on 64 GPUs).</summary>
    public const long DefaultMaxSteps = 40000;

    /// <summary>Default <see cref="EvaluateEvery"/> (official 2000).</summary>
    public const long DefaultEvaluateEvery = 2000;

    /// <summary>Architecture name recorded in checkpoints.</summary>
    public required string Arch { get; init; }

    /// <summary>The segmenter (its classes must be the data's).</summary>
    public required SegmentorConfig Config { get; init; }

    /// <summary>Run folder (checkpoints, metrics, resume state).</summary>
    public required string OutDir { get; init; }

    /// <summary>The training pipeline: scale, ratio range, crop, cat_max_ratio, flip, photometric distortion, normalization (its scale and normalization serve the test view too).</summary>
    public SegmentationPipelineOptions Pipeline { get; init; } = new();

    /// <summary>Crops per optimizer step (≥ 2: the pyramid pooling's 1×1 map needs two samples for batch statistics).</summary>
    public int BatchSize { get; init; } = DefaultBatchSize;

    /// <summary>AdamW base learning rate.</summary>
    public double LearningRate { get; init; } = DefaultLearningRate;

    /// <summary>AdamW weight decay (not on normalization layers).</summary>
    public double WeightDecay { get; init; } = DefaultWeightDecay;

    /// <summary>AdamW (β₁, β₂).</summary>
    public (double Beta1, double Beta2) Betas { get; init; } = TrainStep.DefaultBetas;

    /// <summary>Iterations (optimizer steps) of the run: the poly schedule's <c>max_iters</c>.</summary>
    public long MaxSteps { get; init; } = DefaultMaxSteps;

    /// <summary>Evaluate (and keep the best by mIoU) every this many iterations, and at the last.</summary>
    public long EvaluateEvery { get; init; } = DefaultEvaluateEvery;

    /// <summary>Linear warm-up iterations (0: none).</summary>
    public long WarmupIterations { get; init; } = DefaultWarmupIterations;

    /// <summary>The warm-up's starting fraction of the rate, in (0, 1].</summary>
    public double WarmupRatio { get; init; } = DefaultWarmupRatio;

    /// <summary>The poly schedule's power.</summary>
    public double Power { get; init; } = DefaultPower;

    /// <summary>The learning rate the poly schedule ends at.</summary>
    public double MinLearningRate { get; init; }

    /// <summary>Weight of the auxiliary head's loss, overriding its configuration's <c>loss_decode.loss_weight</c> (official
    /// 0.4); null: the configuration's.</summary>
    public double? AuxiliaryWeight { get; init; }

    /// <summary>Weight EMA decay; 0 (the official setting): none.</summary>
    public double EmaDecay { get; init; }

    /// <summary>Global gradient-norm clip, or null (official: none).</summary>
    public double? ClipGradNorm { get; init; }

    /// <summary>Seed of initialization, data order and every augmentation draw.</summary>
    public long Seed { get; init; }

    /// <summary>Threads preparing crops and test images.</summary>
    public int Workers { get; init; } = LoaderPlan.DefaultWorkers;

    /// <summary>Device of the model and batches.</summary>
    public Device Device { get; init; } = CPU;

    /// <summary>Continue the run in <see cref="OutDir"/>.</summary>
    public bool Resume { get; init; }

    /// <summary>
    /// The processes of a data-parallel job (docs/distributed.md; <see cref="Distributed.ProcessGroup.Single"/>: one process).
    /// BatchSize is per process, the global batch BatchSize × WorldSize (as in the official DDP code); only rank 0 writes.
    /// </summary>
    public Distributed.ProcessGroup Group { get; init; } = Distributed.ProcessGroup.Single;

    /// <summary>
    /// SyncBN: BatchNorm statistics over the global batch of a data-parallel job (the official segmentation configs'
    /// <c>SyncBN</c>; <c>torch.nn.SyncBatchNorm</c>); plain per-process BatchNorm otherwise. No effect in one process.
    /// </summary>
    public bool SyncBatchNorm { get; init; }

    /// <summary>Resume a state written by a job of another world size, provided the global batch is the same.</summary>
    public bool AllowWorldSizeChange { get; init; }

    /// <summary>Parameter and activation dtype: float32 (the official recipe's) or float64 for numerical verification (see <c>TrainOptions.Precision</c>).</summary>
    public ScalarType Precision { get; init; } = ScalarType.Float32;

    /// <summary>A classification checkpoint initialising the backbone, or a segmenter checkpoint initialising everything; null: random.</summary>
    public string? InitialWeights { get; init; }

    /// <summary>Also save the resume state every this many iterations; null: at evaluations and stops only.</summary>
    public long? SaveEvery { get; init; }

    /// <summary>Evaluate on the first this many validation images only (smoke runs); null: all.</summary>
    public long? EvalLimit { get; init; }

    /// <summary>Use the first this many training images only; null: all.</summary>
    public long? TrainSubset { get; init; }

    /// <summary>Test mode, crop and stride; null: the configuration's (<see cref="SegmentorConfig.Test"/>).</summary>
    public SegmentationTestConfig? Test { get; init; }

    /// <summary>Soak mode (see <see cref="TrainOptions.GcStress"/>).</summary>
    public bool GcStress { get; init; }

    /// <summary>Checks every knob's range.</summary>
    /// <exception cref="ArgumentException">A value is out of range; the message starts with the property's name, which <see cref="ArgumentException.ParamName"/> holds.</exception>
    public void Validate()
    {
        static void Check(bool ok, string name, string problem)
        {
            if (!ok)
            {
                throw new ArgumentException($"{name} {problem}", name);
            }
        }

        // SyncBN over several processes normalizes over the global batch: then one crop per process will do (the 31L config's).
        bool globalBatchNorm = SyncBatchNorm && Group.IsDistributed;
        Check(BatchSize >= (globalBatchNorm ? 1 : 2), nameof(BatchSize),
            $"must be ≥ {(globalBatchNorm ? 1 : 2)} (batch norm after the 1×1 pyramid pooling needs two samples{(globalBatchNorm ? "" : " per process, or SyncBN over several")}), got {BatchSize}");
        Check(Precision is ScalarType.Float32 or ScalarType.Float64, nameof(Precision), $"must be float32 or float64, got {Precision}");
        Check(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), $"must be positive, got {LearningRate}");
        Check(WeightDecay >= 0 && double.IsFinite(WeightDecay), nameof(WeightDecay), $"must be ≥ 0, got {WeightDecay}");
        Check(Betas.Beta1 is >= 0 and < 1 && Betas.Beta2 is >= 0 and < 1, nameof(Betas), $"must be in [0, 1), got ({Betas.Beta1}, {Betas.Beta2})");
        Check(MaxSteps >= 1, nameof(MaxSteps), $"must be ≥ 1, got {MaxSteps}");
        Check(EvaluateEvery >= 1, nameof(EvaluateEvery), $"must be ≥ 1, got {EvaluateEvery}");
        Check(WarmupIterations >= 0, nameof(WarmupIterations), $"must be ≥ 0, got {WarmupIterations}");
        Check(WarmupRatio is > 0 and <= 1, nameof(WarmupRatio), $"must be in (0, 1], got {WarmupRatio}");
        Check(Power > 0 && double.IsFinite(Power), nameof(Power), $"must be positive, got {Power}");
        Check(MinLearningRate >= 0 && MinLearningRate <= LearningRate, nameof(MinLearningRate), $"must be in [0, LearningRate], got {MinLearningRate}");
        Check(AuxiliaryWeight is null || (AuxiliaryWeight >= 0 && double.IsFinite(AuxiliaryWeight.Value)), nameof(AuxiliaryWeight), $"must be ≥ 0, got {AuxiliaryWeight}");
        Check(EmaDecay is >= 0 and < 1, nameof(EmaDecay), $"must be in [0, 1), got {EmaDecay}");
        Check(ClipGradNorm is null or > 0, nameof(ClipGradNorm), $"must be positive, got {ClipGradNorm}");
        Check(Workers >= 1, nameof(Workers), $"must be ≥ 1, got {Workers}");
        Check(SaveEvery is null or >= 1, nameof(SaveEvery), $"must be ≥ 1, got {SaveEvery}");
        Check(EvalLimit is null or >= 1, nameof(EvalLimit), $"must be ≥ 1, got {EvalLimit}");
        Check(TrainSubset is null or >= 1, nameof(TrainSubset), $"must be ≥ 1, got {TrainSubset}");
        Pipeline.Validate();
    }
}

/// <summary>
/// Trains a segmenter with <see cref="SegmentationTrainOptions"/> on the one <see cref="TrainingLoop"/> with a
/// <see cref="SegmentationTask"/>: seeds, builds the <see cref="EncoderDecoder"/> (and its EMA twin), initialises it from
/// <see cref="SegmentationTrainOptions.InitialWeights"/> unless resuming, and runs iteration-based training with the poly
/// schedule, evaluation every N iterations, best checkpoint by mIoU (<c>best.pth</c>, MMSeg layout), atomic resume state.
/// </summary>
public sealed class SegmentationTrainer
{
    private readonly SegmentationTrainOptions _o;
    private readonly TrainingLoop _loop;

    /// <summary>Creates the trainer.</summary>
    /// <param name="options">The recipe.</param>
    /// <param name="train">Training set.</param>
    /// <param name="val">Validation set (same classes).</param>
    /// <exception cref="ArgumentException">An option is out of range (ParamName: the property), or the configuration's classes differ from the data's (<c>Config</c>).</exception>
    /// <exception cref="DatasetException">A set is empty or the sets' classes differ.</exception>
    public SegmentationTrainer(SegmentationTrainOptions options, ISegmentationDataset train, ISegmentationDataset val)
    {
        _o = options ?? throw new ArgumentNullException(nameof(options));
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(val);
        _o.Validate();
        if (train.Count == 0 || val.Count == 0)
        {
            throw new DatasetException("the training or validation set holds no images");
        }

        if (!train.ClassNames.SequenceEqual(val.ClassNames))
        {
            throw new DatasetException("the training and validation sets have different classes");
        }

        if (_o.Config.NumClasses != train.ClassNames.Count)
        {
            throw new ArgumentException($"Config predicts {_o.Config.NumClasses} classes but the data has {train.ClassNames.Count}; fit it with SegmentorConfig.WithNumClasses",
                nameof(SegmentationTrainOptions.Config));
        }

        long pool = Math.Min(train.Count, _o.TrainSubset ?? long.MaxValue);
        if (pool < _o.BatchSize)
        {
            throw new ArgumentException($"BatchSize {_o.BatchSize} is larger than the {pool} training image(s): every batch would be incomplete",
                nameof(SegmentationTrainOptions.BatchSize));
        }

        Pipeline = new SegmentationPipeline(_o.Pipeline);
        var evaluator = new SegmentationEvaluator(val, Pipeline, _o.Test, _o.Device, _o.Workers, _o.EvalLimit);
        Task = new SegmentationTask(train, Pipeline, evaluator, _o.Arch, train.ClassNames, train.Palette, _o.AuxiliaryWeight, _o.Workers,
            TrainingPool.First(train.Count, _o.TrainSubset))
        {
            MinimumCrops = _o.SyncBatchNorm && _o.Group.IsDistributed ? 1 : 2,
        };
        _loop = new TrainingLoop(Task, new TrainingLoopOptions
        {
            Budget = new TrainingBudget(null, null), MaxSteps = _o.MaxSteps, EvaluateEvery = _o.EvaluateEvery, BatchSize = _o.BatchSize,
            LearningRate = _o.LearningRate, WeightDecay = _o.WeightDecay, Betas = _o.Betas, NoWeightDecay = ParameterGroups.NormLayers,
            Schedule = _ => new PolySchedule(_o.LearningRate, _o.MaxSteps, _o.Power, _o.MinLearningRate, _o.WarmupIterations, _o.WarmupRatio),
            ClipGradNorm = _o.ClipGradNorm, EmaDecay = _o.EmaDecay, Seed = _o.Seed, OutDir = _o.OutDir, SaveEvery = _o.SaveEvery, Resume = _o.Resume,
            GcStress = _o.GcStress, Device = _o.Device,
            Group = _o.Group, SyncBatchNorm = _o.SyncBatchNorm, AllowWorldSizeChange = _o.AllowWorldSizeChange,
        });
    }

    /// <summary>The training pipeline.</summary>
    public SegmentationPipeline Pipeline { get; }

    /// <summary>The task (its <see cref="SegmentationTask.LastScores"/> hold the last evaluation's figures).</summary>
    public SegmentationTask Task { get; }

    /// <summary>The run folder's files.</summary>
    public RunFolder Folder => _loop.Folder!;

    /// <summary>Optimizer steps per pass over the training set.</summary>
    public long StepsPerEpoch => _loop.StepsPerEpoch;

    /// <summary>Iterations of the run.</summary>
    public long TotalSteps => _loop.TotalSteps;

    /// <summary>Iterations done so far (a resumed part included).</summary>
    public long StepsDone => _loop.StepsDone;

    /// <summary>Tensors created outside any dispose scope during the optimizer steps; stays 0.</summary>
    public long UnscopedTensors => _loop.UnscopedTensors;

    /// <summary>
    /// Trains. <paramref name="onEvaluation"/> gets each evaluation's metrics (ScoreValue = Top1 = mIoU), <paramref name="onStep"/> each
    /// step's progress, <paramref name="onNotice"/> one-line notices (what the initial weights loaded and skipped, resumption,
    /// unreadable samples); <paramref name="cancel"/> stops after the current step with a resume state saved.
    /// </summary>
    /// <returns>Each evaluation's metrics (of the whole run).</returns>
    /// <exception cref="NonFiniteLossException">The loss diverged; the last checkpoint is intact.</exception>
    /// <exception cref="TrainingFailedException">Any other failure during training.</exception>
    /// <exception cref="CheckpointException">Resuming without a resume state, or unusable initial weights (ParamName <c>InitialWeights</c>).</exception>
    public List<EpochMetrics> Run(Action<EpochMetrics>? onEvaluation = null, Action<StepProgress>? onStep = null, Action<string>? onNotice = null,
        CancellationToken cancel = default)
    {
        if (_o.Group.IsMain)
        {
            Directory.CreateDirectory(_o.OutDir);
        }

        torch.manual_seed(_o.Seed);
        using var model = new EncoderDecoder(_o.Config, device: _o.Device, name: _o.Arch);
        using var emaModel = _o.EmaDecay > 0 ? new EncoderDecoder(_o.Config, device: _o.Device, name: _o.Arch) : null;
        if (_o.Precision != ScalarType.Float32)
        {
            model.to(_o.Precision);
            emaModel?.to(_o.Precision);
        }
        bool resuming = _o.Resume && File.Exists(_loop.Folder!.StateFile);
        if (_o.InitialWeights is { } weights && !resuming)
        {
            onNotice?.Invoke(LoadInitialWeights(model, weights));
        }

        return [.. _loop.Run(model, emaModel, onEvaluation, onStep, onNotice, cancel).History];
    }

    /// <summary>
    /// Initialises <paramref name="model"/> from <paramref name="weights"/>: a segmenter checkpoint (it has
    /// <c>decode_head.*</c> keys) loads into the whole model, every key and shape matching except the heads'
    /// <c>conv_seg</c> of a checkpoint trained on another number of classes (left random, reported); anything else is a classification checkpoint whose
    /// backbone initialises the segmenter's (<see cref="SegmentorCheckpoint.LoadBackbone"/>: the classifier's head and norm
    /// are skipped, the heads stay random). Returns a one-line report of what was loaded and skipped.
    /// </summary>
    /// <exception cref="CheckpointException">The file cannot be read or does not fit (ParamName <c>InitialWeights</c>).</exception>
    public static string LoadInitialWeights(EncoderDecoder model, string weights)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(weights);
        try
        {
            bool whole;
            using (var checkpoint = CheckpointFile.Read(weights, ema: false, wholeModel: true))
            {
                whole = checkpoint.State.Keys.Any(k => k.StartsWith("decode_head.", StringComparison.Ordinal));
                if (whole)
                {
                    // Everything must fit but the classifiers (conv_seg) of a checkpoint trained on other classes.
                    var full = StateDictLoader.Load(model, checkpoint.State, strict: false, skipHead: false, $"InitialWeights '{weights}'");
                    var otherClasses = full.ShapeMismatched.Where(m => m.Key.Contains(".conv_seg.", StringComparison.Ordinal)).Select(m => m.Key).ToList();
                    if (full.Missing.Count > 0 || full.Unexpected.Count > 0 || full.ShapeMismatched.Count > otherClasses.Count)
                    {
                        throw new CheckpointException($"InitialWeights '{weights}' does not fit the segmenter: {full.Describe()}", nameof(SegmentationTrainOptions.InitialWeights));
                    }

                    return otherClasses.Count == 0
                        ? $"initialized the whole segmenter from '{weights}' ({full.Loaded.Count} tensors)"
                        : $"initialized the segmenter from '{weights}' ({full.Loaded.Count} tensors); its classifiers ({string.Join(", ", otherClasses)}) are for other classes and start random";
                }
            }

            var report = SegmentorCheckpoint.LoadBackbone(weights, model);
            var skipped = report.Unexpected.Concat(report.SkippedHead).ToList();
            string skippedText = skipped.Count == 0 ? "nothing skipped" : $"skipped {skipped.Count} classifier tensor(s): {string.Join(", ", skipped.Take(6))}{(skipped.Count > 6 ? ", …" : "")}";
            string missingText = report.Missing.Count == 0 ? "" : $"; {report.Missing.Count} backbone tensor(s) left at their initialisation: {string.Join(", ", report.Missing.Take(4))}{(report.Missing.Count > 4 ? ", …" : "")}";
            return $"initialized the backbone from '{weights}' ({report.Loaded.Count} tensors; {skippedText}{missingText}); the decode and auxiliary heads start random";
        }
        catch (CheckpointException e)
        {
            throw new CheckpointException(e.Message.Replace("weights '", "InitialWeights '", StringComparison.Ordinal), nameof(SegmentationTrainOptions.InitialWeights));
        }
    }
}
