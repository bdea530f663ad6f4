using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using RepLKNet.IO;
using RepLKNet.Ops;
using RepLKNet.Runtime;

namespace RepLKNet.Training;

/// <summary>
/// The file an unexpected training error leaves behind: <c>&lt;out&gt;/crash-&lt;UTC time&gt;.log</c> with the error and its
/// full stack traces (managed and libtorch's native frames), the command line, where the run stood, the versions, the
/// threads, the CPU instruction set, the depthwise implementation, the <c>REPLKNET_*</c>/<c>DOTNET_*</c> environment and the
/// options. Written atomically; a failure to write it never hides the original error.
/// </summary>
public static class CrashReport
{
    private static readonly System.Text.Json.JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        ReferenceHandler = System.Text.Json.Serialization.ReferenceHandler.IgnoreCycles,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Writes the report into <paramref name="folder"/> and returns its path, or null when it could not be written.</summary>
    /// <param name="folder">The run folder.</param>
    /// <param name="error">The error (a <see cref="TrainingFailedException"/> carries step, epoch and phase).</param>
    /// <param name="commandLine">The command as typed (for the report).</param>
    /// <param name="options">The run's options (printed as they are).</param>
    /// <param name="runtime">What was loaded (versions, device), if known.</param>
    /// <param name="cpu">A description of the CPU's vector support.</param>
    public static string? Write(string folder, Exception error, string commandLine, object? options, TorchRuntimeInfo? runtime, string cpu)
    {
        ArgumentNullException.ThrowIfNull(error);
        try
        {
            return TryWrite(folder, error, commandLine, options, runtime, cpu);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return null; // never hide the original error behind a failure to describe it
        }
    }

    private static string? TryWrite(string folder, Exception error, string commandLine, object? options, TorchRuntimeInfo? runtime, string cpu)
    {
        var now = DateTime.UtcNow;
        string path = Path.Combine(folder, string.Create(CultureInfo.InvariantCulture, $"crash-{now:yyyyMMdd'T'HHmmss'Z'}.log"));
        var text = new StringBuilder();
        void Line(string s) => text.Append(s).Append('\n');
        Line(string.Create(CultureInfo.InvariantCulture, $"replknet crash report, {now:O}"));
        Line($"command: {commandLine}");
        if (error is TrainingFailedException f)
        {
            Line(string.Create(CultureInfo.InvariantCulture,
                $"where: step {f.Step}, epoch {f.Epoch}, phase {f.Phase.ToString().ToLowerInvariant()}; resume state on disk: {(f.LastSavedStep is long s ? $"step {s}" : "none yet")}"));
        }

        Line("");
        Line("error:");
        Line(error.ToString());
        Line("");
        Line($".NET {RuntimeInformation.FrameworkDescription}, {RuntimeInformation.OSDescription} ({RuntimeInformation.RuntimeIdentifier}), {Environment.ProcessorCount} logical CPUs");
        Line($"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version}, libtorch {runtime?.LibTorchVersion ?? "?"} from {runtime?.LibTorchDirectory ?? "?"}, device {runtime?.Device.ToString() ?? "?"}");
        Line($"threads: libtorch intra-op {Safe(() => TorchSharp.torch.get_num_threads().ToString(CultureInfo.InvariantCulture))}, depthwise kernels {DepthwiseConv2d.ThreadCount}; process threads: {ProcessThreads()}");
        Line($"CPU: {cpu}; depthwise {DepthwiseConv2d.CurrentBackend}, instruction set {Ops.Cpu.CpuIsas.Resolve(DepthwiseConv2d.Isa)}{(DepthwiseConv2d.Isa == Ops.Cpu.CpuIsa.Auto ? " (auto)" : " (forced)")}");
        Line($"GC: server {System.Runtime.GCSettings.IsServerGC}, latency {System.Runtime.GCSettings.LatencyMode}, collections gen0/1/2 {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)}");
        Line("environment: " + string.Join(" ", Environment.GetEnvironmentVariables().Keys.Cast<string>()
            .Where(k => k.StartsWith("REPLKNET_", StringComparison.Ordinal) || k.StartsWith("DOTNET_", StringComparison.Ordinal) || k is "OMP_NUM_THREADS" or "LD_LIBRARY_PATH")
            .Order(StringComparer.Ordinal).Select(k => $"{k}={Environment.GetEnvironmentVariable(k)}")));
        Line("");
        Line($"options: {Describe(options)}");
        try
        {
            Directory.CreateDirectory(folder);
            AtomicFile.Write(path, s => s.Write(Encoding.UTF8.GetBytes(text.ToString())));
            return path;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string Describe(object? options)
    {
        try
        {
            return System.Text.Json.JsonSerializer.Serialize(options, Json);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException or System.Text.Json.JsonException)
        {
            return options?.ToString() ?? "(none)";
        }
    }

    private static string Safe(Func<string> read)
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return "?";
        }
    }

    /// <summary>The process's threads by name (Linux /proc), e.g. "12 (replknet loader ×2, .NET Finalizer, …)".</summary>
    private static string ProcessThreads()
    {
        try
        {
            var names = Directory.EnumerateDirectories("/proc/self/task")
                .Select(t => File.ReadAllText(Path.Combine(t, "comm")).Trim()).ToList();
            return $"{names.Count} ({string.Join(", ", names.GroupBy(n => n).OrderByDescending(g => g.Count()).Select(g => g.Count() > 1 ? $"{g.Key} ×{g.Count()}" : g.Key))})";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "?";
        }
    }
}
