using TorchSharp;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Erf;

/// <summary>A model prepared for the ERF: eval mode, parameters frozen (only the input needs a gradient).</summary>
public sealed class ErfSubject : IDisposable
{
    private readonly Module<Tensor, Tensor> _module;
    private readonly IFeatureModel _features;

    private ErfSubject(string label, Module<Tensor, Tensor> module, int inChannels, string? weights, Normalization? normalization)
    {
        Label = label;
        _module = module;
        _features = (IFeatureModel)module;
        InChannels = inChannels;
        Weights = weights;
        Normalization = normalization;
        module.eval();
        foreach (var p in module.parameters())
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
    public int InChannels { get; }

    /// <summary>The normalization recorded with the weights, if any.</summary>
    public Normalization? Normalization { get; }

    /// <summary>The module.</summary>
    public Module<Tensor, Tensor> Module => _module;

    /// <summary>The last-stage feature map (before any final norm or pooling).</summary>
    public Tensor Features(Tensor x) => _features.forward_features(x);

    /// <summary>
    /// Builds <paramref name="model"/> (a RepLKNet variant or JSON configuration, resnet18/50/101, or mobilenetv2[-kN]) with
    /// random weights, or reads <paramref name="weights"/>: the project's RepLKNet and MobileNetV2 checkpoints record their
    /// architecture (then <paramref name="model"/> may be null); official RepLKNet and torchvision-format ResNet weights
    /// (.pth or safetensors) need <paramref name="model"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Neither a model nor weights were given, or the name is unknown.</exception>
    /// <exception cref="CheckpointException">The weights are unreadable or do not fit (the message names the file).</exception>
    public static ErfSubject Create(string? model, string? weights, Device? device = null)
    {
        if (model is null && weights is null)
        {
            throw new ArgumentException("model and weights are both null: name a model or give weights that record one");
        }

        device ??= CPU;
        Module<Tensor, Tensor> module;
        string label;
        int channels;
        Normalization? normalization = null;
        if (model is not null && TorchVisionResNet.ParseName(model) is int depth)
        {
            int classes = 1000;
            Checkpoint? checkpoint = weights is null ? null : CheckpointFile.Read(weights);
            try
            {
                if (checkpoint is not null && checkpoint.State.TryGetValue("fc.weight", out var fc) && fc.dim() == 2)
                {
                    classes = (int)fc.shape[0];
                }

                var resnet = new TorchVisionResNet(depth, classes);
                if (checkpoint is not null)
                {
                    StateDictLoader.Load(resnet, checkpoint.State, strict: true, skipHead: false, $"'{weights}' (torchvision ResNet-{depth} format)");
                }

                module = resnet;
            }
            finally
            {
                checkpoint?.Dispose();
            }

            label = $"ResNet-{depth}";
            channels = 3;
        }
        else if (model is not null && weights is null && MobileNetV2Config.ImageNet().FromName(model) is { } mobile)
        {
            module = new MobileNetV2(mobile);
            label = $"MobileNetV2 ({mobile.KernelSizes.Max()}×{mobile.KernelSizes.Max()})";
            channels = mobile.InChannels;
        }
        else if (weights is not null && IsSafetensors(weights) && MobileNetV2Checkpoint.TryRead(weights) is { } net)
        {
            module = net;
            label = $"MobileNetV2 ({net.Config.KernelSizes.Max()}×{net.Config.KernelSizes.Max()}{(net.Config.Shortcuts ? "" : ", no shortcut")})";
            channels = net.Config.InChannels;
        }
        else if (weights is not null)
        {
            var loaded = ModelLoader.Load(weights, new ModelLoadOptions { Arch = model });
            module = loaded.Model;
            label = loaded.Arch;
            channels = loaded.Model.Config.InChannels;
            normalization = loaded.Metadata?.Preprocessing?.Normalization;
        }
        else
        {
            var (name, config) = ModelRegistry.Resolve(model!);
            module = new RepLKNetModel(config with { DropPathRate = 0 });
            label = name;
            channels = config.InChannels;
        }

        module = module.to(device);
        return new ErfSubject(label, module, channels, weights, normalization);
    }

    /// <inheritdoc />
    public void Dispose() => _module.Dispose();

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
