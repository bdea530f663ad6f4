using RepLKNet.Distributed;
using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Layers;

/// <summary>
/// <c>torch.nn.BatchNorm2d</c>: the same parameters and buffers in the same order as PyTorch's and TorchSharp's
/// (<c>weight</c>, <c>bias</c>, <c>running_mean</c>, <c>running_var</c>, <c>num_batches_tracked</c>), the same forward
/// (<c>F.batch_norm</c> with batch statistics in training and the running ones in eval, <c>num_batches_tracked</c> counted
/// in training), but safe against the GC: TorchSharp's own <c>BatchNorm.forward</c> increments the counter with
/// <c>add_(1)</c>, which creates two temporary Scalars the finalizer thread may free while libtorch reads them
/// (<see cref="Scalars"/>). Input (N, C, H, W); throws <see cref="ArgumentException"/> for another rank. With a
/// distributed <see cref="SyncGroup"/>, training batches are normalized with the statistics of all processes' batches
/// (<c>torch.nn.SyncBatchNorm</c>, <see cref="SyncBatchNorm"/>); eval mode and one-process groups are unchanged. A
/// training batch that is contiguous float32 on the CPU is normalized by our kernels (<c>Ops.BatchNormTraining</c>: the
/// same statistics, output and gradients to float32 rounding, about 3× faster on the default model's maps);
/// <see cref="ForwardRelu"/> fuses a following ReLU into them.
/// </summary>
public sealed class BatchNorm2d : TorchSharp.Modules.BatchNorm, ISyncBatchNorm
{
    /// <summary>Creates the layer (PyTorch's defaults: eps 1e-5, momentum 0.1, affine, tracking running statistics).</summary>
    public BatchNorm2d(long numFeatures, double eps = 1e-5, double momentum = 0.1, bool affine = true, bool trackRunningStats = true, Device? device = null)
        : base(numFeatures, eps, momentum, affine, trackRunningStats, device, null, "BatchNorm2d")
    {
    }

    /// <inheritdoc />
    /// <remarks>Not a parameter or buffer: state_dict keys are those of the plain layer.</remarks>
    public ProcessGroup? SyncGroup { get; set; }

    /// <inheritdoc />
    public override Tensor forward(Tensor input) => Normalize(input, false, out _);

    /// <summary>
    /// relu(forward(<paramref name="input"/>)): in training on our CPU kernels, one pass with the ReLU fused (no separate
    /// ReLU op, forward or backward); elsewhere the layer's forward followed by <c>relu</c> (in place when no gradient is
    /// tracked). The same values and gradients as the two ops, to float32 rounding.
    /// </summary>
    /// <param name="input">(N, C, H, W).</param>
    /// <returns>(N, C, H, W).</returns>
    /// <exception cref="ArgumentException"><paramref name="input"/> is not 4-D.</exception>
    public Tensor ForwardRelu(Tensor input)
    {
        var y = Normalize(input, true, out bool fused);
        return fused ? y : !is_grad_enabled() ? y.relu_() : y.relu();
    }

    private Tensor Normalize(Tensor input, bool relu, out bool reluFused)
    {
        reluFused = false;
        ValidateInputDimensions(input);
        if (training && BatchSplit.Current is { } part)
        {
            return NormalizePart(input, relu, part, out reluFused);
        }

        double factor = momentum ?? 0.0;
        if (training && track_running_stats && num_batches_tracked is not null)
        {
            num_batches_tracked.add_(Scalars.One, Scalars.One);
            // momentum None: a cumulative moving average, as PyTorch's _BatchNorm.forward does.
            factor = momentum ?? 1.0 / num_batches_tracked.item<long>();
        }

        if (training && SyncGroup is { IsDistributed: true } group)
        {
            // PyTorch's SyncBatchNorm: running statistics passed only when tracked.
            return SyncBatchNorm.Forward(input, track_running_stats ? running_mean : null, track_running_stats ? running_var : null, weight, bias,
                factor, eps, group);
        }

        bool useBatchStatistics = training || (running_mean is null && running_var is null);
        bool passRunning = !training || track_running_stats;
        var runningMean = passRunning ? running_mean : null;
        var runningVar = passRunning ? running_var : null;
        if (useBatchStatistics && Ops.BatchNormTraining.Takes(input, runningMean, runningVar, weight, bias))
        {
            // Our kernels (docs/perf-notes.md, 2026-12-01 (later), "BatchNorm by rows of the batch"), with the caller's ReLU when it asks.
            reluFused = relu;
            return Ops.BatchNormTraining.Forward(input, runningMean, runningVar, weight, bias, factor, eps, relu);
        }

        if (useBatchStatistics && UsesRowsLayout(input))
        {
            // The same statistics over the same N·H·W values per channel, as (N·H·W, C) rows: libtorch's NCHW kernels
            // walk each channel's maps H·W floats at a time, which on maps of 2…15 pixels costs 2–6× the whole copy
            // and the row-layout call (docs/perf-notes.md, "BatchNorm on tiny maps").
            long[] shape = TensorSizes.Of(input);
            long n = shape[0], c = shape[1], h = shape[2], w = shape[3];
            using var nhwcIn = input.permute(0, 2, 3, 1);
            using var rows = nhwcIn.reshape(-1, c);
            using var normalized = nn.functional.batch_norm(rows, runningMean, runningVar, weight, bias, true, factor, eps);
            using var nhwc = normalized.view(n, h, w, c);
            using var nchw = nhwc.permute(0, 3, 1, 2);
            return nchw.contiguous();
        }

        return nn.functional.batch_norm(input, runningMean, runningVar, weight, bias, useBatchStatistics, factor, eps);
    }

    /// <summary>
    /// A training batch that is one part of a batch split over threads (<see cref="BatchSplit"/>): normalized with the
    /// whole batch's statistics (the parts add their sums, as SyncBatchNorm's processes do), on our kernels; part 0 alone
    /// counts the batch and updates the running statistics, once, with the whole batch's.
    /// </summary>
    /// <exception cref="InvalidOperationException">Our kernels do not take the input (the split's caller checks the model first), or a SyncBatchNorm group is set.</exception>
    private Tensor NormalizePart(Tensor input, bool relu, BatchSplit.Part part, out bool reluFused)
    {
        bool first = part.Index == 0;
        var runningMean = track_running_stats && first ? running_mean : null;
        var runningVar = track_running_stats && first ? running_var : null;
        if (SyncGroup is { IsDistributed: true } || !Ops.BatchNormTraining.Takes(input, running_mean, running_var, weight, bias))
        {
            throw new InvalidOperationException(
                $"BatchNorm2d({num_features}): a part of a split batch needs our CPU kernels (a contiguous float32 CPU input, no SyncBatchNorm group), got {input.dtype} on {input.device_type}");
        }

        double factor = momentum ?? 0.0;
        if (track_running_stats && num_batches_tracked is not null && first)
        {
            num_batches_tracked.add_(Scalars.One, Scalars.One);
            factor = momentum ?? 1.0 / num_batches_tracked.item<long>();
        }

        reluFused = relu;
        return Ops.BatchNormTraining.Forward(input, runningMean, runningVar, weight, bias, factor, eps, relu, part, this);
    }

    /// <summary>
    /// Whether batch statistics that our kernels do not take (<c>REPLKNET_BATCHNORM=libtorch</c>) go through libtorch's
    /// (N·H·W, C) layout: a contiguous NCHW float32 CPU input with C ≥ 2 and
    /// 2 ≤ H·W ≤ 15. Measured (batch 128, forward + backward): H·W 4 at C 128 0.67 vs 0.16 ms, 9 0.68 vs 0.25; H·W 1, 16
    /// and 49 as fast or faster in NCHW; 25 and 36 ~20 % faster as rows in one run, not taken. C = 1 stays on NCHW: there
    /// the permuted result is already "contiguous" with strides libtorch reads as channels_last, which would spread to the
    /// next layers. Precision: the row layout runs libtorch's channels-last statistics kernel (the one PyTorch uses for
    /// channels_last tensors), which accumulates less exactly on inputs far from zero mean: N 256, C 64, 3×5, max output
    /// error against float64 2.1e-6 vs 4.3e-7 (randn), 1.2e-4 vs 7.1e-6 (randn + 100).
    /// </summary>
    internal static bool UsesRowsLayout(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.ndim != 4 || input.device_type != DeviceType.CPU || input.dtype != ScalarType.Float32 || !input.is_contiguous())
        {
            return false;
        }

        long[] shape = TensorSizes.Of(input);
        long pixels = shape[2] * shape[3];
        return shape[1] >= 2 && pixels is >= 2 and <= 15;
    }

    /// <inheritdoc />
    protected override void ValidateInputDimensions(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.ndim != 4)
        {
            throw new ArgumentException($"BatchNorm2d expects a 4-D (N, C, H, W) input, got {input.ndim}-D");
        }
    }
}
