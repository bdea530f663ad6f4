using System.Globalization;
using System.Text.RegularExpressions;
using TorchSharp;

namespace RepLKNet.Runtime;

/// <summary>Which device the user asked for: <c>auto</c> (CUDA when available), <c>cpu</c> or <c>cuda[:N]</c>.</summary>
/// <param name="Kind">The kind of device requested.</param>
/// <param name="Index">The CUDA device index (0 unless <c>cuda:N</c> was given).</param>
public readonly record struct DeviceRequest(DeviceRequestKind Kind, int Index = 0)
{
    /// <summary><c>auto</c>: CUDA when available, else CPU.</summary>
    public static DeviceRequest Auto => new(DeviceRequestKind.Auto);

    /// <summary><c>cpu</c>.</summary>
    public static DeviceRequest Cpu => new(DeviceRequestKind.Cpu);

    /// <summary>Parses <c>auto</c>, <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c> (case-insensitive).</summary>
    /// <exception cref="FormatException">The text is none of those.</exception>
    public static DeviceRequest Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string value = text.Trim().ToLowerInvariant();
        switch (value)
        {
            case "auto":
                return Auto;
            case "cpu":
                return Cpu;
            case "cuda":
                return new DeviceRequest(DeviceRequestKind.Cuda);
        }

        if (value.StartsWith("cuda:", StringComparison.Ordinal) &&
            int.TryParse(value.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out int index))
        {
            return new DeviceRequest(DeviceRequestKind.Cuda, index);
        }

        throw new FormatException($"'{text}' is not a device: use auto, cpu, cuda or cuda:N");
    }

    /// <inheritdoc />
    public override string ToString() => Kind switch
    {
        DeviceRequestKind.Auto => "auto",
        DeviceRequestKind.Cpu => "cpu",
        _ => Index == 0 ? "cuda" : $"cuda:{Index}",
    };
}

/// <summary>The kinds of <see cref="DeviceRequest"/>.</summary>
public enum DeviceRequestKind
{
    /// <summary>CUDA when available, else CPU.</summary>
    Auto,

    /// <summary>The CPU.</summary>
    Cpu,

    /// <summary>A CUDA device; failing when there is none.</summary>
    Cuda,
}

/// <summary>State of the GLIBCXX_3.4.32 work-around for TorchSharp's native library.</summary>
public enum GlibcxxFixState
{
    /// <summary>The system libstdc++ provides GLIBCXX_3.4.32: no fix needed.</summary>
    NotNeeded,

    /// <summary>The requirement is marked weak in the library this process loads.</summary>
    Applied,

    /// <summary>The system lacks GLIBCXX_3.4.32 and the library still requires it: loading will fail.</summary>
    Missing,
}

/// <summary>TorchSharp (or libtorch) could not be loaded or initialised; the message says what was tried and why it failed.</summary>
public sealed class TorchLoadException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TorchLoadException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with the underlying cause.</summary>
    public TorchLoadException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public TorchLoadException()
    {
    }

    /// <summary>
    /// Creates the exception for one argument: <paramref name="paramName"/> is the library's name for it (a method parameter,
    /// e.g. <c>device</c>), and the message starts with that name, so a front end can put its own name for the argument
    /// (a CLI flag) in its place.
    /// </summary>
    public TorchLoadException(string message, string? paramName)
        : base(message)
    {
        ParamName = paramName;
    }

    /// <summary>The library's name of the argument the error is about (as in <see cref="ArgumentException.ParamName"/>), or null.</summary>
    public string? ParamName { get; }
}

/// <summary>What was loaded, from where, and which device is in use.</summary>
/// <param name="NativeLibrary">Path of the libLibTorchSharp.so that was loaded.</param>
/// <param name="GlibcxxFix">State of the GLIBCXX_3.4.32 work-around.</param>
/// <param name="SystemLibStdCxx">Path of the system libstdc++ examined, if found.</param>
/// <param name="LibTorchDirectory">Folder of the libtorch libraries actually mapped.</param>
/// <param name="LibTorchVersion">libtorch's version (from PyTorch's version.py for an external libtorch, else the package's).</param>
/// <param name="ExternalLibTorch">The <c>REPLKNET_LIBTORCH</c> folder, when set.</param>
/// <param name="CudaAvailable">Whether libtorch's CUDA backend initialised and sees a device.</param>
/// <param name="CudaUnavailableReason">Why CUDA is not available, when it is not.</param>
/// <param name="Device">The device selected for this run.</param>
public sealed record TorchRuntimeInfo(
    string NativeLibrary,
    GlibcxxFixState GlibcxxFix,
    string? SystemLibStdCxx,
    string LibTorchDirectory,
    string LibTorchVersion,
    string? ExternalLibTorch,
    bool CudaAvailable,
    string? CudaUnavailableReason,
    torch.Device Device);

/// <summary>
/// Loads TorchSharp so that it works on Debian 12 / Ubuntu 22.04 and, with <c>REPLKNET_LIBTORCH</c>, on an existing CUDA
/// libtorch (e.g. a PyTorch installation's <c>torch/lib</c>); selects the device. Every failure says what was tried and
/// the dynamic loader's own message.
/// </summary>
public static class TorchRuntime
{
    /// <summary>Environment variable naming a folder with a CUDA build of libtorch (libtorch.so, libtorch_cuda.so, …).</summary>
    public const string LibTorchEnvironmentVariable = "REPLKNET_LIBTORCH";

    /// <summary>Environment variable that, set to 1, lets CUDA convolutions and matmuls use TF32 (faster, ~1e-3 relative error).</summary>
    public const string Tf32EnvironmentVariable = "REPLKNET_TF32";

    private const string NativeLibraryName = "libLibTorchSharp.so";
    private static readonly Lock Gate = new();
    private static LoadedState? _loaded;
    private static int? _pendingThreads;
    private static (bool Available, string? Reason)? _cuda;

    /// <summary>
    /// <see cref="TorchRuntimeInfo.CudaUnavailableReason"/> when <see cref="DeviceRequest.Cpu"/> was asked for (CUDA is then
    /// not even tried).
    /// </summary>
    public const string CudaNotRequested = "not requested (device cpu)";

    /// <summary>Loads TorchSharp (once per process) and selects the device for <paramref name="device"/>.</summary>
    /// <exception cref="TorchLoadException">
    /// Loading failed, or CUDA was requested explicitly and is unavailable (then <see cref="TorchLoadException.ParamName"/>
    /// is <c>device</c>).
    /// </exception>
    public static TorchRuntimeInfo Initialize(DeviceRequest device)
    {
        lock (Gate)
        {
            var loaded = _loaded ??= Load();
            if (_pendingThreads is int threads)
            {
                torch.set_num_threads(threads);
                _pendingThreads = null;
            }

            torch.Device selected = torch.CPU;
            bool cudaAvailable = false;
            string? reason = CudaNotRequested;
            if (device.Kind != DeviceRequestKind.Cpu)
            {
                (cudaAvailable, reason) = _cuda ??= TryEnableCuda(loaded);
                if (cudaAvailable)
                {
                    long count = torch.cuda.device_count();
                    if (device.Index >= count)
                    {
                        throw new TorchLoadException(
                            $"{nameof(device)} {device} asks for CUDA device {device.Index}, but libtorch sees {count} device(s)", nameof(device));
                    }

                    selected = new torch.Device(DeviceType.CUDA, device.Index);
                }
                else if (device.Kind == DeviceRequestKind.Cuda)
                {
                    throw new TorchLoadException($"{nameof(device)} {device} was requested but CUDA is not available: {reason}", nameof(device));
                }
            }

            return new TorchRuntimeInfo(loaded.NativeLibrary, loaded.GlibcxxFix, loaded.SystemLibStdCxx,
                loaded.LibTorchDirectory, loaded.LibTorchVersion, loaded.ExternalLibTorch, cudaAvailable,
                cudaAvailable ? null : reason, selected);
        }
    }

    /// <summary>Whether TF32 is allowed on CUDA (<c>REPLKNET_TF32=1</c>); off by default for float32 parity.</summary>
    public static bool AllowTf32 => Environment.GetEnvironmentVariable(Tf32EnvironmentVariable) == "1";

    /// <summary>
    /// Uses <paramref name="threads"/> CPU threads for libtorch and for the project's own CPU kernels alike. Called before
    /// <see cref="Initialize"/>, it loads nothing: libtorch gets the count when <see cref="Initialize"/> loads it (so a front
    /// end can apply its thread option before it knows the device).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is not positive.</exception>
    public static void SetThreads(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        lock (Gate)
        {
            KernelThreads = threads;
            if (_loaded is null)
            {
                _pendingThreads = threads;
                return;
            }

            torch.set_num_threads(threads);
        }
    }

    /// <summary>
    /// Worker threads for the project's own CPU kernels (the depthwise convolution's); 0, the default, means libtorch's
    /// <c>get_num_threads()</c>. <see cref="SetThreads"/> sets it together with libtorch's.
    /// </summary>
    public static int KernelThreads { get; set; }

    /// <summary>Where libLibTorchSharp.so is looked for beside the running app.</summary>
    public static IReadOnlyList<string> NativeLibraryCandidates(string appDirectory) =>
    [
        Path.Combine(appDirectory, "runtimes", "linux-x64", "native", NativeLibraryName),
        Path.Combine(appDirectory, NativeLibraryName),
    ];

    /// <summary>Decides the GLIBCXX fix state of a library given the system libstdc++ (null: not found).</summary>
    public static GlibcxxFixState DiagnoseGlibcxx(string library, string? systemLibStdCxx)
    {
        if (systemLibStdCxx is not null &&
            ElfSymbolVersions.LibraryDefinesVersion(systemLibStdCxx, ElfSymbolVersions.TorchSharpGlibcxxVersion))
        {
            return GlibcxxFixState.NotNeeded;
        }

        var need = ElfSymbolVersions.ReadVersionNeeds(library)
            .FirstOrDefault(n => n.Version == ElfSymbolVersions.TorchSharpGlibcxxVersion);
        return need is null || need.IsWeak ? GlibcxxFixState.Applied : GlibcxxFixState.Missing;
    }

    /// <summary>
    /// Loads a native library with the dynamic loader and, on failure, throws a <see cref="TorchLoadException"/> carrying
    /// the loader's message and <paramref name="context"/>.
    /// </summary>
    public static void LoadOrExplain(string path, string what, string context)
    {
        if (NativeLibraries.TryLoadGlobal(path, out string? error) == IntPtr.Zero)
        {
            throw new TorchLoadException($"Could not load {what} '{path}': {error}.{context}");
        }
    }

    private static LoadedState Load()
    {
        // Settings read before anything is loaded, so that a bad value fails fast.
        var fill = CpuAllocatorFill.Parse(Environment.GetEnvironmentVariable(CpuAllocatorFill.EnvironmentVariable));
        HeapTuning.Apply();
        if (!OperatingSystem.IsLinux() || System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture !=
            System.Runtime.InteropServices.Architecture.X64)
        {
            throw new TorchLoadException(
                $"RepLKNet ships libtorch for linux-x64 only; this is {System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier}");
        }

        string appDirectory = AppContext.BaseDirectory;
        var candidates = NativeLibraryCandidates(appDirectory);
        string? native = candidates.FirstOrDefault(File.Exists);
        if (native is null)
        {
            throw new TorchLoadException(
                $"TorchSharp's native library was not found; looked for {string.Join(" and ", candidates)}. " +
                "Build or publish the app with the TorchSharp and libtorch-cpu-linux-x64 packages.");
        }

        string? libstdcxx = ElfSymbolVersions.FindSystemLibStdCxx();
        GlibcxxFixState fix;
        try
        {
            fix = DiagnoseGlibcxx(native, libstdcxx);
        }
        catch (ElfFormatException e)
        {
            throw new TorchLoadException($"TorchSharp's native library is damaged: {e.Message}", e);
        }

        string? external = Environment.GetEnvironmentVariable(LibTorchEnvironmentVariable);
        if (string.IsNullOrWhiteSpace(external))
        {
            external = null;
        }
        else
        {
            PreloadExternalLibTorch(external);
        }

        string fixNote = fix switch
        {
            GlibcxxFixState.Missing =>
                $" The system libstdc++ ({libstdcxx ?? "not found"}) lacks {ElfSymbolVersions.TorchSharpGlibcxxVersion} and this copy " +
                "still requires it: the build step that marks it weak did not run on this copy. Rebuild the app with dotnet build.",
            GlibcxxFixState.Applied => $" ({ElfSymbolVersions.TorchSharpGlibcxxVersion} is marked weak in this copy.)",
            _ => string.Empty,
        };
        string libtorchNote = external is null
            ? $" libtorch is taken from '{Path.GetDirectoryName(native)}'."
            : $" libtorch is taken from {LibTorchEnvironmentVariable}='{external}'.";
        LoadOrExplain(native, "TorchSharp's native library", fixNote + libtorchNote);

        try
        {
            torch.InitializeDeviceType(DeviceType.CPU);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new TorchLoadException(
                $"libLibTorchSharp.so loaded from '{native}', but TorchSharp failed to initialise: {e.Message}.{libtorchNote}", e);
        }

        // libtorch's C++ warnings (e.g. NNPACK's, once per convolution on CPUs it does not support) go straight to fd 2.
        LibTorchLog.Apply();
        // REPLKNET_CPU_FILL=junk|zero: c10's fill of new CPU tensors (a diagnostic for reads of unwritten memory).
        if (!CpuAllocatorFill.Apply(fill) && fill != CpuFill.None)
        {
            throw new TorchLoadException($"{CpuAllocatorFill.EnvironmentVariable}={(fill == CpuFill.Zero ? "zero" : "junk")} was asked for, but the libc10 loaded " +
                $"exports no FLAGS_caffe2_cpu_allocator_* flags.{libtorchNote}");
        }
        string libtorchDirectory = NativeLibraries.MappedLibraries("libtorch_cpu.so").Select(Path.GetDirectoryName)
            .FirstOrDefault() ?? Path.GetDirectoryName(native)!;
        return new LoadedState(native, fix, libstdcxx, libtorchDirectory, LibTorchVersion(libtorchDirectory), external);
    }

    private static void PreloadExternalLibTorch(string directory)
    {
        string where = $"{LibTorchEnvironmentVariable}='{directory}'";
        if (!Directory.Exists(directory))
        {
            throw new TorchLoadException($"{where} is not a folder. Point it at a CUDA libtorch's lib folder, " +
                "e.g. the output of: python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), \"lib\"))'");
        }

        // Loading the CUDA libtorch by full path first makes the loader reuse it (matched by soname) when TorchSharp's
        // library asks for libtorch.so, instead of the CPU copy beside the app.
        string[] libraries = ["libtorch_cuda.so", "libtorch.so"];
        foreach (var name in libraries)
        {
            string path = Path.Combine(directory, name);
            if (!File.Exists(path))
            {
                throw new TorchLoadException($"{where} has no {name}: it must be the lib folder of a CUDA build of libtorch " +
                    "(for example a PyTorch installation's torch/lib).");
            }

            LoadOrExplain(path, "the external libtorch library", $" It was named by {where}.");
        }
    }

    private static (bool Available, string? Reason) TryEnableCuda(LoadedState loaded)
    {
        if (loaded.ExternalLibTorch is null)
        {
            return (false, $"the bundled libtorch is CPU-only; set {LibTorchEnvironmentVariable} to a CUDA libtorch's lib folder");
        }

        try
        {
            torch.InitializeDeviceType(DeviceType.CUDA);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (false, $"libtorch's CUDA backend from '{loaded.ExternalLibTorch}' failed to initialise: {e.Message}");
        }

        if (!torch.cuda.is_available())
        {
            string driver = CudaDriverProbe.UnavailableReason ?? "the driver sees no usable device";
            return (false, $"libtorch from '{loaded.ExternalLibTorch}' reports no CUDA device ({driver})");
        }

        // libtorch lets cuDNN convolutions use TF32 by default (~1e-3 relative error on Hopper): this project promises
        // float32 parity with the official model, so TF32 is off unless REPLKNET_TF32=1 asks for the speed.
        bool tf32 = AllowTf32;
        torch.backends.cudnn.allow_tf32 = tf32;
        torch.backends.cuda.matmul.allow_tf32 = tf32;
        return (true, null);
    }

    private static string LibTorchVersion(string libtorchDirectory)
    {
        // A PyTorch installation keeps its version beside lib/: torch/version.py has __version__ = '2.11.0+cu130'.
        string versionFile = Path.Combine(libtorchDirectory, "..", "version.py");
        if (File.Exists(versionFile))
        {
            var match = Regex.Match(File.ReadAllText(versionFile), @"__version__\s*=\s*'([^']+)'");
            if (match.Success)
            {
                return match.Groups[1].Value;
            }
        }

        // The NuGet package: its version is recorded in the app's deps.json as "libtorch-cpu-linux-x64/2.10.0".
        foreach (var deps in Directory.EnumerateFiles(AppContext.BaseDirectory, "*.deps.json"))
        {
            var match = Regex.Match(File.ReadAllText(deps), "\"libtorch-cpu-linux-x64/([0-9][^\"]*)\"");
            if (match.Success)
            {
                return match.Groups[1].Value;
            }
        }

        return torch.__version__;
    }

    private sealed record LoadedState(
        string NativeLibrary,
        GlibcxxFixState GlibcxxFix,
        string? SystemLibStdCxx,
        string LibTorchDirectory,
        string LibTorchVersion,
        string? ExternalLibTorch);
}
