using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Layers;

/// <summary>
/// Stochastic depth (timm's <c>DropPath</c>): in training, each sample's residual branch is zeroed with probability
/// <see cref="Probability"/> and kept samples are scaled by 1/(1−p); in eval it is the identity. No parameters.
/// </summary>
public sealed class DropPath : Module<Tensor, Tensor>
{
    /// <summary>Creates the module for drop probability <paramref name="probability"/> in [0, 1).</summary>
    /// <param name="probability">Chance in [0, 1) that a sample's branch is dropped.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="probability"/> is NaN or outside [0, 1) (<see cref="ArgumentException.ParamName"/> is <c>probability</c>).</exception>
    public DropPath(double probability)
        : base(nameof(DropPath))
    {
        if (probability is < 0 or >= 1 || double.IsNaN(probability))
        {
            throw new ArgumentOutOfRangeException(nameof(probability), probability, "drop path probability must be in [0, 1)");
        }

        Probability = probability;
    }

    /// <summary>The drop probability.</summary>
    public double Probability { get; }

    /// <summary>The official factory: Identity for p = 0, else DropPath(p).</summary>
    /// <param name="probability">Drop probability; ≤ 0 gives Identity, otherwise it must be below 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="probability"/> is positive and not below 1, or NaN.</exception>
    public static Module<Tensor, Tensor> OrIdentity(double probability) =>
        probability > 0 ? new DropPath(probability) : Identity();

    /// <summary>Applies stochastic depth.</summary>
    /// <param name="input">A residual branch [N, …] (e.g. [N, C, H, W]); one keep/drop draw per sample along dimension 0.</param>
    /// <returns>The same shape: in training each sample is zeroed or scaled by 1/(1 − p); in eval an alias of <paramref name="input"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!training || Probability == 0)
        {
            return input.alias();
        }

        double keep = 1 - Probability;
        long[] shape = [input.size(0), .. Enumerable.Repeat(1L, (int)input.dim() - 1)];
        using var mask = Scalars.DivInPlace(empty(shape, dtype: input.dtype, device: input.device).bernoulli_(keep), keep);
        return input * mask;
    }
}
