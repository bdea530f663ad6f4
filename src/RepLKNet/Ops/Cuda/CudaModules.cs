using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace RepLKNet.Ops.Cuda;

/// <summary>One compiled kernel: an embedded source, its entry point and the <c>-D</c> constants it is built with.</summary>
/// <param name="SourceFile">Embedded source under <c>Ops/Cuda/Kernels</c>.</param>
/// <param name="Function">The <c>extern "C"</c> entry point.</param>
/// <param name="Defines">Compile-time constants, in order.</param>
public sealed record CudaKernelSpec(string SourceFile, string Function, IReadOnlyList<(string Name, int Value)> Defines)
{
    /// <summary>A short name for messages, e.g. <c>dwconv_fwd[KS=31,RY=8,BX=16,BY=8,PL=1]</c>.</summary>
    public string Label => $"{Function}[{string.Join(',', Defines.Select(d => $"{d.Name}={d.Value}"))}]";

    /// <summary>NVRTC options for <paramref name="architecture"/> (e.g. <c>sm_90</c>).</summary>
    public IReadOnlyList<string> Options(string architecture) =>
    [
        $"--gpu-architecture={architecture}", "--std=c++17", "--ptxas-options=-v", "--maxrregcount=255",
        .. Defines.Select(d => string.Create(CultureInfo.InvariantCulture, $"-D{d.Name}={d.Value}")),
    ];
}

/// <summary>What ptxas reported for one compiled kernel.</summary>
/// <param name="Registers">Registers per thread.</param>
/// <param name="SpillStoreBytes">Bytes of spill stores.</param>
/// <param name="SpillLoadBytes">Bytes of spill loads.</param>
/// <param name="StackBytes">Stack frame bytes.</param>
public sealed record PtxasReport(int Registers, int SpillStoreBytes, int SpillLoadBytes, int StackBytes)
{
    private static readonly Regex RegistersPattern = new(@"Used (\d+) registers", RegexOptions.Compiled | RegexOptions.CultureInvariant);
    private static readonly Regex SpillPattern = new(@"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>Whether anything spilled to local memory.</summary>
    public bool Spills => SpillStoreBytes > 0 || SpillLoadBytes > 0;

    /// <summary>
    /// Reads ptxas' <c>-v</c> lines out of an NVRTC log (over every function of the module: the most registers and the
    /// largest stack and spills); null when the log has none.
    /// </summary>
    public static PtxasReport? Parse(string log)
    {
        ArgumentNullException.ThrowIfNull(log);
        var registers = RegistersPattern.Matches(log);
        if (registers.Count == 0)
        {
            return null;
        }

        var spills = SpillPattern.Matches(log);
        int Max(MatchCollection matches, int group) => matches.Count == 0 ? 0 : matches.Max(m => int.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture));
        return new PtxasReport(Max(registers, 1), Max(spills, 2), Max(spills, 3), Max(spills, 1));
    }
}

/// <summary>A kernel loaded into a device's primary context.</summary>
/// <param name="Function">The <c>CUfunction</c>.</param>
/// <param name="Spec">What was compiled.</param>
/// <param name="Report">ptxas' resource report (null when the cubin came from a cache without its log).</param>
/// <param name="Module">The <c>CUmodule</c> (for the module's other kernels).</param>
public sealed record LoadedKernel(IntPtr Function, CudaKernelSpec Spec, PtxasReport? Report, IntPtr Module);

/// <summary>
/// Compiles kernels with NVRTC for a device's architecture, caches the cubins on disk (keyed by source hash,
/// architecture, options and NVRTC version, so a second run compiles nothing) and keeps loaded functions per device.
/// The cache folder is <c>REPLKNET_CUDA_CACHE</c>, else <c>$XDG_CACHE_HOME/replknet/cuda</c>, else
/// <c>~/.cache/replknet/cuda</c>; an unwritable cache only costs compile time.
/// </summary>
public static class CudaModules
{
    /// <summary>Environment variable naming the cubin cache folder.</summary>
    public const string CacheEnvironmentVariable = "REPLKNET_CUDA_CACHE";

    private static readonly ConcurrentDictionary<(int Device, string Key), LoadedKernel> Loaded = new();
    private static readonly ConcurrentDictionary<string, string> Sources = new();
    private static readonly ConcurrentDictionary<(IntPtr Module, string Name), IntPtr> OtherFunctions = new();
    private static readonly object CompileLock = new();

    /// <summary>Counts compilations (a cache hit does not count), for tests and the benchmark's report.</summary>
    public static int Compilations => Volatile.Read(ref compilations);

    private static int compilations;

    /// <summary>The cubin cache folder.</summary>
    public static string CacheDirectory
    {
        get
        {
            if (Environment.GetEnvironmentVariable(CacheEnvironmentVariable) is { Length: > 0 } explicitDir)
            {
                return explicitDir;
            }

            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "replknet", "cuda");
        }
    }

    /// <summary>Compiles <paramref name="spec"/> for <paramref name="architecture"/> without a GPU (no cache); for compile checks.</summary>
    public static (NvrtcOutput Output, PtxasReport? Report) CompileOnly(CudaKernelSpec spec, string architecture)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var output = Nvrtc.Compile(Source(spec.SourceFile), $"{spec.Label}.cu", spec.Options(architecture));
        return (output, PtxasReport.Parse(output.Log));
    }

    /// <summary>Compiles (or reads from the cache) every spec in parallel and loads them on <paramref name="device"/>; later <see cref="Get"/> calls are lookups.</summary>
    public static void Prepare(IEnumerable<CudaKernelSpec> specs, int device)
    {
        ArgumentNullException.ThrowIfNull(specs);
        string architecture = CudaDriver.Device(device).Architecture;
        var missing = specs.DistinctBy(s => s.Label).Where(s => !Loaded.ContainsKey((device, s.Label))).ToList();
        var cubins = new (byte[] Cubin, string? Log)[missing.Count];
        Parallel.For(0, missing.Count, i => cubins[i] = CubinFor(missing[i], architecture));
        lock (CompileLock)
        {
            CudaDriver.UsePrimaryContext(device);
            for (int i = 0; i < missing.Count; i++)
            {
                if (!Loaded.ContainsKey((device, missing[i].Label)))
                {
                    Loaded[(device, missing[i].Label)] = LoadInto(missing[i], cubins[i]);
                }
            }
        }
    }

    /// <summary>The kernel <paramref name="spec"/> loaded on device <paramref name="device"/> (compiled or read from cache on first use).</summary>
    public static LoadedKernel Get(CudaKernelSpec spec, int device)
    {
        ArgumentNullException.ThrowIfNull(spec);
        string key = spec.Label;
        if (Loaded.TryGetValue((device, key), out var hit))
        {
            return hit;
        }

        lock (CompileLock)
        {
            if (Loaded.TryGetValue((device, key), out hit))
            {
                return hit;
            }

            string architecture = CudaDriver.Device(device).Architecture;
            var compiled = CubinFor(spec, architecture);
            CudaDriver.UsePrimaryContext(device);
            var loaded = LoadInto(spec, compiled);
            Loaded[(device, key)] = loaded;
            return loaded;
        }
    }

    /// <summary>Another kernel of the module <paramref name="kernel"/> was loaded from (cached per module).</summary>
    public static IntPtr Function(LoadedKernel kernel, string name)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        return OtherFunctions.GetOrAdd((kernel.Module, name), key => CudaDriver.GetFunction(key.Module, key.Name));
    }

    private static LoadedKernel LoadInto(CudaKernelSpec spec, (byte[] Cubin, string? Log) compiled)
    {
        IntPtr module = CudaDriver.LoadModule(compiled.Cubin, spec.Label);
        IntPtr function = CudaDriver.GetFunction(module, spec.Function);
        return new LoadedKernel(function, spec, compiled.Log is null ? null : PtxasReport.Parse(compiled.Log), module);
    }

    private static (byte[] Cubin, string? Log) CubinFor(CudaKernelSpec spec, string architecture) => CubinFor(spec, architecture, CacheDirectory);

    /// <summary>The cubin of <paramref name="spec"/> for <paramref name="architecture"/>, from the cache in <paramref name="directory"/> or compiled and cached there.</summary>
    internal static (byte[] Cubin, string? Log) CubinFor(CudaKernelSpec spec, string architecture, string directory)
    {
        string source = Source(spec.SourceFile);
        var options = spec.Options(architecture);
        string version = Nvrtc.Version();
        string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(
            string.Join('\n', [source, .. options, version, Nvrtc.LibraryName ?? string.Empty]))))[..20].ToLowerInvariant();
        string stem = Path.Combine(directory, $"{spec.Function}-{architecture}-{hash}");
        try
        {
            if (File.Exists(stem + ".cubin"))
            {
                byte[] cached = File.ReadAllBytes(stem + ".cubin");
                string? cachedLog = File.Exists(stem + ".log") ? File.ReadAllText(stem + ".log") : null;
                if (cached.Length > 0)
                {
                    return (cached, cachedLog);
                }
            }
        }
        catch (IOException)
        {
            // An unreadable cache entry is recompiled below.
        }
        catch (UnauthorizedAccessException)
        {
        }

        var output = Nvrtc.Compile(source, $"{spec.Label}.cu", options);
        Interlocked.Increment(ref compilations);
        try
        {
            Directory.CreateDirectory(directory);
            WriteAtomically(stem + ".log", Encoding.UTF8.GetBytes(output.Log));
            WriteAtomically(stem + ".cubin", output.Cubin);
        }
        catch (IOException)
        {
            // Caching is an optimisation: a read-only or full disk only costs the next run a compile.
        }
        catch (UnauthorizedAccessException)
        {
        }

        return (output.Cubin, output.Log);
    }

    private static void WriteAtomically(string path, byte[] bytes)
    {
        string temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, path, overwrite: true);
    }

    private static string Source(string file) => Sources.GetOrAdd(file, Nvrtc.EmbeddedSource);
}
