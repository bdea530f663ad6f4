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
/// entry point, for the default-size team (as libtorch starts it: another size makes libgomp end or create pool threads at
/// each switch); up to the requested number of team threads run the worker delegate once, the caller as thread 0, the
/// others return at once. Thread safety: the delegate
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

    private static readonly Lock Gate = new();
    private static (nint Entry, string? Library)? _found;

    /// <summary>The OpenMP runtime whose <c>GOMP_parallel</c> <see cref="Run"/> uses, or null when it uses .NET's thread pool.</summary>
    /// <remarks>Meaningful once libtorch has been loaded (any tensor op); before that no OpenMP runtime is mapped.</remarks>
    /// <exception cref="InvalidOperationException"><c>REPLKNET_CPU_POOL</c> is set to something other than <c>openmp</c> or <c>dotnet</c>.</exception>
    public static string? Library => Gomp().Library;

    /// <summary>Whether <see cref="Run"/> starts its threads through libtorch's OpenMP runtime.</summary>
    /// <exception cref="InvalidOperationException"><c>REPLKNET_CPU_POOL</c> is set to something other than <c>openmp</c> or <c>dotnet</c>.</exception>
    public static bool IsActive => Gomp().Entry != 0;

    /// <summary>
    /// Runs <paramref name="worker"/> once on each of up to <paramref name="threads"/> threads — the calling thread and
    /// members of its OpenMP team — and returns when all have finished. The team is started at its default size (OpenMP's
    /// <c>omp_get_max_threads()</c> on this thread: libtorch's thread count), as libtorch's own ops start it, because a
    /// team of another size makes libgomp end or create pool threads on every switch; members beyond
    /// <paramref name="threads"/> return at once. So fewer threads than asked may run (a smaller team, or OpenMP's dynamic
    /// adjustment), and <paramref name="worker"/> must pull its share of the work from shared state (a counter) rather than
    /// assume a thread count. Team threads do not carry the caller's <see cref="ExecutionContext"/> (AsyncLocal values,
    /// culture): read such state on the caller, before the call.
    /// </summary>
    /// <param name="threads">Threads wanted, ≥ 1; 1 runs <paramref name="worker"/> on the caller only.</param>
    /// <param name="worker">
    /// The per-thread body. It must not block waiting for another team thread, unless, like <see cref="BatchSplit"/>, it
    /// first checks with <see cref="TeamSize"/> that the threads it waits for are members of the team.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is not positive.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="worker"/> is null.</exception>
    /// <exception cref="InvalidOperationException"><c>REPLKNET_CPU_POOL</c> is set to something other than <c>openmp</c> or <c>dotnet</c>.</exception>
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

        var state = new TeamState(worker, threads);
        nint entry = Gomp().Entry;
        if (entry == 0)
        {
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => state.RunGuarded());
            state.Error?.Throw();
            return;
        }

        var handle = GCHandle.Alloc(state);
        try
        {
            // num_threads 0: the default team, the one libtorch's parallel regions use (no pool resizing).
            var gompParallel = (delegate* unmanaged[Cdecl]<delegate* unmanaged[Cdecl]<nint, void>, nint, uint, uint, void>)entry;
            gompParallel(&TeamEntry, GCHandle.ToIntPtr(handle), 0, 0);
        }
        finally
        {
            handle.Free();
        }

        state.Error?.Throw();
    }

    /// <summary>
    /// Sets OpenMP's thread count for parallel regions started from the current task (<c>omp_set_num_threads</c> of the
    /// runtime <see cref="Run"/> uses): called inside a <see cref="Run"/> worker, it holds for that thread until the worker
    /// returns (the region's implicit task owns the setting). libtorch (<c>get_num_threads</c>) and oneDNN size their work
    /// and their in-kernel barriers from <c>omp_get_max_threads()</c>, which inside a region still answers the outer
    /// count although a nested region runs on one thread: a oneDNN kernel decomposed for 2 threads and run on 1 then
    /// waits forever at its own barrier (seen in the 1×1 convolution's weight gradient). A worker that runs libtorch ops
    /// must call this with 1 first. No-op where <see cref="IsActive"/> is false.
    /// </summary>
    /// <param name="threads">Threads, ≥ 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is not positive.</exception>
    public static void SetThreadsHere(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        nint entry = SetNumThreads();
        if (entry != 0)
        {
            ((delegate* unmanaged[Cdecl]<int, void>)entry)(threads);
        }
    }

    /// <summary>
    /// The number of threads in the current team (<c>omp_get_num_threads</c>): inside a <see cref="Run"/> worker, how many
    /// threads run it (every member of an OpenMP team runs the region); 1 outside a parallel region or where
    /// <see cref="CanSizeTeams"/> is false.
    /// </summary>
    public static int TeamSize()
    {
        nint entry = Export("omp_get_num_threads", ref _getNumThreads);
        return entry == 0 ? 1 : ((delegate* unmanaged[Cdecl]<int>)entry)();
    }

    /// <summary>Whether <see cref="IsActive"/> and the runtime exports <c>omp_get_num_threads</c> and <c>omp_set_num_threads</c>.</summary>
    public static bool CanSizeTeams => Export("omp_get_num_threads", ref _getNumThreads) != 0 && SetNumThreads() != 0;

    private static nint _setNumThreads;
    private static nint _getNumThreads;

    private static nint SetNumThreads() => Export("omp_set_num_threads", ref _setNumThreads);

    private static nint Export(string name, ref nint cache)
    {
        if (cache == 0 && Library is { } path && NativeLibrary.TryLoad(path, out var library) && NativeLibrary.TryGetExport(library, name, out var export))
        {
            cache = export;
        }

        return cache;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void TeamEntry(nint data)
    {
        // No exception may cross the native frame: RunGuarded keeps the first for the caller.
        ((TeamState)GCHandle.FromIntPtr(data).Target!).RunGuarded();
    }

    // The runtime, found once libtorch is loaded (a "not found" before that is not kept: the next call looks again).
    private static (nint Entry, string? Library) Gomp()
    {
        if (_found is { } found)
        {
            return found;
        }

        lock (Gate)
        {
            if (_found is { } again)
            {
                return again;
            }

            var (result, final) = Find();
            if (final)
            {
                _found = result;
            }

            return result;
        }
    }

    private static ((nint, string?) Result, bool Final) Find()
    {
        var setting = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrEmpty(setting) && !setting.Equals("openmp", StringComparison.OrdinalIgnoreCase) &&
            !setting.Equals("dotnet", StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidOperationException($"{EnvironmentVariable}='{setting}': expected openmp (the default) or dotnet");
        }

        if (!OperatingSystem.IsLinux() || string.Equals(setting, "dotnet", StringComparison.OrdinalIgnoreCase))
        {
            return ((0, null), true);
        }

        // The runtime libtorch_cpu.so itself loaded: beside it in its package (libgomp-<hash>.so.1 in the pip/NuGet
        // builds), else any OpenMP runtime mapped into the process.
        var torchDirs = NativeLibraries.MappedLibraries("libtorch_cpu").Select(Path.GetDirectoryName).ToList();
        if (torchDirs.Count == 0)
        {
            return ((0, null), false);
        }

        var candidates = OpenMpRuntimes.SelectMany(NativeLibraries.MappedLibraries)
            .OrderByDescending(path => torchDirs.Contains(Path.GetDirectoryName(path)))
            .ToList();
        foreach (var path in candidates)
        {
            if (NativeLibrary.TryLoad(path, out var library) && NativeLibrary.TryGetExport(library, "GOMP_parallel", out var export))
            {
                return ((export, path), true);
            }
        }

        return ((0, null), true);
    }

    private sealed class TeamState(Action worker, int threads)
    {
        private ExceptionDispatchInfo? _error;
        private int _started;

        /// <summary>The first exception any thread's worker threw, or null.</summary>
        public ExceptionDispatchInfo? Error => Volatile.Read(ref _error);

        /// <summary>
        /// Runs the worker on this thread unless <c>threads</c> threads already did; an exception is kept (the first one
        /// wins), not thrown.
        /// </summary>
        public void RunGuarded()
        {
            if (Interlocked.Increment(ref _started) > threads)
            {
                return;
            }

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
