using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet describe</c>: a model's state dict in order, with shapes and dtypes.</summary>
public sealed class DescribeCommand(IAnsiConsole console) : Command<DescribeCommand.Settings>
{
    /// <summary>Options of <c>describe</c>.</summary>
    public sealed class Settings : ArchSettings
    {
        /// <summary>Describe the deploy form.</summary>
        [CommandOption("--deploy")]
        [Description("Describe the deploy (re-parameterized) form.")]
        public bool Deploy { get; init; }

        /// <summary>Describe the fused form.</summary>
        [CommandOption("--fused")]
        [Description("Describe the deploy form with every conv+BN pair fused (reparam --fuse-bn).")]
        public bool Fused { get; init; }

        /// <summary>Print JSON.</summary>
        [CommandOption("--json")]
        [Description("Print {arch, form, params, state_dict: [[{key, shape, dtype}]]} as JSON (segmenters: MMSeg's keys, backbone.* then decode_head.* and auxiliary_head.*).")]
        public bool Json { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            return string.IsNullOrWhiteSpace(Arch) ? ValidationResult.Error("--arch is required") : base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TorchRuntime.Initialize(DeviceRequest.Cpu);
        var form = settings.Fused ? ModelForm.Fused : settings.Deploy ? ModelForm.Deploy : ModelForm.Train;
        if (SegmentorRegistry.IsSegmentor(settings.Arch))
        {
            var (segName, segConfig) = SegmentorRegistry.Resolve(settings.Arch!);
            if (settings.NumClasses is int classes)
            {
                segConfig = segConfig.WithNumClasses(classes);
            }

            using var segmenter = SegmentorCheckpoint.Create(segConfig, form, segName, new Device("meta"));
            return Print(settings, segName, form, segmenter.Describe());
        }

        var (name, config) = ModelRegistry.Resolve(settings.Arch!);
        if (settings.NumClasses is int n)
        {
            config = ModelFactory.Fit(config, new ModelFit(NumClasses: n));
        }

        using var model = ModelForms.Create(config, form, new Device("meta"), name);
        return Print(settings, name, form, model.Describe());
    }

    private int Print(Settings settings, string name, ModelForm form, ModelDescription description)
    {
        var entries = description.StateDict;
        long parameters = description.Parameters;
        if (settings.Json)
        {
            var json = new JsonObject
            {
                ["arch"] = name,
                ["form"] = form.Name(),
                ["params"] = parameters,
                ["state_dict"] = new JsonArray([.. entries.Select(e => (JsonNode)new JsonObject
                {
                    ["key"] = e.Key,
                    ["shape"] = new JsonArray([.. e.Shape.Select(s => (JsonNode)s)]),
                    ["dtype"] = e.DTypeName,
                })]),
            };
            JsonOutput.Print(console, json);
            return ExitCodes.Success;
        }

        foreach (var entry in entries)
        {
            console.Profile.Out.Writer.WriteLine($"{entry.Key} [{string.Join(", ", entry.Shape)}] {entry.DTypeName}");
        }

        console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{name}, {form.Name()} form: {entries.Count} state-dict entries, {parameters:N0} parameters"));
        return ExitCodes.Success;
    }
}
