using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using RepLKNet.IO;
using RepLKNet.Ops;
using RepLKNet.Ops.Cuda;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands.Cuda;

/// <summary><c>replknet cuda info</c>: driver, devices, NVRTC and the cubin cache.</summary>
public sealed class CudaInfoCommand(IAnsiConsole console) : Command<GlobalSettings>
{
    /// <inheritdoc />
    public override int Execute(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        var table = new Table().AddColumns("what", "value");
        table.AddRow("driver", CudaDriver.IsAvailable ? $"CUDA {CudaDriver.DriverVersion()}" : Markup.Escape(CudaDriver.UnavailableReason ?? "unavailable"));
        if (CudaDriver.IsAvailable)
        {
            foreach (var d in CudaDriver.Devices())
            {
                table.AddRow($"cuda:{d.Ordinal}", Markup.Escape($"{d.Name}, {d.Architecture}, {d.Multiprocessors} SMs, {CudaDriver.MaxSharedMemoryPerBlockOptin(d.Ordinal) / 1024} KiB shared/block"));
            }
        }

        table.AddRow("NVRTC", Nvrtc.IsAvailable
            ? Markup.Escape($"{Nvrtc.Version()} ({Nvrtc.LibraryName}); architectures {string.Join(' ', Nvrtc.SupportedArchitectures().Select(a => $"sm_{a}"))}")
            : Markup.Escape(Nvrtc.UnavailableReason ?? "unavailable"));
        table.AddRow("cubin cache", Markup.Escape(CudaModules.CacheDirectory));
        table.AddRow("tuning table", $"{DepthwiseTuning.Entries.Count} entries");
        console.Write(table);
        return ExitCodes.Success;
    }
}

/// <summary>What the CUDA commands share.</summary>
internal static class CudaCli
{
    /// <summary>Initializes libtorch on the requested CUDA device and checks our kernels can run; usage error otherwise.</summary>
    public static (TorchRuntimeInfo Runtime, int Index) RequireDevice(GlobalSettings settings, string command)
    {
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        if (runtime.Device.type != DeviceType.CUDA || !CudaDepthwise.IsAvailable)
        {
            throw new UsageException($"{command} needs a CUDA device: {OptionNames.CudaUnavailableReason(runtime) ?? CudaDepthwise.UnavailableReason ?? "--device cpu was given"}");
        }

        return (runtime, runtime.Device.index < 0 ? 0 : runtime.Device.index);
    }
}

/// <summary>Options of <c>cuda compile</c>.</summary>
public sealed class CudaCompileSettings : GlobalSettings
{
    /// <summary>Architectures.</summary>
    [CommandOption("--arch <LIST>")]
    [Description("Real architectures to compile for, comma-separated.")]
    [DefaultValue("sm_80,sm_90")]
    public string Architectures { get; init; } = "sm_80,sm_90";

    /// <summary>Kernel sizes.</summary>
    [CommandOption("--kernels <LIST>")]
    [Description("Kernel sizes (default: every odd size from 3 to 63).")]
    public string? Kernels { get; init; }
}

/// <summary><c>replknet cuda compile</c>: compiles every kernel variant with NVRTC (no GPU needed) and reports registers and spills.</summary>
public sealed class CudaCompileCommand(IAnsiConsole console) : Command<CudaCompileSettings>
{
    /// <inheritdoc />
    public override int Execute(CommandContext context, CudaCompileSettings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (!Nvrtc.IsAvailable)
        {
            throw new UsageException(Nvrtc.UnavailableReason!);
        }

        string[] archs = settings.Architectures.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (archs.Length == 0 || archs.Any(a => !a.StartsWith("sm_", StringComparison.Ordinal)))
        {
            throw new UsageException($"--arch '{settings.Architectures}': give real architectures such as sm_80,sm_90");
        }

        int[] kernels = settings.Kernels is null
            ? [.. Enumerable.Range(1, 31).Select(i => 2 * i + 1)]
            : CliParsing.IntList(settings.Kernels, "--kernels");
        var results = CudaKernelCatalog.CompileAll(archs, kernels);
        var table = new Table().AddColumns("kernel", "arch", "registers", "spill st/ld bytes", "stack", "ms");
        foreach (var r in results.Where(r => r.Error is not null || r.Report?.Spills == true || r.Spec.Function == "ffma_peak" || r.Spec.Defines[0].Value is 3 or 13 or 31 or 63))
        {
            table.AddPlainRow(r.Spec.Label, r.Architecture, r.Report?.Registers.ToString(CultureInfo.InvariantCulture) ?? "-",
                r.Report is null ? "-" : $"{r.Report.SpillStoreBytes}/{r.Report.SpillLoadBytes}", r.Report?.StackBytes.ToString(CultureInfo.InvariantCulture) ?? "-",
                r.Milliseconds.ToString("F0", CultureInfo.InvariantCulture));
        }

        console.Write(table);
        int errors = results.Count(r => r.Error is not null), spills = results.Count(r => r.Report?.Spills == true);
        int maxRegisters = results.Max(r => r.Report?.Registers ?? 0);
        console.MarkupLine(CultureInfo.InvariantCulture, "{0} variants compiled with NVRTC {1} in {2:F1} s: {3} errors, {4} with spills, at most {5} registers (rows shown: K = 3, 13, 31, 63 and any problem)",
            results.Count, Nvrtc.Version(), results.Sum(r => r.Milliseconds) / 1e3, errors, spills, maxRegisters);
        foreach (var r in results.Where(r => r.Error is not null).Take(3))
        {
            Console.Error.WriteLine(r.Error);
        }

        return errors == 0 && spills == 0 ? ExitCodes.Success : ExitCodes.Failure;
    }
}

/// <summary>Options of <c>cuda check</c>.</summary>
public sealed class CudaCheckSettings : GlobalSettings
{
    /// <summary>Raw buffers.</summary>
    [CommandOption("--raw")]
    [Description("Run small cases on exact-size driver allocations without libtorch's CUDA (for compute-sanitizer).")]
    public bool Raw { get; init; }

    /// <summary>Backward too.</summary>
    [CommandOption("--backward")]
    [Description("Also check the backward kernels (input and weight gradient, determinism) against float64 autograd.")]
    public bool Backward { get; init; }

    /// <summary>Seed.</summary>
    [CommandOption("--seed <N>")]
    [Description("Random seed (default: from the clock, so each run draws fresh data).")]
    public long? Seed { get; init; }
}

/// <summary><c>replknet cuda check</c>: the CUDA forward kernel against float64, cuDNN and our CPU kernel over awkward shapes.</summary>
public sealed class CudaCheckCommand(IAnsiConsole console) : Command<CudaCheckSettings>
{
    /// <inheritdoc />
    public override int Execute(CommandContext context, CudaCheckSettings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        long seed = settings.Seed ?? Environment.TickCount64;
        List<CudaCheckResult> results;
        int device = settings.DeviceRequest.Index;
        if (settings.Raw)
        {
            TorchRuntime.Initialize(DeviceRequest.Parse("cpu"));
            if (!CudaDepthwise.IsAvailable)
            {
                throw new UsageException($"cuda check: {CudaDepthwise.UnavailableReason}");
            }

            results = CudaDepthwiseCheck.RunOnRawBuffers(seed, device);
        }
        else
        {
            int index = CudaCli.RequireDevice(settings, "cuda check").Index;
            results = CudaDepthwiseCheck.RunOnTensors(seed, index);
            if (settings.Backward)
            {
                var backward = CudaDepthwiseCheck.RunBackwardOnTensors(seed, index);
                var bt = new Table().Title("CUDA backward vs float64 autograd (max error / max |reference|)").AddColumns("shape", "input-grad", "weight-grad", "deterministic", "ok");
                foreach (var b in backward)
                {
                    bt.AddRow(Markup.Escape(b.Shape), F(b.InputGrad), F(b.WeightGrad), b.Deterministic ? "yes" : "[red]NO[/]", b.Passed ? "ok" : "[red]FAIL[/]");
                }

                console.Write(bt);
                if (backward.Any(b => !b.Passed))
                {
                    console.MarkupLine("[red]backward check failed[/]");
                    return ExitCodes.Failure;
                }
            }
        }

        var table = new Table().Title($"CUDA forward vs references (max error / max |reference|), seed {seed}")
            .AddColumns("shape", "tile", "vs float64", "vs cuDNN fp32", "vs our CPU", "all written", "ok");
        foreach (var r in results)
        {
            table.AddRow(Markup.Escape(r.Shape), Markup.Escape(r.Tile), F(r.VsFloat64), F(r.VsCudnn), F(r.VsCpu), r.AllWritten ? "yes" : "[red]NO[/]", r.Passed ? "ok" : "[red]FAIL[/]");
        }

        console.Write(table);
        int failed = results.Count(r => !r.Passed);
        console.MarkupLine(CultureInfo.InvariantCulture, "{0} cases, {1} failed (tolerance {2:0e+00}); worst vs float64 {3}",
            results.Count, failed, CudaDepthwiseCheck.Tolerance, F(results.Max(r => r.VsFloat64)));
        return failed == 0 ? ExitCodes.Success : ExitCodes.Failure;
    }

    private static string F(double v) => double.IsNaN(v) ? "-" : v.ToString("0.00e+00", CultureInfo.InvariantCulture);
}

/// <summary>Options of <c>cuda tune</c>.</summary>
public sealed class CudaTuneSettings : GlobalSettings
{
    /// <summary>Resolutions.</summary>
    [CommandOption("--sizes <LIST>")]
    [Description("Map sizes R (R×R), comma-separated.")]
    [DefaultValue("7,14,16,28,32,56,64")]
    public string Sizes { get; init; } = "7,14,16,28,32,56,64";

    /// <summary>Kernels.</summary>
    [CommandOption("--kernels <LIST>")]
    [Description("Kernel sizes, comma-separated.")]
    [DefaultValue("3,5,7,9,13,17,21,27,29,31")]
    public string Kernels { get; init; } = "3,5,7,9,13,17,21,27,29,31";

    /// <summary>Batch.</summary>
    [CommandOption("--batch <N>")]
    [Description("Batch of the timed layer.")]
    [DefaultValue(64)]
    public int Batch { get; init; } = 64;

    /// <summary>Channels.</summary>
    [CommandOption("--channels <C>")]
    [Description("Channels of the timed layer.")]
    [DefaultValue(384)]
    public int Channels { get; init; } = 384;

    /// <summary>Output.</summary>
    [CommandOption("--out <FILE>")]
    [Description("Write the winning tiles as a tuning table (the format of Ops/Cuda/Kernels/dwconv_fwd_tuning.json).")]
    public string? Out { get; init; }
}

/// <summary><c>replknet cuda tune</c>: times every candidate tile per (R, K) and reports the fastest against the default rule.</summary>
public sealed class CudaTuneCommand(IAnsiConsole console) : Command<CudaTuneSettings>
{
    /// <inheritdoc />
    public override int Execute(CommandContext context, CudaTuneSettings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var (runtime, device) = CudaCli.RequireDevice(settings, "cuda tune");
        string card = CudaDriver.Device(device).Name;
        int maxShared = CudaDepthwise.SharedLimit(device);
        var entries = new List<DepthwiseTuningEntry>();
        var table = new Table().Title($"one ({settings.Batch}, {settings.Channels}, R, R) layer on {Markup.Escape(card)}: ms, median of 7")
            .AddColumns("R", "K", "default tile", "default ms", "best tile", "best ms", "gain");
        var clock = Stopwatch.StartNew();
        int[] sizes = CliParsing.IntList(settings.Sizes, "--sizes"), kernels = CliParsing.IntList(settings.Kernels, "--kernels");
        long planes = (long)settings.Batch * settings.Channels;
        CudaModules.Prepare(sizes.SelectMany(r => kernels.SelectMany(k => DepthwiseTuning.Candidates(planes, r, r, k, maxShared).Select(t => t.Spec(k, r)))), device);
        console.MarkupLine(CultureInfo.InvariantCulture, "compiled {0} candidate kernels in {1:F0} s", CudaModules.Compilations, clock.Elapsed.TotalSeconds);
        foreach (int r in sizes)
        {
            foreach (int k in kernels)
            {
                using var scope = NewDisposeScope();
                var x = randn([settings.Batch, settings.Channels, r, r], device: runtime.Device);
                var w = Scalars.Div(randn([settings.Channels, 1, k, k], device: runtime.Device), k);
                var y = empty_like(x);
                var candidates = DepthwiseTuning.Candidates(planes, r, r, k, maxShared);
                var times = candidates.Select(t => Time(x, w, y, t)).ToList();
                int best = times.IndexOf(times.Min());
                entries.Add(new DepthwiseTuningEntry(card, r, r, k, candidates[best], times[best], times[0]));
                table.AddPlainRow(r.ToString(CultureInfo.InvariantCulture), k.ToString(CultureInfo.InvariantCulture), candidates[0].ToString(), DepthwiseTuning.Ms(times[0]),
                    candidates[best].ToString(), DepthwiseTuning.Ms(times[best]), (times[0] / times[best]).ToString("F2", CultureInfo.InvariantCulture) + "×");
            }
        }

        console.Write(table);
        console.MarkupLine(CultureInfo.InvariantCulture, "tuned {0} shapes in {1:F0} s ({2} kernels compiled)", entries.Count, clock.Elapsed.TotalSeconds, CudaModules.Compilations);
        if (settings.Out is { } path)
        {
            // Only clear wins go into the table (3 %: above run-to-run noise of a median of 7 on an idle card).
            string json = DepthwiseTuning.Serialize(entries.Where(e => e.Tile != CudaDepthwise.SelectTile(planes, e.Height, e.Width, e.K, maxShared) && e.DefaultMs / e.Ms >= 1.03),
                $"replknet cuda tune on {card}, {DateTime.UtcNow:yyyy-MM-dd}, one ({settings.Batch}, {settings.Channels}, R, R) layer; only shapes where another tile beat the default rule by 3 % or more");
            AtomicFile.Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(json)));
            console.MarkupLine($"wrote [bold]{Markup.Escape(path)}[/]");
        }

        return ExitCodes.Success;
    }

    private static double Time(Tensor x, Tensor w, Tensor y, DepthwiseTile tile)
    {
        CudaDepthwise.ForwardInto(x, w, null, y, tile);
        using var timer = new CudaEventTimer();
        var times = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            timer.Start();
            CudaDepthwise.ForwardInto(x, w, null, y, tile);
            times.Add(timer.Stop());
        }

        times.Sort();
        return times[times.Count / 2];
    }
}
