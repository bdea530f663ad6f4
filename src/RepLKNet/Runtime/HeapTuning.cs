using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>The process's native memory allocator (what libtorch's CPU tensors, oneDNN and the .NET runtime's native side get memory from).</summary>
public enum NativeAllocator
{
    /// <summary>glibc's malloc as glibc sets it up (<c>REPLKNET_MALLOC=default</c>, or not Linux/glibc).</summary>
    Glibc,

    /// <summary>glibc's malloc with <see cref="HeapTuning"/>'s settings (mmap off, trimming at 1 GiB).</summary>
    GlibcTuned,

    /// <summary>gperftools' tcmalloc, preloaded (<c>LD_PRELOAD</c>) before the process started, as <c>./replknet</c> does.</summary>
    Tcmalloc,

    /// <summary>Another preloaded allocator (jemalloc, mimalloc): left alone.</summary>
    OtherPreloaded,
}

/// <summary>
/// The native memory allocator. <c>./replknet</c> preloads gperftools' tcmalloc (Debian <c>libtcmalloc-minimal4</c>)
/// when the machine has it, as PyTorch's CPU launcher (<c>torch.backends.xeon.run_cpu --enable-tcmalloc</c>) does: on the
/// project machine glibc's malloc spent ~10 % of the main job's training step in its bins (<c>_int_malloc</c>,
/// <c>_int_free</c>, <c>malloc_consolidate</c>); on tcmalloc the step's peak memory was 27–57 MiB lower in most runs and
/// glibc's page-fault outliers went away, while its speed was the same within the noise once the JIT had settled (a ~11 %
/// one-thread gain measured earlier did not hold up), and the results are the same to the bit
/// (docs/perf-notes.md; docs/runtime.md, "The memory allocator"). A preload can only happen before the process starts,
/// so this class does not choose the allocator; it reports it (<see cref="Current"/>) and, on glibc, keeps glibc from
/// handing large tensors' memory back to the kernel after every free: by default each allocation above 128 KiB–32 MiB is
/// its own mmap, so every activation of every step is fresh memory and each of its 4 KiB pages faults on first touch; on the
/// project's VMs a fault costs microseconds, and a 28×28 MobileNetV2 step spent more time in the kernel than in
/// convolutions. With mmap off and trimming raised, freed blocks are reused from the heap.
/// <para>
/// <c>REPLKNET_MALLOC</c>: <c>tcmalloc</c> (the launcher's default: preload it when found), <c>glibc</c> (no preload; glibc
/// tuned as above) or <c>default</c> (no preload; glibc untouched). Any other value fails the runtime's load with one line
/// (the launcher refuses it first, exit 2). Run directly (<c>dotnet replknet.dll</c>, the library in another program)
/// nothing is preloaded unless the caller sets <c>LD_PRELOAD</c>; <c>tcmalloc</c> then falls back to tuned glibc.
/// </para>
/// <para>
/// Thread safety: <see cref="Apply"/> runs once, inside <see cref="TorchRuntime"/>'s one-time load (under its lock);
/// <c>mallopt</c> takes glibc's arena lock itself. A preloaded allocator replaces malloc, free, posix_memalign and the rest
/// for every library of the process at once (symbol interposition), so memory is never freed by an allocator that did not
/// make it; the only function the project binds to glibc by name is <c>mallopt</c>, which is not called when glibc's
/// malloc is not the one in use.
/// </para>
/// </summary>
public static partial class HeapTuning
{
    /// <summary>Environment variable: <c>tcmalloc</c>, <c>glibc</c> or <c>default</c>.</summary>
    public const string EnvironmentVariable = "REPLKNET_MALLOC";

    private const int MTrimThreshold = -1;
    private const int MMmapMax = -4;

    /// <summary>Whether glibc's malloc was tuned in this process.</summary>
    public static bool Applied { get; private set; }

    /// <summary>
    /// Checks <c>REPLKNET_MALLOC</c> (null or empty means <c>tcmalloc</c>; otherwise exactly one of the three, as the
    /// launcher accepts them).
    /// </summary>
    /// <param name="value">The variable's value.</param>
    /// <returns><c>tcmalloc</c>, <c>glibc</c> or <c>default</c>.</returns>
    /// <exception cref="TorchLoadException">Any other value (the message names the variable and the accepted values).</exception>
    public static string Parse(string? value)
    {
        string v = string.IsNullOrEmpty(value) ? "tcmalloc" : value;
        return v is "tcmalloc" or "glibc" or "default"
            ? v
            : throw new TorchLoadException($"{EnvironmentVariable}='{value}' is not an allocator: use tcmalloc (the default of ./replknet), glibc or default");
    }

    /// <summary>
    /// Tunes glibc's malloc once (Linux/glibc only), unless <c>REPLKNET_MALLOC=default</c> or another allocator was preloaded.
    /// </summary>
    /// <exception cref="TorchLoadException"><c>REPLKNET_MALLOC</c> has a value <see cref="Parse"/> refuses.</exception>
    public static void Apply()
    {
        string choice = Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));
        if (Applied || !OperatingSystem.IsLinux() || choice == "default" || Preloaded() is not null)
        {
            return;
        }

        try
        {
            Applied = MallOpt(MMmapMax, 0) == 1 & MallOpt(MTrimThreshold, 1 << 30) == 1;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc (e.g. musl): nothing to tune.
        }
    }

    /// <summary>The allocator this process runs on.</summary>
    public static NativeAllocator Current() => Classify(Preloaded());

    // The allocator, given what Preloaded() found (read once per caller: it scans /proc/self/maps).
    private static NativeAllocator Classify(string? preloaded) => preloaded switch
    {
        { } path when Path.GetFileName(path).StartsWith("libtcmalloc", StringComparison.Ordinal) => NativeAllocator.Tcmalloc,
        not null => NativeAllocator.OtherPreloaded,
        null => Applied ? NativeAllocator.GlibcTuned : NativeAllocator.Glibc,
    };

    /// <summary>
    /// The file of the malloc replacement (tcmalloc, jemalloc, mimalloc, TBB's proxy) in use, or null: the first one named
    /// in <c>LD_PRELOAD</c> that is mapped into this process (the loader binds malloc to the first preload defining it), else
    /// the first mapped at all (read from <c>/proc/self/maps</c>; Linux, null elsewhere).
    /// </summary>
    public static string? Preloaded()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        static bool IsAllocator(string name) => name.StartsWith("libtcmalloc", StringComparison.Ordinal) ||
            name.StartsWith("libjemalloc", StringComparison.Ordinal) || name.StartsWith("libmimalloc", StringComparison.Ordinal) ||
            name.StartsWith("libtbbmalloc_proxy", StringComparison.Ordinal);
        var mapped = new List<string>();
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                int slash = line.IndexOf('/', StringComparison.Ordinal);
                string path = slash >= 0 ? line[slash..] : string.Empty;
                if (slash >= 0 && IsAllocator(Path.GetFileName(path)) && !mapped.Contains(path))
                {
                    mapped.Add(path);
                }
            }
        }
        catch (IOException)
        {
            // No /proc: report none.
        }

        if (mapped.Count == 0)
        {
            return null;
        }

        // LD_PRELOAD names files as given (symlinks, relative paths); the maps show the resolved file.
        foreach (var entry in (Environment.GetEnvironmentVariable("LD_PRELOAD") ?? "").Split([':', ' '], StringSplitOptions.RemoveEmptyEntries))
        {
            string resolved;
            try
            {
                resolved = new FileInfo(entry).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(entry);
            }
            catch (IOException)
            {
                continue;
            }

            if (mapped.Contains(resolved))
            {
                return resolved;
            }
        }

        return mapped[0];
    }

    /// <summary>One line for <c>replknet info</c>: the allocator, where it comes from and how to change it.</summary>
    public static string Describe()
    {
        string? value = Environment.GetEnvironmentVariable(EnvironmentVariable);
        string asked = value is { Length: > 0 } ? $"{EnvironmentVariable}={value}" : $"{EnvironmentVariable} unset";
        string? preloaded = Preloaded();
        return Classify(preloaded) switch
        {
            NativeAllocator.Tcmalloc when Parse(value) != "tcmalloc" =>
                $"tcmalloc (gperftools, preloaded: {preloaded}) by this process's LD_PRELOAD, not by ./replknet ({asked} acts only through ./replknet)",
            NativeAllocator.Tcmalloc => $"tcmalloc (gperftools, preloaded: {preloaded}; {asked}; {EnvironmentVariable}=glibc for glibc's malloc)",
            NativeAllocator.OtherPreloaded => $"preloaded {preloaded} (left alone; ./replknet preloads tcmalloc)",
            NativeAllocator.GlibcTuned => $"glibc malloc, mmap off and trimming at 1 GiB ({asked}; ./replknet preloads tcmalloc when libtcmalloc-minimal4 is installed)",
            _ => $"glibc malloc as glibc sets it up ({asked})",
        };
    }

    [LibraryImport("libc.so.6", EntryPoint = "mallopt")]
    private static partial int MallOpt(int parameter, int value);
}
