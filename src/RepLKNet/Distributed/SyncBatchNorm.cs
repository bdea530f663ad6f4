using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Distributed;

/// <summary>
/// A batch-norm layer whose training statistics can be synchronized over a process group (our
/// <c>Layers.BatchNorm2d</c>); <see cref="SyncBatchNorm.Convert"/> sets the group.
/// </summary>
public interface ISyncBatchNorm
{
    /// <summary>
    /// The processes whose batches share the statistics in training, or null: local statistics (the plain layer). A
    /// one-process group and eval mode take the plain path.
    /// </summary>
    ProcessGroup? SyncGroup { get; set; }
}

/// <summary>
/// Synchronized batch normalization (<c>torch.nn.SyncBatchNorm</c>, its autograd function in
/// <c>torch/nn/modules/_functions.py</c>): in training on a distributed group, every process normalizes its batch with the
/// mean and (biased) variance of the union of all processes' batches, and the running statistics are updated with the
/// global mean and the unbiased global variance (N/(N−1)), so a job of W processes with local batches B_r computes what one
/// process computes on the concatenated batch. Backward reduces Σdy and Σdy·x̂ over the processes (one collective) and
/// returns PyTorch's SyncBatchNorm gradients: dx = w·invstd·(dy − Σdy/N − x̂·Σ(dy·x̂)/N) with N the global count per
/// channel, and the local dweight = Σ dy·x̂, dbias = Σ dy (the gradient reducer then averages them, as DDP does).
/// </summary>
public static class SyncBatchNorm
{
    /// <summary>
    /// Sets <paramref name="group"/> as the <see cref="ISyncBatchNorm.SyncGroup"/> of every batch-norm layer in
    /// <paramref name="model"/> (itself included), in place — <c>torch.nn.SyncBatchNorm.convert_sync_batchnorm</c> without
    /// new modules: parameters, buffers and state_dict keys stay as they are.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="group">The job's processes (a one-process group leaves the behaviour unchanged).</param>
    /// <returns>How many layers were set.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> or <paramref name="group"/> is null.</exception>
    public static int Convert(nn.Module model, ProcessGroup group)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(group);
        int count = 0;
        var seen = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (var module in model.modules().Prepend(model))
        {
            if (seen.Add(module) && module is ISyncBatchNorm layer)
            {
                layer.SyncGroup = group;
                count++;
            }
        }

        return count;
    }

    /// <summary>
    /// Batch normalization of a training batch with statistics over <paramref name="group"/>: one collective in forward
    /// (every process's per-channel count, mean and biased variance, combined in float64 without cancellation), one in
    /// backward when the input needs a gradient. Every process must call it for the same layers in the same order.
    /// </summary>
    /// <param name="input">Input (N_r, C, H, W) of this process; N_r may differ between processes (and be 0).</param>
    /// <param name="runningMean">Running mean (C), updated in place, or null (no running statistics).</param>
    /// <param name="runningVar">Running variance (C), updated in place with the unbiased global variance, or null.</param>
    /// <param name="weight">Scale (C) or null.</param>
    /// <param name="bias">Shift (C) or null.</param>
    /// <param name="momentum">Weight of the new statistics in the running ones (1/num_batches_tracked for a cumulative average).</param>
    /// <param name="eps">Added to the variance.</param>
    /// <param name="group">The processes.</param>
    /// <returns>(N_r, C, H, W) in the input's dtype.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="group"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="input"/> is not 4-D, or all processes together hold at most one value per channel.</exception>
    /// <exception cref="CollectiveException">A collective failed.</exception>
    public static Tensor Forward(Tensor input, Tensor? runningMean, Tensor? runningVar, Tensor? weight, Tensor? bias, double momentum, double eps, ProcessGroup group)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(group);
        if (input.ndim != 4)
        {
            throw new ArgumentException($"input: SyncBatchNorm expects a 4-D (N, C, H, W) input, got {input.ndim}-D", nameof(input));
        }

        var options = new SyncBatchNormFunction.Options(group, runningMean, runningVar, momentum, eps, weight is not null, bias is not null);
        return SyncBatchNormFunction.apply(Runtime.AutogradArguments.Of(options, input, weight, bias));
    }

    /// <summary>
    /// Frees the gradient wrappers the backward keeps reachable until libtorch has copied them (one holder for every custom
    /// function: <c>DepthwiseConv2d.ReleaseBackwardOutputs</c> does the same). Call after <c>backward()</c> returns.
    /// </summary>
    public static void ReleaseBackwardOutputs() => Runtime.BackwardOutputs.ReleaseAll();
}

/// <summary>The autograd function behind <see cref="SyncBatchNorm.Forward"/> (PyTorch's <c>SyncBatchNorm</c> function).</summary>
internal sealed class SyncBatchNormFunction : autograd.SingleTensorFunction<SyncBatchNormFunction>
{
    private const string StateKey = "state";

    public override string Name => "ReplknetSyncBatchNorm";

    /// <summary>What forward needs besides the tensors (not a tensor: TorchSharp passes it through).</summary>
    internal sealed record Options(ProcessGroup Group, Tensor? RunningMean, Tensor? RunningVar, double Momentum, double Eps, bool HasWeight, bool HasBias);

    /// <summary>What backward needs besides the saved tensors.</summary>
    private sealed record BackwardState(ProcessGroup Group, double Count, bool HasWeight, ScalarType? BiasType);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var options = (Options)vars[0];
        var x = (Tensor)vars[1];
        int next = 2;
        var w = options.HasWeight ? (Tensor)vars[next++] : null;
        var b = options.HasBias ? (Tensor)vars[next] : null;
        var group = options.Group;
        using var noGrad = no_grad();

        // Every process's (mean, biased var, count) per channel in its own row of a (W, 2C+1) float64 table, summed over the
        // processes (the other rows are zeros, so the sum is exact): PyTorch's all_gather of (mean, invstd, count).
        long c = x.size(1);
        long localCount = c == 0 ? 0 : x.numel() / c;
        var table = zeros([group.WorldSize, 2 * c + 1], ScalarType.Float64, x.device);
        var row = table.select(0, group.Rank);
        if (localCount > 0)
        {
            var (localVar, localMean) = var_mean(x, [0, 2, 3], unbiased: false);
            row.narrow(0, 0, c).copy_(localMean);
            row.narrow(0, c, c).copy_(localVar);
            Scalars.AddInPlace(row.narrow(0, 2 * c, 1), localCount);
        }

        group.AllReduce(table);
        var counts = table.narrow(1, 2 * c, 1); // (W, 1)
        double n = counts.sum().item<double>();
        if (n <= 1)
        {
            throw new ArgumentException($"input: expected more than 1 value per channel when training, got {n} over {group.WorldSize} processes", "input");
        }

        var fractions = Scalars.Div(counts, n);
        var means = table.narrow(1, 0, c);
        var variances = table.narrow(1, c, c);
        var mean = (means * fractions).sum([0]);
        // Chan et al.: Var = Σ n_r/N · (var_r + (mean_r − mean)²), no Σx² − N·mean² cancellation.
        var spread = means - mean.unsqueeze(0);
        var variance = (Scalars.Add(variances, spread * spread) * fractions).sum([0]);
        var invstd = Scalars.Add(variance, options.Eps).rsqrt();

        if (options.RunningMean is { } runningMean)
        {
            UpdateRunning(runningMean, mean, options.Momentum);
        }

        if (options.RunningVar is { } runningVar)
        {
            var unbiased = Scalars.Mul(variance, n / (n - 1));
            UpdateRunning(runningVar, unbiased, options.Momentum);
        }

        // y = x·α + β with α = w·invstd, β = b − mean·α (per channel, float64), as libtorch's batch_norm_elemt/transform.
        var alpha = w is null ? invstd : invstd * w.to(ScalarType.Float64);
        var beta = mean * alpha;
        beta = b is null ? beta.neg() : b.to(ScalarType.Float64) - beta;
        var shape = new long[] { 1, c, 1, 1 };
        var y = x * alpha.to(x.dtype).view(shape);
        Scalars.AddInPlace(y, beta.to(x.dtype).view(shape));
        var meanX = mean.to(x.dtype);
        var invstdX = invstd.to(x.dtype);

        var saved = new List<Tensor> { x };
        if (w is not null)
        {
            saved.Add(w);
        }

        saved.Add(meanX);
        saved.Add(invstdX);
        ctx.save_for_backward(saved);
        ctx.save_data(StateKey, new BackwardState(group, n, w is not null, b?.dtype));
        return y;
    }

    /// <summary>running = (1 − momentum)·running + momentum·value, computed in float64 (<c>F.batch_norm</c>'s update).</summary>
    private static void UpdateRunning(Tensor running, Tensor value, double momentum)
    {
        var updated = Scalars.MulInPlace(running.to(ScalarType.Float64), 1 - momentum);
        Scalars.AddInPlace(updated, value.to(running.device), momentum);
        running.copy_(updated);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        // Lifetimes as in DepthwiseConvFunction.backward (docs/runtime.md, "Object lifetimes"): this scope owns the
        // temporaries, the gradients handed back stay reachable until libtorch has copied them.
        using var scope = NewDisposeScope();
        var state = (BackwardState)ctx.get_data(StateKey);
        var saved = ctx.get_saved_variables();
        int next = 0;
        var x = saved[next++];
        var w = state.HasWeight ? saved[next++] : null;
        var mean = saved[next++];
        var invstd = saved[next];
        using var noGrad = no_grad();

        long c = x.size(1);
        var shape = new long[] { 1, c, 1, 1 };
        var xhat = (x - mean.view(shape)) * invstd.view(shape);
        var dy = grad.to(x.dtype);
        var sumDy = dy.sum([0, 2, 3]);
        var sumDyXhat = (dy * xhat).sum([0, 2, 3]);

        Tensor? dx = null;
        if (x.requires_grad)
        {
            // Σdy and Σdy·x̂ over all processes in one collective, then PyTorch's batch_norm_backward_elemt.
            var sums = cat([sumDy, sumDyXhat]).to(ScalarType.Float64).contiguous();
            state.Group.AllReduce(sums);
            var scale = invstd.to(ScalarType.Float64);
            if (w is not null)
            {
                scale = scale * w.to(ScalarType.Float64);
            }

            var meanDy = Scalars.Div(sums.narrow(0, 0, c), state.Count) * scale;
            var meanDyXhat = Scalars.Div(sums.narrow(0, c, c), state.Count) * scale;
            dx = dy * scale.to(x.dtype).view(shape) - meanDy.to(x.dtype).view(shape) - xhat * meanDyXhat.to(x.dtype).view(shape);
        }

        // One entry per forward argument: none for the options, then x, (weight), (bias).
        var result = new List<Tensor> { null!, dx! };
        if (state.HasWeight)
        {
            result.Add(w!.requires_grad ? sumDyXhat.to(w.dtype) : null!);
        }

        if (state.BiasType is { } biasType)
        {
            result.Add(sumDy.to(biasType));
        }

        Runtime.BackwardOutputs.HandBack(result);
        GC.KeepAlive(grad);
        return result;
    }
}
