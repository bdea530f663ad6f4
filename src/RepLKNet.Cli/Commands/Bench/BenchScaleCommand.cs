using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.Benchmarks;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary>
/// <c>replknet bench scale</c>: data-parallel training speed for 1, 2, … processes side by side, and a paper estimate of
/// 8- and 64-GPU RepLKNet-31B steps. Without a launcher it is the driver: it starts itself under <c>mpiexec -n N</c> for
/// each N of <c>--ranks</c> (worker mode, a hidden option), reads rank 0's result of each job and prints one table. Under
/// a launcher (<c>mpiexec -n N ./replknet bench scale</c>) it measures that job only.
/// </summary>
public sealed class BenchScaleCommand(IAnsiConsole console) : Command<BenchScaleCommand.Settings>
{
    private static readonly JsonSerializerOptions WorkerJson = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Options of <c>bench scale</c>.</summary>
    public sealed class Settings : JsonFileSettings
    {
        /// <summary>Process counts.</summary>
        [CommandOption("--ranks <LIST>")]
        [Description("Process counts to measure, each one mpiexec job (comma-separated).")]
        [DefaultValue("1,2")]
        public string Ranks { get; init; } = "1,2";

        /// <summary>The MPI launcher.</summary>
        [CommandOption("--mpiexec <PATH>")]
        [Description("MPICH's launcher (a name on PATH or a path).")]
        [DefaultValue("mpiexec.mpich")]
        public string Mpiexec { get; init; } = "mpiexec.mpich";

        /// <summary>Architecture.</summary>
        [CommandOption("--arch <ARCH>")]
        [Description("A variant name or JSON configuration (default: the main job's model).")]
        [DefaultValue("RepLKNet-FMNIST")]
        public string Arch { get; init; } = "RepLKNet-FMNIST";

        /// <summary>Batch per process.</summary>
        [CommandOption("--batch <N>")]
        [Description("Images per process and step (the global batch is this × processes, as with train --batch-size).")]
        [DefaultValue(TrainOptions.DefaultBatchSize)]
        public int Batch { get; init; } = TrainOptions.DefaultBatchSize;

        /// <summary>Resolution.</summary>
        [CommandOption("--resolution <R>")]
        [Description("Input resolution (default: the variant's, else 224).")]
        public int? Resolution { get; init; }

        /// <summary>Timed steps per repeat.</summary>
        [CommandOption("--steps <N>")]
        [Description("Timed training steps per repeat.")]
        [DefaultValue(20)]
        public int Steps { get; init; } = 20;

        /// <summary>Untimed steps first.</summary>
        [CommandOption("--warmup <N>")]
        [Description("Untimed training steps before the first repeat, exactly. Default: 3, then at least one more and more until .NET's JIT has settled on every rank or 30 s have passed (as bench model; unoptimized tier-0 code would be timed).")]
        public int? Warmup { get; init; }

        /// <summary>Repeats.</summary>
        [CommandOption("--repeat <N>")]
        [Description("Repeats of --steps (images/s: median and spread over them).")]
        [DefaultValue(3)]
        public int Repeat { get; init; } = 3;

        /// <summary>Measured per-GPU step of the estimate.</summary>
        [CommandOption("--gpu-step-ms <MS>")]
        [Description("One GPU's RepLKNet-31B training step for the paper estimate (default: the official PyTorch code, fp32, batch 64 at 224, on one H200).")]
        [DefaultValue(ScaleBenchmark.DefaultGpuStepMs)]
        public double GpuStepMs { get; init; } = ScaleBenchmark.DefaultGpuStepMs;

        /// <summary>Batch of that step.</summary>
        [CommandOption("--gpu-batch <N>")]
        [Description("Images per GPU of --gpu-step-ms (for the estimate's images/s).")]
        [DefaultValue(ScaleBenchmark.DefaultGpuBatch)]
        public int GpuBatch { get; init; } = ScaleBenchmark.DefaultGpuBatch;

        /// <summary>Collective timeout.</summary>
        [CommandOption("--collective-timeout <SECONDS>")]
        [Description("End a job when a collective waits longer than this (another process died or hangs); default 1800.")]
        public double? CollectiveTimeout { get; init; }

        /// <summary>Worker mode: where rank 0 writes its result (set by the driver).</summary>
        [CommandOption("--worker <FILE>", IsHidden = true)]
        public string? Worker { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (Batch <= 0 || Steps <= 0 || Repeat <= 0 || Warmup < 0 || Resolution is <= 0 || GpuBatch <= 0)
            {
                return ValidationResult.Error("--batch, --steps, --repeat, --resolution and --gpu-batch must be positive, --warmup ≥ 0");
            }

            return !(GpuStepMs > 0 && double.IsFinite(GpuStepMs)) ? ValidationResult.Error($"--gpu-step-ms {GpuStepMs} must be a positive number") : base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var (name, config) = ModelRegistry.Resolve(settings.Arch);
        int resolution = settings.Resolution ?? ModelRegistry.Find(settings.Arch)?.Pretrained.InputSize.H ?? 224;
        if (DataParallel.Launch is not null || settings.Worker is not null)
        {
            return Worker(settings, name, config, resolution);
        }

        var ranks = ParseRanks(settings.Ranks);
        string mpiexec = FindLauncher(settings.Mpiexec);
        var self = SelfCommand();
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] training steps, batch {1} per process at {2}×{2}, {3} cores on this machine; ranks {4} (each an mpiexec job)",
            Markup.Escape(name), settings.Batch, resolution, Environment.ProcessorCount, string.Join(", ", ranks));
        var rows = new List<ScaleBenchResult>();
        foreach (int n in ranks)
        {
            cancellationToken.ThrowIfCancellationRequested();
            rows.Add(RunJob(mpiexec, self, n, settings, cancellationToken));
        }

        Report(settings, name, rows);
        return ExitCodes.Success;
    }

    /// <summary>The command line that starts this tool again: the apphost, or the <c>dotnet</c> host and the entry assembly.</summary>
    internal static IReadOnlyList<string> SelfCommand()
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("cannot tell this process's executable (Environment.ProcessPath is null)");
        if (Path.GetFileNameWithoutExtension(process).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
        {
            string assembly = Assembly.GetEntryAssembly()?.Location is { Length: > 0 } location ? location
                : Path.Combine(AppContext.BaseDirectory, "replknet.dll");
            return [process, assembly];
        }

        return [process];
    }

    /// <summary>The process counts of <c>--ranks</c>: positive, distinct, in the order given.</summary>
    /// <exception cref="UsageException">An entry that is not a positive whole number, or a repeat.</exception>
    internal static IReadOnlyList<int> ParseRanks(string list)
    {
        var ranks = new List<int>();
        foreach (var part in (list ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1)
            {
                throw new UsageException($"--ranks '{list}': '{part}' is not a positive number of processes");
            }

            if (ranks.Contains(n))
            {
                throw new UsageException($"--ranks '{list}': {n} is given twice");
            }

            ranks.Add(n);
        }

        return ranks.Count > 0 ? ranks : throw new UsageException("--ranks is empty: give process counts such as 1,2");
    }

    private static string FindLauncher(string mpiexec)
    {
        if (mpiexec.Contains('/', StringComparison.Ordinal))
        {
            return File.Exists(mpiexec) ? mpiexec : throw new UsageException($"--mpiexec '{mpiexec}' does not exist");
        }

        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, mpiexec);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new InvalidOperationException($"the MPI launcher '{mpiexec}' is not on PATH: install MPICH (Debian: apt install mpich) or give --mpiexec PATH");
    }

    private ScaleBenchResult RunJob(string mpiexec, IReadOnlyList<string> self, int ranks, Settings settings, CancellationToken cancel)
    {
        string result = Path.Combine(Path.GetTempPath(), $"replknet-bench-scale-{Environment.ProcessId}-{ranks}-{Guid.NewGuid():N}.json");
        var start = new ProcessStartInfo(mpiexec) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        string[] args =
        [
            "-n", ranks.ToString(CultureInfo.InvariantCulture), .. self, "bench", "scale", "--worker", result,
            "--arch", settings.Arch, "--batch", Invariant(settings.Batch), "--steps", Invariant(settings.Steps),
            "--repeat", Invariant(settings.Repeat), "--device", settings.Device,
            .. settings.Warmup is int w ? ["--warmup", Invariant(w)] : Array.Empty<string>(),
            .. settings.Resolution is int r ? ["--resolution", Invariant(r)] : Array.Empty<string>(),
            .. settings.Threads is int t ? ["--threads", Invariant(t)] : Array.Empty<string>(),
            .. settings.CollectiveTimeout is double c ? ["--collective-timeout", c.ToString("R", CultureInfo.InvariantCulture)] : Array.Empty<string>(),
            .. settings.Verbose ? ["--verbose"] : Array.Empty<string>(),
        ];
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        console.MarkupLine(CultureInfo.InvariantCulture, "  {0} {1}: running ...", ranks, ranks == 1 ? "rank" : "ranks");
        var clock = Stopwatch.StartNew();
        try
        {
            using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {mpiexec}");
            var stdout = process.StandardOutput.ReadToEndAsync(cancel);
            var stderr = process.StandardError.ReadToEndAsync(cancel);
            try
            {
                process.WaitForExitAsync(cancel).GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw;
            }

            if (process.ExitCode != 0 || !File.Exists(result))
            {
                string tail = string.Join(" | ", (stderr.Result + stdout.Result).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).TakeLast(6));
                throw new InvalidOperationException($"the {ranks}-process job ({Path.GetFileName(mpiexec)} -n {ranks} … bench scale) failed with exit code {process.ExitCode}: {tail}");
            }

            var row = JsonSerializer.Deserialize<ScaleBenchResult>(File.ReadAllText(result), WorkerJson)
                ?? throw new InvalidOperationException($"the {ranks}-process job wrote an empty result");
            console.MarkupLine(CultureInfo.InvariantCulture, "  {0} {1}: done in {2:F0} s ({3})", ranks, ranks == 1 ? "rank" : "ranks", clock.Elapsed.TotalSeconds, Markup.Escape(row.Backend));
            return row;
        }
        finally
        {
            File.Delete(result);
        }
    }

    private int Worker(Settings settings, string name, RepLKNetConfig config, int resolution)
    {
        if (DataParallel.Launch is { } launch && settings.Threads is null)
        {
            // Each rank's share of the machine's cores, also for one rank: libtorch loaded after MPICH's MPI_Init
            // otherwise defaults to 1 thread (measured here), which would make the 1-rank baseline half as fast.
            TorchRuntime.SetThreads(DataParallel.DefaultThreads(launch));
        }

        var group = DataParallel.Open(settings.CollectiveTimeout);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        if (settings.Worker is null)
        {
            console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] training steps, batch {1} per process at {2}×{2}, {3} processes, {4}",
                Markup.Escape(name), settings.Batch, resolution, group.WorldSize, runtime.Device);
        }

        var row = ScaleBenchmark.Run(config, settings.Batch, resolution, group, runtime.Device, settings.Warmup, settings.Steps, settings.Repeat);
        if (!group.IsMain)
        {
            return ExitCodes.Success;
        }

        if (settings.Worker is string file)
        {
            JsonOutput.Write(file, JsonSerializer.SerializeToNode(row, WorkerJson)!);
            return ExitCodes.Success;
        }

        Report(settings, name, [row]);
        return ExitCodes.Success;
    }

    private void Report(Settings settings, string name, List<ScaleBenchResult> rows)
    {
        var output = console.Profile.Out.Writer;
        var baseline = rows.FirstOrDefault(r => r.Ranks == 1);
        output.WriteLine();
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name}, {rows[0].Resolution}×{rows[0].Resolution}, {rows[0].Steps} timed steps × {rows[0].ImagesPerSecond.Count} repeats after {string.Join("/", rows.Select(r => r.Warmup.ToString(CultureInfo.InvariantCulture)))} warm-up (per row; time of a step: the slowest rank's)"));
        output.WriteLine("| ranks | batch/process | global batch | threads/rank | images/s (median) | images/s (min–max) | step ms | allreduce ms/step | allreduce MB/step | images/s vs 1 rank | efficiency vs 1 rank | peak RSS/rank |");
        output.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            string efficiency = baseline is null ? "–" : string.Create(CultureInfo.InvariantCulture, $"{Efficiency(r, baseline) * 100:F0} %");
            string ratio = baseline is null ? "–" : string.Create(CultureInfo.InvariantCulture, $"{r.MedianImagesPerSecond / baseline.MedianImagesPerSecond:F2}×");
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Ranks} | {r.Batch} | {r.GlobalBatch} | {r.Threads} | {r.MedianImagesPerSecond:F1} | {r.ImagesPerSecond.Min():F1}–{r.ImagesPerSecond.Max():F1} | {r.StepMs:F1} | {(r.Ranks > 1 ? r.AllReduceMs.ToString("F1", CultureInfo.InvariantCulture) : "–")} | {(r.Ranks > 1 ? (r.AllReduceBytes / 1e6).ToString("F2", CultureInfo.InvariantCulture) : "–")} | {ratio} | {efficiency} | {r.PeakMemory?.ToString() ?? "n/a"} |"));
        }

        if (rows.Select(r => r.PeakMemory).FirstOrDefault(m => m is not null) is { } memory)
        {
            output.WriteLine($"peak RSS/rank: the largest process's over the timed steps ({memory.Source}).");
        }

        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Efficiency = images/s of N ranks / (N × images/s of 1 rank); allreduce ms includes waiting for the slower rank (the collective is where the ranks meet)."));
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"On this machine ({Environment.ProcessorCount} cores) the ranks share the same cores (each gets cores / ranks libtorch threads): N ranks add no hardware, so the table shows the data-parallel overhead (allreduce, synchronization), not a speed-up. images/s above one rank's only mean that cores / N threads in each of N processes are used better than all cores in one; a speed-up needs a core set or a GPU per rank."));

        var big = ModelRegistry.Find("RepLKNet-31B")!;
        long parameters = Complexity.Parameters(big.Config, ModelForm.Train);
        var estimates = ScaleBenchmark.Estimate(parameters, settings.GpuStepMs, settings.GpuBatch);
        output.WriteLine();
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Paper estimate, RepLKNet-31B: {parameters:N0} parameters = {parameters * 4 / 1e6:F1} MB of fp32 gradients per step; one GPU's step {settings.GpuStepMs:F1} ms at batch {settings.GpuBatch}{(settings.GpuStepMs == ScaleBenchmark.DefaultGpuStepMs ? " (official PyTorch code, fp32, H200)" : "")}; ring allreduce 2(N−1)/N × bytes / bandwidth (latency left out)"));
        output.WriteLine("| GPUs | link | GB/s per GPU | allreduce ms | step ms, no overlap | step ms, DDP overlap | images/s, no overlap | images/s, overlap |");
        output.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|");
        foreach (var e in estimates)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {e.Gpus} | {e.Link} | {e.BytesPerSecond / 1e9:F0} | {e.AllReduceMs:F2} | {e.NoOverlapMs:F1} | {e.OverlapMs:F1} | {e.NoOverlapImagesPerSecond:F0} | {e.OverlapImagesPerSecond:F0} |"));
        }

        settings.WriteJson(new JsonObject
        {
            ["arch"] = name,
            ["resolution"] = rows[0].Resolution,
            ["cores"] = Environment.ProcessorCount,
            ["device"] = settings.Device,
            ["note"] = $"{Environment.ProcessorCount} cores shared by the ranks (cores / ranks threads each): more ranks add no hardware, so this shows the data-parallel overhead, not a speed-up",
            ["rows"] = new JsonArray([.. rows.Select(r => (JsonNode)new JsonObject
            {
                ["ranks"] = r.Ranks, ["batch_per_process"] = r.Batch, ["global_batch"] = r.GlobalBatch, ["threads_per_rank"] = r.Threads,
                ["images_per_s"] = Math.Round(r.MedianImagesPerSecond, 3),
                ["images_per_s_repeats"] = new JsonArray([.. r.ImagesPerSecond.Select(v => (JsonNode)Math.Round(v, 3))]),
                ["step_ms"] = Math.Round(r.StepMs, 3), ["allreduce_ms"] = Math.Round(r.AllReduceMs, 3), ["allreduce_bytes"] = r.AllReduceBytes,
                ["peak_rss_bytes"] = r.PeakMemory?.Bytes, ["peak_rss_since_reset"] = r.PeakMemory?.SinceReset,
                ["efficiency"] = baseline is null ? null : Math.Round(Efficiency(r, baseline), 4),
                ["vs_one_rank"] = baseline is null ? null : Math.Round(r.MedianImagesPerSecond / baseline.MedianImagesPerSecond, 4),
                ["steps"] = r.Steps, ["warmup"] = r.Warmup, ["backend"] = r.Backend,
            })]),
            ["estimate"] = new JsonObject
            {
                ["arch"] = big.Name, ["parameters"] = parameters, ["gradient_bytes"] = parameters * 4,
                ["gpu_step_ms"] = settings.GpuStepMs, ["gpu_batch"] = settings.GpuBatch,
                ["settings"] = new JsonArray([.. estimates.Select(e => (JsonNode)new JsonObject
                {
                    ["gpus"] = e.Gpus, ["link"] = e.Link, ["bytes_per_s"] = e.BytesPerSecond, ["allreduce_ms"] = Math.Round(e.AllReduceMs, 4),
                    ["step_ms_no_overlap"] = Math.Round(e.NoOverlapMs, 3), ["step_ms_overlap"] = Math.Round(e.OverlapMs, 3),
                    ["images_per_s_no_overlap"] = Math.Round(e.NoOverlapImagesPerSecond, 1), ["images_per_s_overlap"] = Math.Round(e.OverlapImagesPerSecond, 1),
                })]),
            },
        });
    }

    private static double Efficiency(ScaleBenchResult row, ScaleBenchResult oneRank) =>
        row.MedianImagesPerSecond / (row.Ranks * oneRank.MedianImagesPerSecond);

    private static string Invariant(int value) => value.ToString(CultureInfo.InvariantCulture);
}
