using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet reparam</c>: training checkpoint → deploy (or fused) checkpoint, verified before it is written.</summary>
public sealed class ReparamCommand(IAnsiConsole console) : Command<ReparamCommand.Settings>
{
    /// <summary>End-to-end tolerance relative to the largest logit (<see cref="EquivalenceCheck.DefaultTolerance"/>).</summary>
    public const double Tolerance = EquivalenceCheck.DefaultTolerance;

    /// <summary>Options of <c>reparam</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Output path.</summary>
        [CommandOption("--out <FILE>")]
        [Description("Output checkpoint: .pth/.pt for PyTorch, anything else (e.g. .safetensors) in the project's format with metadata.")]
        public string? Out { get; init; }

        /// <summary>Also fuse every conv+BN.</summary>
        [CommandOption("--fuse-bn")]
        [Description("Also fold every remaining conv+BN pair (not the pre-BNs) into biased convs: faster inference, its own key set.")]
        public bool FuseBn { get; init; }

        /// <summary>Verification input size.</summary>
        [CommandOption("--input-size <SIZE>")]
        [Description("Resolution of the random verification batch (default: the variant's, else 224; segmenters: the preset's crop, else 96).")]
        public int? InputSize { get; init; }

        /// <summary>Verification batch size.</summary>
        [CommandOption("--batch <N>")]
        [Description("Size of the random verification batch.")]
        [DefaultValue(2)]
        public int Batch { get; init; } = 2;

        /// <summary>Seed of the verification batch.</summary>
        [CommandOption("--seed <SEED>")]
        [Description("Seed of the random verification batch.")]
        [DefaultValue(0L)]
        public long Seed { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (string.IsNullOrWhiteSpace(Out))
            {
                return ValidationResult.Error("--out is required");
            }

            if (InputSize is <= 0 || Batch <= 0)
            {
                return ValidationResult.Error("--input-size and --batch must be positive");
            }

            return base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var target = settings.FuseBn ? ModelForm.Fused : ModelForm.Deploy;
        // Already converted: an ArgumentException about 'weights', which the CLI reports as a usage error naming --weights.
        var options = new ReparamOptions
        {
            Target = target, Batch = settings.Batch, InputSize = settings.InputSize, Seed = (ulong)settings.Seed, Tolerance = Tolerance, Device = runtime.Device,
        };
        bool segmenter = SegmentorRegistry.IsSegmentor(settings.Arch) || (settings.Arch is null && SegmentorCheckpoint.IsSegmentorCheckpoint(settings.Weights!));
        if (segmenter && (settings.Ema || !settings.Strict || settings.NumClasses is not null))
        {
            throw new UsageException("--ema, --strict false and --num-classes do not apply to segmenter checkpoints");
        }

        var result = segmenter
            ? CheckpointReparameterization.ConvertSegmentor(settings.Weights!, settings.Arch, settings.Out!, options)
            : CheckpointReparameterization.Convert(settings.Weights!, settings.LoadOptions, settings.Out!, options);

        var report = result.Report;
        var table = new Table().AddColumns("module", "max |train − " + target.Name() + "|", "max |train|");
        foreach (var step in report.Steps)
        {
            table.AddPlainRow(step.Module, step.MaxAbsDiff.ToString("0.00e+00", CultureInfo.InvariantCulture),
                step.MaxAbsReference.ToString("F4", CultureInfo.InvariantCulture));
        }

        console.Write(table);
        string verdict = string.Create(CultureInfo.InvariantCulture,
            $"end to end: max abs diff {report.EndToEnd.MaxAbsDiff:0.000e+00} = {report.RelativeEndToEnd:0.000e+00} of the largest output {report.EndToEnd.MaxAbsReference:F4} " +
            $"(batch {settings.Batch} at {result.Resolution}×{result.Resolution}, tolerance {Tolerance:0e+00})");
        console.Profile.Out.Writer.WriteLine(verdict);
        if (!result.Written)
        {
            Console.Error.WriteLine($"replknet: error: the {target.Name()} form differs from the train form beyond {Tolerance:E0}; '{settings.Out}' was not written");
            return ExitCodes.Failure;
        }

        console.Profile.Out.Writer.WriteLine($"wrote {target.Name()} checkpoint '{settings.Out}' ({result.Entries} entries)");
        return ExitCodes.Success;
    }
}
