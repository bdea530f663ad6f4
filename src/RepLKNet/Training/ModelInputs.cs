using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>The dtype a model's inputs take: its first floating-point parameter's (float32 unless trained in float64).</summary>
public static class ModelInputs
{
    /// <summary>
    /// The floating-point dtype of <paramref name="model"/>'s parameters (<see cref="ScalarType.Float32"/> when it has none):
    /// batches, made in float32 by the loaders, are cast to it (<c>model.double()</c> in PyTorch needs the same of its inputs).
    /// </summary>
    public static ScalarType FloatType(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        foreach (var (_, p) in model.named_parameters())
        {
            if (p.is_floating_point())
            {
                return p.dtype;
            }
        }

        return ScalarType.Float32;
    }
}
