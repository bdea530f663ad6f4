namespace RepLKNet.Models;

/// <summary>What a pretrained checkpoint of a variant expects (timm's pretrained_cfg).</summary>
/// <param name="InputSize">Default (C, H, W).</param>
/// <param name="Mean">Per-channel normalization mean on [0, 1] inputs.</param>
/// <param name="Std">Per-channel normalization std.</param>
/// <param name="CropPct">Eval resize ratio: short side int(res / crop_pct), then center crop (warp-resize without crop for res ≥ 384).</param>
/// <param name="Interpolation">Resize interpolation.</param>
/// <param name="NumClasses">Classes of the official ImageNet checkpoints.</param>
/// <param name="License">Licence of the official weights.</param>
/// <param name="Paper">Citation.</param>
public sealed record PretrainedConfig(
    (int C, int H, int W) InputSize,
    (double R, double G, double B) Mean,
    (double R, double G, double B) Std,
    double CropPct,
    string Interpolation,
    int NumClasses,
    string License,
    string Paper);

/// <summary>A named model variant: its architecture and its pretrained-config record.</summary>
/// <param name="Name">Canonical name, e.g. "RepLKNet-31B".</param>
/// <param name="Config">Architecture (the official factory's arguments).</param>
/// <param name="Pretrained">Input size, normalization and the like.</param>
public sealed record ModelVariant(string Name, RepLKNetConfig Config, PretrainedConfig Pretrained);

/// <summary>The official variants (the <c>create_RepLKNet31B/31L/XL</c> factories) and the RepLKNet architecture resolver.</summary>
public static class ModelRegistry
{
    private const string Paper = "Ding et al., Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs, CVPR 2022";
    private static readonly (double, double, double) ImageNetMean = (0.485, 0.456, 0.406);
    private static readonly (double, double, double) ImageNetStd = (0.229, 0.224, 0.225);

    /// <summary>Every registered variant, in size order.</summary>
    public static IReadOnlyList<ModelVariant> Variants { get; } =
    [
        new("RepLKNet-31B",
            new RepLKNetConfig
            {
                LargeKernelSizes = [31, 29, 27, 13], Layers = [2, 2, 18, 2], Channels = [128, 256, 512, 1024],
                DropPathRate = 0.3, SmallKernel = 5, DwRatio = 1, FfnRatio = 4, NumClasses = 1000,
            },
            new PretrainedConfig((3, 224, 224), ImageNetMean, ImageNetStd, 0.875, "bicubic", 1000, "MIT", Paper)),
        new("RepLKNet-31L",
            new RepLKNetConfig
            {
                LargeKernelSizes = [31, 29, 27, 13], Layers = [2, 2, 18, 2], Channels = [192, 384, 768, 1536],
                DropPathRate = 0.3, SmallKernel = 5, DwRatio = 1, FfnRatio = 4, NumClasses = 1000,
            },
            new PretrainedConfig((3, 384, 384), ImageNetMean, ImageNetStd, 1.0, "bicubic", 1000, "MIT", Paper)),
        new("RepLKNet-XL",
            new RepLKNetConfig
            {
                LargeKernelSizes = [27, 27, 27, 13], Layers = [2, 2, 18, 2], Channels = [256, 512, 1024, 2048],
                DropPathRate = 0.3, SmallKernel = null, DwRatio = 1.5, FfnRatio = 4, NumClasses = 1000,
            },
            new PretrainedConfig((3, 320, 320), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, "bicubic", 1000, "MIT", Paper)),
        // Not an official variant: the project's default for the main job, sized to train on Fashion-MNIST (28×28, grey)
        // on two CPU cores in about a quarter of an hour. The stem brings 28×28 to 7×7, so every large kernel is larger
        // than its feature map — the paper's observation that large kernels pay off even on small maps.
        new("RepLKNet-FMNIST",
            new RepLKNetConfig
            {
                LargeKernelSizes = [13, 9, 5], Layers = [1, 1, 1], Channels = [32, 64, 128],
                DropPathRate = 0.0, SmallKernel = 3, DwRatio = 1, FfnRatio = 2, InChannels = 1, NumClasses = 10,
            },
            new PretrainedConfig((1, 28, 28), (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530), 1.0, "none", 10, "MIT", Paper)),
    ];

    /// <summary>The variant named <paramref name="name"/> (case-insensitive; "31B" and "replknet_31b" also work), or null.</summary>
    public static ModelVariant? Find(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string Normalize(string s) => s.Replace("_", "-", StringComparison.Ordinal).ToUpperInvariant();
        string wanted = Normalize(name.Trim());
        return Variants.FirstOrDefault(v => Normalize(v.Name) == wanted || Normalize(v.Name) == "REPLKNET-" + wanted);
    }

    /// <summary>
    /// Resolves a RepLKNet architecture: a variant name, or a path to a JSON file of the official constructor's arguments.
    /// Returns the display name and the configuration. (<see cref="ModelFactory"/> resolves every family.)
    /// </summary>
    /// <exception cref="ConfigException">
    /// Neither a variant nor an existing file (<see cref="ConfigException.ParamName"/> "arch"), or the file is not a valid configuration.
    /// </exception>
    public static (string Name, RepLKNetConfig Config) Resolve(string arch)
    {
        ArgumentNullException.ThrowIfNull(arch);
        if (Find(arch) is { } variant)
        {
            return (variant.Name, variant.Config);
        }

        if (File.Exists(arch))
        {
            return (Path.GetFileNameWithoutExtension(arch), RepLKNetConfig.FromJsonFile(arch));
        }

        throw new ConfigException($"{nameof(arch)} '{arch}' is neither a model variant ({string.Join(", ", Variants.Select(v => v.Name))}) " +
            "nor an existing JSON configuration file", nameof(arch));
    }
}
