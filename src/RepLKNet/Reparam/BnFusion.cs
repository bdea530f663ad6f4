using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Reparam;

/// <summary>Folding an inference-mode BatchNorm into the convolution before it (the official <c>fuse_bn</c>).</summary>
public static class BnFusion
{
    /// <summary>
    /// Returns (kernel·t, β − μ·t) with t = γ / sqrt(σ² + ε) per output channel: the weight and bias of one biased conv
    /// equal to <c>bn(conv(x))</c> in eval mode. The conv is assumed to have no bias (as every conv_bn conv).
    /// </summary>
    /// <param name="kernel">Conv weight (C_out, C_in/groups, k, k).</param>
    /// <param name="gamma">BN weight γ (C_out).</param>
    /// <param name="beta">BN bias β (C_out).</param>
    /// <param name="mean">BN running mean μ (C_out).</param>
    /// <param name="variance">BN running variance σ² (C_out).</param>
    /// <param name="eps">BN ε.</param>
    /// <returns>New tensors in <paramref name="kernel"/>'s dtype and device: the kernel (its shape) and the bias (C_out).</returns>
    public static (Tensor Kernel, Tensor Bias) Fuse(Tensor kernel, Tensor gamma, Tensor beta, Tensor mean, Tensor variance, double eps)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(gamma);
        ArgumentNullException.ThrowIfNull(beta);
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(variance);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        // Compute in float64 so the fused values are the exactly-rounded float32 of the true product.
        var (t, shift) = ScaleShift(gamma, beta, mean, variance, eps);
        var fusedKernel = (kernel.to(float64) * t.reshape(-1, 1, 1, 1)).to(kernel.dtype);
        var fusedBias = shift.to(kernel.dtype);
        return (fusedKernel.MoveToOuterDisposeScope(), fusedBias.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// An inference-mode BatchNorm as the affine map BN(x) = s⊙x + t, in float64: s = γ / sqrt(σ² + ε), t = β − μ·s
    /// (γ = 1 and β = 0 for a BatchNorm without them).
    /// </summary>
    /// <param name="gamma">BN weight γ (C), or null.</param>
    /// <param name="beta">BN bias β (C), or null.</param>
    /// <param name="mean">Running mean μ (C).</param>
    /// <param name="variance">Running variance σ² (C).</param>
    /// <param name="eps">BN ε.</param>
    /// <returns>New float64 tensors s and t (C) on the statistics' device.</returns>
    public static (Tensor Scale, Tensor Shift) ScaleShift(Tensor? gamma, Tensor? beta, Tensor mean, Tensor variance, double eps)
    {
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(variance);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var root = Scalars.Add(variance.to(float64), eps).sqrt();
        var scale = gamma is null ? root.reciprocal() : gamma.to(float64) / root;
        var shift = beta is null ? -(mean.to(float64) * scale) : beta.to(float64) - mean.to(float64) * scale;
        return (scale.MoveToOuterDisposeScope(), shift.MoveToOuterDisposeScope());
    }
}
