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
    /// <exception cref="ArgumentNullException"><paramref name="config"/> is null.</exception>
    /// <exception cref="ConfigException">The configuration is invalid (<see cref="RepLKNetConfig.Validate"/>).</exception>
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

    /// <summary>Channels and total stride of every stage output (the official out_indices outputs): stage i has stride 4·2^i pixels (4, 8, 16, 32 for four stages).</summary>
    public IReadOnlyList<FeatureInfo> FeatureInfo { get; }

    /// <inheritdoc />
    Module<Tensor, Tensor> IImageModel.AsModule() => this;

    /// <summary>Whether every large-kernel module is in its deploy form.</summary>
    public bool IsDeploy => modules().OfType<ReparamLargeKernelConv>().All(m => m.IsDeploy);

    /// <summary>The stages, in order.</summary>
    public IReadOnlyList<RepLKNetStage> Stages => [.. stages];

    internal IReadOnlyList<ConvBn> StemLayers => [.. stem];

    internal IReadOnlyList<(ConvBn Pointwise, ConvBn Depthwise)> TransitionLayers =>
        [.. transitions.Select(t => ((ConvBn)t.children().First(), (ConvBn)t.children().Last()))];

    internal (BatchNorm2d Norm, Linear Head)? Classifier => norm is not null && head is not null ? (norm, head) : null;

    /// <summary>
    /// Stem (stride 4), then every stage with its transition (stride 2 each): the last stage's feature map, before <c>norm</c>
    /// (the official <c>forward_features</c> of a classifier).
    /// </summary>
    /// <param name="input">Images [N, C_in, H, W] (C_in = <see cref="InChannels"/>, H and W in pixels).</param>
    /// <returns>[N, C_last, ⌈H/s⌉, ⌈W/s⌉] with C_last = <see cref="NumFeatures"/> and s = 4·2^(stages − 1) (32 for four stages).</returns>
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
    /// out_indices outputs. Stops after the last requested stage.
    /// </summary>
    /// <param name="input">Images [N, C_in, H, W] (H and W in pixels).</param>
    /// <param name="indices">Stage indices (0-based) to return; null: the configured out_indices, or every stage.</param>
    /// <returns>
    /// One tensor per distinct requested stage, in stage order (not the order of <paramref name="indices"/>): stage i gives
    /// [N, Channels[i], ⌈H/s⌉, ⌈W/s⌉] with stride s = 4·2^i (4, 8, 16, 32). The norm is BatchNorm with
    /// norm_intermediate_features, otherwise the identity.
    /// </returns>
    /// <exception cref="ArgumentOutOfRangeException">An index is negative or not below the stage count (<see cref="ArgumentException.ParamName"/> is <c>indices</c>).</exception>
    /// <exception cref="ArgumentException"><paramref name="indices"/> is empty.</exception>
    public IReadOnlyList<Tensor> forward_intermediates(Tensor input, IReadOnlyList<int>? indices = null)
    {
        var wanted = StageIndices(indices, Config.OutIndices, stages.Count);

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

    /// <summary>
    /// The stages forward_intermediates returns: <paramref name="indices"/>, else <paramref name="configured"/> (out_indices),
    /// else all of <paramref name="stageCount"/>; checked (the parameter named is <c>indices</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An index is negative or not below <paramref name="stageCount"/>.</exception>
    /// <exception cref="ArgumentException">The list is empty.</exception>
    internal static IReadOnlyList<int> StageIndices(IReadOnlyList<int>? indices, IReadOnlyList<int>? configured, int stageCount)
    {
        var wanted = indices ?? configured ?? Enumerable.Range(0, stageCount).ToArray();
        if (wanted.Count == 0)
        {
            throw new ArgumentException("indices names no stage", nameof(indices));
        }

        foreach (int i in wanted)
        {
            if (i < 0 || i >= stageCount)
            {
                throw new ArgumentOutOfRangeException(nameof(indices), i, $"the model has {stageCount} stages");
            }
        }

        return wanted;
    }

    /// <summary><c>norm</c> (BN) → global average pool → flatten → <c>head</c>; with <paramref name="preLogits"/> stops before the head.</summary>
    /// <param name="features">The last stage's map [N, C_last, h, w] (<see cref="forward_features"/>'s output; any h, w ≥ 1).</param>
    /// <param name="preLogits">Return the pooled features instead of the logits.</param>
    /// <returns>Logits [N, num_classes] (unnormalized scores), or with <paramref name="preLogits"/> the pooled features [N, C_last].</returns>
    /// <exception cref="InvalidOperationException">The model is a backbone (num_classes is null).</exception>
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

    /// <summary>
    /// Classifier: <see cref="forward_features"/> then <see cref="forward_head"/>. Backbone: only the last (deepest) of the
    /// configured out_indices features of <see cref="forward_intermediates"/>; call that method for all of them.
    /// </summary>
    /// <param name="input">Images [N, C_in, H, W] (C_in = <see cref="InChannels"/>, H and W in pixels), normalized as in training.</param>
    /// <returns>Classifier: logits [N, num_classes]. Backbone: [N, Channels[i], ⌈H/s⌉, ⌈W/s⌉] for the deepest out_index i, stride s = 4·2^i.</returns>
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

    /// <summary>
    /// Replaces the classifier with a fresh, randomly initialized Linear(C_last, <paramref name="numClasses"/>) on the old
    /// head's device (transfer learning, as timm's <c>reset_classifier</c>); <see cref="Config"/> follows.
    /// </summary>
    /// <param name="numClasses">New number of classes (≥ 1).</param>
    /// <exception cref="InvalidOperationException">The model is a backbone (num_classes is null).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> is 0 or negative.</exception>
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
