using RepLKNet.Models;
using RepLKNet.Reparam;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Checkpoints;

/// <summary>How to convert a training checkpoint.</summary>
public sealed record ReparamOptions
{
    /// <summary>The form to write: <see cref="ModelForm.Deploy"/> (the official <c>structural_reparam</c>) or <see cref="ModelForm.Fused"/> (also every conv+BN folded).</summary>
    public ModelForm Target { get; init; } = ModelForm.Deploy;

    /// <summary>Images in the random verification batch [N, C, S, S].</summary>
    public int Batch { get; init; } = 4;

    /// <summary>Side S of the verification batch; null: the variant's pretrained input size, else 224.</summary>
    public int? InputSize { get; init; }

    /// <summary>Seed of the verification batch (drawn on the CPU, so it is the same whatever the device).</summary>
    public ulong Seed { get; init; }

    /// <summary>Largest end-to-end |train − converted| allowed, relative to the largest train-form output.</summary>
    public double Tolerance { get; init; } = EquivalenceCheck.DefaultTolerance;

    /// <summary>Where the two forms run; null: the CPU.</summary>
    public Device? Device { get; init; }
}

/// <summary>What <see cref="CheckpointReparameterization.Convert"/> did.</summary>
/// <param name="Arch">The source checkpoint's architecture name.</param>
/// <param name="SourceForm">The source checkpoint's form (train).</param>
/// <param name="Report">Train form vs converted form on the verification batch, module by module.</param>
/// <param name="Resolution">Side of the verification batch.</param>
/// <param name="Written">Whether the converted checkpoint was written (only within the tolerance).</param>
/// <param name="Entries">Entries of the written state dict.</param>
public sealed record ReparamResult(string Arch, ModelForm SourceForm, EquivalenceReport Report, int Resolution, bool Written, int Entries);

/// <summary>
/// Converts a train-form checkpoint into its deploy (or fused) form: load, re-parameterize a copy, verify it against the
/// train form on a random batch, and write it — with the source's metadata (class names, preprocessing) and the new form —
/// only when the two agree within the tolerance. Used by <c>replknet reparam</c> and by the end of every training run.
/// </summary>
public static class CheckpointReparameterization
{
    /// <summary>Converts <paramref name="weights"/> into <paramref name="outPath"/> (format by extension: .pth/.pt/.bin PyTorch, else the project's safetensors).</summary>
    /// <exception cref="ArgumentException">The checkpoint is already in the target (or fused) form (ParamName <c>weights</c>), or a batch/size is not positive.</exception>
    /// <exception cref="CheckpointException">The checkpoint cannot be read or does not fit its architecture.</exception>
    public static ReparamResult Convert(string weights, ModelLoadOptions load, string outPath, ReparamOptions options)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(load);
        ArgumentNullException.ThrowIfNull(outPath);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Batch < 1 || options.InputSize is < 1)
        {
            throw new ArgumentException($"Batch and InputSize must be positive, got {options.Batch} and {options.InputSize}", nameof(options));
        }

        using var scope = NewDisposeScope();
        var loaded = ModelLoader.Load(weights, load);
        using var source = loaded.Model;
        if (loaded.Form == options.Target || loaded.Form == ModelForm.Fused)
        {
            throw new ArgumentException($"weights '{weights}' is already in the {loaded.Form.Name()} form: nothing to convert", nameof(weights));
        }

        var device = options.Device ?? CPU;
        source.to(device);
        using var converted = Reparameterizer.ReparameterizedCopy(source, options.Target == ModelForm.Fused);
        int resolution = options.InputSize ?? (ModelRegistry.Find(loaded.Arch) is { } v ? v.Pretrained.InputSize.H : 224);
        using var generator = new Generator(options.Seed);
        var input = randn([options.Batch, source.Config.InChannels, resolution, resolution], generator: generator).to(device);
        var report = EquivalenceCheck.Compare(source, converted, input);
        if (!(report.RelativeEndToEnd <= options.Tolerance))
        {
            return new ReparamResult(loaded.Arch, loaded.Form, report, resolution, Written: false, Entries: 0);
        }

        var state = StateDicts.Ordered(converted);
        var metadata = loaded.Metadata is { } m
            ? m with { Form = options.Target, Config = converted.Config, TrainingState = null }
            : new CheckpointMetadata(loaded.Arch, converted.Config, options.Target);
        CheckpointFile.Write(outPath, state, metadata);
        return new ReparamResult(loaded.Arch, loaded.Form, report, resolution, Written: true, state.Count);
    }

    /// <summary>
    /// Converts a train-form segmenter checkpoint (any layout <see cref="SegmentorCheckpoint.Load"/> reads) into its deploy
    /// or fused form, verified as for classifiers: the backbone's features, the decode head's logits and the input-size
    /// logits of both forms are compared on a random batch, and <paramref name="outPath"/> is written (MMSeg layout for
    /// .pth/.pt, else safetensors; classes and palette kept) only within the tolerance.
    /// </summary>
    /// <param name="weights">The train-form segmenter checkpoint.</param>
    /// <param name="arch">Preset or model JSON; null: the checkpoint's recorded architecture.</param>
    /// <param name="outPath">Destination.</param>
    /// <param name="options">Target form, verification batch (side: <see cref="ReparamOptions.InputSize"/>, default the
    /// preset's crop height) and tolerance.</param>
    /// <exception cref="ArgumentException">Already in the target or fused form (ParamName <c>weights</c>), or a batch/size is not positive.</exception>
    /// <exception cref="CheckpointException">The checkpoint cannot be read or does not fit.</exception>
    public static ReparamResult ConvertSegmentor(string weights, string? arch, string outPath, ReparamOptions options)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(outPath);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Batch < 1 || options.InputSize is < 1)
        {
            throw new ArgumentException($"Batch and InputSize must be positive, got {options.Batch} and {options.InputSize}", nameof(options));
        }

        using var scope = NewDisposeScope();
        var loaded = SegmentorCheckpoint.Load(weights, arch);
        using var source = loaded.Model;
        if (loaded.Info.Form == options.Target || loaded.Info.Form == ModelForm.Fused)
        {
            throw new ArgumentException($"weights '{weights}' is already in the {loaded.Info.Form.Name()} form: nothing to convert", nameof(weights));
        }

        var device = options.Device ?? CPU;
        using var converted = SegmentorCheckpoint.Create(source.Config, ModelForm.Train, loaded.Arch);
        using (no_grad())
        {
            var target = StateDicts.Ordered(converted).ToDictionary(kv => kv.Key, kv => kv.Value);
            foreach (var (key, value) in StateDicts.Ordered(source))
            {
                target[key].copy_(value);
            }
        }

        converted.Reparameterize(options.Target == ModelForm.Fused);
        source.to(device).eval();
        converted.to(device).eval();
        int resolution = options.InputSize ?? loaded.Info.Input?.CropSize.H ?? Models.Segmentation.SegmentorRegistry.RecipeFor(loaded.Arch, source.Config, null).Recipe.CropSize.H;
        using var generator = new Generator(options.Seed);
        var input = randn([options.Batch, source.InChannels, resolution, resolution], generator: generator).to(device);
        var steps = new List<StepDifference>();
        StepDifference Diff(string module, Tensor reference, Tensor candidate) => new(module,
            (reference - candidate).abs().max().item<float>(), reference.abs().max().item<float>());
        StepDifference endToEnd;
        using (no_grad())
        {
            var a = source.ExtractFeatures(input);
            var b = converted.ExtractFeatures(input);
            var indices = source.Config.Backbone.OutIndices!;
            for (int i = 0; i < a.Count; i++)
            {
                steps.Add(Diff($"backbone stage {indices[i]}", a[i], b[i]));
            }

            steps.Add(Diff("decode_head", source.DecodeHead.call(a), converted.DecodeHead.call(b)));
            endToEnd = Diff("logits", source.call(input), converted.call(input));
        }

        var report = new EquivalenceReport(steps, endToEnd);
        if (!(report.RelativeEndToEnd <= options.Tolerance))
        {
            return new ReparamResult(loaded.Arch, loaded.Info.Form, report, resolution, Written: false, Entries: 0);
        }

        SegmentorCheckpoint.Save(outPath, converted, loaded.Arch, loaded.Info.Classes, loaded.Info.Palette, input: loaded.Info.Input);
        return new ReparamResult(loaded.Arch, loaded.Info.Form, report, resolution, Written: true, StateDicts.Ordered(converted).Count);
    }
}
