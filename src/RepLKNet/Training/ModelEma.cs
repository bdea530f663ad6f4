using RepLKNet.Checkpoints;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>
/// Exponential moving average of a model's weights (timm's <c>ModelEma</c>, as the official recipe uses with decay 0.9999):
/// after every optimizer step, ema = decay·ema + (1 − decay)·current for floating-point entries; integer buffers
/// (<c>num_batches_tracked</c>) are copied. The average lives in a second model of the same topology.
/// </summary>
public sealed class ModelEma
{
    private readonly Module _average;

    /// <summary>Starts the average at <paramref name="model"/>'s current weights, kept in <paramref name="average"/>.</summary>
    public ModelEma(Module model, Module average, double decay)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(average);
        if (decay is < 0 or > 1 || double.IsNaN(decay))
        {
            throw new ArgumentOutOfRangeException(nameof(decay), decay, "EMA decay must be in [0, 1]");
        }

        _average = average;
        Decay = decay;
        _average.eval();
        using var noGrad = no_grad();
        var source = StateDicts.Ordered(model).ToDictionary();
        foreach (var (key, tensor) in StateDicts.Ordered(_average))
        {
            tensor.copy_(source[key]);
        }

        foreach (var parameter in _average.parameters())
        {
            parameter.requires_grad_(false);
        }
    }

    /// <summary>The decay.</summary>
    public double Decay { get; }

    /// <summary>The averaged model (eval mode).</summary>
    public Module Average => _average;

    /// <summary>Folds <paramref name="model"/>'s current weights into the average.</summary>
    public void Update(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var noGrad = no_grad();
        var current = StateDicts.Ordered(model).ToDictionary();
        foreach (var (key, tensor) in StateDicts.Ordered(_average))
        {
            var value = current[key];
            if (tensor.is_floating_point())
            {
                tensor.mul_(Decay).add_(value.detach(), alpha: 1 - Decay);
            }
            else
            {
                tensor.copy_(value);
            }
        }
    }
}
