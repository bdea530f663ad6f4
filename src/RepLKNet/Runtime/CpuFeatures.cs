using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace RepLKNet.Runtime;

/// <summary>The CPU's vector support as .NET sees it (what our CPU kernels can use).</summary>
public static class CpuFeatures
{
    /// <summary>
    /// One line, e.g. "AVX2, FMA, AVX-512F; Vector512 accelerated, Vector256 accelerated" ("no AVX2" when none of the x86
    /// extensions is there).
    /// </summary>
    public static string Describe()
    {
        var parts = new List<string>();
        if (Avx2.IsSupported)
        {
            parts.Add("AVX2");
        }

        if (Fma.IsSupported)
        {
            parts.Add("FMA");
        }

        if (Avx512F.IsSupported)
        {
            parts.Add("AVX-512F");
        }

        if (parts.Count == 0)
        {
            parts.Add("no AVX2");
        }

        return $"{string.Join(", ", parts)}; Vector512 {(Vector512.IsHardwareAccelerated ? "accelerated" : "not accelerated")}, Vector256 {(Vector256.IsHardwareAccelerated ? "accelerated" : "not accelerated")}";
    }
}
