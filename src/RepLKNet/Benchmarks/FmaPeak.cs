using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using RepLKNet.Ops.Cpu;

namespace RepLKNet.Benchmarks;

/// <summary>Measures the machine's fused-multiply-add ceiling: the "peak" every CPU efficiency figure is relative to.</summary>
public static class FmaPeak
{
    /// <summary>
    /// GFLOP/s (2 per FMA lane) of independent FMA chains on <paramref name="threads"/> threads with the widest vectors
    /// <paramref name="isa"/> allows, best of seven ~100 ms runs (the best, because a shared machine only ever slows a run down).
    /// </summary>
    public static double MeasureGflops(int threads, CpuIsa isa = CpuIsa.Auto)
    {
        var resolved = CpuIsas.Resolve(isa);
        double best = 0;
        for (int attempt = 0; attempt < 7; attempt++)
        {
            const long iterations = 4_000_000;
            var sw = Stopwatch.StartNew();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, _ => Sink(Chains(resolved, iterations)));
            double seconds = sw.Elapsed.TotalSeconds;
            int lanes = resolved switch { CpuIsa.Vector512 => 16, CpuIsa.Vector256 => 8, _ => 1 };
            double flops = 2.0 * lanes * 12 * iterations * threads;
            best = Math.Max(best, flops / seconds / 1e9);
        }

        return best;
    }

    private static float Chains(CpuIsa isa, long iterations) => isa switch
    {
        CpuIsa.Vector512 => Chains512(iterations),
        CpuIsa.Vector256 => Chains256(iterations),
        _ => ChainsScalar(iterations),
    };

    // Twelve independent accumulators hide the FMA latency (4 cycles × 2–3 pipes).
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Chains256(long iterations)
    {
        var m = Vector256.Create(0.999999f);
        var a = Vector256.Create(1e-3f);
        Vector256<float> c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
        for (long i = 0; i < iterations; i++)
        {
            c0 = Fma.MultiplyAdd(c0, m, a); c1 = Fma.MultiplyAdd(c1, m, a); c2 = Fma.MultiplyAdd(c2, m, a);
            c3 = Fma.MultiplyAdd(c3, m, a); c4 = Fma.MultiplyAdd(c4, m, a); c5 = Fma.MultiplyAdd(c5, m, a);
            c6 = Fma.MultiplyAdd(c6, m, a); c7 = Fma.MultiplyAdd(c7, m, a); c8 = Fma.MultiplyAdd(c8, m, a);
            c9 = Fma.MultiplyAdd(c9, m, a); c10 = Fma.MultiplyAdd(c10, m, a); c11 = Fma.MultiplyAdd(c11, m, a);
        }

        return Vector256.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Chains512(long iterations)
    {
        var m = Vector512.Create(0.999999f);
        var a = Vector512.Create(1e-3f);
        Vector512<float> c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
        for (long i = 0; i < iterations; i++)
        {
            c0 = Avx512F.FusedMultiplyAdd(c0, m, a); c1 = Avx512F.FusedMultiplyAdd(c1, m, a); c2 = Avx512F.FusedMultiplyAdd(c2, m, a);
            c3 = Avx512F.FusedMultiplyAdd(c3, m, a); c4 = Avx512F.FusedMultiplyAdd(c4, m, a); c5 = Avx512F.FusedMultiplyAdd(c5, m, a);
            c6 = Avx512F.FusedMultiplyAdd(c6, m, a); c7 = Avx512F.FusedMultiplyAdd(c7, m, a); c8 = Avx512F.FusedMultiplyAdd(c8, m, a);
            c9 = Avx512F.FusedMultiplyAdd(c9, m, a); c10 = Avx512F.FusedMultiplyAdd(c10, m, a); c11 = Avx512F.FusedMultiplyAdd(c11, m, a);
        }

        return Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float ChainsScalar(long iterations)
    {
        float m = 0.999999f, a = 1e-3f;
        float c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a;
        for (long i = 0; i < iterations; i++)
        {
            c0 = MathF.FusedMultiplyAdd(c0, m, a); c1 = MathF.FusedMultiplyAdd(c1, m, a); c2 = MathF.FusedMultiplyAdd(c2, m, a);
            c3 = MathF.FusedMultiplyAdd(c3, m, a); c4 = MathF.FusedMultiplyAdd(c4, m, a); c5 = MathF.FusedMultiplyAdd(c5, m, a);
            c6 = MathF.FusedMultiplyAdd(c6, m, a); c7 = MathF.FusedMultiplyAdd(c7, m, a); c8 = MathF.FusedMultiplyAdd(c8, m, a);
            c9 = MathF.FusedMultiplyAdd(c9, m, a); c10 = MathF.FusedMultiplyAdd(c10, m, a); c11 = MathF.FusedMultiplyAdd(c11, m, a);
        }

        return c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;
    }

    private static volatile float _sink;

    private static void Sink(float value) => _sink = value;
}
