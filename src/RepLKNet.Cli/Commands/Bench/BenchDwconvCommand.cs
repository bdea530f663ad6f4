using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Benchmarks;
using RepLKNet.Ops;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary><c>replknet bench dwconv</c>: the paper's Table 1 — a stack of depthwise layers per (R, K), ours vs libtorch.</summary>
public sealed class BenchDwconvCommand(IAnsiConsole console) : Command<BenchDwconvCommand.Settings>
{
    /// <summary>Options of <c>bench dwconv</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Batch.</summary>
        [CommandOption("--batch <N>")]
        [Description("Batch size (default 8 on the CPU, 64 — the paper's — on CUDA).")]
        public int? Batch { get; init; }

        /// <summary>Channels.</summary>
        [CommandOption("--channels <C>")]
        [Description("Channels.")]
        [DefaultValue(384)]
        public int Channels { get; init; } = 384;

        /// <summary>Resolutions.</summary>
        [CommandOption("--sizes <LIST>")]
        [Description("Resolutions R (input R×R), comma-separated.")]
        [DefaultValue("16,32,64")]
        public string Sizes { get; init; } = "16,32,64";

        /// <summary>Kernels.</summary>
        [CommandOption("--kernels <LIST>")]
        [Description("Odd kernel sizes, comma-separated.")]
        [DefaultValue("3,5,7,9,13,17,21,27,29,31")]
        public string Kernels { get; init; } = "3,5,7,9,13,17,21,27,29,31";

        /// <summary>Layers.</summary>
        [CommandOption("--layers <L>")]
        [Description("Depthwise layers in the stack.")]
        [DefaultValue(24)]
        public int Layers { get; init; } = 24;

        /// <summary>Pass.</summary>
        [CommandOption("--pass <PASS>")]
        [Description("fwd, bwd (input-grad, weight-grad, and both together), all, or a comma-separated list of fwd, dgrad, wgrad, bwd.")]
        [DefaultValue("fwd")]
        public string Pass { get; init; } = "fwd";

        /// <summary>Implementations.</summary>
        [CommandOption("--impl <LIST>")]
        [Description("Implementations to compare: ours, torch.")]
        [DefaultValue("ours,torch")]
        public string Implementations { get; init; } = "ours,torch";

        /// <summary>Repetitions.</summary>
        [CommandOption("--reps <N>")]
        [Description("Timed repetitions per cell (median; default 3 on the CPU, 7 on CUDA); a cell stops repeating after 20 s.")]
        public int? Reps { get; init; }

        /// <summary>Verify first.</summary>
        [CommandOption("--check")]
        [Description("First check our kernels against libtorch in float64 (CPU: every instruction set this CPU runs; CUDA: the shape sweep of 'cuda check') and our first layer against libtorch in every cell; exit 1 on a mismatch.")]
        public bool Check { get; init; }

        /// <summary>PNG output.</summary>
        [CommandOption("--plot <FILE>")]
        [Description("Also draw latency against kernel size (log scale, one line per implementation and R) for the first pass as a PNG.")]
        public string? Plot { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        int[] sizes = CliParsing.IntList(settings.Sizes, "--sizes");
        int[] kernels = CliParsing.IntList(settings.Kernels, "--kernels");
        if (kernels.Any(k => k % 2 == 0))
        {
            throw new UsageException($"--kernels {settings.Kernels}: kernel sizes must be odd");
        }

        var passes = BenchPasses.Parse(settings.Pass);
        var impls = BackendList.Parse(settings.Implementations);
        if (settings.Batch is <= 0 || settings.Channels <= 0 || settings.Layers <= 0 || settings.Reps is <= 0)
        {
            throw new UsageException("--batch, --channels, --layers and --reps must be positive");
        }

        var machine = BenchMachine.Of(runtime.Device);
        bool cuda = machine.IsCuda;
        int cudaDevice = machine.CudaIndex;
        if (cuda && impls.Contains(DepthwiseBackend.Ours))
        {
            if (!Ops.Cuda.CudaDepthwise.IsAvailable)
            {
                throw new UsageException($"--impl ours on --device cuda: {Ops.Cuda.CudaDepthwise.UnavailableReason}");
            }

            if (passes.Any(p => p != BenchPasses.Forward) && !Ops.Cuda.CudaDepthwise.BackwardEnabled)
            {
                // With gradients tracked, CUDA calls go to libtorch: timing that as "ours" would mislead.
                throw new UsageException($"--pass {settings.Pass} with --impl ours on --device cuda: our CUDA backward kernels are opt-in until measured on a GPU (set {Ops.Cuda.CudaDepthwise.BackwardEnvironmentVariable}=1), else use --pass fwd or --impl torch");
            }
        }

        int batch = settings.Batch ?? (cuda ? 64 : 8);
        int reps = settings.Reps ?? (cuda ? 7 : 3);
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]Depthwise conv stack[/]: {0} layers of ({1}, {2}, R, R), fp32, NCHW, stride 1, pad K/2 on {3}{4}",
            settings.Layers, batch, settings.Channels, Markup.Escape(machine.Name), cuda ? ", CUDA events" : $" ({machine.Threads} threads)");
        if (settings.Check && cuda)
        {
            var checks = Ops.Cuda.CudaDepthwiseCheck.RunOnTensors(Environment.TickCount64, cudaDevice);
            int bad = checks.Count(c => !c.Passed);
            console.MarkupLine(CultureInfo.InvariantCulture, "CUDA check: {0} cases, {1} failed; worst vs float64 {2}", checks.Count, bad, Format(checks.Max(c => c.VsFloat64)));
            if (bad > 0)
            {
                Console.Error.WriteLine($"replknet: error: our CUDA kernel disagrees with libtorch beyond {Ops.Cuda.CudaDepthwiseCheck.Tolerance:0e+00} (run 'replknet cuda check' for the table)");
                return ExitCodes.Failure;
            }
        }
        else if (settings.Check)
        {
            var checks = DepthwiseSelfCheck.Run(Environment.TickCount64);
            var table = new Table().Title("our kernels vs libtorch float64 (max error / max |reference|)").AddColumns("ISA", "shape", "forward", "input-grad", "weight-grad");
            foreach (var c in checks)
            {
                table.AddPlainRow(c.Isa.ToString(), c.Shape, Format(c.Forward), Format(c.InputGrad), Format(c.WeightGrad));
            }

            console.Write(table);
            if (checks.Any(c => !(c.Max <= DepthwiseSelfCheck.Tolerance)))
            {
                Console.Error.WriteLine($"replknet: error: our depthwise kernels disagree with libtorch beyond {DepthwiseSelfCheck.Tolerance:0e+00}");
                return ExitCodes.Failure;
            }
        }

        double peak = machine.MeasurePeakGflops();
        if (cuda)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "Measured fp32 FFMA ceiling: [bold]{0:F1} TFLOP/s[/] (our microkernel, {1} SMs)", peak / 1e3, machine.Multiprocessors ?? 0);
        }
        else
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "Measured FMA peak: [bold]{0:F0} GFLOP/s[/] ({1}, {2} threads)", peak, machine.Isa?.ToString() ?? "", machine.Threads);
        }

        var options = new DepthwiseBenchOptions
        {
            Batch = batch, Channels = settings.Channels, Sizes = sizes, Kernels = kernels, Layers = settings.Layers,
            Passes = passes, Implementations = impls, Reps = reps, Device = runtime.Device, CheckCells = settings.Check,
        };
        int cells = sizes.Length * kernels.Length * passes.Count * impls.Length;
        var results = new List<DepthwiseBenchResult>();
        console.Progress().AutoClear(true).Start(ctx =>
        {
            var task = ctx.AddTask("timing", maxValue: cells);
            results = DepthwiseBenchmark.Run(options, r =>
            {
                task.Increment(1);
                task.Description = $"R={r.R} K={r.K} {r.Pass} {r.Implementation}";
                if (Console.IsOutputRedirected)
                {
                    console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {r.Implementation,-5} {r.Pass,-5} R={r.R,-3} K={r.K,-3} {r.Ms,10:F1} ms {r.Gflops,8:F1} GFLOP/s  peak RSS {r.PeakMemory?.ToString() ?? "n/a"}{(double.IsNaN(r.CheckError) ? string.Empty : $"  check {r.CheckError:0.0e+00}")}"));
                }
            });
        });

        foreach (string pass in passes)
        {
            RenderTable(pass, results.Where(r => r.Pass == pass).ToList(), sizes, kernels, impls, peak);
        }

        if (results.Select(r => r.PeakMemory).FirstOrDefault(m => m is not null) is { } memory)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "peak RSS: the largest of the row's cells, each the whole process's during its timed runs, with what the allocator kept from earlier cells ({0})",
                Markup.Escape(memory.Source));
        }

        if (settings.Json is { } json)
        {
            var root = new JsonObject
            {
                ["machine"] = new JsonObject
                {
                    ["device"] = cuda ? "cuda" : "cpu",
                    ["name"] = machine.Name,
                    ["threads"] = machine.Threads,
                    ["isa"] = machine.Isa?.ToString(),
                    ["peak_gflops"] = Math.Round(peak, 1),
                    ["peak_kind"] = machine.PeakKind,
                    ["libtorch"] = runtime.LibTorchVersion,
                    ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                },
                ["results"] = new JsonArray([.. results.Select(r => (JsonNode)new JsonObject
                {
                    ["impl"] = r.Implementation, ["pass"] = r.Pass, ["N"] = r.N, ["C"] = r.C, ["R"] = r.R, ["K"] = r.K,
                    ["layers"] = r.Layers, ["ms"] = Math.Round(r.Ms, 3), ["gflops"] = r.Gflops, ["reps"] = r.Reps,
                    ["check_error"] = double.IsNaN(r.CheckError) ? null : r.CheckError,
                    ["peak_rss_bytes"] = r.PeakMemory?.Bytes, ["peak_rss_since_reset"] = r.PeakMemory?.SinceReset,
                })]),
            };
            settings.WriteJson(root);
            console.MarkupLine($"wrote [bold]{Markup.Escape(json)}[/]");
        }

        if (settings.Plot is { } png)
        {
            string title = string.Create(CultureInfo.InvariantCulture,
                $"{passes[0]}: {settings.Layers} depthwise layers of ({batch}, {settings.Channels}, R, R), fp32 — {machine.Name}");
            BenchPlots.LatencyVsKernel(results, passes[0], title, png);
            console.MarkupLine($"wrote [bold]{Markup.Escape(png)}[/]");
        }

        if (results.Any(r => r.CheckError > CellTolerance))
        {
            Console.Error.WriteLine($"replknet: error: a timed cell's first layer differs from libtorch by more than {CellTolerance:0e+00} (see check_error)");
            return ExitCodes.Failure;
        }

        return ExitCodes.Success;
    }

    // fp32 against fp32: both sums round differently; 1e-4 of the largest output is far below any real bug.
    private const double CellTolerance = 1e-4;

    private void RenderTable(string pass, List<DepthwiseBenchResult> results, int[] sizes, int[] kernels, DepthwiseBackend[] impls, double peak)
    {
        var table = new Table().Title($"{pass}: ms for the whole stack (GFLOP/s{(double.IsNaN(peak) ? string.Empty : ", % of FMA peak")})");
        table.AddColumn("R");
        table.AddColumn("impl");
        foreach (int k in kernels)
        {
            table.AddColumn(new TableColumn($"K={k}").RightAligned());
        }

        bool memory = results.Any(x => x.PeakMemory is not null);
        if (memory)
        {
            table.AddColumn(new TableColumn("peak RSS").RightAligned());
        }

        foreach (int r in sizes)
        {
            foreach (var impl in impls)
            {
                string name = BackendList.Name(impl);
                var cells = kernels.Select(k => results.FirstOrDefault(x => x.R == r && x.K == k && x.Implementation == name) is { } c
                    ? string.Create(CultureInfo.InvariantCulture, $"{c.Ms:F1} ({c.Gflops:F0}{(double.IsNaN(peak) ? string.Empty : $", {100 * c.Gflops / peak:F0}%")})")
                    : "-");
                var row = results.Where(x => x.R == r && x.Implementation == name && x.PeakMemory is not null).Select(x => x.PeakMemory!.Value).ToList();
                string[] rowPeak = !memory ? [] : [row.Count == 0 ? "-" : row.MaxBy(m => m.Bytes).ToString()];
                table.AddPlainRow([r.ToString(CultureInfo.InvariantCulture), name, .. cells, .. rowPeak]);
            }

            if (impls.Length == 2)
            {
                var ratios = kernels.Select(k =>
                {
                    var ours = results.FirstOrDefault(x => x.R == r && x.K == k && x.Implementation == "ours");
                    var theirs = results.FirstOrDefault(x => x.R == r && x.K == k && x.Implementation == "torch");
                    return ours is null || theirs is null ? "-" : string.Create(CultureInfo.InvariantCulture, $"{theirs.Ms / ours.Ms:F1}×");
                });
                table.AddRow([r.ToString(CultureInfo.InvariantCulture), "[bold]speed-up[/]", .. ratios.Select(x => $"[bold]{x}[/]"), .. (memory ? new[] { string.Empty } : [])]);
            }
        }

        console.Write(table);
    }

    private static string Format(double value) => value.ToString("0.00e+00", CultureInfo.InvariantCulture);
}
