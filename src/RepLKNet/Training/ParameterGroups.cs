using TorchSharp.Modules;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>The official optimizer grouping: parameters that are 1-D or named <c>*.bias</c> get no weight decay.</summary>
public static class ParameterGroups
{
    /// <summary>Whether the official recipe exempts this parameter from weight decay (BN γ/β, every bias).</summary>
    public static bool IsNoDecay(string name, Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(parameter);
        return parameter.dim() == 1 || name.EndsWith(".bias", StringComparison.Ordinal);
    }

    /// <summary>Splits the trainable parameters of <paramref name="model"/> into (decay, no-decay) lists, names kept.</summary>
    public static (List<(string Name, Parameter Parameter)> Decay, List<(string Name, Parameter Parameter)> NoDecay) Split(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var decay = new List<(string, Parameter)>();
        var noDecay = new List<(string, Parameter)>();
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            (IsNoDecay(name, parameter) ? noDecay : decay).Add((name, parameter));
        }

        return (decay, noDecay);
    }
}
