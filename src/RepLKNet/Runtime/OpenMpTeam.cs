using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>
/// Runs the project's CPU kernels on libtorch's own OpenMP thread team instead of .NET's thread pool.
/// <para>
/// Why: libtorch's CPU ops run on an OpenMP team (libgomp on Linux). After each parallel region its worker threads spin
/// for a while waiting for the next one (GOMP's default wait policy), so a kernel of ours that ran on .NET thread-pool
/// workers right after a libtorch op shared the machine's cores with spinning OpenMP workers: on 2 cores, 3–4 runnable
/// threads (docs/perf-notes.md, "One thread team": 13 % of a RepLKNet-31B inference in libgomp). Starting our parallel
/// work through <c>GOMP_parallel</c> of the very libgomp libtorch loaded makes the calling thread the team's master and
/// hands the rest of the work to the same spinning workers — exactly what one of libtorch's own ops does.
/// </para>
/// <para>
/// How: <c>GOMP_parallel(fn, data, num_threads, flags)</c> (the libgomp ABI the compiler emits for <c>#pragma omp
/// parallel</c>; libiomp5 and LLVM's libomp export it too) is called with an <see cref="UnmanagedCallersOnlyAttribute"/>
/// entry point; every team thread runs the worker delegate once, the caller as thread 0. Thread safety: the delegate
/// is reached through a <see cref="GCHandle"/> that the caller keeps alive until <c>GOMP_parallel</c> returns (it
/// returns only after every team thread finished); team threads are ordinary native threads that the .NET runtime attaches
/// on their first entry and that take part in garbage collections like any other; an exception on any thread is caught
/// there (an exception must not cross the native frame) and the first one is rethrown on the caller. Each OS thread that
/// calls <see cref="Run"/> is the master of its own team (libgomp keeps one pool per master), so concurrent callers do
/// not share workers. A call from inside a team (nested) runs on one thread.
/// </para>
/// <para>
/// Where the library is not found (no OpenMP runtime mapped into the process, not Linux) or
/// <c>REPLKNET_CPU_POOL=dotnet</c> is set, <see cref="Run"/> uses <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/>.
/// </para>
/// </summary>
public static unsafe class OpenMpTeam
{
    /// <summary>Environment variable: <c>dotnet</c> runs the kernels on .NET's thread pool instead (comparison, fallback).</summary>
    public const string EnvironmentVariable = "REPLKNET_CPU_POOL";

    // File-name prefixes of the OpenMP runtimes that export GOMP_parallel: GCC's, Intel's, LLVM's.
    private static readonly string[] OpenMpRuntimes = ["libgomp", "libiomp5", "libomp"];

    private static readonly Lazy<(nint Entry, string? Library)> Gomp = new(Find, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The OpenMP runtime whose <c>GOMP_parallel</c> <see cref="Run"/> uses, or null when it uses .NET's thread pool.</summary>
    /// <remarks>Call after libtorch has been loaded (any tensor op); before that no OpenMP runtime is mapped.</remarks>
    public static string? Library => Gomp.Value.Library;

    /// <summary>Whether <see cref="Run"/> starts its threads through libtorch's OpenMP runtime.</summary>
    public static bool IsActive => Gomp.Value.Entry != 0;

    /// <summary>
    /// Runs <paramref name="worker"/> once on each of up to <paramref name="threads"/> threads — the calling thread and
    /// members of its OpenMP team — and returns when all have finished. The team may be smaller than asked (OpenMP
    /// decides; never larger), so <paramref name="worker"/> must pull its share of the work from shared state (a counter)
    /// rather than assume a thread count.
    /// </summary>
    /// <param name="threads">Threads wanted, ≥ 1; 1 runs <paramref name="worker"/> on the caller only.</param>
    /// <param name="worker">The per-thread body. It must not block waiting for another team thread.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is not positive.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="worker"/> is null.</exception>
    /// <remarks>The first exception <paramref name="worker"/> throws on any thread is rethrown here, after all threads ended.</remarks>
    public static void Run(int threads, Action worker)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        ArgumentNullException.ThrowIfNull(worker);
        if (threads == 1)
        {
            worker();
            return;
        }

        var state = new TeamState(worker);
        nint entry = Gomp.Value.Entry;
        if (entry == 0)
        {
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => state.RunGuarded());
            state.Error?.Throw();
            return;
        }

        var handle = GCHandle.Alloc(state);
        try
        {
            var gompParallel = (delegate* unmanaged[Cdecl]<delegate* unmanaged[Cdecl]<nint, void>, nint, uint, uint, void>)entry;
            gompParallel(&TeamEntry, GCHandle.ToIntPtr(handle), (uint)threads, 0);
        }
        finally
        {
            handle.Free();
        }

        state.Error?.Throw();
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void TeamEntry(nint data)
    {
        // No exception may cross the native frame: RunGuarded keeps the first for the caller.
        ((TeamState)GCHandle.FromIntPtr(data).Target!).RunGuarded();
    }

    private static (nint, string?) Find()
    {
        if (!OperatingSystem.IsLinux() ||
            string.Equals(Environment.GetEnvironmentVariable(EnvironmentVariable), "dotnet", StringComparison.OrdinalIgnoreCase))
        {
            return (0, null);
        }

        // The runtime libtorch_cpu.so itself loaded: beside it in its package (libgomp-<hash>.so.1 in the pip/NuGet
        // builds), else any OpenMP runtime mapped into the process.
        var torchDirs = NativeLibraries.MappedLibraries("libtorch_cpu").Select(Path.GetDirectoryName).ToList();
        var candidates = OpenMpRuntimes.SelectMany(NativeLibraries.MappedLibraries)
            .OrderByDescending(path => torchDirs.Contains(Path.GetDirectoryName(path)))
            .ToList();
        foreach (var path in candidates)
        {
            if (NativeLibrary.TryLoad(path, out var library) && NativeLibrary.TryGetExport(library, "GOMP_parallel", out var export))
            {
                return (export, path);
            }
        }

        return (0, null);
    }

    private sealed class TeamState(Action worker)
    {
        private ExceptionDispatchInfo? _error;

        /// <summary>The first exception any thread's worker threw, or null.</summary>
        public ExceptionDispatchInfo? Error => Volatile.Read(ref _error);

        /// <summary>Runs the worker on this thread; an exception is kept (the first one wins), not thrown.</summary>
        public void RunGuarded()
        {
            try
            {
                worker();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, ExceptionDispatchInfo.Capture(e), null);
            }
        }
    }
}
