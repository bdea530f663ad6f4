using System.Diagnostics;
using System.Runtime;
using System.Runtime.CompilerServices;
using RepLKNet.Distributed;

namespace RepLKNet.Benchmarks;

/// <summary>
/// Warm-up until .NET's JIT has settled: tiered compilation first runs every method as quickly compiled, unoptimized
/// code (tier 0; methods with loops through on-stack replacement), and recompiles the hot ones fully optimized only after
/// 30 calls, a 100 ms delay and a background compile (with dynamic PGO: an instrumented tier in between, another 30 calls).
/// Until then our C# kernels without <c>AggressiveOptimization</c> (the BatchNorm and optimizer kernels, the training
/// step's own code) run several times slower: <c>bench model --mode train</c> on RepLKNet-FMNIST at batch 64 on one
/// thread measured 57–66 ms per step after 3 warm-up steps against 23–27 ms with <c>DOTNET_TieredCompilation=0</c>, while
/// the training loop itself reaches the optimized code within its first second (docs/perf-notes.md, "2026-12-01 (tenth
/// session): `bench model` timed unoptimized code; our own NCHW 1×1 training kernels do not pay").
/// </summary>
public static class JitWarmup
{
    /// <summary>Quiet runs that count as settled whatever their duration: enough calls for a method called once per run to climb both tiers (30 each).</summary>
    public const int QuietRuns = 64;

    /// <summary>
    /// Calls <paramref name="once"/> until the number of methods the JIT has compiled in this process
    /// (<see cref="JitInfo.GetCompiledMethodCount"/>: every thread, tier-ups and background compilations included) has not
    /// changed for at least 2 runs and <paramref name="quietSeconds"/>, and then for <see cref="QuietRuns"/> runs or
    /// 10 × <paramref name="quietSeconds"/>, whichever comes first; no run starts after <paramref name="maxSeconds"/> (the
    /// last one may end later). With runs much longer than <paramref name="quietSeconds"/> / 30, a method called once per
    /// run may still be unoptimized when this returns; its share of such a run is small.
    /// </summary>
    /// <param name="once">One untimed run of the workload.</param>
    /// <param name="quietSeconds">Seconds without a new compilation that start to count as settled (longer than the tiering delay of 100 ms).</param>
    /// <param name="maxSeconds">No run starts after this many seconds from the call.</param>
    /// <returns>The runs made (at least 1).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="once"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="quietSeconds"/> is negative or not finite, or <paramref name="maxSeconds"/> is not positive or not finite.</exception>
    public static int UntilSettled(Action once, double quietSeconds = 0.5, double maxSeconds = 30)
    {
        ArgumentNullException.ThrowIfNull(once);
        // The one-process case of UntilAllSettled (the limits are checked before the first run).
        return UntilAllSettled(ProcessGroup.Single, once, new Watch(quietSeconds, maxSeconds).Observe);
    }

    /// <summary>
    /// The benchmarks' warm-up: exactly <paramref name="exact"/> runs of <paramref name="once"/> when given; otherwise
    /// <paramref name="defaultRuns"/>, then more until the JIT has settled on every process of <paramref name="group"/>
    /// (<see cref="UntilAllSettled"/> with a default <see cref="Watch"/>).
    /// </summary>
    /// <param name="group">The processes (<see cref="ProcessGroup.Single"/> for one).</param>
    /// <param name="once">One untimed run.</param>
    /// <param name="exact">Runs asked for (≥ 0), or null for the default rule.</param>
    /// <param name="defaultRuns">Runs before the JIT watch under the default rule (≥ 0).</param>
    /// <returns>The runs made, the same on every process.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="exact"/> or <paramref name="defaultRuns"/> is negative.</exception>
    /// <exception cref="CollectiveException">The allreduce failed or timed out.</exception>
    public static int Run(ProcessGroup group, Action once, int? exact, int defaultRuns)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(once);
        ArgumentOutOfRangeException.ThrowIfNegative(exact ?? 0, nameof(exact));
        ArgumentOutOfRangeException.ThrowIfNegative(defaultRuns);
        int runs = exact ?? defaultRuns;
        for (int i = 0; i < runs; i++)
        {
            once();
        }

        return exact is null ? runs + UntilAllSettled(group, once, new Watch().Observe) : runs;
    }

    /// <summary>
    /// The warm-up of several processes that must run the same number of steps (each step's collectives pair up across
    /// them): every process calls this with the same <paramref name="group"/>; after each run of <paramref name="once"/>,
    /// each asks its own <paramref name="settled"/> (normally a <see cref="Watch"/>'s <see cref="Watch.Observe"/>) and one
    /// max-allreduce of the "not yet" flags decides for all: the runs go on while any process is not settled. Every
    /// process returns the same count.
    /// </summary>
    /// <param name="group">The processes (a single process: no collective).</param>
    /// <param name="once">One untimed run (with the same collectives on every process).</param>
    /// <param name="settled">This process's verdict after a run; it must become true for good within a bounded time (a <see cref="Watch"/> does, at its cap).</param>
    /// <returns>The runs made, the same on every process.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="CollectiveException">The allreduce failed or timed out.</exception>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int UntilAllSettled(ProcessGroup group, Action once, Func<bool> settled)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(once);
        ArgumentNullException.ThrowIfNull(settled);
        int runs = 0;
        double[] unsettled = [1];
        while (unsettled[0] > 0)
        {
            once();
            runs++;
            unsettled[0] = settled() ? 0 : 1;
            if (group.IsDistributed)
            {
                group.AllReduce(unsettled, ReduceOp.Max);
            }
        }

        return runs;
    }

    /// <summary>
    /// The rule of <see cref="UntilSettled"/> as a state, for callers that run the warm-up themselves (several processes
    /// that must agree on one count: <see cref="ScaleBenchmark"/>). Created when the warm-up starts; <see cref="Observe"/>
    /// after every run.
    /// </summary>
    public sealed class Watch
    {
        private readonly double _quietSeconds;
        private readonly double _maxSeconds;
        private readonly Stopwatch _total = Stopwatch.StartNew();
        private readonly Stopwatch _quiet = Stopwatch.StartNew();
        private long _compiled = JitInfo.GetCompiledMethodCount();
        private int _quietRuns;

        // Compiled once, fully optimized (AggressiveOptimization): the watch's own tier-ups would count as JIT activity.

        /// <summary>Starts watching (see <see cref="UntilSettled"/> for the rule and the parameters).</summary>
        /// <exception cref="ArgumentOutOfRangeException"><paramref name="quietSeconds"/> is negative or not finite, or <paramref name="maxSeconds"/> is not positive or not finite.</exception>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public Watch(double quietSeconds = 0.5, double maxSeconds = 30)
        {
            if (!double.IsFinite(quietSeconds) || quietSeconds < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(quietSeconds), quietSeconds, "must be finite and 0 or more");
            }

            if (!double.IsFinite(maxSeconds) || maxSeconds <= 0)
            {
                throw new ArgumentOutOfRangeException(nameof(maxSeconds), maxSeconds, "must be finite and positive");
            }

            _quietSeconds = quietSeconds;
            _maxSeconds = maxSeconds;
        }

        /// <summary>Records one finished run; true when the JIT has settled or no further run may start (the cap).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public bool Observe()
        {
            long now = JitInfo.GetCompiledMethodCount();
            if (now != _compiled)
            {
                _compiled = now;
                _quiet.Restart();
                _quietRuns = 0;
            }
            else
            {
                double seconds = _quiet.Elapsed.TotalSeconds;
                if (++_quietRuns >= 2 && seconds >= _quietSeconds && (_quietRuns >= QuietRuns || seconds >= 10 * _quietSeconds))
                {
                    return true;
                }
            }

            return _total.Elapsed.TotalSeconds >= _maxSeconds;
        }
    }
}
