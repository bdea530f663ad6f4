using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Benchmarks;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary><c>replknet bench onnx</c>: ONNX Runtime against the TorchSharp deploy model, same machine, same threads.</summary>
public sealed class BenchOnnxCommand(IAnsiConsole console) : Command<BenchOnnxCommand.Settings>
{
    /// <summary>Options of <c>bench onnx</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Model.</summary>
        [CommandOption("--onnx <FILE>")]
        [Description("An export of 'replknet export onnx'.")]
        public string? Onnx { get; init; }

        /// <summary>Batch.</summary>
        [CommandOption("--batch <B>")]
        [Description("Images per run (a graph with a fixed batch must match it).")]
        [DefaultValue(8)]
        public int Batch { get; init; } = 8;

        /// <summary>Reps.</summary>
        [CommandOption("--reps <N>")]
        [Description("Timed runs per engine (median), after the warm-up (--warmup).")]
        [DefaultValue(5)]
        public int Reps { get; init; } = 5;

        /// <summary>Warm-up runs.</summary>
        [CommandOption("--warmup <N>")]
        [Description("Untimed runs per engine before timing, exactly. Default: 2, then more until .NET's JIT has settled (no method compiled for 0.5 s, then for 64 runs or 5 s; no warm-up run starts after 30 s; unoptimized tier-0 code would be timed).")]
        public int? Warmup { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            string.IsNullOrWhiteSpace(Onnx) ? ValidationResult.Error("--onnx is required")
            : Batch <= 0 ? ValidationResult.Error($"--batch {Batch} must be positive")
            : Reps <= 0 ? ValidationResult.Error($"--reps {Reps} must be positive")
            : Warmup < 0 ? ValidationResult.Error($"--warmup {Warmup}: must be 0 or more")
            : base.ValidateOptions() is { Successful: false } failed ? failed
            : DeviceRequest.Kind == DeviceRequestKind.Cuda ? ValidationResult.Error($"--device {Device}: bench onnx runs both engines on the CPU (ONNX Runtime's CPU provider)")
            : ValidationResult.Success();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TorchRuntime.Initialize(DeviceRequest.Cpu);
        using var bench = OnnxBenchmark.Open(settings.Onnx!, settings.Batch);
        var info = bench.Model;
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] ({1}, {2}), batch {3} at {4}×{5}, {6} threads, CPU",
            Markup.Escape(Path.GetFileName(settings.Onnx!)), Markup.Escape(info.Arch), info.Form, settings.Batch, info.InputHeight, info.InputWidth, bench.Threads);
        var r = bench.Run(settings.Reps, settings.Warmup);
        var table = new Table().AddColumns("engine", "ms/batch", "images/s", "peak RSS");
        table.AddRow($"ONNX Runtime {Markup.Escape(r.OrtVersion)}", F(r.OrtMs, "F1"), F(r.OrtImagesPerSecond, "F2"), Peak(r.OrtPeakMemory));
        table.AddRow("TorchSharp deploy, our depthwise conv", F(r.TorchSharpMs, "F1"), F(r.TorchSharpImagesPerSecond, "F2"), Peak(r.TorchSharpPeakMemory));
        table.AddRow("TorchSharp deploy, libtorch's depthwise conv", F(r.LibTorchDepthwiseMs, "F1"), F(r.LibTorchDepthwiseImagesPerSecond, "F2"), Peak(r.LibTorchDepthwisePeakMemory));
        if (r.Frozen is { } frozen)
        {
            table.AddRow($"TorchSharp frozen ({(frozen.ChannelsLast ? "channels_last" : "NCHW")}{(frozen.BatchParallel ? ", batch-parallel" : "")}), our depthwise conv",
                F(frozen.Ms, "F1"), F(r.Batch / (frozen.Ms / 1e3), "F2"), Peak(frozen.PeakMemory));
        }

        console.Write(table);
        if ((r.OrtPeakMemory ?? r.TorchSharpPeakMemory) is { } memory)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "peak RSS: the whole process's during each engine's timed runs, both engines' weights loaded ({0})", Markup.Escape(memory.Source));
        }

        if (r.WarmupRuns is { } warm)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "warm-up runs before timing, by row: {0}{1}", string.Join(", ", warm),
                settings.Warmup is null ? " (until the JIT had settled)" : "");
        }

        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]ONNX Runtime / TorchSharp: {0:F2}× (ours), {1:F2}× (libtorch's)[/] (images/s)",
            r.OrtImagesPerSecond / r.TorchSharpImagesPerSecond, r.OrtImagesPerSecond / r.LibTorchDepthwiseImagesPerSecond);
        if (r.Frozen is { } f)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "[bold]TorchSharp frozen / ONNX Runtime: {0:F2}×[/] (images/s); frozen vs deploy model outputs: max |Δ| {1:E1}",
                r.OrtMs / f.Ms, f.MaxLogitDifference);
        }
        settings.WriteJson(new JsonObject
        {
            ["onnx"] = settings.Onnx, ["arch"] = info.Arch, ["form"] = info.Form, ["batch"] = settings.Batch, ["input_size"] = info.InputSize, ["input_height"] = info.InputHeight, ["input_width"] = info.InputWidth,
            ["threads"] = r.Threads, ["ort_version"] = r.OrtVersion,
            ["ort_ms"] = Math.Round(r.OrtMs, 2), ["ort_images_per_s"] = Math.Round(r.OrtImagesPerSecond, 3),
            ["torchsharp_ms"] = Math.Round(r.TorchSharpMs, 2), ["torchsharp_images_per_s"] = Math.Round(r.TorchSharpImagesPerSecond, 3),
            ["torchsharp_libtorch_dw_ms"] = Math.Round(r.LibTorchDepthwiseMs, 2), ["torchsharp_libtorch_dw_images_per_s"] = Math.Round(r.LibTorchDepthwiseImagesPerSecond, 3),
            ["ort_peak_rss_bytes"] = r.OrtPeakMemory?.Bytes, ["torchsharp_peak_rss_bytes"] = r.TorchSharpPeakMemory?.Bytes,
            ["torchsharp_libtorch_dw_peak_rss_bytes"] = r.LibTorchDepthwisePeakMemory?.Bytes, ["peak_rss_since_reset"] = (r.OrtPeakMemory ?? r.TorchSharpPeakMemory)?.SinceReset,
            ["frozen_ms"] = r.Frozen is { } fj ? Math.Round(fj.Ms, 2) : null, ["frozen_images_per_s"] = r.Frozen is { } fi ? Math.Round(r.Batch / (fi.Ms / 1e3), 3) : null,
            ["frozen_channels_last"] = r.Frozen?.ChannelsLast, ["frozen_batch_parallel"] = r.Frozen?.BatchParallel,
            ["frozen_peak_rss_bytes"] = r.Frozen?.PeakMemory?.Bytes, ["frozen_max_abs_diff"] = r.Frozen?.MaxLogitDifference,
            ["warmup_runs"] = r.WarmupRuns is { } wj ? new JsonArray([.. wj.Select(n => (JsonNode)n)]) : null,
        });
        return ExitCodes.Success;
    }

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);

    private static string Peak(PeakResidentMemory? memory) => memory is { } m ? Markup.Escape(m.ToString()) : "n/a";
}
