using TorchSharp.Modules;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using RepLKNet.Runtime;

namespace RepLKNet.Reparam;

/// <summary>Folding an inference-mode BatchNorm into the convolution before it (the official <c>fuse_bn</c>).</summary>
public static class BnFusion
{
    /// <summary>
    /// Returns (kernel·t, β − μ·t) with t = γ / sqrt(σ² + ε) per output channel: the weight and bias of one biased conv
    /// equal to <c>bn(conv(x))</c> in eval mode. The conv is assumed to have no bias (as every conv_bn conv).
    /// </summary>
    public static (Tensor Kernel, Tensor Bias) Fuse(Tensor kernel, BatchNorm2d bn)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(bn);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var gamma = bn.weight!;
        var beta = bn.bias!;
        var mean = bn.running_mean!;
        var variance = bn.running_var!;
        // Compute in float64 so the fused values are the exactly-rounded float32 of the true product.
        var t = gamma.to(float64) / Scalars.Add(variance.to(float64), bn.eps).sqrt();
        var fusedKernel = (kernel.to(float64) * t.reshape(-1, 1, 1, 1)).to(kernel.dtype);
        var fusedBias = (beta.to(float64) - mean.to(float64) * t).to(kernel.dtype);
        return (fusedKernel.MoveToOuterDisposeScope(), fusedBias.MoveToOuterDisposeScope());
    }
}
