using System.Diagnostics;
using System.Reflection.Emit;
using RepLKNet.Benchmarks;

namespace RepLKNet.Tests.Benchmarks;

/// <summary>The benchmarks' warm-up runs until the JIT has stopped compiling, and no longer than its cap.</summary>
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
        }, quietSeconds: 0.2, maxSeconds: 20);
        Assert.Equal(calls, runs);
        // 40 compiling runs (~0.4 s), then at least 0.2 s (and 2 runs) of quiet; other threads' JIT work can only lengthen
        // it. Blind to the compilations, it would have stopped after ~20 runs (0.2 s).
        Assert.True(runs >= 42, $"stopped after {runs} runs");
        Assert.True(clock.Elapsed.TotalSeconds < 15, $"took {clock.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public void Warm_up_that_never_settles_stops_at_its_cap()
    {
        int calls = 0;
        var clock = Stopwatch.StartNew();
        int runs = JitWarmup.UntilSettled(() => CompileSomethingNew(1000 + calls++), quietSeconds: 0.2, maxSeconds: 0.5);
        Assert.Equal(calls, runs);
        Assert.InRange(clock.Elapsed.TotalSeconds, 0.5, 10);
    }
}
