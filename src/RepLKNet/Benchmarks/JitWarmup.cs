using System.Diagnostics;
using System.Runtime;

namespace RepLKNet.Benchmarks;

/// <summary>
/// Warm-up until .NET's JIT has settled: tiered compilation first runs every method as quickly compiled, unoptimized
/// code (tier 0; methods with loops through on-stack replacement), and recompiles the hot ones fully optimized only after
/// 30 calls, a 100 ms delay and a background compile (with dynamic PGO: an instrumented tier in between). Until then our
/// C# kernels without <c>AggressiveOptimization</c> (the BatchNorm and optimizer kernels, the training step's own code)
/// run several times slower: <c>bench model --mode train</c> on RepLKNet-FMNIST at batch 64 on one thread measured
/// 57–66 ms per step after 3 warm-up steps against 24–27 ms fully optimized (<c>DOTNET_TieredCompilation=0</c>), while
/// the training loop itself reaches the optimized code within its first second (docs/perf-notes.md, 2026-12-01).
/// </summary>
public static class JitWarmup
{
    /// <summary>
    /// Calls <paramref name="once"/> until the number of methods the JIT has compiled in this process
    /// (<see cref="JitInfo.GetCompiledMethodCount"/>, tier-ups included) has not changed for <paramref name="quietSeconds"/>
    /// of runs (at least 2 runs), or <paramref name="maxSeconds"/> have passed.
    /// </summary>
    /// <param name="once">One untimed run of the workload.</param>
    /// <param name="quietSeconds">Seconds of runs without a new compilation that count as settled (longer than the tiering delay of 100 ms).</param>
    /// <param name="maxSeconds">Upper bound on the whole warm-up, in seconds.</param>
    /// <returns>The runs made.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="once"/> is null.</exception>
    public static int UntilSettled(Action once, double quietSeconds = 0.5, double maxSeconds = 30)
    {
        ArgumentNullException.ThrowIfNull(once);
        int runs = 0;
        var total = Stopwatch.StartNew();
        var quiet = Stopwatch.StartNew();
        int quietRuns = 0;
        long compiled = JitInfo.GetCompiledMethodCount();
        while (total.Elapsed.TotalSeconds < maxSeconds)
        {
            once();
            runs++;
            long now = JitInfo.GetCompiledMethodCount();
            if (now != compiled)
            {
                compiled = now;
                quiet.Restart();
                quietRuns = 0;
            }
            else if (++quietRuns >= 2 && quiet.Elapsed.TotalSeconds >= quietSeconds)
            {
                break;
            }
        }

        return runs;
    }
}
