using System.ComponentModel;
using RepLKNet.Checkpoints;
using RepLKNet.Ops;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli;

/// <summary>Options of commands that build a model: <c>--arch</c> and <c>--num-classes</c>.</summary>
public class ArchSettings : GlobalSettings
{
    /// <summary>Variant name or JSON configuration.</summary>
    [CommandOption("--arch <ARCH>")]
    [Description("A variant name (RepLKNet-FMNIST, -31B, -31L, -XL; case-insensitive) or a JSON file of the official constructor's arguments; train defaults to RepLKNet-FMNIST. Segmenters (describe, forward, export onnx, seg …): a preset (upernet-31B-ade20k-512, upernet-31B-ade20k-640, upernet-31L-ade20k-640, upernet-XL-ade20k-640, upernet-31B-cityscapes-769, upernet-tiny) or an MMSeg-style model JSON {backbone, decode_head, auxiliary_head}; seg train defaults to upernet-tiny.")]
    public string? Arch { get; init; }

    /// <summary>Classifier size override.</summary>
    [CommandOption("--num-classes <N>")]
    [Description("Classes of the classifier or segmenter (default: the architecture's, or the checkpoint's head).")]
    public int? NumClasses { get; init; }

    /// <inheritdoc />
    protected override ValidationResult ValidateOptions() =>
        NumClasses is <= 0 ? ValidationResult.Error($"--num-classes {NumClasses} must be positive") : base.ValidateOptions();
}

/// <summary>Options shared by commands that load a model from a checkpoint.</summary>
public class WeightsSettings : ArchSettings
{
    /// <summary>Checkpoint path.</summary>
    [CommandOption("--weights <FILE>")]
    [Description("Checkpoint to load: PyTorch .pth (raw, {'model','model_ema'} or MMSeg {'meta','state_dict'}: its backbone.* for classifiers, everything for segmenters), safetensors, or the project's format. With train: the weights to fine-tune from (train form; a classifier of another size is skipped); with seg train: a classification checkpoint for the backbone, or a segmenter's.")]
    public string? Weights { get; init; }

    /// <summary>Use the EMA weights of a training checkpoint.</summary>
    [CommandOption("--ema")]
    [Description("Load 'model_ema' from a PyTorch training checkpoint instead of 'model'.")]
    public bool Ema { get; init; }

    /// <summary>Strict key matching.</summary>
    [CommandOption("--strict <BOOL>")]
    [Description("Fail on any missing, unexpected or shape-mismatched key (default true); false loads what fits and reports the rest.")]
    [DefaultValue(true)]
    public bool Strict { get; init; } = true;

    /// <summary>The load options these settings describe.</summary>
    public ModelLoadOptions LoadOptions => new() { Arch = Arch, Ema = Ema, Strict = Strict, NumClasses = NumClasses };

    /// <summary>Whether the command needs <c>--weights</c> (true unless it overrides this).</summary>
    protected virtual bool WeightsRequired => true;

    /// <inheritdoc />
    protected override ValidationResult ValidateOptions() =>
        WeightsRequired && string.IsNullOrWhiteSpace(Weights) ? ValidationResult.Error("--weights is required") : base.ValidateOptions();
}

/// <summary>Parsing of the <c>--impl</c> list shared by the benchmarks.</summary>
internal static class BackendList
{
    /// <summary>Parses "ours,torch" (any order, case-insensitive) into distinct backends.</summary>
    public static DepthwiseBackend[] Parse(string text) =>
        [.. text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(s => s.ToLowerInvariant() switch
        {
            "ours" => DepthwiseBackend.Ours,
            "torch" => DepthwiseBackend.Torch,
            _ => throw new UsageException($"--impl '{s}': use ours and/or torch"),
        }).Distinct()];

    /// <summary>The name used in tables and JSON.</summary>
    public static string Name(DepthwiseBackend backend) => backend == DepthwiseBackend.Ours ? "ours" : "torch";
}
