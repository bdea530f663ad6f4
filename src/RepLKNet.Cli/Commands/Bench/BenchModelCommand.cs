using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Benchmarks;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary><c>replknet bench model</c>: whole-model inference or training-step speed, ours vs libtorch's depthwise conv.</summary>
public sealed class BenchModelCommand(IAnsiConsole console) : Command<BenchModelCommand.Settings>
{
    /// <summary>Options of <c>bench model</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Architecture.</summary>
        [CommandOption("--arch <ARCH>")]
        [Description("A variant name or JSON configuration.")]
        [DefaultValue("RepLKNet-31B")]
        public string Arch { get; init; } = "RepLKNet-31B";

        /// <summary>Batch.</summary>
        [CommandOption("--batch <N>")]
        [Description("Batch size.")]
        [DefaultValue(8)]
        public int Batch { get; init; } = 8;

        /// <summary>Resolution.</summary>
        [CommandOption("--resolution <R>")]
        [Description("Input resolution (default: the variant's, else 224).")]
        public int? Resolution { get; init; }

        /// <summary>Mode.</summary>
        [CommandOption("--mode <MODE>")]
        [Description("infer (eval, no grad) or train (the training loop's step: forward, loss, backward, AdamW update).")]
        [DefaultValue("infer")]
        public string Mode { get; init; } = "infer";

        /// <summary>Implementations.</summary>
        [CommandOption("--impl <LIST>")]
        [Description("ours, torch or both.")]
        [DefaultValue("ours,torch")]
        public string Implementations { get; init; } = "ours,torch";

        /// <summary>Repetitions.</summary>
        [CommandOption("--reps <N>")]
        [Description("Timed repetitions (median); stops repeating after 60 s.")]
        [DefaultValue(3)]
        public int Reps { get; init; } = 3;

        /// <summary>Warm-up runs.</summary>
        [CommandOption("--warmup <N>")]
        [Description("Untimed runs per implementation before timing, exactly. Default: 3 in train mode (the heap still grows over the first steps and their page faults would be timed), 1 in infer mode, then more until .NET's JIT has settled (no method compiled for 0.5 s, then for 64 runs or 5 s; no warm-up run starts after 30 s; unoptimized tier-0 code would be timed).")]
        public int? Warmup { get; init; }

        /// <summary>Deploy form.</summary>
        [CommandOption("--deploy")]
        [Description("Re-parameterize first (infer only): the small-kernel branches and their BNs merged into the large kernels.")]
        public bool Deploy { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var (name, config) = ModelRegistry.Resolve(settings.Arch);
        string mode = settings.Mode.ToLowerInvariant() is "infer" or "train" ? settings.Mode.ToLowerInvariant() : throw new UsageException($"--mode '{settings.Mode}': use infer or train");
        var impls = BackendList.Parse(settings.Implementations);
        if (settings.Batch <= 0 || settings.Reps <= 0 || settings.Resolution is <= 0)
        {
            throw new UsageException("--batch, --reps and --resolution must be positive");
        }

        if (settings.Warmup is < 0)
        {
            throw new UsageException($"--warmup {settings.Warmup}: must be 0 or more");
        }

        if (settings.Deploy && mode != "infer")
        {
            throw new UsageException("--deploy times inference only; drop it or use --mode infer");
        }

        int resolution = settings.Resolution ?? ModelRegistry.Find(settings.Arch)?.Pretrained.InputSize.H ?? 224;
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] {1}{6}, batch {2} at {3}×{3}, {4}, {5} threads",
            Markup.Escape(name), mode, settings.Batch, resolution, runtime.Device, torch.get_num_threads(), settings.Deploy ? " (deploy form)" : string.Empty);
        var results = ModelBenchmark.Run(config, settings.Batch, resolution, mode, impls, runtime.Device, settings.Reps, 60, r =>
            console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {r.Implementation,-5} {r.Mode}: {r.Ms,10:F1} ms/batch  {r.ImagesPerSecond,8:F2} images/s  peak RSS {r.PeakMemory?.ToString() ?? "n/a"}  page faults/rep {r.MinorFaultsPerRep?.ToString(CultureInfo.InvariantCulture) ?? "n/a"}  ({r.Reps} reps after {r.Warmup} warm-up)")), settings.Deploy, settings.Warmup);
        var ours = results.FirstOrDefault(r => r.Implementation == "ours");
        var theirs = results.FirstOrDefault(r => r.Implementation == "torch");
        if (ours is not null && theirs is not null)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "[bold]speed-up ours/torch: {0:F2}×[/]", theirs.Ms / ours.Ms);
        }

        settings.WriteJson(new JsonObject
        {
            ["arch"] = name,
            ["form"] = settings.Deploy ? "deploy" : "train",
            ["device"] = runtime.Device.ToString(),
            ["threads"] = torch.get_num_threads(),
            ["results"] = new JsonArray([.. results.Select(r => (JsonNode)new JsonObject
            {
                ["impl"] = r.Implementation, ["mode"] = r.Mode, ["batch"] = r.Batch, ["resolution"] = r.Resolution,
                ["ms"] = Math.Round(r.Ms, 1), ["images_per_s"] = Math.Round(r.ImagesPerSecond, 3), ["peak_rss_bytes"] = r.PeakMemory?.Bytes, ["peak_rss_since_reset"] = r.PeakMemory?.SinceReset, ["reps"] = r.Reps,
                ["warmup"] = r.Warmup, ["minor_faults_per_rep"] = r.MinorFaultsPerRep,
            })]),
        });
        return ExitCodes.Success;
    }
}
