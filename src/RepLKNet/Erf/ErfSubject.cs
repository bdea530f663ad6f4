using TorchSharp;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Erf;

/// <summary>A model prepared for the ERF: eval mode, parameters frozen (only the input needs a gradient).</summary>
public sealed class ErfSubject : IDisposable
{
    private readonly IImageModel _model;

    private ErfSubject(string label, IImageModel model, string? weights, Normalization? normalization)
    {
        Label = label;
        _model = model;
        Weights = weights;
        Normalization = normalization;
        model.AsModule().eval();
        foreach (var p in model.AsModule().parameters())
        {
            p.requires_grad = false;
        }
    }

    /// <summary>Display name (architecture).</summary>
    public string Label { get; }

    /// <summary>The weights file, or null for random weights.</summary>
    public string? Weights { get; }

    /// <summary>Whether trained weights were loaded.</summary>
    public bool Trained => Weights is not null;

    /// <summary>Input channels the model takes.</summary>
    public int InChannels => _model.InChannels;

    /// <summary>The normalization recorded with the weights, if any.</summary>
    public Normalization? Normalization { get; }

    /// <summary>The module.</summary>
    public Module<Tensor, Tensor> Module => _model.AsModule();

    /// <summary>The last-stage feature map (before any final norm or pooling).</summary>
    public Tensor Features(Tensor x) => _model.forward_features(x);

    /// <summary>
    /// Builds <paramref name="model"/> (any name of <see cref="ModelFactory"/>: a RepLKNet variant or JSON configuration,
    /// resnet18/50/101, or mobilenetv2[-kN] in the ImageNet layout) with random weights, or reads <paramref name="weights"/>:
    /// the project's RepLKNet and MobileNetV2 checkpoints record their architecture (then <paramref name="model"/> may be
    /// null); official RepLKNet and torchvision-format ResNet weights (.pth or safetensors) need <paramref name="model"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Neither a model nor weights were given (ParamName "model").</exception>
    /// <exception cref="ConfigException">The name is unknown (ParamName "arch").</exception>
    /// <exception cref="CheckpointException">The weights are unreadable or do not fit (the message names the file).</exception>
    public static ErfSubject Create(string? model, string? weights, Device? device = null)
    {
        if (model is null && weights is null)
        {
            throw new ArgumentException($"{nameof(model)} and {nameof(weights)} are both null: name a model, or give weights that record one", nameof(model));
        }

        device ??= CPU;
        IImageModel built;
        string label;
        Normalization? normalization = null;
        var family = model is null ? null : ModelFactory.FamilyOf(model);
        if (family == ModelFamily.ResNet)
        {
            built = ResNet(model!, weights);
            label = built.Name;
        }
        else if (family == ModelFamily.MobileNetV2 && weights is null)
        {
            var mobile = (MobileNetV2)ModelFactory.Create(model!);
            built = mobile;
            label = $"MobileNetV2 ({mobile.Config.KernelSizes.Max()}×{mobile.Config.KernelSizes.Max()})";
        }
        else if (weights is not null && IsSafetensors(weights) && MobileNetV2Checkpoint.TryRead(weights) is { } net)
        {
            built = net;
            label = $"MobileNetV2 ({net.Config.KernelSizes.Max()}×{net.Config.KernelSizes.Max()}{(net.Config.Shortcuts ? "" : ", no shortcut")})";
        }
        else if (weights is not null)
        {
            var loaded = ModelLoader.Load(weights, new ModelLoadOptions { Arch = model });
            built = loaded.Model;
            label = loaded.Arch;
            normalization = loaded.Metadata?.Preprocessing?.Normalization;
        }
        else
        {
            built = ModelFactory.Create(model!, new ModelFit(DropPathRate: 0));
            label = built.Name;
        }

        built.AsModule().to(device);
        return new ErfSubject(label, built, weights, normalization);
    }

    // torchvision-format weights decide the classes (fc.weight's rows); random weights keep 1000.
    private static IImageModel ResNet(string model, string? weights)
    {
        using var checkpoint = weights is null ? null : CheckpointFile.Read(weights);
        int? classes = checkpoint is not null && checkpoint.State.TryGetValue("fc.weight", out var fc) && fc.dim() == 2 ? (int)fc.size(0) : null;
        var resnet = ModelFactory.Create(model, new ModelFit(NumClasses: classes));
        if (checkpoint is not null)
        {
            try
            {
                StateDictLoader.Load(resnet.AsModule(), checkpoint.State, strict: true, skipHead: false,
                    $"{nameof(weights)} '{weights}' (torchvision {resnet.Name} format)", nameof(weights));
            }
            catch
            {
                resnet.Dispose();
                throw;
            }
        }

        return resnet;
    }

    /// <inheritdoc />
    public void Dispose() => _model.Dispose();

    // Only safetensors can hold a MobileNetV2 checkpoint: look at the header before reading a (possibly huge) .pth.
    private static bool IsSafetensors(string weights)
    {
        if (!File.Exists(weights))
        {
            throw new CheckpointException($"'{weights}': no such checkpoint file");
        }

        var head = new byte[16];
        using (var probe = File.OpenRead(weights))
        {
            _ = probe.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }

        return SafetensorsFile.LooksLikeSafetensors(head, new FileInfo(weights).Length);
    }
}

/// <summary>The ERF's inputs: images in order, bicubic-resized to a square (aspect ratio not kept), normalized, as (1, C, S, S).</summary>
public static class ErfImages
{
    /// <summary>
    /// Yields images <c>0, 1, …</c> of <paramref name="data"/> as the official loader does (ImageFolder order, batch 1): resized to
    /// <paramref name="size"/>×<paramref name="size"/> with antialiased bicubic, scaled to [0, 1], normalized, and given
    /// <paramref name="channels"/> channels (grey repeated, or RGB averaged by luminance). Unreadable images are skipped and counted.
    /// </summary>
    public static IEnumerable<Tensor> From(IImageDataset data, int size, int channels, Normalization normalization, Device device, Action<string>? onSkipped = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(normalization);
        for (long i = 0; i < data.Count; i++)
        {
            ImageU8 image;
            try
            {
                image = data.Read(i);
            }
            catch (DatasetException e)
            {
                onSkipped?.Invoke($"{data.Describe(i)}: {e.Message}");
                continue;
            }

            yield return ToTensor(image, size, channels, normalization).to(device);
        }
    }

    /// <summary>One image as a normalized (1, C, S, S) float tensor.</summary>
    public static Tensor ToTensor(ImageU8 image, int size, int channels, Normalization normalization)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(normalization);
        var resized = image.Height == size && image.Width == size ? image : ImageOps.Resize(image, size, size);
        if (resized.Channels != channels)
        {
            resized = channels == 1 ? Luminance(resized) : Repeat(resized, channels);
        }

        int plane = size * size;
        var values = new float[channels * plane];
        for (int c = 0; c < channels; c++)
        {
            var (mean, std) = normalization.At(c, channels);
            var src = resized.Channel(c);
            for (int p = 0; p < plane; p++)
            {
                values[c * plane + p] = (float)((src[p] / 255.0 - mean) / std);
            }
        }

        return tensor(values, [1, channels, size, size]);
    }

    private static ImageU8 Repeat(ImageU8 grey, int channels)
    {
        var result = new ImageU8(channels, grey.Height, grey.Width);
        for (int c = 0; c < channels; c++)
        {
            grey.Channel(0).CopyTo(result.Channel(c));
        }

        return result;
    }

    private static ImageU8 Luminance(ImageU8 rgb)
    {
        var result = new ImageU8(1, rgb.Height, rgb.Width);
        var r = rgb.Channel(0);
        var g = rgb.Channel(1);
        var b = rgb.Channel(2);
        var dst = result.Channel(0);
        for (int p = 0; p < dst.Length; p++)
        {
            dst[p] = ImageOps.ToByte(0.299 * r[p] + 0.587 * g[p] + 0.114 * b[p]);
        }

        return result;
    }
}
