using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>The error measure every self-check and correctness sweep reports.</summary>
internal static class TensorErrors
{
    /// <summary>
    /// max |actual − reference| / max |reference|, computed in float64 on the CPU (any device, any float dtype);
    /// +∞ when the difference is NaN, so that NaN outputs always fail a tolerance.
    /// </summary>
    public static double Relative(Tensor actual, Tensor reference)
    {
        using var scope = NewDisposeScope();
        var r = reference.detach().to(float64).cpu();
        var a = actual.detach().to(float64).cpu();
        double scale = Math.Max(r.abs().max().item<double>(), 1e-30);
        double error = (a - r).abs().max().item<double>();
        return double.IsNaN(error) ? double.PositiveInfinity : error / scale;
    }
}
