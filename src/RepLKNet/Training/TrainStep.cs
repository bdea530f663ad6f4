using System.Globalization;
using RepLKNet.Data;
using RepLKNet.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>What one optimizer step did.</summary>
/// <param name="Loss">The step's loss: the mean of its micro-batches' losses.</param>
/// <param name="Samples">Samples trained on (unreadable ones excluded).</param>
/// <param name="Skipped">Samples that could not be read.</param>
public sealed record StepOutcome(double Loss, long Samples, IReadOnlyList<SkippedImage> Skipped);

/// <summary>
/// One optimizer step of the official recipe, the same for every task and for <c>bench model --mode train</c>: set each
/// group's learning rate, <c>zero_grad</c>, then for each of <see cref="AccumulationSteps"/> micro-batches forward + loss
/// (non-finite → <see cref="NonFiniteLossException"/> before any update), backward of loss / accumulation; then gradient
/// clipping (global L2 norm), the AdamW update (<see cref="AdamWStep"/>) and the EMA update. The caller owns the dispose
/// scope around it (docs/runtime.md, "Object lifetimes").
/// </summary>
public sealed class TrainStep
{
    private readonly Module<Tensor, Tensor> _model;
    private readonly AdamW _optimizer;
    private readonly double[] _scales;
    private readonly Device _device;

    /// <summary>Creates the step.</summary>
    /// <param name="model">The trained model (train mode is set by the caller).</param>
    /// <param name="optimizer">Its optimizer; group g's learning rate is <c>lr × groupScales[g]</c>.</param>
    /// <param name="groupScales">Learning-rate multiplier of each parameter group (layer decay), in group order.</param>
    /// <param name="device">Where the batches go.</param>
    /// <param name="accumulationSteps">Micro-batches per step (the official <c>update_freq</c>), ≥ 1.</param>
    /// <param name="clipGradNorm">Global gradient-norm clip, or null.</param>
    /// <param name="ema">The weight average updated after each step, or null.</param>
    /// <exception cref="ArgumentException">The scales do not match the optimizer's groups, or <paramref name="accumulationSteps"/> &lt; 1.</exception>
    public TrainStep(Module<Tensor, Tensor> model, AdamW optimizer, IReadOnlyList<double> groupScales, Device device, int accumulationSteps = 1,
        double? clipGradNorm = null, ModelEma? ema = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        ArgumentNullException.ThrowIfNull(groupScales);
        _scales = [.. groupScales];
        if (_scales.Length != optimizer.ParamGroups.Count())
        {
            throw new ArgumentException($"groupScales has {_scales.Length} entries for {optimizer.ParamGroups.Count()} parameter groups", nameof(groupScales));
        }

        OptionCheck.That(accumulationSteps >= 1, nameof(accumulationSteps), $"must be ≥ 1, got {accumulationSteps}");

        _device = device;
        AccumulationSteps = accumulationSteps;
        ClipGradNorm = clipGradNorm;
        Ema = ema;
    }

    /// <summary>Micro-batches per optimizer step.</summary>
    public int AccumulationSteps { get; }

    /// <summary>Gradient-norm clip, or null.</summary>
    public double? ClipGradNorm { get; }

    /// <summary>The weight EMA, or null.</summary>
    public ModelEma? Ema { get; }

    /// <summary>Averages the gradients over the processes of a data-parallel job after the micro-batches (before clipping), or null.</summary>
    public Distributed.GradientReducer? Reducer { get; init; }

    /// <summary>
    /// The processes of a data-parallel job, or null (one process). With several: each step starts from rank 0's
    /// floating-point buffers (BatchNorm running statistics; DDP's <c>broadcast_buffers=True</c>), and a micro-batch left
    /// with no usable sample on any process is skipped by every process (agreed with one small allreduce), since the
    /// others' forward (SyncBN) and gradient averaging wait for each process.
    /// </summary>
    public Distributed.ProcessGroup? Group { get; init; }

    /// <summary>What the step is doing now (for failure reports).</summary>
    public TrainingPhase Phase { get; private set; } = TrainingPhase.Data;

    /// <summary>
    /// The optimizer's <c>zero_grad</c> as TorchSharp's AdamW does it (each parameter's existing gradient zeroed in place),
    /// without its per-parameter whole-shape read and undisposed wrapper (<c>zero_()</c>: <see cref="TensorSizes"/>).
    /// </summary>
    private static void ZeroGradients(AdamW optimizer)
    {
        foreach (var parameter in optimizer.parameters())
        {
            using var grad = parameter.grad;
            if (grad is not null)
            {
                Scalars.ZeroInPlace(grad);
            }
        }
    }

    /// <summary>Runs one optimizer step at learning rate <paramref name="lr"/> on the next micro-batches of <paramref name="data"/>.</summary>
    /// <param name="data">The epoch's micro-batches.</param>
    /// <param name="lr">Base learning rate of this step.</param>
    /// <param name="stepNumber">The step's 1-based number (for messages).</param>
    /// <exception cref="NonFiniteLossException">A micro-batch's loss is NaN or infinite (no update was made).</exception>
    /// <exception cref="InvalidOperationException"><paramref name="data"/> ran out of micro-batches.</exception>
    public StepOutcome Run(ITrainingEpoch data, double lr, long stepNumber)
    {
        ArgumentNullException.ThrowIfNull(data);
        Phase = TrainingPhase.Optimizer;
        var groups = _optimizer.ParamGroups.ToList();
        for (int g = 0; g < groups.Count; g++)
        {
            groups[g].LearningRate = lr * _scales[g];
        }

        ZeroGradients(_optimizer);
        var group = Group is { IsDistributed: true } job ? job : null;
        if (group is not null)
        {
            Phase = TrainingPhase.Collective;
            Distributed.GradientReducer.BroadcastBuffers(group, _model);
        }

        bool trained = false;
        double value = 0;
        long samples = 0;
        List<SkippedImage>? skipped = null;
        for (int micro = 0; micro < AccumulationSteps; micro++)
        {
            Phase = TrainingPhase.Data;
            if (!data.MoveNext())
            {
                throw new InvalidOperationException($"the training data ran out of batches at step {stepNumber}");
            }

            if (data.Skipped.Count > 0)
            {
                (skipped ??= []).AddRange(data.Skipped);
            }

            if (group is not null)
            {
                // Every process skips a micro-batch that one of them cannot train on (so that no collective waits).
                Phase = TrainingPhase.Collective;
                var empty = new[] { data.Count == 0 ? 1.0 : 0.0 };
                group.AllReduce(empty, Distributed.ReduceOp.Max);
                if (empty[0] > 0)
                {
                    continue;
                }
            }
            else if (data.Count == 0)
            {
                continue;
            }

            using var scope = NewDisposeScope();
            Phase = TrainingPhase.Forward;
            int parts = group is null ? SplitParts(data) : 1;
            double microValue = parts >= 2 && data is ISplittableEpoch splittable ? RunSplit(splittable, parts, stepNumber, trained) : double.NaN;
            if (double.IsNaN(microValue))
            {
                var loss = data.Loss(_model, _device);
                microValue = Value(loss);
                CheckFinite(microValue, stepNumber);
                Phase = TrainingPhase.Backward;
                BackwardOfShare(loss);
            }

            Ops.DepthwiseConv2d.ReleaseBackwardOutputs(); // every custom function's (depthwise conv, SyncBN, BatchNorm), every thread's: one holder
            value += microValue / AccumulationSteps;
            samples += data.Count;
            trained = true;
        }

        // Skipped micro-batches were agreed on, so every process takes part here alike (or none does).
        if (Reducer is not null && trained)
        {
            Phase = TrainingPhase.Collective;
            Reducer.Reduce();
        }

        Phase = TrainingPhase.Optimizer;
        if (ClipGradNorm is double clip)
        {
            nn.utils.clip_grad_norm_(_model.parameters(), clip);
        }

        AdamWStep.Apply(_optimizer);
        Phase = TrainingPhase.Ema;
        Ema?.Update(_model);
        return new StepOutcome(value, samples, skipped ?? (IReadOnlyList<SkippedImage>)[]);
    }

    /// <summary>A loss scalar's value as a double (float32 read as such, anything else through float64).</summary>
    private static double Value(Tensor loss) => loss.dtype == ScalarType.Float32 ? loss.item<float>() : loss.to(ScalarType.Float64).item<double>();

    /// <summary>backward() of a micro-batch's loss (or a part's share of it) divided by the accumulation steps.</summary>
    private void BackwardOfShare(Tensor loss) => (AccumulationSteps == 1 ? loss : Scalars.Div(loss, AccumulationSteps)).backward();

    private static void CheckFinite(double value, long stepNumber)
    {
        if (!double.IsFinite(value))
        {
            throw new NonFiniteLossException(string.Create(CultureInfo.InvariantCulture, $"the training loss became {value} at step {stepNumber}"));
        }
    }

    /// <summary>
    /// Whether steps may cut a micro-batch into one part per libtorch thread, each part's forward and backward run whole on
    /// its own thread (<see cref="BatchSplit"/>), where <see cref="SplitParts"/> allows; true unless
    /// <c>REPLKNET_SPLIT_BATCH=0</c>. The gradients are those of the whole batch (BatchNorm statistics shared, the parts'
    /// losses and gradients added) to float32 rounding. On the project machine the training loop ran 1.16–1.41× faster
    /// split in 7 of 8 paired 2-epoch runs (0.95× in the eighth), while <c>bench model</c>'s fixed synthetic batch mostly
    /// measured it slower (docs/perf-notes.md, "The batch split").
    /// </summary>
    internal static bool SplitBatches { get; set; } = Environment.GetEnvironmentVariable("REPLKNET_SPLIT_BATCH") != "0";

    /// <summary>
    /// The largest cost of one image, in the train form's convolution and linear multiply-accumulates at the micro-batch's
    /// resolution (<see cref="Models.Complexity.Macs"/>), for which a step is split. The split pays where the model's ops
    /// are small (libtorch's and our kernels' per-op costs and their thread hand-offs are a large share of them) and costs
    /// where they are large. Measured on the project machine (2 vCPU, <c>bench model --mode train</c>, split against
    /// <c>REPLKNET_SPLIT_BATCH=0</c>): RepLKNet-FMNIST at 28×28 (2.1 M) 1.24–1.57× faster at batch 32 and 1.08–1.56× at
    /// 128; at 56×56 (7.6 M) 1.35× at batch 128 and 0.99–1.03× at 64 (even); at 64×64 (10.7 M) 0.88–1.00×, 80×80 (14.7 M)
    /// 0.90–0.97×, 112×112 (28.9 M) 0.80–0.96×; RepLKNet-31B at 64×64 (1.26 G) 0.61× at batch 8 and 0.88× at 32, at
    /// 224×224 0.66× (docs/perf-notes.md, thirteenth session). The limit sits at the even point. Settable for tests.
    /// </summary>
    internal static long SplitMaxMacsPerImage { get; set; } = 8_000_000;

    private bool? _splittableModel;
    private bool _splitAbandoned;
    private Parameter[]? _trainable;

    /// <summary>
    /// Parts the current micro-batch is cut into: 1 (not cut) unless <see cref="SplitBatches"/>, one process, exactly 2
    /// libtorch threads (see <see cref="RunSplit"/> for why not more), our training BatchNorm kernels enabled
    /// (<c>REPLKNET_BATCHNORM</c> not <c>libtorch</c>), a CPU float32 RepLKNet whose batch-dependent layers are all our
    /// BatchNorm2d and that draws no random numbers in its forward (no stochastic depth, no dropout: the parts would draw
    /// in a timing-dependent order), an epoch that can be cut (<see cref="ISplittableEpoch"/>) into parts of at least 2
    /// samples, libtorch's OpenMP runtime found, and no earlier split of this step abandoned or declined (<see cref="RunSplit"/>
    /// declines images that cost more than <see cref="SplitMaxMacsPerImage"/>); then 2.
    /// </summary>
    private int SplitParts(ITrainingEpoch data)
    {
        if (!SplitBatches || _splitAbandoned || !Ops.BatchNormTraining.Enabled || data is not ISplittableEpoch || _device.type != DeviceType.CPU ||
            torch.get_num_threads() != 2 || data.Count < 4 || !OpenMpTeam.CanSizeTeams)
        {
            return 1;
        }

        _splittableModel ??= _model is Models.RepLKNetModel && ModelInputs.FloatType(_model) == ScalarType.Float32 &&
            _model.parameters().All(p => p.device_type == DeviceType.CPU) &&
            _model.modules().All(m => m switch
            {
                Layers.BatchNorm2d bn => bn.SyncGroup is not { IsDistributed: true },
                TorchSharp.Modules.BatchNorm or TorchSharp.Modules.GroupNorm or TorchSharp.Modules.Dropout or TorchSharp.Modules.Dropout2d => false,
                Layers.DropPath drop => drop.Probability == 0,
                _ => true,
            });
        return _splittableModel == true ? 2 : 1;
    }

    /// <summary>
    /// Forward and backward of the current micro-batch in <paramref name="parts"/> (2) parts on libtorch's OpenMP team: each
    /// part runs its samples start to end on one thread (every op single-threaded inside it), with the whole batch's
    /// BatchNorm statistics (the parts add their sums, <see cref="Layers.BatchNorm2d"/>), and calls <c>backward()</c> on
    /// its share of the loss. libtorch adds both parts' gradients into each parameter's <c>.grad</c> under a per-parameter
    /// lock in whichever order they come; a sum of two floats does not depend on the order, so the bits do not either, as
    /// long as <c>.grad</c> holds no third term: for the second and later micro-batches of an accumulated step the earlier
    /// gradients are set aside (<c>.grad</c> zeroed) and added back after. With three or more parts the order would change
    /// the bits, hence 2 parts. (<c>autograd.grad</c> per part would not need this, but TorchSharp 0.107's native
    /// <c>THSAutograd_grad</c> lets a libtorch error escape as a C++ exception through managed frames, aborting the
    /// process, where <c>backward()</c> turns it into a .NET exception.) Returns the micro-batch's loss (the parts' added in
    /// part order), or NaN when the split was declined (images over <see cref="SplitMaxMacsPerImage"/>) or abandoned before
    /// it ran (the caller then runs the batch whole).
    /// </summary>
    /// <exception cref="NonFiniteLossException">The loss is not finite (no backward ran).</exception>
    private double RunSplit(ISplittableEpoch data, int parts, long stepNumber, bool gradientsHeld)
    {
        var input = data.Input(_model, _device);
        if (input.dim() == 4 && _model is Models.RepLKNetModel model
            && Models.Complexity.Macs(model.Config, (int)input.size(2), (int)input.size(3), Models.ModelForm.Train) > SplitMaxMacsPerImage)
        {
            // Large images: the step runs whole, now and for the rest of this object's steps (a run keeps its resolution),
            // as after an abandoned split.
            _splitAbandoned = true;
            return double.NaN;
        }

        long n = input.size(0);
        var trainable = _trainable ??= [.. _model.parameters().Where(p => p.requires_grad)];
        var backend = Ops.DepthwiseConv2d.CurrentBackend;
        var isa = Ops.DepthwiseConv2d.Isa;
        double total = double.NaN;
        // An accumulated step's earlier gradients, set aside so that .grad holds only this micro-batch's two terms.
        Tensor?[]? earlier = null;
        if (gradientsHeld)
        {
            using var noGrad = no_grad();
            earlier = new Tensor?[trainable.Length];
            for (int i = 0; i < trainable.Length; i++)
            {
                var g = trainable[i].grad;
                if (g is not null && !g.IsInvalid)
                {
                    earlier[i] = g.clone();
                    Scalars.ZeroInPlace(g);
                }
            }
        }

        bool ran = BatchSplit.Run(parts, part =>
        {
            // Team threads do not carry the caller's AsyncLocal settings or libtorch's thread-local grad mode.
            using var useBackend = Ops.DepthwiseConv2d.Use(backend);
            using var useIsa = Ops.DepthwiseConv2d.UseIsa(isa);
            using var grad = enable_grad();
            using var scope = NewDisposeScope();
            long first = n * part.Index / parts;
            long count = (n * (part.Index + 1) / parts) - first;
            var loss = data.PartLoss(_model.call(input.narrow(0, first, count)), first, count);
            Span<double> sum = [Value(loss)];
            // Every part learns the batch's loss, so all skip the backward alike when it is not finite.
            part.Sum(sum, "loss");
            if (part.Index == 0)
            {
                total = sum[0];
            }

            if (double.IsFinite(sum[0]))
            {
                BackwardOfShare(loss);
            }
        });

        if (earlier is not null)
        {
            // Added back whether or not the split ran: an abandoned split's unsplit backward then adds on top as usual.
            using var noGrad = no_grad();
            for (int i = 0; i < trainable.Length; i++)
            {
                if (earlier[i] is { } e)
                {
                    using var g = trainable[i].grad;
                    Scalars.AddInPlace(g!, e);
                }
            }
        }

        if (!ran)
        {
            _splitAbandoned = true;
            return double.NaN;
        }

        CheckFinite(total, stepNumber);
        return total;
    }

    /// <summary>AdamW's default (β₁, β₂) = (0.9, 0.999), the official recipes' (classification and MMSeg alike).</summary>
    public static readonly (double Beta1, double Beta2) DefaultBetas = (0.9, 0.999);

    /// <summary>
    /// AdamW over <paramref name="model"/>'s trainable parameters in the official groups: weight decay on everything but
    /// biases and 1-D parameters (<see cref="ParameterGroups.IsNoDecay"/>) or what <paramref name="noDecay"/> exempts,
    /// times an optional per-parameter learning-rate scale (layer-wise decay); one group per distinct (decay, scale),
    /// decayed groups first, then by scale. Returns the optimizer and each group's scale.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="learningRate">Peak learning rate.</param>
    /// <param name="weightDecay">Decoupled weight decay of the decayed groups.</param>
    /// <param name="scale">Learning-rate multiplier of a parameter by name, or null for 1.</param>
    /// <param name="noDecay">Whether a parameter (by name) gets no weight decay; null: <see cref="ParameterGroups.IsNoDecay"/>.</param>
    /// <param name="betas">AdamW's (β₁, β₂); null: <see cref="DefaultBetas"/>.</param>
    public static (AdamW Optimizer, double[] Scales) CreateOptimizer(Module model, double learningRate, double weightDecay, Func<string, double>? scale = null,
        Func<string, Parameter, bool>? noDecay = null, (double Beta1, double Beta2)? betas = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var groups = new List<(List<Parameter> Params, double Decay, double Scale)>();
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            double decay = (noDecay ?? ParameterGroups.IsNoDecay)(name, parameter) ? 0 : weightDecay;
            double s = scale?.Invoke(name) ?? 1.0;
            int g = groups.FindIndex(x => x.Decay == decay && x.Scale == s);
            if (g < 0)
            {
                groups.Add(([], decay, s));
                g = groups.Count - 1;
            }

            groups[g].Params.Add(parameter);
        }

        // Decayed groups first (the optimizer state file's group order depends on it).
        groups = [.. groups.OrderBy(x => x.Decay == 0).ThenBy(x => x.Scale)];
        var optimizer = optim.AdamW(
            [.. groups.Select(x => new AdamW.ParamGroup(x.Params, new AdamW.Options { LearningRate = learningRate * x.Scale, weight_decay = x.Decay }))],
            learningRate, (betas ?? DefaultBetas).Beta1, (betas ?? DefaultBetas).Beta2, 1e-8, weightDecay);
        return (optimizer, [.. groups.Select(x => x.Scale)]);
    }
}
