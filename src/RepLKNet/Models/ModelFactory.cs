using static TorchSharp.torch;

namespace RepLKNet.Models;

/// <summary>
/// How to fit an architecture to a dataset (or a use): each value that is set replaces the architecture's own; null keeps it.
/// </summary>
/// <param name="NumClasses">Classifier outputs (a RepLKNet backbone configuration becomes a classifier).</param>
/// <param name="InChannels">Input channels (1 for grey images, 3 for RGB). ResNet keeps its RGB stem and accepts 1 or 3.</param>
/// <param name="DropPathRate">Stochastic-depth rate of the last block, in [0, 1) (RepLKNet; other families have none and ignore it).</param>
public sealed record ModelFit(int? NumClasses = null, int? InChannels = null, double? DropPathRate = null)
{
    /// <summary>
    /// The images are small (28–64 pixels: Fashion-MNIST, CIFAR-10): a family with a small-image layout takes it (MobileNetV2:
    /// <see cref="MobileNetV2Config.SmallImages"/>, overall stride 4 and width 0.5, instead of the ImageNet layout). RepLKNet
    /// (sized by its variant) and ResNet (torchvision's layout) ignore it.
    /// </summary>
    public bool SmallImages { get; init; }
}

/// <summary>
/// Builds any model of the library by name (timm's <c>create_model</c>): a RepLKNet variant (<see cref="ModelRegistry"/>) or
/// JSON configuration file, <c>resnet18</c>/<c>resnet50</c>/<c>resnet101</c> (<see cref="TorchVisionResNet"/>), or
/// <c>mobilenetv2</c>/<c>mobilenetv2-kN</c> (<see cref="MobileNetV2"/>, kernel N in every stage); and fits an
/// architecture to a dataset in one place (<see cref="ModelFit"/>).
/// </summary>
public static class ModelFactory
{
    /// <summary>The names <see cref="Create"/> accepts besides a JSON configuration path (N: an odd kernel size).</summary>
    public static IReadOnlyList<string> Names { get; } =
        [.. ModelRegistry.Variants.Select(v => v.Name), "resnet18", "resnet50", "resnet101", "mobilenetv2", "mobilenetv2-kN"];

    /// <summary>
    /// The family <paramref name="arch"/> names: ResNet and MobileNetV2 names, RepLKNet variants, or an existing file (a
    /// RepLKNet JSON configuration); null when it names none of them. A MobileNetV2 name with a bad kernel part is still
    /// MobileNetV2 (<see cref="Create"/> then says what is wrong).
    /// </summary>
    public static ModelFamily? FamilyOf(string arch)
    {
        ArgumentNullException.ThrowIfNull(arch);
        if (TorchVisionResNet.ParseName(arch) is not null)
        {
            return ModelFamily.ResNet;
        }

        if (IsMobileNetV2(arch))
        {
            return ModelFamily.MobileNetV2;
        }

        return ModelRegistry.Find(arch) is not null || File.Exists(arch) ? ModelFamily.RepLKNet : null;
    }

    /// <summary>
    /// Builds <paramref name="arch"/> in its training form with fresh weights (each family's initialization, drawn from
    /// TorchSharp's global generator), fitted by <paramref name="fit"/>. Without a fit: the variant's classes and channels
    /// (1000 classes for ResNet and MobileNetV2) and MobileNetV2's ImageNet layout.
    /// </summary>
    /// <param name="arch">A name of <see cref="Names"/> (case-insensitive; "31B", "ResNet-50" also work) or a RepLKNet JSON configuration path.</param>
    /// <param name="fit">What to change for the dataset, or null.</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    /// <exception cref="ConfigException">
    /// <paramref name="arch"/> names no model (<see cref="ConfigException.ParamName"/> "arch"), its configuration file is invalid,
    /// or the fit does not suit the family.
    /// </exception>
    public static IImageModel Create(string arch, ModelFit? fit = null, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(arch);
        switch (FamilyOf(arch))
        {
            case ModelFamily.ResNet:
                int depth = TorchVisionResNet.ParseName(arch)!.Value;
                if (fit?.InChannels is int channels && channels is not (1 or 3))
                {
                    throw new ConfigException($"InChannels {channels} does not suit ResNet-{depth}: it takes 3 channels (1 is repeated to 3)", nameof(ModelFit.InChannels));
                }

                return new TorchVisionResNet(depth, fit?.NumClasses ?? 1000, device);
            case ModelFamily.MobileNetV2:
                var layout = fit?.SmallImages == true ? MobileNetV2Config.SmallImages(3, 1000) : MobileNetV2Config.ImageNet();
                return new MobileNetV2(Fit(layout.FromName(arch)!, fit), device);
            case ModelFamily.RepLKNet:
                var (name, config) = ModelRegistry.Resolve(arch);
                return new RepLKNetModel(fit is null ? config : Fit(config, fit), device: device, name: name);
            default:
                throw new ConfigException($"{nameof(arch)} '{arch}' is neither a model ({string.Join(", ", Names)}) nor an existing JSON configuration file",
                    nameof(arch));
        }
    }

    /// <summary>
    /// <paramref name="config"/> fitted by <paramref name="fit"/>: the classes (a backbone configuration becomes a classifier,
    /// <see cref="RepLKNetConfig.WithNumClasses"/>), input channels and drop-path rate that are set. Not validated here: the
    /// model's constructor validates it.
    /// </summary>
    public static RepLKNetConfig Fit(RepLKNetConfig config, ModelFit fit)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(fit);
        if (fit.NumClasses is int classes)
        {
            config = config.WithNumClasses(classes);
        }

        if (fit.InChannels is int channels)
        {
            config = config with { InChannels = channels };
        }

        return fit.DropPathRate is double rate ? config with { DropPathRate = rate } : config;
    }

    /// <summary><paramref name="config"/> with the classes and input channels of <paramref name="fit"/> that are set (no drop path in MobileNetV2).</summary>
    public static MobileNetV2Config Fit(MobileNetV2Config config, ModelFit? fit)
    {
        ArgumentNullException.ThrowIfNull(config);
        return config with { NumClasses = fit?.NumClasses ?? config.NumClasses, InChannels = fit?.InChannels ?? config.InChannels };
    }

    private static bool IsMobileNetV2(string arch) => arch.StartsWith("mobilenetv2", StringComparison.OrdinalIgnoreCase);
}
