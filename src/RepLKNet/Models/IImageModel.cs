using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Models;

/// <summary>The model families <see cref="ModelFactory"/> builds.</summary>
public enum ModelFamily
{
    /// <summary>RepLKNet (<see cref="RepLKNetModel"/>): the registered variants and JSON configurations.</summary>
    RepLKNet,

    /// <summary>TorchVision's ResNet-18/50/101 (<see cref="TorchVisionResNet"/>).</summary>
    ResNet,

    /// <summary>MobileNetV2 with the kernel-size knobs of the paper's guidelines (<see cref="MobileNetV2"/>).</summary>
    MobileNetV2,
}

/// <summary>Channels and total stride of one stage's output (timm's <c>feature_info</c>).</summary>
/// <param name="Stage">Stage index.</param>
/// <param name="Channels">Output channels.</param>
/// <param name="Reduction">Total stride relative to the input, in input pixels per feature-map pixel (e.g. 4, 8, 16, 32).</param>
/// <param name="Module">Name of the module that produces it (a state-dict key prefix).</param>
public sealed record FeatureInfo(int Stage, int Channels, int Reduction, string Module);

/// <summary>One state-dict entry of a model.</summary>
/// <param name="Key">The key, PyTorch's (e.g. <c>stages.0.blocks.0.pw1.conv.weight</c>).</param>
/// <param name="Shape">The tensor's shape.</param>
/// <param name="DType">The tensor's element type.</param>
public sealed record StateDictEntry(string Key, IReadOnlyList<long> Shape, ScalarType DType)
{
    /// <summary>PyTorch's name of <see cref="DType"/> (float32, int64, float64, float16, bfloat16, …).</summary>
    public string DTypeName => DType switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.Int64 => "int64",
        ScalarType.Float64 => "float64",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        _ => DType.ToString().ToLowerInvariant(),
    };
}

/// <summary>What <see cref="IImageModel.Describe"/> reports: the model's identity, sizes and state dict.</summary>
/// <param name="Name">Architecture name (e.g. RepLKNet-31B, ResNet-50, MobileNetV2).</param>
/// <param name="Family">The family.</param>
/// <param name="InChannels">Input channels.</param>
/// <param name="NumClasses">Classifier outputs, or null for a backbone.</param>
/// <param name="NumFeatures">Channels of <see cref="IImageModel.forward_features"/>'s output.</param>
/// <param name="Parameters">Number of parameter elements (buffers not counted).</param>
/// <param name="Features">Channels and stride per stage.</param>
/// <param name="StateDict">Every state-dict entry in PyTorch's order (parameters and persistent buffers).</param>
public sealed record ModelDescription(
    string Name,
    ModelFamily Family,
    int InChannels,
    int? NumClasses,
    int NumFeatures,
    long Parameters,
    IReadOnlyList<FeatureInfo> Features,
    IReadOnlyList<StateDictEntry> StateDict)
{
    /// <summary>Describes <paramref name="model"/> (works on the meta device: only shapes are read).</summary>
    internal static ModelDescription Of(IImageModel model)
    {
        var module = model.AsModule();
        var entries = StateDictOrder.Ordered(module).Select(kv => new StateDictEntry(kv.Key, TensorSizes.Of(kv.Value), kv.Value.dtype)).ToList();
        return new ModelDescription(model.Name, model.Family, model.InChannels, model.NumClasses, model.NumFeatures,
            module.parameters().Sum(p => p.numel()), model.FeatureInfo, entries);
    }
}

/// <summary>
/// The surface every image model of the library shares (timm's): the last-stage features, the classifier head on them,
/// the stages' channels and strides, in-place re-parameterization and a description. <see cref="ModelFactory"/> builds
/// any family by name and returns this interface.
/// </summary>
public interface IImageModel : IDisposable
{
    /// <summary>Architecture name (e.g. RepLKNet-31B, ResNet-50, MobileNetV2).</summary>
    string Name { get; }

    /// <summary>The family.</summary>
    ModelFamily Family { get; }

    /// <summary>Input channels C_in.</summary>
    int InChannels { get; }

    /// <summary>Classifier outputs, or null for a backbone (no head).</summary>
    int? NumClasses { get; }

    /// <summary>Channels of <see cref="forward_features"/>'s output (timm's <c>num_features</c>).</summary>
    int NumFeatures { get; }

    /// <summary>Channels and total stride of every stage's output, in order.</summary>
    IReadOnlyList<FeatureInfo> FeatureInfo { get; }

    /// <summary>The model itself (this object) as a TorchSharp module: to call (logits (N, classes)), move, train or save it.</summary>
    Module<Tensor, Tensor> AsModule();

    /// <summary>
    /// The last-stage feature map (N, <see cref="NumFeatures"/>, H/s, W/s) of an input (N, C_in, H, W), before pooling and
    /// before any final norm of the head.
    /// </summary>
    /// <param name="input">Images [N, <see cref="InChannels"/>, H, W] (H and W in pixels), normalized as the model was trained.</param>
    /// <returns>[N, <see cref="NumFeatures"/>, ⌈H/s⌉, ⌈W/s⌉] with s the last entry's <see cref="FeatureInfo.Reduction"/> (32 for the ImageNet layouts).</returns>
    Tensor forward_features(Tensor input);

    /// <summary>
    /// The head on <see cref="forward_features"/>'s output: global average pool (after the family's final norm, if any) then
    /// the classifier, giving logits (N, <see cref="NumClasses"/>); with <paramref name="preLogits"/> the pooled features
    /// (N, <see cref="NumFeatures"/>) instead.
    /// </summary>
    /// <param name="features">[N, <see cref="NumFeatures"/>, h, w], <see cref="forward_features"/>'s output.</param>
    /// <param name="preLogits">Return the pooled features instead of the logits.</param>
    /// <returns>Logits [N, <see cref="NumClasses"/>] (unnormalized scores), or [N, <see cref="NumFeatures"/>] with <paramref name="preLogits"/>.</returns>
    /// <exception cref="InvalidOperationException">The model is a backbone (<see cref="NumClasses"/> is null).</exception>
    Tensor forward_head(Tensor features, bool preLogits = false);

    /// <summary>
    /// Switches every re-parameterizable module to its deploy form in place, keeping eval-mode outputs (with
    /// <paramref name="fuseBn"/> also folding every conv+BN pair of the family's conv_bn layers); returns how many modules
    /// were switched. A family without re-parameterization returns 0 and is left as it is.
    /// </summary>
    /// <param name="fuseBn">Also fold the BatchNorms into the preceding convolutions.</param>
    /// <returns>Modules switched (0 for a family without re-parameterization).</returns>
    int Reparameterize(bool fuseBn = false);

    /// <summary>The model's name, family, sizes, parameter count and state dict (keys, shapes, dtypes) in PyTorch's order.</summary>
    ModelDescription Describe();
}
