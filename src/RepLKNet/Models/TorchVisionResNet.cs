using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using RepLKNet.Runtime;

namespace RepLKNet.Models;

/// <summary>
/// TorchVision's ResNet-18/50/101 (TorchSharp's <c>torchvision.models</c>) with the children registered directly, so the state
/// dict keys are torchvision's (<c>conv1.weight</c>, <c>layer4.1.bn2.running_var</c>, <c>fc.bias</c>) and torchvision-format
/// weights load as they are. <see cref="forward_features"/> is the output of <c>layer4</c> (the ERF's last-stage map). A
/// one-channel input is repeated to three channels (grey images through an RGB stem).
/// </summary>
public sealed class TorchVisionResNet : Module<Tensor, Tensor>, IImageModel
{
    private static readonly string[] FeatureChildren = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"];
    private readonly Dictionary<string, Module<Tensor, Tensor>> _children = [];

    /// <summary>Creates <paramref name="depth"/> (18, 50 or 101) with <paramref name="numClasses"/> outputs, randomly initialized as torchvision does.</summary>
    /// <param name="depth">18, 50 or 101.</param>
    /// <param name="numClasses">Outputs of <c>fc</c> (≥ 1).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> is 0 or negative.</exception>
    /// <exception cref="ConfigException">The depth is not 18, 50 or 101.</exception>
    public TorchVisionResNet(int depth, int numClasses = 1000, Device? device = null)
        : base($"ResNet{depth}")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numClasses);
        // torchvision.models.resnet (v1.5: stride on the 3×3 conv of a bottleneck), built here rather than taken from
        // TorchSharp's TorchVision package, whose blocks add the shortcut with add_(Tensor) — a temporary Scalar the GC can
        // free while libtorch reads it (Runtime/Scalars.cs) — and use TorchSharp's BatchNorm2d, which does the same.
        int[] blocks = depth switch
        {
            18 => [2, 2, 2, 2],
            50 => [3, 4, 6, 3],
            101 => [3, 4, 23, 3],
            _ => throw new ConfigException($"ResNet-{depth} is not available: use 18, 50 or 101"),
        };
        bool bottleneck = depth >= 50;
        int expansion = bottleneck ? 4 : 1;
        var children = new List<(string Name, Module<Tensor, Tensor> Module)>
        {
            ("conv1", Conv2d(3, 64, 7, stride: 2, padding: 3, bias: false, device: device)),
            ("bn1", new BatchNorm2d(64, device: device)),
            ("relu", ReLU(inplace: true)),
            ("maxpool", MaxPool2d(3, stride: 2, padding: 1)),
        };
        int inPlanes = 64;
        for (int layer = 0; layer < 4; layer++)
        {
            int planes = 64 << layer, stride = layer == 0 ? 1 : 2;
            var stage = Sequential();
            for (int b = 0; b < blocks[layer]; b++)
            {
                var downsample = b == 0 && (stride != 1 || inPlanes != planes * expansion)
                    ? Sequential(Conv2d(inPlanes, planes * expansion, 1, stride: stride, bias: false, device: device), new BatchNorm2d(planes * expansion, device: device))
                    : null;
                stage.append(bottleneck
                    ? new ResNetBottleneck(inPlanes, planes, b == 0 ? stride : 1, downsample, device)
                    : new ResNetBasicBlock(inPlanes, planes, b == 0 ? stride : 1, downsample, device));
                inPlanes = planes * expansion;
            }

            children.Add(($"layer{layer + 1}", stage));
        }

        children.Add(("avgpool", AdaptiveAvgPool2d(1)));
        children.Add(("fc", Linear(512 * expansion, numClasses, device: device)));
        foreach (var (name, child) in children)
        {
            _children[name] = child;
            register_module(name, child);
        }

        // torchvision's initialization: Kaiming normal (fan out, ReLU) for convs; BN weight 1 and bias 0 and Linear's default
        // are what the layers start with already.
        using (no_grad())
        {
            foreach (var conv in modules().OfType<TorchSharp.Modules.Conv2d>())
            {
                init.kaiming_normal_(conv.weight, mode: init.FanInOut.FanOut, nonlinearity: init.NonlinearityType.ReLU);
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
        NumFeatures = 512 * expansion;
        FeatureInfo = [.. Enumerable.Range(0, 4).Select(i => new FeatureInfo(i, (64 << i) * expansion, 4 << i, $"layer{i + 1}"))];
    }

    /// <summary>18, 50 or 101.</summary>
    public int Depth { get; }

    /// <summary>Classes.</summary>
    public int NumClasses { get; }

    /// <inheritdoc />
    public string Name => $"ResNet-{Depth}";

    /// <inheritdoc />
    public ModelFamily Family => ModelFamily.ResNet;

    /// <summary>3 (RGB); a one-channel input is also accepted and repeated to three channels.</summary>
    public int InChannels => 3;

    /// <inheritdoc />
    int? IImageModel.NumClasses => NumClasses;

    /// <summary>Channels of <c>layer4</c>: 512 (ResNet-18) or 2048 (ResNet-50/101).</summary>
    public int NumFeatures { get; }

    /// <summary><c>layer1</c> … <c>layer4</c>: stride 4, 8, 16, 32.</summary>
    public IReadOnlyList<FeatureInfo> FeatureInfo { get; }

    /// <inheritdoc />
    Module<Tensor, Tensor> IImageModel.AsModule() => this;

    /// <summary>The names this class accepts: resnet18, resnet50, resnet101 (also "ResNet-50"); the depth or null.</summary>
    /// <param name="name">A model name; case, '-' and '_' are ignored.</param>
    /// <returns>18, 50 or 101; null when <paramref name="name"/> is not a ResNet this class builds.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
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

    /// <summary>conv1 → bn1 → relu → maxpool → layer1 … layer4 (torchvision's <c>ResNet._forward_impl</c> up to <c>layer4</c>).</summary>
    /// <param name="input">Images [N, 3, H, W] or [N, 1, H, W] (repeated to three channels); H and W in pixels.</param>
    /// <returns>[N, <see cref="NumFeatures"/>, ⌈H/32⌉, ⌈W/32⌉] (512 channels for ResNet-18, 2048 for ResNet-50/101).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    public Tensor forward_features(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        using var scope = NewDisposeScope();
        var x = input.size(1) == 1 ? input.expand(-1, 3, -1, -1) : input;
        foreach (var name in FeatureChildren)
        {
            x = _children[name].call(x);
        }

        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Global average pool → <c>fc</c>: logits (N, classes); with <paramref name="preLogits"/> the pooled (N, 512 or 2048).</summary>
    /// <param name="features">[N, <see cref="NumFeatures"/>, h, w] (<see cref="forward_features"/>'s output).</param>
    /// <param name="preLogits">Return the pooled features instead of the logits.</param>
    /// <returns>Logits [N, <see cref="NumClasses"/>], or with <paramref name="preLogits"/> [N, <see cref="NumFeatures"/>].</returns>
    /// <exception cref="ArgumentNullException"><paramref name="features"/> is null.</exception>
    public Tensor forward_head(Tensor features, bool preLogits = false)
    {
        ArgumentNullException.ThrowIfNull(features);
        using var scope = NewDisposeScope();
        var x = features.mean([2, 3]);
        return (preLogits ? x : _children["fc"].call(x)).MoveToOuterDisposeScope();
    }

    /// <summary><see cref="forward_features"/> then <see cref="forward_head"/>.</summary>
    /// <param name="input">Images [N, 3, H, W] or [N, 1, H, W]; H and W in pixels.</param>
    /// <returns>Logits [N, <see cref="NumClasses"/>].</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> is null.</exception>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        return forward_head(forward_features(input)).MoveToOuterDisposeScope();
    }

    /// <summary>ResNet has no re-parameterizable modules (and no conv_bn layers to fuse): returns 0, the model unchanged.</summary>
    public int Reparameterize(bool fuseBn = false) => 0;

    /// <inheritdoc />
    public ModelDescription Describe() => ModelDescription.Of(this);
}

/// <summary>torchvision's <c>BasicBlock</c>: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); keys conv1, bn1, conv2, bn2, downsample.</summary>
internal sealed class ResNetBasicBlock : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> conv1, bn1, relu, conv2, bn2;
    private readonly Module<Tensor, Tensor>? downsample;

    public ResNetBasicBlock(int inPlanes, int planes, int stride, Module<Tensor, Tensor>? downsample, Device? device)
        : base("BasicBlock")
    {
        conv1 = Conv2d(inPlanes, planes, 3, stride: stride, padding: 1, bias: false, device: device);
        bn1 = new BatchNorm2d(planes, device: device);
        relu = ReLU(inplace: true);
        conv2 = Conv2d(planes, planes, 3, padding: 1, bias: false, device: device);
        bn2 = new BatchNorm2d(planes, device: device);
        this.downsample = downsample;
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var y = bn2.call(conv2.call(relu.call(bn1.call(conv1.call(input)))));
        return Scalars.AddInPlace(y, downsample?.call(input) ?? input).relu_().MoveToOuterDisposeScope();
    }
}

/// <summary>torchvision's <c>Bottleneck</c> (v1.5): 1×1 → 3×3 (stride) → 1×1 (4× planes) with BNs, + shortcut, ReLU.</summary>
internal sealed class ResNetBottleneck : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> conv1, bn1, conv2, bn2, conv3, bn3, relu;
    private readonly Module<Tensor, Tensor>? downsample;

    public ResNetBottleneck(int inPlanes, int planes, int stride, Module<Tensor, Tensor>? downsample, Device? device)
        : base("Bottleneck")
    {
        conv1 = Conv2d(inPlanes, planes, 1, bias: false, device: device);
        bn1 = new BatchNorm2d(planes, device: device);
        conv2 = Conv2d(planes, planes, 3, stride: stride, padding: 1, bias: false, device: device);
        bn2 = new BatchNorm2d(planes, device: device);
        conv3 = Conv2d(planes, planes * 4, 1, bias: false, device: device);
        bn3 = new BatchNorm2d(planes * 4, device: device);
        relu = ReLU(inplace: true);
        this.downsample = downsample;
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var y = relu.call(bn1.call(conv1.call(input)));
        y = relu.call(bn2.call(conv2.call(y)));
        y = bn3.call(conv3.call(y));
        return Scalars.AddInPlace(y, downsample?.call(input) ?? input).relu_().MoveToOuterDisposeScope();
    }
}
