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
        var t = gamma.to(float64) / Scalars.Add(variance.to(float64), eps).sqrt();
        var fusedKernel = (kernel.to(float64) * t.reshape(-1, 1, 1, 1)).to(kernel.dtype);
        var fusedBias = (beta.to(float64) - mean.to(float64) * t).to(kernel.dtype);
        return (fusedKernel.MoveToOuterDisposeScope(), fusedBias.MoveToOuterDisposeScope());
    }
}
