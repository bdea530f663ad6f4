using RepLKNet.Models;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Checkpoints;

/// <summary>A model built and loaded from a checkpoint, with how it was matched.</summary>
/// <param name="Model">The model (CPU, eval mode).</param>
/// <param name="Arch">Architecture name.</param>
/// <param name="Form">The form the checkpoint is in (the model is built in it).</param>
/// <param name="Report">Key matching report.</param>
/// <param name="Metadata">The checkpoint's RepLKNet metadata, if any.</param>
public sealed record LoadedModel(RepLKNetModel Model, string Arch, ModelForm Form, LoadReport Report, CheckpointMetadata? Metadata);

/// <summary>What to load and how strictly.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>A variant name or JSON configuration path; null to take the architecture from the checkpoint's metadata.</summary>
    public string? Arch { get; init; }

    /// <summary>Use <c>model_ema</c> of a PyTorch training checkpoint.</summary>
    public bool Ema { get; init; }

    /// <summary>Fail on any missing, unexpected or mismatched key (default); otherwise load what fits.</summary>
    public bool Strict { get; init; } = true;

    /// <summary>Classifier size; null: the checkpoint's head size (or the configuration's when it has none).</summary>
    public int? NumClasses { get; init; }

    /// <summary>Skip a classifier of another size (transfer learning): the head keeps its fresh initialization.</summary>
    public bool SkipMismatchedHead { get; init; }
}

/// <summary>Builds the right model for a checkpoint (architecture, form, classes) and loads it by key.</summary>
public static class ModelLoader
{
    /// <summary>Reads <paramref name="weights"/> and returns the loaded model in eval mode.</summary>
    /// <exception cref="CheckpointException">
    /// The file is unreadable or does not fit the architecture (message names the file), or it does not record its
    /// architecture and <see cref="ModelLoadOptions.Arch"/> is null (<see cref="CheckpointException.ParamName"/> "Arch").
    /// </exception>
    /// <exception cref="ConfigException">The architecture cannot be resolved (<see cref="ModelRegistry.Resolve"/>).</exception>
    public static LoadedModel Load(string weights, ModelLoadOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        using var checkpoint = CheckpointFile.Read(weights, options.Ema);
        (string name, RepLKNetConfig config) = options.Arch is not null
            ? ModelRegistry.Resolve(options.Arch)
            : checkpoint.Metadata is { } meta
                ? (meta.Arch, meta.Config)
                : throw new CheckpointException(
                    $"'{weights}' does not record its architecture: pass {nameof(ModelLoadOptions.Arch)} (a variant name or a JSON configuration)",
                    nameof(ModelLoadOptions.Arch));

        if (options.NumClasses is int requested)
        {
            config = config.WithNumClasses(requested);
        }
        else if (!options.SkipMismatchedHead && config.NumClasses is not null && checkpoint.State.TryGetValue("head.weight", out var head) &&
                 head.dim() == 2 && head.size(0) != config.NumClasses)
        {
            // A fine-tuned classifier: follow the checkpoint's head size.
            config = config.WithNumClasses((int)head.size(0));
        }

        var form = checkpoint.Form;
        var model = ModelForms.Create(config, form, name: name);
        string source = $"'{weights}' ({checkpoint.Source}, {form.Name()} form) for {name}";
        LoadReport report;
        try
        {
            report = StateDictLoader.Load(model, checkpoint.State, options.Strict, options.SkipMismatchedHead, source);
        }
        catch
        {
            model.Dispose();
            throw;
        }

        model.eval();
        return new LoadedModel(model, name, form, report, checkpoint.Metadata);
    }
}
