using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Models;

/// <summary>
/// TorchVision's ResNet-18/50/101 (TorchSharp's <c>torchvision.models</c>) with the children registered directly, so the state
/// dict keys are torchvision's (<c>conv1.weight</c>, <c>layer4.1.bn2.running_var</c>, <c>fc.bias</c>) and torchvision-format
/// weights load as they are. <see cref="forward_features"/> is the output of <c>layer4</c> (the ERF's last-stage map). A
/// one-channel input is repeated to three channels (grey images through an RGB stem).
/// </summary>
public sealed class TorchVisionResNet : Module<Tensor, Tensor>, IFeatureModel
{
    private static readonly string[] FeatureChildren = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"];
    private readonly Dictionary<string, Module<Tensor, Tensor>> _children = [];

    /// <summary>Creates <paramref name="depth"/> (18, 50 or 101) with <paramref name="numClasses"/> outputs, randomly initialized as torchvision does.</summary>
    /// <exception cref="ConfigException">The depth is not 18, 50 or 101.</exception>
    public TorchVisionResNet(int depth, int numClasses = 1000, Device? device = null)
        : base($"ResNet{depth}")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numClasses);
        Module<Tensor, Tensor> net = depth switch
        {
            18 => torchvision.models.resnet18(numClasses, device: device),
            50 => torchvision.models.resnet50(numClasses, device: device),
            101 => torchvision.models.resnet101(numClasses, device: device),
            _ => throw new ConfigException($"ResNet-{depth} is not available: use 18, 50 or 101"),
        };
        foreach (var (name, child) in net.named_children())
        {
            if (child is Module<Tensor, Tensor> typed)
            {
                _children[name] = typed;
                register_module(name, child);
            }
        }

        foreach (var name in FeatureChildren.Append("fc"))
        {
            if (!_children.ContainsKey(name))
            {
                throw new InvalidOperationException($"TorchVision's ResNet has no child '{name}'");
            }
        }

        Depth = depth;
        NumClasses = numClasses;
    }

    /// <summary>18, 50 or 101.</summary>
    public int Depth { get; }

    /// <summary>Classes.</summary>
    public int NumClasses { get; }

    /// <summary>The names this class accepts: resnet18, resnet50, resnet101 (also "ResNet-50"); the depth or null.</summary>
    public static int? ParseName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.ToLowerInvariant().Replace("-", "", StringComparison.Ordinal).Replace("_", "", StringComparison.Ordinal) switch
        {
            "resnet18" => 18,
            "resnet50" => 50,
            "resnet101" => 101,
            _ => null,
        };
    }

    /// <summary>conv1 → bn1 → relu → maxpool → layer1 … layer4: (N, 512 or 2048, H/32, W/32).</summary>
    public Tensor forward_features(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        using var scope = NewDisposeScope();
        var x = input.shape[1] == 1 ? input.expand(-1, 3, -1, -1) : input;
        foreach (var name in FeatureChildren)
        {
            x = _children[name].call(x);
        }

        return x.MoveToOuterDisposeScope();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = forward_features(input).mean([2, 3]);
        return _children["fc"].call(x).MoveToOuterDisposeScope();
    }
}
