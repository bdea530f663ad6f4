using RepLKNet.Ops.Cpu;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Ops;

/// <summary>
/// Batch normalization of a training batch (batch statistics, running statistics updated) on our CPU kernels
/// (<see cref="BatchNormCpu"/>), as an autograd function: the same results as <c>F.batch_norm(…, training=True)</c> to
/// float32 rounding, forward and backward. Taken for contiguous NCHW float32 CPU inputs when
/// <see cref="Enabled"/>; <c>Layers.BatchNorm2d</c> decides.
/// </summary>
internal static class BatchNormTraining
{
    /// <summary>Environment variable: <c>libtorch</c> sends every batch norm to <c>F.batch_norm</c>.</summary>
    public const string EnvironmentVariable = "REPLKNET_BATCHNORM";

    /// <summary>Whether <see cref="Takes"/> may answer true (false with <c>REPLKNET_BATCHNORM=libtorch</c>).</summary>
    public static bool Enabled { get; set; } =
        !string.Equals(Environment.GetEnvironmentVariable(EnvironmentVariable), "libtorch", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Whether our kernels take this call: <see cref="Enabled"/>; a 4-D contiguous float32 CPU input with more than one
    /// value per channel; weight, bias and running statistics (where given) float32 CPU contiguous of length C.
    /// </summary>
    public static bool Takes(Tensor input, Tensor? runningMean, Tensor? runningVar, Tensor? weight, Tensor? bias)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!Enabled || input.ndim != 4 || input.device_type != DeviceType.CPU || input.dtype != ScalarType.Float32 || !input.is_contiguous())
        {
            return false;
        }

        long[] shape = TensorSizes.Of(input);
        long c = shape[1];
        // The pointers come from Tensor.bytes, a span of at most int.MaxValue bytes (OptimizerCpu.FloatData).
        if (c < 1 || shape[0] * shape[2] * shape[3] <= 1 || input.numel() > int.MaxValue / sizeof(float))
        {
            return false;
        }

        return Fits(runningMean, c) && Fits(runningVar, c) && Fits(weight, c) && Fits(bias, c);
    }

    private static bool Fits(Tensor? t, long c) =>
        t is null || (t.device_type == DeviceType.CPU && t.dtype == ScalarType.Float32 && t.is_contiguous() && t.ndim == 1 && t.size(0) == c);

    /// <summary>
    /// Normalizes <paramref name="input"/> (N, C, H, W) with its own per-channel mean and biased variance and updates the
    /// running statistics in place: running_mean ← (1 − momentum)·running_mean + momentum·mean, running_var ←
    /// (1 − momentum)·running_var + momentum·var·M/(M − 1), M = N·H·W (PyTorch's). Call only where <see cref="Takes"/>.
    /// </summary>
    /// <returns>(N, C, H, W), contiguous, with a gradient function when an input requires one.</returns>
    /// <param name="input">(N, C, H, W).</param>
    /// <param name="runningMean">Running mean (C), updated in place, or null.</param>
    /// <param name="runningVar">Running variance (C), updated in place, or null.</param>
    /// <param name="weight">Scale (C) or null.</param>
    /// <param name="bias">Shift (C) or null.</param>
    /// <param name="momentum">Weight of the batch's statistics in the running ones.</param>
    /// <param name="eps">Added to the variance.</param>
    /// <param name="relu">Return relu(batch_norm(x)) in one pass (a conv_bn_relu's ReLU, fused; NaN stays NaN as in
    /// <c>torch.relu</c>, and the gradient is <c>threshold_backward</c>'s: 0 where the output is ≤ 0, dy elsewhere).</param>
    /// <param name="part">
    /// This thread's part of a batch split over threads (<see cref="Runtime.BatchSplit"/>), or null: the statistics are then
    /// the whole batch's (every part's sums added, forward and backward), <paramref name="input"/> is the part's images, and
    /// the running statistics should be passed by one part only.
    /// </param>
    /// <param name="tag">With <paramref name="part"/>: the layer, the same object on every part.</param>
    /// <exception cref="Runtime.BatchSplitBrokenException">With <paramref name="part"/>: another part failed, or the parts disagreed on the layer.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="part"/> is given without <paramref name="tag"/>.</exception>
    public static Tensor Forward(Tensor input, Tensor? runningMean, Tensor? runningVar, Tensor? weight, Tensor? bias, double momentum, double eps, bool relu = false,
        Runtime.BatchSplit.Part? part = null, object? tag = null)
    {
        if (part is not null && tag is null)
        {
            throw new ArgumentNullException(nameof(tag), "a part of a split batch needs the layer's tag (the same object on every part)");
        }

        var options = new BatchNormFunction.Options(runningMean, runningVar, momentum, eps, weight is not null, bias is not null, relu, part, tag);
        return BatchNormFunction.apply(Runtime.AutogradArguments.Of(options, input, weight, bias));
    }

}

/// <summary>The autograd function behind <see cref="BatchNormTraining.Forward"/>.</summary>
internal sealed class BatchNormFunction : autograd.SingleTensorFunction<BatchNormFunction>
{
    /// <summary>The element pointer of a tensor <see cref="BatchNormTraining.Takes"/> admitted (or one made here); never null.</summary>
    private static unsafe float* Data(Tensor t)
    {
        float* p = OptimizerCpu.FloatData(t);
        return p is not null ? p : throw new InvalidOperationException($"batch norm: a {t.dtype} tensor of shape {TensorSizes.Text(t)} is not contiguous float32 on the CPU");
    }

    private static unsafe float* DataOrNull(Tensor? t) => t is null ? null : Data(t);

    private const string StateKey = "state";

    public override string Name => "ReplknetBatchNorm";

    /// <summary>What forward needs besides the tensors (TorchSharp passes it through).</summary>
    internal sealed record Options(Tensor? RunningMean, Tensor? RunningVar, double Momentum, double Eps, bool HasWeight, bool HasBias, bool Relu,
        Runtime.BatchSplit.Part? Part, object? Tag);

    private sealed record BackwardState(bool HasWeight, bool HasBias, bool Relu, long Count, Runtime.BatchSplit.Part? Part, object? Tag);

    public override unsafe Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var options = (Options)vars[0];
        var x = (Tensor)vars[1];
        int next = 2;
        var w = options.HasWeight ? (Tensor)vars[next++] : null;
        var b = options.HasBias ? (Tensor)vars[next] : null;
        using var noGrad = no_grad();
        long[] shape = TensorSizes.Of(x);
        int n = (int)shape[0], c = (int)shape[1];
        long hw = shape[2] * shape[3];
        var y = empty(shape, dtype: ScalarType.Float32);
        var mean = empty([c], dtype: ScalarType.Float32);
        var invstd = empty([c], dtype: ScalarType.Float32);
        var variance = new double[c];
        // With the ReLU fused: the per-channel α and β the output was computed with, for backward's mask.
        var alpha = options.Relu ? empty([c], dtype: ScalarType.Float32) : null;
        var beta = options.Relu ? empty([c], dtype: ScalarType.Float32) : null;
        long count = n * hw;
        fixed (double* pv = variance)
        {
            if (options.Part is { } part)
            {
                count = BatchNormCpu.ForwardPart(Data(x), Data(y), DataOrNull(w), DataOrNull(b), Data(mean), Data(invstd), pv, n, c, hw, options.Eps,
                    options.Relu, DataOrNull(alpha), DataOrNull(beta), part, options.Tag!);
            }
            else
            {
                BatchNormCpu.Forward(Data(x), Data(y), DataOrNull(w), DataOrNull(b), Data(mean), Data(invstd), pv, n, c, hw, options.Eps,
                    DepthwiseConv2d.ThreadCount, options.Relu, DataOrNull(alpha), DataOrNull(beta));
            }
        }

        // The running statistics, in float64 as F.batch_norm computes them (unbiased variance).
        double m = options.Momentum;
        if (options.RunningMean is { } runningMean)
        {
            float* rm = Data(runningMean);
            float* mu = Data(mean);
            for (int ch = 0; ch < c; ch++)
            {
                rm[ch] = (float)(((1 - m) * rm[ch]) + (m * mu[ch]));
            }
        }

        if (options.RunningVar is { } runningVar)
        {
            float* rv = Data(runningVar);
            double unbias = count / (count - 1.0);
            for (int ch = 0; ch < c; ch++)
            {
                rv[ch] = (float)(((1 - m) * rv[ch]) + (m * variance[ch] * unbias));
            }
        }

        var saved = new List<Tensor> { x };
        if (w is not null)
        {
            saved.Add(w);
        }

        saved.Add(mean);
        saved.Add(invstd);
        if (alpha is not null)
        {
            saved.Add(alpha);
            saved.Add(beta!);
        }

        ctx.save_for_backward(saved);
        ctx.save_data(StateKey, new BackwardState(w is not null, b is not null, options.Relu, count, options.Part, options.Tag));
        GC.KeepAlive(x);
        GC.KeepAlive(w);
        GC.KeepAlive(b);
        GC.KeepAlive(options);
        return y;
    }

    public override unsafe List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        // Lifetimes as in DepthwiseConvFunction.backward (docs/runtime.md, "Object lifetimes").
        using var scope = NewDisposeScope();
        var state = (BackwardState)ctx.get_data(StateKey);
        var saved = ctx.get_saved_variables();
        int next = 0;
        var x = saved[next++];
        var w = state.HasWeight ? saved[next++] : null;
        var mean = saved[next++];
        var invstd = saved[next++];
        var alpha = state.Relu ? saved[next++] : null;
        var beta = state.Relu ? saved[next] : null;
        using var noGrad = no_grad();
        var dy = grad.dtype == ScalarType.Float32 ? grad.contiguous() : grad.to(ScalarType.Float32).contiguous();
        long[] shape = TensorSizes.Of(x);
        int n = (int)shape[0], c = (int)shape[1];
        long hw = shape[2] * shape[3];
        var dx = x.requires_grad ? empty(shape, dtype: ScalarType.Float32) : null;
        var dw = w is not null && w.requires_grad ? empty([c], dtype: ScalarType.Float32) : null;
        var db = state.HasBias ? empty([c], dtype: ScalarType.Float32) : null;
        if (state.Part is { } part)
        {
            // Does not throw (an autograd callback): a broken split leaves this part's own sums, and the step fails after.
            BatchNormCpu.BackwardPart(Data(dy), Data(x), DataOrNull(w), Data(mean), Data(invstd), DataOrNull(dx), DataOrNull(dw), DataOrNull(db), n, c, hw,
                DataOrNull(alpha), DataOrNull(beta), state.Count, part, state.Tag!);
        }
        else
        {
            BatchNormCpu.Backward(Data(dy), Data(x), DataOrNull(w), Data(mean), Data(invstd), DataOrNull(dx), DataOrNull(dw), DataOrNull(db), n, c, hw,
                DepthwiseConv2d.ThreadCount, DataOrNull(alpha), DataOrNull(beta));
        }

        // One entry per forward argument: none for the options, then x, (weight), (bias).
        var result = new List<Tensor> { null!, dx! };
        if (state.HasWeight)
        {
            result.Add(dw!);
        }

        if (state.HasBias)
        {
            result.Add(db!);
        }

        Runtime.BackwardOutputs.HandBack(result);
        GC.KeepAlive(grad);
        GC.KeepAlive(dy);
        return result;
    }
}
