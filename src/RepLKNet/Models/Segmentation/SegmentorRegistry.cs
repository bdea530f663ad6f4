namespace RepLKNet.Models.Segmentation;

/// <summary>
/// The training and test recipe of an official segmentation config that is not part of the model dict.
/// </summary>
/// <param name="Dataset">The dataset the config trains on: <c>ade20k</c> or <c>cityscapes</c> (null: any).</param>
/// <param name="CropSize">Random-crop size (height, width) in pixels.</param>
/// <param name="Scale">MMSeg <c>img_scale</c> (long edge, short edge) in pixels: train rescale base and test size.</param>
/// <param name="Mean">Normalization mean per RGB channel on the 0–255 scale.</param>
/// <param name="Std">Normalization std per RGB channel on the 0–255 scale.</param>
/// <param name="BatchSize">Images per GPU of the official run (<c>samples_per_gpu</c>).</param>
/// <param name="MaxIters">Iterations of the official run (on 16–64 GPUs).</param>
/// <param name="WarmupIters">Linear warm-up iterations.</param>
/// <param name="LearningRate">AdamW peak learning rate (2e-4 in every official config).</param>
public sealed record SegmentationRecipe(string? Dataset, (int H, int W) CropSize, (int Long, int Short) Scale, IReadOnlyList<double> Mean,
    IReadOnlyList<double> Std, int BatchSize, int MaxIters, int WarmupIters, double LearningRate = 2e-4)
{
    /// <summary>ImageNet mean on the 0–255 scale (RGB).</summary>
    public static IReadOnlyList<double> ImageNetMean { get; } = [123.675, 116.28, 103.53];

    /// <summary>ImageNet std on the 0–255 scale (RGB).</summary>
    public static IReadOnlyList<double> ImageNetStd { get; } = [58.395, 57.12, 57.375];
}

/// <summary>
/// How a segmenter's inputs were prepared in training, recorded in its checkpoints so that evaluation, prediction and
/// export prepare images the same way.
/// </summary>
/// <param name="CropSize">Training crop (height, width) in pixels.</param>
/// <param name="Scale">MMSeg <c>img_scale</c> (long edge, short edge) in pixels: the test resize.</param>
/// <param name="Mean">Normalization mean per RGB channel on the 0–255 scale.</param>
/// <param name="Std">Normalization std per RGB channel on the 0–255 scale.</param>
public sealed record SegmentationInput((int H, int W) CropSize, (int Long, int Short) Scale, IReadOnlyList<double> Mean, IReadOnlyList<double> Std)
{
    /// <summary>The input of a recipe.</summary>
    public static SegmentationInput Of(SegmentationRecipe recipe)
    {
        ArgumentNullException.ThrowIfNull(recipe);
        return new(recipe.CropSize, recipe.Scale, recipe.Mean, recipe.Std);
    }

    /// <summary>JSON <c>{"crop_size": [h, w], "scale": [long, short], "mean": […], "std": […]}</c>.</summary>
    public string ToJson() => new System.Text.Json.Nodes.JsonObject
    {
        ["crop_size"] = new System.Text.Json.Nodes.JsonArray(CropSize.H, CropSize.W),
        ["scale"] = new System.Text.Json.Nodes.JsonArray(Scale.Long, Scale.Short),
        ["mean"] = new System.Text.Json.Nodes.JsonArray([.. Mean.Select(v => (System.Text.Json.Nodes.JsonNode)v)]),
        ["std"] = new System.Text.Json.Nodes.JsonArray([.. Std.Select(v => (System.Text.Json.Nodes.JsonNode)v)]),
    }.ToJsonString();

    /// <summary>Parses <see cref="ToJson"/>'s form.</summary>
    /// <exception cref="ConfigException">The JSON is not that form (the message names <paramref name="source"/>).</exception>
    public static SegmentationInput FromJson(string json, string source)
    {
        try
        {
            var o = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
            int[] crop = o["crop_size"]!.AsArray().Select(n => (int)n!).ToArray();
            int[] scale = o["scale"]!.AsArray().Select(n => (int)n!).ToArray();
            double[] mean = o["mean"]!.AsArray().Select(n => (double)n!).ToArray();
            double[] std = o["std"]!.AsArray().Select(n => (double)n!).ToArray();
            if (crop.Length != 2 || scale.Length != 2 || mean.Length != 3 || std.Length != 3 || crop.Min() <= 0 || scale.Min() <= 0 || std.Any(v => v <= 0))
            {
                throw new FormatException("crop_size and scale need two positive sizes, mean and std three values");
            }

            return new((crop[0], crop[1]), (scale[0], scale[1]), mean, std);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or NullReferenceException or FormatException)
        {
            throw new ConfigException($"{source}: not a recorded segmentation input ({e.Message})", e);
        }
    }
}

/// <summary>A named segmenter: the model dict and the official recipe around it.</summary>
/// <param name="Name">Preset name, e.g. <c>upernet-31B-ade20k-512</c>.</param>
/// <param name="Config">The model.</param>
/// <param name="Recipe">Crop, scale, normalization and schedule of the official config.</param>
/// <param name="Source">The official config file it follows (or "project" for the project's own small preset).</param>
public sealed record SegmentorPreset(string Name, SegmentorConfig Config, SegmentationRecipe Recipe, string Source);

/// <summary>The official RepLKNet UperNet configs as presets, and the resolver of <c>--arch</c> for segmenters.</summary>
public static class SegmentorRegistry
{
    /// <summary>The project's small default segmenter (CPU training on small crops), not an official config.</summary>
    public const string DefaultName = "upernet-tiny";

    private const string Configs = "DingXiaoH/RepLKNet-pytorch segmentation/configs/";

    /// <summary>Every preset: the five official configs and the project's small one.</summary>
    public static IReadOnlyList<SegmentorPreset> Presets { get; } = Build();

    /// <summary>Whether <paramref name="arch"/> names a segmenter: a preset, or an existing JSON file with a <c>decode_head</c>.</summary>
    public static bool IsSegmentor(string? arch)
    {
        if (string.IsNullOrWhiteSpace(arch))
        {
            return false;
        }

        if (Find(arch) is not null)
        {
            return true;
        }

        try
        {
            return File.Exists(arch) && new FileInfo(arch).Length < (16 << 20) && SegmentorConfig.LooksLikeSegmentor(File.ReadAllText(arch));
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>The preset named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static SegmentorPreset? Find(string name) =>
        Presets.FirstOrDefault(p => string.Equals(p.Name, name?.Trim(), StringComparison.OrdinalIgnoreCase));

    /// <summary>Resolves a segmenter architecture: a preset name or a path to an MMSeg-style model JSON.</summary>
    /// <param name="arch">Preset name or JSON file.</param>
    /// <returns>The name (the preset's, or the file's name without extension) and the configuration.</returns>
    /// <exception cref="ConfigException">Neither a preset nor a readable segmenter JSON (<see cref="ConfigException.ParamName"/> <c>arch</c>), or the JSON is invalid.</exception>
    public static (string Name, SegmentorConfig Config) Resolve(string arch)
    {
        ArgumentNullException.ThrowIfNull(arch);
        if (Find(arch) is { } preset)
        {
            return (preset.Name, preset.Config);
        }

        if (File.Exists(arch))
        {
            string json;
            try
            {
                json = File.ReadAllText(arch);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new ConfigException($"{nameof(arch)} '{arch}': cannot be read: {e.Message}", nameof(arch));
            }

            return (Path.GetFileNameWithoutExtension(arch), SegmentorConfig.FromJson(json, $"'{arch}'"));
        }

        throw new ConfigException($"{nameof(arch)} '{arch}' is neither a segmenter preset ({string.Join(", ", Presets.Select(p => p.Name))}) " +
            "nor an existing MMSeg-style model JSON file", nameof(arch));
    }

    /// <summary>The recipe <see cref="RecipeFor(string, SegmentorConfig?, string?)"/> picks, without a configuration or dataset.</summary>
    public static SegmentationRecipe RecipeFor(string name) => RecipeFor(name, null, null).Recipe;

    /// <summary>
    /// The preset whose recipe (crop, scale, normalization, batch, iterations, warm-up, learning rate) an architecture
    /// trains and is tested with: the preset named <paramref name="name"/>; for a JSON architecture whose backbone is an
    /// official one (same channels, depths and kernels), that backbone's official config — the Cityscapes one for
    /// <paramref name="dataset"/> <c>cityscapes</c>, else its first ADE20K one; any other architecture gets the project's
    /// small-scale recipe (<see cref="DefaultName"/>'s).
    /// </summary>
    /// <param name="name">Architecture name (a preset's, or a JSON file's).</param>
    /// <param name="config">The architecture, to match a JSON file's backbone against the official ones (null: no match).</param>
    /// <param name="dataset">The dataset kind (ade20k, cityscapes, folder), or null.</param>
    public static SegmentorPreset RecipeFor(string name, SegmentorConfig? config, string? dataset)
    {
        if (Find(name) is { } preset)
        {
            return preset;
        }

        if (config is not null)
        {
            static bool Same(RepLKNetConfig a, RepLKNetConfig b) =>
                a.Channels.SequenceEqual(b.Channels) && a.Layers.SequenceEqual(b.Layers) && a.LargeKernelSizes.SequenceEqual(b.LargeKernelSizes);
            var official = Presets.Where(p => p.Source != "project" && Same(p.Config.Backbone, config.Backbone)).ToList();
            var match = official.FirstOrDefault(p => string.Equals(p.Recipe.Dataset, dataset, StringComparison.OrdinalIgnoreCase))
                ?? official.FirstOrDefault(p => p.Recipe.Dataset == "ade20k");
            if (match is not null)
            {
                return match;
            }
        }

        return Find(DefaultName)!;
    }

    private static SegmentorConfig UperNet(RepLKNetConfig backbone, int classes, bool alignCorners, int channels = 512, int auxChannels = 256,
        SegmentationTestConfig? test = null)
    {
        var outIndices = Enumerable.Range(0, backbone.NumStages).ToArray();
        var bb = backbone with { NumClasses = null, OutIndices = outIndices };
        return new SegmentorConfig
        {
            Backbone = bb,
            DecodeHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.UPerHead, InChannels = [.. bb.Channels], InIndex = outIndices, Channels = channels,
                NumClasses = classes, AlignCorners = alignCorners,
            },
            AuxiliaryHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.FCNHead, InChannels = [bb.Channels[2]], InIndex = [2], Channels = auxChannels, NumConvs = 1,
                NumClasses = classes, AlignCorners = alignCorners, LossWeight = 0.4,
            },
            Test = test ?? SegmentationTestConfig.Whole,
        }.Validate();
    }

    private static List<SegmentorPreset> Build()
    {
        RepLKNetConfig Official(string variant, double dropPath) => ModelRegistry.Find(variant)!.Config with { DropPathRate = dropPath };
        var slide640 = new SegmentationTestConfig("slide", (640, 640), (426, 426));
        var ade = SegmentationRecipe.ImageNetMean;
        var adeStd = SegmentationRecipe.ImageNetStd;
        IReadOnlyList<double> half = [127.5, 127.5, 127.5];
        var xl = Official("RepLKNet-XL", 0.5) with { NormIntermediateFeatures = true };
        var tiny = new RepLKNetConfig
        {
            LargeKernelSizes = [13, 11, 9, 5], Layers = [1, 1, 2, 1], Channels = [32, 64, 128, 256], DropPathRate = 0.1,
            SmallKernel = 3, DwRatio = 1, FfnRatio = 2, NumClasses = 1000,
        };
        return
        [
            new("upernet-31B-ade20k-512", UperNet(Official("RepLKNet-31B", 0.5), 150, false),
                new("ade20k", (512, 512), (2048, 512), ade, adeStd, 2, 40000, 400), Configs + "RepLKNet-31B_1Kpretrain_upernet_160k_ade20k_512.py"),
            new("upernet-31B-ade20k-640", UperNet(Official("RepLKNet-31B", 0.3), 150, false, test: slide640),
                new("ade20k", (640, 640), (2048, 512), ade, adeStd, 2, 40000, 400), Configs + "RepLKNet-31B_22Kpretrain_upernet_160k_ade20k_640.py"),
            new("upernet-31L-ade20k-640", UperNet(Official("RepLKNet-31L", 0.3), 150, false, test: slide640),
                new("ade20k", (640, 640), (2048, 512), ade, adeStd, 1, 80000, 800), Configs + "RepLKNet-31L_22Kpretrain_upernet_160k_ade20k_640.py"),
            new("upernet-XL-ade20k-640", UperNet(xl, 150, false, test: slide640),
                new("ade20k", (640, 640), (2048, 512), half, half, 2, 160000, 1500), Configs + "RepLKNet-XL_MegData73M_upernet_160k_ade20k_640.py"),
            new("upernet-31B-cityscapes-769", UperNet(Official("RepLKNet-31B", 0.5), 19, true),
                new("cityscapes", (769, 769), (2049, 1025), ade, adeStd, 2, 20000, 400), Configs + "RepLKNet-31B_1Kpretrain_upernet_80k_cityscapes_769.py"),
            new(DefaultName, UperNet(tiny, 150, false, channels: 64, auxChannels: 32),
                new(null, (96, 96), (128, 96), ade, adeStd, 8, 300, 30, 1e-3), "project"),
        ];
    }
}
