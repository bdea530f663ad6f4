using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using RepLKNet.Export;
using RepLKNet.IO;
using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary><c>replknet bench onnx</c>: ONNX Runtime against the TorchSharp deploy model, same machine, same threads.</summary>
public sealed class BenchOnnxCommand(IAnsiConsole console) : Command<BenchOnnxCommand.Settings>
{
    /// <summary>Options of <c>bench onnx</c>.</summary>
    public sealed class Settings : GlobalSettings
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
        [Description("Timed runs per engine (median), after two warm-up runs.")]
        [DefaultValue(5)]
        public int Reps { get; init; } = 5;

        /// <summary>Threads.</summary>
        [CommandOption("--threads <T>")]
        [Description("Threads for both engines (default: libtorch's get_num_threads()).")]
        public int? Threads { get; init; }

        /// <summary>JSON.</summary>
        [CommandOption("--json <FILE>")]
        [Description("Also write the results as JSON.")]
        public string? Json { get; init; }

        /// <inheritdoc />
        public override ValidationResult Validate() =>
            string.IsNullOrWhiteSpace(Onnx) ? ValidationResult.Error("--onnx is required")
            : Batch <= 0 || Reps <= 0 || Threads is <= 0 ? ValidationResult.Error("--batch, --reps and --threads must be positive")
            : base.Validate();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TorchRuntime.Initialize(DeviceRequest.Parse("cpu"));
        if (settings.Threads is int t)
        {
            TorchRuntime.SetThreads(t);
        }

        int threads = torch.get_num_threads();
        using var session = OnnxSession.Create(settings.Onnx!, threads);
        var info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, settings.Onnx!)
            ?? throw new UsageException($"--onnx {settings.Onnx}: no replknet metadata; export it with 'replknet export onnx'");
        int fixedBatch = session.InputMetadata[OnnxExporter.InputName].Dimensions[0];
        if (fixedBatch > 0 && fixedBatch != settings.Batch)
        {
            throw new UsageException($"--batch {settings.Batch}: the graph has a fixed batch of {fixedBatch} (export with --dynamic-batch for others)");
        }

        long[] shape = [settings.Batch, info.Channels, info.InputSize, info.InputSize];
        var input = new float[shape.Aggregate(1L, (a, b) => a * b)];
        var random = new Random(0);
        for (int i = 0; i < input.Length; i++)
        {
            input[i] = (float)(random.NextDouble() * 2 - 1);
        }

        // ONNX Runtime: one input OrtValue over a reused array; outputs allocated by the runtime.
        using var inputValue = OrtValue.CreateTensorValueFromMemory(input, shape);
        using var runOptions = new RunOptions();
        double OrtOnce()
        {
            var sw = Stopwatch.StartNew();
            using var outputs = session.Run(runOptions, [OnnxExporter.InputName], [inputValue], session.OutputNames);
            return sw.Elapsed.TotalMilliseconds;
        }

        // TorchSharp: the same architecture in the same form, random weights (speed does not depend on them).
        var config = RepLKNetConfig.FromJson(info.Config, $"{settings.Onnx} metadata");
        using var model = new RepLKNetModel(config with { DropPathRate = 0 }, deploy: true);
        model.eval();
        if (info.Form == "fused")
        {
            Reparameterizer.Reparameterize(model, fuseBn: true);
        }

        using var x = tensor(input, shape);
        bool features = !session.OutputNames.Contains(OnnxExporter.LogitsName);
        double TorchOnce()
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var sw = Stopwatch.StartNew();
            if (features)
            {
                _ = model.forward_intermediates(x);
            }
            else
            {
                _ = model.call(x);
            }

            return sw.Elapsed.TotalMilliseconds;
        }

        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] ({1}, {2}), batch {3} at {4}×{4}, {5} threads, CPU",
            Markup.Escape(Path.GetFileName(settings.Onnx!)), Markup.Escape(info.Arch), info.Form, settings.Batch, info.InputSize, threads);
        double ort = Median(OrtOnce, settings.Reps);
        double torchMs, libtorchMs;
        using (Ops.DepthwiseConv2d.Use(Ops.DepthwiseBackend.Ours))
        {
            torchMs = Median(TorchOnce, settings.Reps);
        }

        using (Ops.DepthwiseConv2d.Use(Ops.DepthwiseBackend.Torch))
        {
            libtorchMs = Median(TorchOnce, settings.Reps);
        }

        double ortRate = settings.Batch / (ort / 1e3), torchRate = settings.Batch / (torchMs / 1e3), libtorchRate = settings.Batch / (libtorchMs / 1e3);
        var table = new Table().AddColumns("engine", "ms/batch", "images/s");
        table.AddRow($"ONNX Runtime {Markup.Escape(OrtEnv.Instance().GetVersionString())}", ort.ToString("F1", CultureInfo.InvariantCulture), ortRate.ToString("F2", CultureInfo.InvariantCulture));
        table.AddRow("TorchSharp deploy, our depthwise conv", torchMs.ToString("F1", CultureInfo.InvariantCulture), torchRate.ToString("F2", CultureInfo.InvariantCulture));
        table.AddRow("TorchSharp deploy, libtorch's depthwise conv", libtorchMs.ToString("F1", CultureInfo.InvariantCulture), libtorchRate.ToString("F2", CultureInfo.InvariantCulture));
        console.Write(table);
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]ONNX Runtime / TorchSharp: {0:F2}× (ours), {1:F2}× (libtorch's)[/] (images/s)",
            ortRate / torchRate, ortRate / libtorchRate);
        if (settings.Json is { } json)
        {
            var root = new JsonObject
            {
                ["onnx"] = settings.Onnx, ["arch"] = info.Arch, ["form"] = info.Form, ["batch"] = settings.Batch, ["input_size"] = info.InputSize,
                ["threads"] = threads, ["ort_version"] = OrtEnv.Instance().GetVersionString(),
                ["ort_ms"] = Math.Round(ort, 2), ["ort_images_per_s"] = Math.Round(ortRate, 3),
                ["torchsharp_ms"] = Math.Round(torchMs, 2), ["torchsharp_images_per_s"] = Math.Round(torchRate, 3),
                ["torchsharp_libtorch_dw_ms"] = Math.Round(libtorchMs, 2), ["torchsharp_libtorch_dw_images_per_s"] = Math.Round(libtorchRate, 3),
            };
            AtomicFile.Write(json, s => s.Write(System.Text.Encoding.UTF8.GetBytes(root.ToJsonString(JsonOutput.Options) + "\n")));
        }

        return ExitCodes.Success;
    }

    private static double Median(Func<double> once, int reps)
    {
        once();
        once();
        var times = Enumerable.Range(0, reps).Select(_ => once()).Order().ToList();
        return times[times.Count / 2];
    }
}
