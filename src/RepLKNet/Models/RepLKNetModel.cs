using RepLKNet.Layers;
using RepLKNet.Reparam;
using TorchSharp.Modules;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using static TorchSharp.torch.nn;

namespace RepLKNet.Models;

/// <summary>
/// RepLKNet (Ding et al., CVPR 2022), module for module and key for key the official <c>RepLKNet</c>: <c>stem</c> (stride 4),
/// <c>stages</c>, <c>transitions</c> (registered after all stages), then for a classifier <c>norm</c> → global average pool → <c>head</c>.
/// In backbone mode (out_indices) it returns per-stage features through <see cref="forward_intermediates"/>.
/// </summary>
public sealed class RepLKNetModel : Module<Tensor, Tensor>, IImageModel
{
    private readonly ModuleList<ConvBn> stem;
    private readonly ModuleList<RepLKNetStage> stages;
    private readonly ModuleList<Sequential> transitions;
    private readonly BatchNorm2d? norm;
    private readonly AdaptiveAvgPool2d? avgpool;
    private Linear? head;

    /// <summary>Builds the model in the training form, or in the deploy form when <paramref name="deploy"/> (official <c>small_kernel_merged</c>).</summary>
    /// <param name="config">The architecture.</param>
    /// <param name="deploy">Build the deploy topology directly (so deploy checkpoints load).</param>
    /// <param name="device">Where to allocate (null: the CPU).</param>
    /// <param name="name">The architecture's name (e.g. the variant's, RepLKNet-31B); null: "RepLKNet".</param>
    /// <exception cref="ConfigException">The configuration is invalid.</exception>
    public RepLKNetModel(RepLKNetConfig config, bool deploy = false, Device? device = null, string? name = null)
        : base("RepLKNet")
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config.Validate();
        Name = name ?? "RepLKNet";
        long c0 = config.Channels[0];
        stem = new ModuleList<ConvBn>(
            new ConvBn(config.InChannels, c0, 3, 2, 1, 1, relu: true, device),
            new ConvBn(c0, c0, 3, 1, 1, c0, relu: true, device),
            new ConvBn(c0, c0, 1, 1, 0, 1, relu: true, device),
            new ConvBn(c0, c0, 3, 2, 1, c0, relu: true, device));

        var schedule = config.DropPathSchedule();
        stages = new ModuleList<RepLKNetStage>();
        transitions = new ModuleList<Sequential>();
        var features = new List<FeatureInfo>();
        int offset = 0;
        for (int i = 0; i < config.NumStages; i++)
        {
            var rates = schedule.Skip(offset).Take(config.Layers[i]).ToArray();
            offset += config.Layers[i];
            stages.Add(new RepLKNetStage(config, i, rates, deploy, device));
            features.Add(new FeatureInfo(i, config.Channels[i], 4 << i, $"stages.{i}"));
            if (i < config.NumStages - 1)
            {
                long next = config.Channels[i + 1];
                transitions.Add(Sequential(
                    ("0", new ConvBn(config.Channels[i], next, 1, 1, 0, 1, relu: true, device)),
                    ("1", new ConvBn(next, next, 3, 2, 1, next, relu: true, device))));
            }
        }

        if (config.NumClasses is int classes)
        {
            norm = new BatchNorm2d(config.Channels[^1], device: device);
            avgpool = AdaptiveAvgPool2d(1);
            head = Linear(config.Channels[^1], classes, device: device);
        }

        FeatureInfo = features;
        RegisterComponents();
    }

    /// <summary>The configuration the model was built from (its num_classes follows <see cref="reset_classifier"/>).</summary>
    public RepLKNetConfig Config { get; private set; }

    /// <inheritdoc />
    public string Name { get; }

    /// <inheritdoc />
    public ModelFamily Family => ModelFamily.RepLKNet;

    /// <inheritdoc />
    public int InChannels => Config.InChannels;

    /// <inheritdoc />
    public int? NumClasses => Config.NumClasses;

    /// <inheritdoc />
    public int NumFeatures => Config.Channels[^1];

    /// <summary>Channels and stride of every stage output (the official out_indices outputs, stride 4, 8, 16, 32).</summary>
    public IReadOnlyList<FeatureInfo> FeatureInfo { get; }

    /// <inheritdoc />
    Module<Tensor, Tensor> IImageModel.AsModule() => this;

    /// <summary>Whether every large-kernel module is in its deploy form.</summary>
    public bool IsDeploy => modules().OfType<ReparamLargeKernelConv>().All(m => m.IsDeploy);

    /// <summary>The stages, in order.</summary>
    public IReadOnlyList<RepLKNetStage> Stages => [.. stages];

    /// <summary>Stem, then every stage with its transition: the last stage's feature map (N, C_last, R/32, R/32), before <c>norm</c>.</summary>
    public Tensor forward_features(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = Stem(input);
        for (int i = 0; i < stages.Count; i++)
        {
            x = stages[i].call(x);
            if (i < transitions.Count)
            {
                x = transitions[i].call(x);
            }
        }

        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Per-stage features taken before each transition and passed through <c>stages[i].norm</c>: the official
    /// out_indices outputs. <paramref name="indices"/> defaults to the configured out_indices, or every stage.
    /// </summary>
    public IReadOnlyList<Tensor> forward_intermediates(Tensor input, IReadOnlyList<int>? indices = null)
    {
        var wanted = indices ?? Config.OutIndices ?? Enumerable.Range(0, stages.Count).ToArray();
        foreach (int i in wanted)
        {
            if (i < 0 || i >= stages.Count)
            {
                throw new ArgumentOutOfRangeException(nameof(indices), i, $"the model has {stages.Count} stages");
            }
        }

        using var scope = NewDisposeScope();
        var outputs = new List<Tensor>();
        var x = Stem(input);
        int last = wanted.Max();
        for (int i = 0; i <= last; i++)
        {
            x = stages[i].call(x);
            if (wanted.Contains(i))
            {
                outputs.Add(stages[i].Norm.call(x).MoveToOuterDisposeScope());
            }

            if (i < transitions.Count && i < last)
            {
                x = transitions[i].call(x);
            }
        }

        return outputs;
    }

    /// <summary><c>norm</c> (BN) → global average pool → flatten → <c>head</c>; with <paramref name="preLogits"/> stops before the head.</summary>
    public Tensor forward_head(Tensor features, bool preLogits = false)
    {
        if (norm is null || avgpool is null || head is null)
        {
            throw new InvalidOperationException("this RepLKNet is a backbone (num_classes is null): it has no classifier head");
        }

        using var scope = NewDisposeScope();
        var x = avgpool.call(norm.call(features)).flatten(1);
        return (preLogits ? x : head.call(x)).MoveToOuterDisposeScope();
    }

    /// <summary>Classifier: logits (N, num_classes). Backbone: the last requested stage's feature (see <see cref="forward_intermediates"/>).</summary>
    public override Tensor forward(Tensor input)
    {
        if (head is null)
        {
            var features = forward_intermediates(input);
            var last = features[^1];
            foreach (var f in features.Take(features.Count - 1))
            {
                f.Dispose();
            }

            return last;
        }

        using var scope = NewDisposeScope();
        return forward_head(forward_features(input)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Switches every large-kernel module to its deploy form in place (the official <c>structural_reparam</c>; with
    /// <paramref name="fuseBn"/> also <c>deep_fuse_BN</c>); returns how many were switched.
    /// </summary>
    public int Reparameterize(bool fuseBn = false) => Reparameterizer.Reparameterize(this, fuseBn);

    /// <inheritdoc />
    public ModelDescription Describe() => ModelDescription.Of(this);

    /// <summary>Replaces the classifier with a fresh Linear(C_last, <paramref name="numClasses"/>) (transfer learning).</summary>
    public void reset_classifier(int numClasses)
    {
        if (head is null)
        {
            throw new InvalidOperationException("this RepLKNet is a backbone (num_classes is null): it has no classifier to reset");
        }

        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numClasses);
        var fresh = Linear(head.in_features, numClasses, device: head.weight!.device);
        head.Dispose();
        head = fresh;
        _internal_submodules["head"] = fresh;
        Config = Config.WithNumClasses(numClasses);
    }

    private Tensor Stem(Tensor input)
    {
        var x = input;
        foreach (var layer in stem)
        {
            x = layer.call(x);
        }

        return x;
    }
}
