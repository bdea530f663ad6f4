using RepLKNet.Layers;
using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;

namespace RepLKNet.Models;

/// <summary>
/// A RepLKNet frozen for inference, as <c>torch.jit.freeze</c> + <c>optimize_for_inference</c> leave a PyTorch module:
/// a copy of the model's eval-mode function with every BatchNorm folded away and nothing trainable. Each conv+BN pair
/// becomes one biased conv (the official <c>fuse_bn</c>), each large-kernel module its merged kernel (the official
/// <c>get_equivalent_kernel_bias</c>), and — what no state_dict form of the official model can hold — each block's
/// pre-BN (<c>prelkb_bn</c>, <c>preffn_bn</c>) is folded into the 1×1 conv after it (<c>W·diag(s)</c>, <c>b + W·t</c>
/// for BN(x) = s⊙x + t; exact, as a 1×1 conv has no padding), and the classifier's <c>norm</c> into <c>head</c> (the
/// average pool is linear). The forward is the model's: the same convolutions (depthwise stride-1 "same" ones through
/// <see cref="DepthwiseConv2d.Forward"/>, so our kernels where the dispatch picks them), ReLU, exact GELU and residual
/// sums, in place, without autograd.
/// </summary>
/// <remarks>
/// <para>
/// The frozen model holds its own tensors, computed once by <see cref="Freeze"/> (each fold in float64 from the model's
/// values, rounded to the model's dtype; a conv+BN pair is rounded once before its pre-BN is folded in): later changes to
/// the source model do not reach it. It registers no parameters or buffers, so <c>state_dict</c>, <c>load_state_dict</c>,
/// <c>to</c>, <c>cuda</c> and <c>half</c> see nothing: save the source model, and freeze a model already on the device
/// and dtype wanted. Results equal the source model's eval-mode forward up to float rounding (tested for the train,
/// deploy and fused forms with random BatchNorm statistics, against float64 and the official fixtures).
/// </para>
/// <para>
/// With <see cref="ChannelsLast"/>, activations run in PyTorch's channels_last memory format (NHWC strides): every float32
/// CPU 1×1 conv then runs our fused product (<c>Ops/Cpu/PointwiseConvCpu</c>: one register-tiled GEMM over rows of pixels with
/// the bias, ReLU and the block's residual sum in its epilogue, the sum written into the block's input, which is dead by
/// then), and libtorch's other convolutions keep the format (no reorders to and from NCHW). That pays where maps are
/// small (every op lasts microseconds); our SIMD depthwise kernels read NCHW, so on large maps, where they run
/// (RepLKNet-31B at 224), it would add two layout conversions per block. With <see cref="BatchParallel"/>, a batch is cut
/// into one slice per thread of libtorch's OpenMP team and each thread runs its slice start to end with every op
/// single-threaded: on small maps an op spread over threads costs a fork and a join for a few microseconds of work each
/// (our depthwise kernels inside a slice start a nested team, which libgomp runs on the calling thread unless nested
/// parallelism is switched on). <see cref="Freeze"/> turns both on for inputs whose stage-0 maps are at most 20×20 (the
/// default model at 28×28: the three changes together take a batch of 64 from 2.3–2.7 to 1.3–1.4 ms, docs/perf-notes.md)
/// unless told.
/// </para>
/// <para>
/// Calls may come from several threads at once (not with <c>Dispose</c>): the frozen tensors are only read, each call
/// allocates its own intermediates, and a slice's threads carry the caller's depthwise backend and instruction set
/// (tested under forced garbage collection with two concurrent callers).
/// </para>
/// </remarks>
public sealed class FrozenRepLKNet : nn.Module<Tensor, Tensor>
{
    private readonly FrozenConv[] _stem;
    private readonly FrozenBlock[][] _stages;
    private readonly (Tensor Scale, Tensor Shift)?[] _stageNorms;
    private readonly (FrozenConv Pointwise, FrozenConv Depthwise)[] _transitions;
    private readonly (Tensor Weight, Tensor Bias)? _head;
    private readonly IReadOnlyList<int>? _outIndices;

    private FrozenRepLKNet(string name, FrozenConv[] stem, FrozenBlock[][] stages, (Tensor, Tensor)?[] stageNorms,
        (FrozenConv, FrozenConv)[] transitions, (Tensor, Tensor)? head, IReadOnlyList<int>? outIndices, bool channelsLast, bool batchParallel)
        : base(name)
    {
        BatchParallel = batchParallel;
        _stem = stem;
        _stages = stages;
        _stageNorms = stageNorms;
        _transitions = transitions;
        _head = head;
        _outIndices = outIndices;
        ChannelsLast = channelsLast;
    }

    /// <summary>Whether activations run in the channels_last memory format (see the remarks).</summary>
    public bool ChannelsLast { get; }

    /// <summary>
    /// Whether a batch is cut into one slice per thread, each slice run whole on one thread of libtorch's OpenMP team with
    /// every op single-threaded inside it (see the remarks), instead of every op spread over the threads. Applies to CPU
    /// batches of at least 2 images with at least 2 libtorch threads, where libtorch's OpenMP runtime is found
    /// (<see cref="OpenMpTeam.IsActive"/>); otherwise the whole batch runs as one.
    /// </summary>
    public bool BatchParallel { get; }

    /// <summary>
    /// Whether a CPU batch of <paramref name="batchSize"/> images is cut into slices now: <see cref="BatchParallel"/>, at
    /// least 2 images and 2 libtorch threads, and libtorch's OpenMP runtime found.
    /// </summary>
    public bool SlicesBatch(long batchSize) => BatchParallel && Math.Min(batchSize, torch.get_num_threads()) >= 2 && OpenMpTeam.IsActive;

    /// <summary>Number of stages.</summary>
    public int NumStages => _stages.Length;

    /// <summary>Whether the model ends in a classifier (else it is a backbone returning features).</summary>
    public bool IsClassifier => _head is not null;

    /// <summary>
    /// Freezes <paramref name="model"/> (in any form: train, deploy or fused; left unchanged) into a new inference-only
    /// model on the model's device and dtype.
    /// </summary>
    /// <param name="model">The source model; must be in eval mode (<c>model.eval()</c>), as <c>torch.jit.freeze</c> requires.</param>
    /// <param name="channelsLast">
    /// Run activations as channels_last (see the remarks); null: on the CPU when <paramref name="inputSize"/> gives stage-0
    /// maps (a quarter of the input) of at most 20×20; never on a GPU.
    /// </param>
    /// <param name="inputSize">The larger input side (pixels) the automatic <paramref name="channelsLast"/> choice assumes; null: 224.</param>
    /// <param name="batchParallel">Cut batches into one slice per thread (<see cref="BatchParallel"/>); null: as <paramref name="channelsLast"/> resolves (the small-map regime).</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="InvalidOperationException">
    /// The model is in training mode, or a BatchNorm tracks no running statistics (its eval output then depends on the batch).
    /// </exception>
    public static FrozenRepLKNet Freeze(RepLKNetModel model, bool? channelsLast = null, int? inputSize = null, bool? batchParallel = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.training)
        {
            throw new InvalidOperationException("freeze needs the model in eval mode (call eval() first): a frozen model has eval-mode BatchNorm");
        }

        using var noGrad = no_grad();
        // Temporaries die with this scope; what the frozen model keeps is detached from it (and from any caller's scope).
        using var scope = NewDisposeScope();
        var device = model.StemLayers[0].Conv.weight!.device;
        bool cl = channelsLast ?? (device.type == DeviceType.CPU && SmallMaps(inputSize ?? 224));
        var stem = model.StemLayers.Select(layer => FrozenConv.Of(layer, null, cl)).ToArray();
        var stages = model.Stages.Select(stage => stage.Blocks.Select(block => block switch
        {
            RepLKBlock b => FrozenBlock.Of(b, cl),
            ConvFFN f => FrozenBlock.Of(f, cl),
            _ => throw new InvalidOperationException($"unexpected block {block.GetType().Name}"),
        }).ToArray()).ToArray();
        var norms = new (Tensor Scale, Tensor Shift)?[model.Stages.Count];
        for (int i = 0; i < norms.Length; i++)
        {
            if (model.Stages[i].Norm is BatchNorm2d bn)
            {
                var (s, t, dtype) = Affine(bn);
                norms[i] = (ToLayout(s.reshape(1, -1, 1, 1).to(dtype), cl), ToLayout(t.reshape(1, -1, 1, 1).to(dtype), cl));
            }
        }

        var transitions = model.TransitionLayers.Select(t => (FrozenConv.Of(t.Pointwise, null, cl), FrozenConv.Of(t.Depthwise, null, cl))).ToArray();
        (Tensor, Tensor)? head = null;
        if (model.Classifier is var (norm, linear))
        {
            // head(avgpool(s⊙x + t)) = (W·diag(s))·avgpool(x) + (W·t + b).
            var (s, t, _) = Affine(norm);
            var dtype = linear.weight!.dtype;
            var w = linear.weight!.to(float64);
            var b = linear.bias is { } lb ? lb.to(float64) : zeros(w.size(0), float64, w.device);
            head = ((w * s.unsqueeze(0)).to(dtype), Scalars.Add(b, w.matmul(t)).to(dtype));
        }

        var frozen = new FrozenRepLKNet("FrozenRepLKNet", stem, stages, norms, transitions, head, model.Config.OutIndices, cl, batchParallel ?? cl);
        // Built without an exception: what it holds leaves this scope (and any caller's); otherwise the scope frees it all.
        foreach (var t in frozen.Tensors())
        {
            t.DetachFromDisposeScope();
        }

        return frozen;
    }

    /// <summary>
    /// Classifier: logits [N, num_classes]. Backbone: the deepest configured out_indices feature (as
    /// <see cref="RepLKNetModel.forward"/>). Runs without autograd whatever the caller's grad mode.
    /// </summary>
    /// <param name="input">Images [N, C_in, H, W], normalized as in training, on the model's device.</param>
    /// <returns>Classifier: logits [N, num_classes]. Backbone: [N, Channels[i], ⌈H/s⌉, ⌈W/s⌉] for the deepest out_index i, s = 4·2^i.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (_head is not { } head)
        {
            var features = forward_intermediates(input);
            foreach (var f in features.Take(features.Count - 1))
            {
                f.Dispose();
            }

            return features[^1];
        }

        return Sliced(input, x =>
        {
            x = Stem(x);
            for (int i = 0; i < _stages.Length; i++)
            {
                x = Stage(i, x);
                if (i < _transitions.Length)
                {
                    x = Transition(i, x);
                }
            }

            return [nn.functional.linear(x.mean([2, 3]), head.Weight, head.Bias)];
        })[0];
    }

    /// <summary>Per-stage features as <see cref="RepLKNetModel.forward_intermediates"/> returns them (contiguous NCHW).</summary>
    /// <param name="input">Images [N, C_in, H, W].</param>
    /// <param name="indices">Stage indices; null: the configured out_indices, or every stage.</param>
    /// <returns>One tensor per distinct requested stage, in stage order: [N, Channels[i], ⌈H/s⌉, ⌈W/s⌉], s = 4·2^i.</returns>
    /// <exception cref="ArgumentOutOfRangeException">An index is outside the stages (<c>indices</c>).</exception>
    /// <exception cref="ArgumentException"><paramref name="indices"/> is empty.</exception>
    public IReadOnlyList<Tensor> forward_intermediates(Tensor input, IReadOnlyList<int>? indices = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        var wanted = RepLKNetModel.StageIndices(indices, _outIndices, _stages.Length);
        int last = wanted.Max();
        return Sliced(input, x =>
        {
            var outputs = new List<Tensor>();
            x = Stem(x);
            for (int i = 0; i <= last; i++)
            {
                x = Stage(i, x);
                if (wanted.Contains(i))
                {
                    outputs.Add((_stageNorms[i] is { } norm ? Scalars.Add(x * norm.Scale, norm.Shift) : x).contiguous());
                }

                if (i < _transitions.Length && i < last)
                {
                    x = Transition(i, x);
                }
            }

            return [.. outputs];
        });
    }

    // Runs body without autograd on the whole batch, or with BatchParallel on one slice per thread of libtorch's OpenMP team
    // (each op inside is then single-threaded: libtorch and oneDNN run serially inside a parallel region) and concatenates
    // the slices' outputs. Safe: the threads only read the frozen tensors (libtorch ops do not write their inputs) and each
    // writes tensors of its own; the input slices are views made on the caller. The caller's depthwise backend and
    // instruction set (AsyncLocal scopes, which team threads do not inherit) are carried over.
    private Tensor[] Sliced(Tensor input, Func<Tensor, Tensor[]> body)
    {
        using var noGrad = no_grad();
        long n = input.size(0);
        int slices = (int)Math.Min(n, torch.get_num_threads());
        if (!SlicesBatch(n) || input.device_type != DeviceType.CPU)
        {
            using var scope = NewDisposeScope();
            return [.. body(input).Select(t => t.MoveToOuterDisposeScope())];
        }

        var parts = new Tensor[slices][];
        var views = new Tensor[slices];
        for (int i = 0; i < slices; i++)
        {
            long first = n * i / slices;
            views[i] = input.narrow(0, first, n * (i + 1) / slices - first);
        }

        var backend = DepthwiseConv2d.CurrentBackend;
        var isa = DepthwiseConv2d.Isa;
        int next = -1;
        try
        {
            OpenMpTeam.Run(slices, () =>
            {
                using var threadNoGrad = no_grad();
                using var useBackend = DepthwiseConv2d.Use(backend);
                using var useIsa = DepthwiseConv2d.UseIsa(isa);
                bool wasInSlice = InSlice;
                InSlice = true;
                try
                {
                    for (int i; (i = Interlocked.Increment(ref next)) < slices;)
                    {
                        using var scope = NewDisposeScope();
                        parts[i] = [.. body(views[i]).Select(t => t.DetachFromDisposeScope())];
                    }
                }
                finally
                {
                    InSlice = wasInSlice;
                }
            });

            return [.. Enumerable.Range(0, parts[0].Length).Select(k => cat(parts.Select(p => p[k]).ToArray(), 0))];
        }
        finally
        {
            foreach (var t in views.Concat(parts.Where(p => p is not null).SelectMany(p => p)))
            {
                t.Dispose();
            }
        }
    }

    /// <summary>
    /// Largest stage-0 map (pixels a side, the input / 4) of the small-map regime: at most the size under which the CPU
    /// dispatch sends depthwise forwards of K ≤ 13 to libtorch (<c>CpuDepthwise.ForwardOnLibtorch</c>), where ops last
    /// microseconds and their fixed cost dominates.
    /// </summary>
    internal const int SmallMap = 20;

    /// <summary>Whether an input of <paramref name="inputSize"/> pixels a side gives stage-0 maps of at most <see cref="SmallMap"/>.</summary>
    internal static bool SmallMaps(int inputSize) => (inputSize + 3) / 4 <= SmallMap;

    // Every tensor the frozen model holds.
    private IEnumerable<Tensor> Tensors() =>
        _stem.Concat(_stages.SelectMany(s => s).SelectMany(b => b.Convs)).Concat(_transitions.SelectMany(t => new[] { t.Pointwise, t.Depthwise }))
            .SelectMany(c => c.Tensors)
            .Concat(_stageNorms.Where(n => n is not null).SelectMany(n => new[] { n!.Value.Scale, n.Value.Shift }))
            .Concat(_head is { } h ? [h.Weight, h.Bias] : []);

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var t in Tensors())
            {
                t.Dispose();
            }
        }

        base.Dispose(disposing);
    }

    private Tensor Stem(Tensor input)
    {
        var x = input;
        foreach (var conv in _stem)
        {
            x = conv.Run(x);
        }

        return x;
    }

    private Tensor Stage(int index, Tensor x)
    {
        foreach (var block in _stages[index])
        {
            x = block.Run(x);
        }

        return x;
    }

    private Tensor Transition(int index, Tensor x) => _transitions[index].Depthwise.Run(_transitions[index].Pointwise.Run(x));

    // Set on a team thread while it runs a slice: our kernels then stay on that thread.
    [ThreadStatic]
    private static bool InSlice;

    // BN(x) = s⊙x + t in eval mode, in float64 (BnFusion.ScaleShift), and the statistics' dtype.
    private static (Tensor Scale, Tensor Shift, ScalarType Dtype) Affine(BatchNorm2d bn)
    {
        if (bn.running_mean is null || bn.running_var is null)
        {
            throw new InvalidOperationException("a BatchNorm without running statistics normalizes by the batch in eval mode: it cannot be frozen");
        }

        var (s, t) = BnFusion.ScaleShift(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps);
        return (s, t, bn.running_mean.dtype);
    }

    private static Tensor ToLayout(Tensor weight, bool channelsLast) =>
        channelsLast ? weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) : weight.contiguous();

    /// <summary>One biased conv [+ ReLU], the pre-BN folded in when given.</summary>
    private sealed class FrozenConv
    {
        private readonly Tensor _weight;
        private readonly Tensor _bias;
        private static readonly long[] UnitDilation = [1, 1];
        private readonly long[] _stride;
        private readonly long[] _padding;
        private readonly long _groups;
        private readonly bool _relu;
        private readonly bool _depthwiseSame;

        // Channels_last 1×1 convs on the CPU (float32) run our fused product on this (C_in, C_out) packing instead.
        private readonly Tensor? _packed;

        private FrozenConv(Tensor weight, Tensor bias, long stride, long padding, long groups, bool relu, bool channelsLast)
        {
            _weight = weight;
            _bias = bias;
            if (channelsLast && weight.size(2) == 1 && weight.size(3) == 1 && groups == 1 && stride == 1 && padding == 0 &&
                weight.dtype == ScalarType.Float32 && weight.device_type == DeviceType.CPU)
            {
                _packed = PointwiseConvCpu.PackWeight(weight);
            }

            _stride = [stride, stride];
            _padding = [padding, padding];
            _groups = groups;
            _relu = relu;
            long k = weight.size(2);
            _depthwiseSame = k > 1 && DepthwiseConv2d.IsDepthwiseSame(weight.size(0), weight.size(0), groups, k, weight.size(3), stride, padding, 1)
                && weight.size(1) == 1;
        }

        public static FrozenConv Of(ConvBn layer, BatchNorm2d? preBn, bool channelsLast) =>
            Create(layer.EquivalentKernelBias(), layer.Conv.stride[0], layer.Conv.padding![0], layer.Conv.groups, layer.HasRelu, preBn, channelsLast);

        // Takes ownership of the equivalent kernel and bias.
        public static FrozenConv Create((Tensor Kernel, Tensor Bias) equivalent, long stride, long padding, long groups, bool relu, BatchNorm2d? preBn, bool channelsLast)
        {
            var (kernel, bias) = equivalent;
            if (preBn is not null)
            {
                // conv1×1(s⊙x + t) = (W·diag(s))·x + (b + W·t); exact only without padding or groups.
                if (kernel.size(2) != 1 || kernel.size(3) != 1 || groups != 1 || padding != 0)
                {
                    throw new InvalidOperationException("a pre-BN folds only into a 1×1 conv without groups or padding");
                }

                var (s, t, _) = Affine(preBn);
                var dtype = kernel.dtype;
                var w = kernel.to(float64);
                var folded = (w * s.reshape(1, -1, 1, 1)).to(dtype);
                var foldedBias = Scalars.Add(bias.to(float64), w.flatten(1).matmul(t)).to(dtype);
                kernel.Dispose();
                bias.Dispose();
                (kernel, bias) = (folded, foldedBias);
            }

            var laid = ToLayout(kernel, channelsLast);
            kernel.Dispose();
            return new FrozenConv(laid, bias, stride, padding, groups, relu, channelsLast);
        }

        /// <summary>conv(x) [→ ReLU] [+ residual, written into <paramref name="residual"/> when the fused product runs].</summary>
        public Tensor Run(Tensor x, Tensor? residual = null)
        {
            if (_packed is not null && PointwiseConvCpu.Fits(x, _packed.size(1)))
            {
                // Our product reads the channels_last input and adds the residual in its epilogue.
                return PointwiseConvCpu.Forward(x, _packed, _bias, _relu, residual, CpuDepthwise.RuleIsa, InSlice ? 1 : DepthwiseConv2d.ThreadCount);
            }

            var y = _depthwiseSame
                ? DepthwiseConv2d.Forward(x, _weight, _bias)
                : DenseConv2d.Forward(x, _weight, _bias, _stride, _padding, UnitDilation, _groups);
            y = _relu ? y.relu_() : y;
            return residual is null ? y : Scalars.AddInPlace(y, residual);
        }

        public IEnumerable<Tensor> Tensors => _packed is null ? [_weight, _bias] : [_weight, _bias, _packed];
    }

    /// <summary>A RepLK block (pw1 → large kernel → ReLU → pw2, + x) or a ConvFFN (pw1 → GELU → pw2, + x), pre-BN folded into pw1.</summary>
    private sealed class FrozenBlock
    {
        private readonly FrozenConv _pw1;
        private readonly FrozenConv? _largeKernel;
        private readonly FrozenConv _pw2;

        private FrozenBlock(FrozenConv pw1, FrozenConv? largeKernel, FrozenConv pw2)
        {
            _pw1 = pw1;
            _largeKernel = largeKernel;
            _pw2 = pw2;
        }

        public IEnumerable<FrozenConv> Convs => _largeKernel is null ? [_pw1, _pw2] : [_pw1, _largeKernel, _pw2];

        public static FrozenBlock Of(RepLKBlock block, bool channelsLast)
        {
            var lk = block.LargeKernel;
            // The ReLU after the large kernel is the block's lk_nonlinear.
            var largeKernel = FrozenConv.Create(lk.EquivalentKernelBias(), lk.Stride, lk.KernelSize / 2, lk.Channels, relu: true, null, channelsLast);
            return new FrozenBlock(FrozenConv.Of(block.Pw1, block.PreBn, channelsLast), largeKernel, FrozenConv.Of(block.Pw2, null, channelsLast));
        }

        public static FrozenBlock Of(ConvFFN ffn, bool channelsLast) =>
            new(FrozenConv.Of(ffn.Pw1, ffn.PreBn, channelsLast), null, FrozenConv.Of(ffn.Pw2, null, channelsLast));

        public Tensor Run(Tensor x)
        {
            var y = _pw1.Run(x);
            y = _largeKernel is null ? y.gelu_() : _largeKernel.Run(y);
            // x is this block's input, dead after the sum (the frozen model's own tensor, never the caller's: the stem
            // comes first), so the fused product may write the sum into it.
            return _pw2.Run(y, residual: x);
        }
    }
}
