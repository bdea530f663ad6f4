using System.Diagnostics;
using System.Reflection.Emit;
using RepLKNet.Benchmarks;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Benchmarks;

/// <summary>
/// The benchmarks' warm-up runs until the JIT has stopped compiling, and no longer than its cap. Runs alone: the
/// compiled-method count is the whole process's, and tests compiling in parallel would keep it from settling.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class JitWarmupTests
{
    // A method the JIT has never seen: compiled on its first call.
    private static void CompileSomethingNew(int seed)
    {
        var method = new DynamicMethod($"fresh{seed}", typeof(int), [typeof(int)]);
        var il = method.GetILGenerator();
        il.Emit(OpCodes.Ldarg_0);
        il.Emit(OpCodes.Ldc_I4, seed);
        il.Emit(OpCodes.Add);
        il.Emit(OpCodes.Ret);
        var f = method.CreateDelegate<Func<int, int>>();
        Assert.Equal(seed + 1, f(1));
    }

    [Fact]
    public void Warm_up_goes_on_while_methods_are_compiled_and_stops_once_quiet()
    {
        int calls = 0;
        var clock = Stopwatch.StartNew();
        int runs = JitWarmup.UntilSettled(() =>
        {
            if (calls < 40)
            {
                CompileSomethingNew(calls);
            }

            calls++;
            Thread.Sleep(10);
        }, quietSeconds: 0.05, maxSeconds: 20);
        Assert.Equal(calls, runs);
        // 40 compiling runs, then QuietRuns (64) quiet ones or 0.5 s of them, whichever first (~45 runs of ≥ 10 ms):
        // blind to the compilations it would have stopped after ~45 runs in all.
        Assert.True(runs >= 40 + 40, $"stopped after {runs} runs");
        Assert.True(clock.Elapsed.TotalSeconds < 15, $"took {clock.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public void Quiet_runs_need_at_least_two_of_them_and_the_quiet_time()
    {
        static void Idle() => Thread.Sleep(1);
        Idle();
        // Nothing of ours compiles and no time is asked: 2 runs, more only when the runtime compiles something meanwhile
        // (tier-ups of code run earlier happen in the background). One run alone never counts as settled.
        Assert.InRange(JitWarmup.UntilSettled(Idle, quietSeconds: 0, maxSeconds: 20), 2, 40);

        // Slow runs, each past the quiet time and 10 × it: still 2 of them at least (more while anything compiles; within
        // the cap, no run starts after 5 s).
        static void Slow() => Thread.Sleep(300);
        Slow();
        Assert.InRange(JitWarmup.UntilSettled(Slow, quietSeconds: 0.02, maxSeconds: 5), 2, 18);
    }

    [Fact]
    public async Task Warm_up_that_never_settles_stops_at_its_cap()
    {
        int calls = 0;
        var clock = Stopwatch.StartNew();
        var warmup = Task.Run(() => JitWarmup.UntilSettled(() => CompileSomethingNew(1000 + calls++), quietSeconds: 0.2, maxSeconds: 0.5));
        var first = await Task.WhenAny(warmup, Task.Delay(TimeSpan.FromSeconds(30)));
        Assert.True(first == warmup, "the warm-up did not stop at its cap");
        Assert.Equal(calls, await warmup);
        Assert.InRange(clock.Elapsed.TotalSeconds, 0.5, 10);
    }

    [Theory]
    [InlineData(-1, 30, "quietSeconds")]
    [InlineData(double.NaN, 30, "quietSeconds")]
    [InlineData(0.5, 0, "maxSeconds")]
    [InlineData(0.5, double.PositiveInfinity, "maxSeconds")]
    public void Bad_limits_are_refused(double quietSeconds, double maxSeconds, string parameter) =>
        Assert.Equal(parameter, Assert.Throws<ArgumentOutOfRangeException>(() => JitWarmup.UntilSettled(() => { }, quietSeconds, maxSeconds)).ParamName);

    [Fact]
    public void A_watch_past_its_cap_says_settled_on_every_later_run()
    {
        var watch = new JitWarmup.Watch(quietSeconds: 100, maxSeconds: 0.2);
        Assert.False(watch.Observe()); // neither settled (100 s of quiet asked) nor past the cap
        Thread.Sleep(250);
        for (int i = 0; i < 5; i++)
        {
            CompileSomethingNew(2000 + i);
            Assert.True(watch.Observe(), $"run {i} after the cap");
        }

        Assert.Equal("maxSeconds", Assert.Throws<ArgumentOutOfRangeException>(() => new JitWarmup.Watch(0.5, -1)).ParamName);
        Assert.Equal("quietSeconds", Assert.Throws<ArgumentOutOfRangeException>(() => new JitWarmup.Watch(double.PositiveInfinity, 30)).ParamName);
    }

    [Fact]
    public void Processes_warm_up_until_all_have_settled_and_agree_on_the_count()
    {
        // Scripted verdicts per run (1-based): rank 0 settles from run 7 on; rank 1 looks settled at runs 3-6, compiles
        // again at 7-8 and settles from 9 on. The runs go on while any rank is unsettled: 9 on both. (Stopping at the
        // first settled rank would give 3; without the agreement, 7 and 3.)
        var settledFrom = new Func<int, bool>[] { run => run >= 7, run => run is >= 3 and <= 6 or >= 9 };
        var counts = new int[2];
        ThreadProcessGroup.Run(2, g =>
        {
            int run = 0;
            counts[g.Rank] = JitWarmup.UntilAllSettled(g, () => run++, () => settledFrom[g.Rank](run));
        });
        Assert.Equal([9, 9], counts);

        // One process: no collective, its own verdict.
        int single = 0;
        Assert.Equal(4, JitWarmup.UntilAllSettled(RepLKNet.Distributed.ProcessGroup.Single, () => single++, () => single >= 4));
    }
}
