using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using RepLKNet.Layers;
using RepLKNet.Reparam;
using TorchSharp.Modules;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Models;

/// <summary>
/// MobileNetV2 (Sandler et al., 2018) with the knobs of the paper's kernel-size guidelines: a depthwise kernel size per
/// stage, shortcuts on or off, and an optional small kernel (3×3 + BN) in parallel to every depthwise conv that merges
/// into it for deployment (as RepLKNet's <see cref="ReparamLargeKernelConv"/>).
/// </summary>
public sealed record MobileNetV2Config
{
    /// <summary>The inverted-residual table (expansion t, output channels c, blocks n) of the paper, one row per stage.</summary>
    public static IReadOnlyList<(int Expansion, int Channels, int Blocks)> Settings { get; } =
        [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)];

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>Depthwise kernel size of each of the 7 stages (odd).</summary>
    public IReadOnlyList<int> KernelSizes { get; init; } = [3, 3, 3, 3, 3, 3, 3];

    /// <summary>Identity shortcuts in the blocks that keep shape (the paper's ablation turns them off).</summary>
    public bool Shortcuts { get; init; } = true;

    /// <summary>Kernel of the parallel re-parameterization branch (3 in the paper), or null for none.</summary>
    public int? SmallKernel { get; init; }

    /// <summary>Width multiplier (channels rounded to multiples of 8).</summary>
    public double Width { get; init; } = 1.0;

    /// <summary>Input channels.</summary>
    public int InChannels { get; init; } = 3;

    /// <summary>Classes.</summary>
    public int NumClasses { get; init; } = 1000;

    /// <summary>Stride of the stem conv (2 for ImageNet).</summary>
    public int StemStride { get; init; } = 2;

    /// <summary>Stride of each stage's first block (ImageNet: 1,2,2,2,1,2,1; overall stride 32).</summary>
    public IReadOnlyList<int> Strides { get; init; } = [1, 2, 2, 2, 1, 2, 1];

    /// <summary>Dropout before the classifier.</summary>
    public double Dropout { get; init; } = 0.2;

    /// <summary>The stages after the last down-sampling: the paper's "last stage", at 7×7 on a 224 input.</summary>
    public IReadOnlyList<int> LastStages
    {
        get
        {
            int last = Enumerable.Range(0, Strides.Count).Last(i => Strides[i] > 1);
            return [.. Enumerable.Range(last, Strides.Count - last)];
        }
    }

    /// <summary>Overall stride of the feature map.</summary>
    public int TotalStride => StemStride * Strides.Aggregate(1, (a, b) => a * b);

    /// <summary>The ImageNet layout (224×224 → 7×7).</summary>
    public static MobileNetV2Config ImageNet(int numClasses = 1000) => new() { NumClasses = numClasses };

    /// <summary>
    /// The layout for 28–32 pixel images (Fashion-MNIST, CIFAR-10): overall stride 4 instead of 32 (stem and stages 2 and 4
    /// at stride 1), so a 28×28 input ends at 7×7 in the last two stages, as ImageNet's 224 does.
    /// </summary>
    public static MobileNetV2Config SmallImages(int inChannels, int numClasses, double width = 0.5) => new()
    {
        InChannels = inChannels, NumClasses = numClasses, Width = width, StemStride = 1, Strides = [1, 1, 2, 1, 1, 2, 1], Dropout = 0.1,
    };

    /// <summary>The layouts <see cref="ForLayout"/> builds: <c>small</c> (<see cref="SmallImages"/>) and <c>imagenet</c> (<see cref="ImageNet"/>).</summary>
    public static IReadOnlyList<string> Layouts { get; } = ["small", "imagenet"];

    /// <summary>
    /// The layout named <paramref name="layout"/> (case-insensitive, one of <see cref="Layouts"/>) for
    /// <paramref name="inChannels"/>-channel images, <paramref name="numClasses"/> classes and width multiplier
    /// <paramref name="width"/>: <c>small</c> has overall stride 4 (28×28 → 7×7), <c>imagenet</c> the paper's 32 (224×224 → 7×7).
    /// </summary>
    /// <exception cref="ArgumentException">Another layout name; the message starts with <c>layout</c>.</exception>
    public static MobileNetV2Config ForLayout(string layout, int inChannels, int numClasses, double width = 0.5)
    {
        ArgumentNullException.ThrowIfNull(layout);
        return layout.ToLowerInvariant() switch
        {
            "small" => SmallImages(inChannels, numClasses, width),
            "imagenet" => ImageNet(numClasses) with { InChannels = inChannels, Width = width },
            _ => throw new ArgumentException($"{nameof(layout)} '{layout}': use {string.Join(" or ", Layouts)}", nameof(layout)),
        };
    }

    /// <summary>The same layout with kernel <paramref name="kernel"/> in <paramref name="stages"/> (all when null) and 3 elsewhere.</summary>
    public MobileNetV2Config WithKernel(int kernel, IReadOnlyList<int>? stages = null) =>
        this with { KernelSizes = [.. Enumerable.Range(0, Settings.Count).Select(i => stages is null || stages.Contains(i) ? kernel : 3)] };

    /// <summary>
    /// Applies a model name to this layout: "mobilenetv2" keeps it, "mobilenetv2-kN" puts kernel N (odd) in every stage.
    /// Returns null when <paramref name="name"/> is not a MobileNetV2 name.
    /// </summary>
    /// <exception cref="ConfigException">The name starts with mobilenetv2 but its kernel part is not -kN with an odd N.</exception>
    public MobileNetV2Config? FromName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (!name.StartsWith("mobilenetv2", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        string rest = name["mobilenetv2".Length..].TrimStart('-', '_');
        if (rest.Length == 0)
        {
            return this;
        }

        if (!rest.StartsWith('k') || !int.TryParse(rest[1..], NumberStyles.None, CultureInfo.InvariantCulture, out int k) || k < 1 || k % 2 == 0)
        {
            throw new ConfigException($"'{name}': MobileNetV2 is named mobilenetv2 or mobilenetv2-kN with an odd kernel N");
        }

        return WithKernel(k);
    }

    /// <summary>Throws <see cref="ConfigException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (KernelSizes is null || KernelSizes.Count != Settings.Count || KernelSizes.Any(k => k < 1 || k % 2 == 0))
        {
            throw new ConfigException($"kernel_sizes must hold {Settings.Count} odd sizes (one per stage), got [{string.Join(", ", KernelSizes ?? [])}]");
        }

        if (Strides is null || Strides.Count != Settings.Count || Strides.Any(s => s is < 1 or > 2) || !Strides.Any(s => s > 1))
        {
            throw new ConfigException($"strides must hold {Settings.Count} values of 1 or 2 with at least one 2, got [{string.Join(", ", Strides ?? [])}]");
        }

        if (SmallKernel is int s && (s < 1 || s % 2 == 0 || KernelSizes.Any(k => k < s)))
        {
            throw new ConfigException($"small_kernel {s} must be odd and no larger than every kernel size");
        }

        if (StemStride is < 1 or > 2 || InChannels < 1 || NumClasses < 1 || !(Width > 0) || Dropout is < 0 or >= 1)
        {
            throw new ConfigException("stem_stride must be 1 or 2; in_channels, num_classes and width positive; dropout in [0, 1)");
        }
    }

    /// <summary>Output channels of stage <paramref name="stage"/>.</summary>
    public int StageChannels(int stage) => MakeDivisible(Settings[stage].Channels * Width);

    /// <summary>Stem channels.</summary>
    public int StemChannels => MakeDivisible(32 * Width);

    /// <summary>Channels of the final 1×1 conv (1280, widened above width 1 only, as the paper does).</summary>
    public int LastChannels => Width > 1 ? MakeDivisible(1280 * Width) : 1280;

    /// <summary>Convolution and linear multiply-accumulates for one image (BN, activations and adds not counted).</summary>
    public long Macs(int height, int width, ModelForm form)
    {
        long h = Out(height, 3, StemStride), w = Out(width, 3, StemStride);
        long c = StemChannels;
        long macs = InChannels * c * 9 * h * w;
        for (int i = 0; i < Settings.Count; i++)
        {
            var (t, _, n) = Settings[i];
            long outC = StageChannels(i);
            for (int b = 0; b < n; b++)
            {
                int stride = b == 0 ? Strides[i] : 1;
                long hidden = c * t;
                if (t != 1)
                {
                    macs += c * hidden * h * w;
                }

                long k = KernelSizes[i];
                long oh = Out(h, (int)k, stride), ow = Out(w, (int)k, stride);
                macs += hidden * k * k * oh * ow;
                if (form == ModelForm.Train && SmallKernel is int s && s < k)
                {
                    macs += hidden * s * s * oh * ow;
                }

                h = oh;
                w = ow;
                macs += hidden * outC * h * w;
                c = outC;
            }
        }

        macs += c * LastChannels * h * w + (long)LastChannels * NumClasses;
        return macs;
    }

    /// <summary>A short description, e.g. "k3,3,3,3,3,13,13 shortcuts re-param 3 width 0.5".</summary>
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"kernels {string.Join(",", KernelSizes)}, {(Shortcuts ? "shortcuts" : "no shortcuts")}{(SmallKernel is int s ? $", re-param {s}×{s}" : "")}, width {Width}, stride {TotalStride}");

    /// <summary>The configuration as JSON (snake_case).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Reads <see cref="ToJson"/>'s output.</summary>
    /// <exception cref="ConfigException">The text is not a valid configuration.</exception>
    public static MobileNetV2Config FromJson(string json)
    {
        MobileNetV2Config? config;
        try
        {
            config = JsonSerializer.Deserialize<MobileNetV2Config>(json, Json);
        }
        catch (JsonException e)
        {
            throw new ConfigException($"not a MobileNetV2 configuration: {e.Message}", e);
        }

        config = config ?? throw new ConfigException("not a MobileNetV2 configuration: null");
        config.Validate();
        return config;
    }

    private static int MakeDivisible(double value, int divisor = 8)
    {
        int rounded = Math.Max(divisor, (int)(value + divisor / 2.0) / divisor * divisor);
        return rounded < 0.9 * value ? rounded + divisor : rounded;
    }

    private static long Out(long size, int kernel, int stride) => (size + 2 * (kernel / 2) - kernel) / stride + 1;
}

/// <summary>An inverted residual block: 1×1 expand (BN, ReLU6) → k×k depthwise (+ parallel small kernel; BN, ReLU6) → 1×1 project (BN).</summary>
public sealed class InvertedResidual : Module<Tensor, Tensor>
{
    private readonly ConvBn? expand;
    private readonly ReparamLargeKernelConv dw;
    private readonly ConvBn project;

    /// <summary>Creates the block (training form).</summary>
    /// <param name="inChannels">Input channels.</param>
    /// <param name="outChannels">Output channels.</param>
    /// <param name="stride">Stride of the depthwise conv (1 or 2).</param>
    /// <param name="expansion">Expansion t: hidden channels = <paramref name="inChannels"/> × t; 1 skips the expand conv.</param>
    /// <param name="kernel">Depthwise kernel size (odd), in pixels.</param>
    /// <param name="smallKernel">Kernel of the parallel re-parameterization branch; ignored (no branch) when null or not smaller than <paramref name="kernel"/>.</param>
    /// <param name="shortcuts">Add the input when the block keeps its shape (stride 1, <paramref name="inChannels"/> = <paramref name="outChannels"/>).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    public InvertedResidual(int inChannels, int outChannels, int stride, int expansion, int kernel, int? smallKernel, bool shortcuts, Device? device = null)
        : base(nameof(InvertedResidual))
    {
        int hidden = inChannels * expansion;
        expand = expansion == 1 ? null : new ConvBn(inChannels, hidden, 1, 1, 0, 1, relu: false, device);
        dw = new ReparamLargeKernelConv(hidden, kernel, smallKernel is int s && s < kernel ? s : null, deploy: false, device, stride);
        project = new ConvBn(hidden, outChannels, 1, 1, 0, 1, relu: false, device);
        HasShortcut = shortcuts && stride == 1 && inChannels == outChannels;
        RegisterComponents();
    }

    /// <summary>Whether the input is added to the output.</summary>
    public bool HasShortcut { get; }

    /// <summary>Runs the block.</summary>
    /// <param name="input">[N, inChannels, H, W].</param>
    /// <returns>[N, outChannels, ⌈H/stride⌉, ⌈W/stride⌉].</returns>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = expand is null ? input : functional.relu6(expand.call(input));
        x = project.call(functional.relu6(dw.call(x)));
        return (HasShortcut ? Scalars.AddInPlace(x, input) : x).MoveToOuterDisposeScope();
    }
}

/// <summary>MobileNetV2 built from a <see cref="MobileNetV2Config"/>. Keys: <c>stem</c>, <c>blocks.N.{expand,dw,project}</c>, <c>last</c>, <c>classifier</c>.</summary>
public sealed class MobileNetV2 : Module<Tensor, Tensor>, IImageModel
{
    private readonly ConvBn stem;
    private readonly ModuleList<InvertedResidual> blocks = new();
    private readonly ConvBn last;
    private readonly Dropout dropout;
    private readonly Linear classifier;

    /// <summary>Creates the model (training form), randomly initialized as torchvision's MobileNetV2.</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    /// <exception cref="ArgumentNullException"><paramref name="config"/> is null.</exception>
    /// <exception cref="ConfigException">The configuration is invalid (<see cref="MobileNetV2Config.Validate"/>).</exception>
    public MobileNetV2(MobileNetV2Config config, Device? device = null)
        : base(nameof(MobileNetV2))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        stem = new ConvBn(config.InChannels, config.StemChannels, 3, config.StemStride, 1, 1, relu: false, device);
        int c = config.StemChannels;
        for (int i = 0; i < MobileNetV2Config.Settings.Count; i++)
        {
            var (t, _, n) = MobileNetV2Config.Settings[i];
            int outC = config.StageChannels(i);
            for (int b = 0; b < n; b++)
            {
                blocks.Add(new InvertedResidual(c, outC, b == 0 ? config.Strides[i] : 1, t, config.KernelSizes[i], config.SmallKernel, config.Shortcuts, device));
                c = outC;
            }
        }

        FeatureInfo = Features(config);
        last = new ConvBn(c, config.LastChannels, 1, 1, 0, 1, relu: false, device);
        dropout = Dropout(config.Dropout);
        classifier = Linear(config.LastChannels, config.NumClasses, device: device);
        RegisterComponents();
        InitializeWeights();
    }

    /// <summary>The configuration.</summary>
    public MobileNetV2Config Config { get; }

    /// <inheritdoc />
    public string Name => nameof(MobileNetV2);

    /// <inheritdoc />
    public ModelFamily Family => ModelFamily.MobileNetV2;

    /// <inheritdoc />
    public int InChannels => Config.InChannels;

    /// <inheritdoc />
    int? IImageModel.NumClasses => Config.NumClasses;

    /// <summary>Channels of the final 1×1 conv (<see cref="MobileNetV2Config.LastChannels"/>).</summary>
    public int NumFeatures => Config.LastChannels;

    /// <summary>The output of each of the 7 stages (its last block, <c>blocks.N</c>) with its channels and total stride.</summary>
    public IReadOnlyList<FeatureInfo> FeatureInfo { get; }

    /// <inheritdoc />
    Module<Tensor, Tensor> IImageModel.AsModule() => this;

    /// <summary>Whether every depthwise conv is in its merged (deploy) form.</summary>
    public bool IsDeploy => modules().OfType<ReparamLargeKernelConv>().All(m => m.IsDeploy);

    /// <summary>The blocks, in order.</summary>
    public IReadOnlyList<InvertedResidual> Blocks => [.. blocks];

    /// <summary>Stem → blocks → final 1×1 conv (BN, ReLU6).</summary>
    /// <param name="input">Images [N, <see cref="InChannels"/>, H, W] (H and W in pixels).</param>
    /// <returns>[N, <see cref="NumFeatures"/>, ⌈H/s⌉, ⌈W/s⌉] with s = <see cref="MobileNetV2Config.TotalStride"/> (32 ImageNet, 4 small images).</returns>
    public Tensor forward_features(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = functional.relu6(stem.call(input));
        foreach (var block in blocks)
        {
            x = block.call(x);
        }

        return functional.relu6(last.call(x)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Global average pool → dropout → <c>classifier</c>: logits (N, classes); with <paramref name="preLogits"/> the pooled
    /// features after dropout (N, <see cref="NumFeatures"/>), as timm's <c>forward_head</c>.
    /// </summary>
    /// <param name="features">[N, <see cref="NumFeatures"/>, h, w], <see cref="forward_features"/>'s output.</param>
    /// <param name="preLogits">Return the pooled features instead of the logits.</param>
    /// <returns>Logits [N, classes], or [N, <see cref="NumFeatures"/>] with <paramref name="preLogits"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="features"/> is null.</exception>
    public Tensor forward_head(Tensor features, bool preLogits = false)
    {
        ArgumentNullException.ThrowIfNull(features);
        using var scope = NewDisposeScope();
        var x = dropout.call(features.mean([2, 3]));
        return (preLogits ? x : classifier.call(x)).MoveToOuterDisposeScope();
    }

    /// <summary><see cref="forward_features"/> then <see cref="forward_head"/>.</summary>
    /// <param name="input">Images [N, <see cref="InChannels"/>, H, W] (H and W in pixels).</param>
    /// <returns>Logits [N, classes] (<see cref="MobileNetV2Config.NumClasses"/>).</returns>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        return forward_head(forward_features(input)).MoveToOuterDisposeScope();
    }

    /// <summary>Merges every parallel small kernel into its depthwise conv (eval-mode outputs unchanged); returns how many were merged.</summary>
    public int SwitchToDeploy() => Reparameterize();

    /// <summary>
    /// Merges every parallel small kernel into its depthwise conv in place (with <paramref name="fuseBn"/> also folding every
    /// conv+BN pair); eval-mode outputs unchanged. Returns how many depthwise convs were merged.
    /// </summary>
    /// <param name="fuseBn">Also fold the BatchNorms into the preceding convolutions.</param>
    /// <returns>Depthwise convs switched to the deploy form.</returns>
    public int Reparameterize(bool fuseBn = false) => Reparameterizer.Reparameterize(this, fuseBn);

    /// <inheritdoc />
    public ModelDescription Describe() => ModelDescription.Of(this);

    // Each stage's output is its last block's: channels of the stage, stride of the stem times every stride so far.
    private static List<FeatureInfo> Features(MobileNetV2Config config)
    {
        var features = new List<FeatureInfo>();
        int block = -1, reduction = config.StemStride;
        for (int i = 0; i < MobileNetV2Config.Settings.Count; i++)
        {
            block += MobileNetV2Config.Settings[i].Blocks;
            reduction *= config.Strides[i];
            features.Add(new FeatureInfo(i, config.StageChannels(i), reduction, $"blocks.{block}"));
        }

        return features;
    }

    // torchvision's initialization: Kaiming-normal (fan out) convs, BN 1/0, Linear N(0, 0.01) with zero bias.
    private void InitializeWeights()
    {
        using var noGrad = no_grad();
        foreach (var module in modules())
        {
            switch (module)
            {
                case Conv2d conv:
                    init.kaiming_normal_(conv.weight!, mode: init.FanInOut.FanOut);
                    if (conv.bias is not null)
                    {
                        init.zeros_(conv.bias);
                    }

                    break;
                case BatchNorm2d bn:
                    init.ones_(bn.weight!);
                    init.zeros_(bn.bias!);
                    break;
                case Linear linear:
                    init.normal_(linear.weight!, 0, 0.01);
                    init.zeros_(linear.bias!);
                    break;
            }
        }
    }
}
