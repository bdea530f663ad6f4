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

    /// <summary>
    /// mmcv's <c>DefaultOptimizerConstructor</c> with <c>paramwise_cfg=dict(norm_decay_mult=0)</c> (the official MMSeg
    /// configs of RepLKNet): the weight and bias of every normalization layer (batch, instance, group and layer norm) get
    /// no weight decay; every other parameter, conv biases included, decays. Returns the rule for
    /// <paramref name="model"/>'s parameter names (<see cref="TrainingLoopOptions.NoWeightDecay"/>).
    /// </summary>
    public static Func<string, Parameter, bool> NormLayers(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (prefix, module) in model.named_modules())
        {
            if (module is TorchSharp.Modules.NormBase or TorchSharp.Modules.GroupNorm or TorchSharp.Modules.LayerNorm)
            {
                foreach (var (name, _) in module.named_parameters(recurse: false))
                {
                    names.Add(prefix.Length == 0 ? name : $"{prefix}.{name}");
                }
            }
        }

        return (name, _) => names.Contains(name);
    }

    /// <summary>Splits the trainable parameters of <paramref name="model"/> into (decay, no-decay) lists, names kept.</summary>
    /// <param name="model">The model.</param>
    /// <param name="noDecay">The rule (<see cref="NormLayers"/>); null: <see cref="IsNoDecay"/>.</param>
    public static (List<(string Name, Parameter Parameter)> Decay, List<(string Name, Parameter Parameter)> NoDecay) Split(Module model,
        Func<string, Parameter, bool>? noDecay = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        noDecay ??= IsNoDecay;
        var decay = new List<(string, Parameter)>();
        var noDecayList = new List<(string, Parameter)>();
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            (noDecay(name, parameter) ? noDecayList : decay).Add((name, parameter));
        }

        return (decay, noDecayList);
    }
}

/// <summary>
/// Layer-wise learning-rate decay for fine-tuning (the official <c>optim_factory</c>): parameters get a layer id and their
/// learning rate is scaled by decay^(layers − 1 − id). For four stages the official mapping: 0 stem; 1 stage 0 and
/// transition 0; 2 stage 1 and transition 1; stage 2's blocks in groups of four modules (two RepLK + two FFN blocks) from 3;
/// transition 2 with stage 2's last group; then stage 3; then the rest (norm, head). The official code hard-codes 14 ids
/// for [2, 2, 18, 2]; this follows the same rule for any stage-2 depth. Other stage counts get one id per stage.
/// </summary>
public static class LayerDecay
{
    /// <summary>Number of layer ids for <paramref name="layers"/> (blocks per stage).</summary>
    public static int LayerCount(IReadOnlyList<int> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        return layers.Count == 4 ? 5 + StageTwoGroups(layers) : layers.Count + 2;
    }

    /// <summary>The layer id of parameter <paramref name="name"/>.</summary>
    public static int LayerId(string name, IReadOnlyList<int> layers)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(layers);
        var parts = name.Split('.');
        int count = LayerCount(layers);
        if (parts[0] == "stem")
        {
            return 0;
        }

        if (parts[0] is "stages" or "transitions" && parts.Length > 1 && int.TryParse(parts[1], out int stage))
        {
            if (layers.Count != 4)
            {
                return stage + 1;
            }

            int groups = StageTwoGroups(layers);
            return (parts[0], stage) switch
            {
                (_, 0) => 1,
                (_, 1) => 2,
                ("stages", 2) when parts.Length > 3 && parts[2] == "blocks" && int.TryParse(parts[3], out int block) => 3 + block / 4,
                (_, 2) => 3 + groups - 1,
                _ => 3 + groups,
            };
        }

        return count - 1;
    }

    /// <summary>The learning-rate scale of parameter <paramref name="name"/>.</summary>
    public static double Scale(string name, IReadOnlyList<int> layers, double decay) =>
        Math.Pow(decay, LayerCount(layers) - 1 - LayerId(name, layers));

    private static int StageTwoGroups(IReadOnlyList<int> layers) => (2 * layers[2] - 1) / 4 + 1;
}
