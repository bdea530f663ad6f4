using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>
/// Keeps glibc from handing large tensors' memory back to the kernel after every free. By default each allocation above
/// 128 KiB–32 MiB is its own mmap, so every activation of every step is fresh memory and each of its 4 KiB pages faults on
/// first touch; on the project's VMs a fault costs microseconds, and a 28×28 MobileNetV2 step spent more time in the kernel
/// than in convolutions (docs/perf-notes.md). With mmap off and trimming raised, freed blocks are reused from the heap.
/// Set <c>REPLKNET_MALLOC=default</c> to leave glibc as it is.
/// </summary>
public static partial class HeapTuning
{
    /// <summary>Environment variable: <c>default</c> skips the tuning.</summary>
    public const string EnvironmentVariable = "REPLKNET_MALLOC";

    private const int MTrimThreshold = -1;
    private const int MMmapMax = -4;

    /// <summary>Whether the tuning was applied in this process.</summary>
    public static bool Applied { get; private set; }

    /// <summary>Applies the tuning once (Linux/glibc only; anything else is left alone).</summary>
    public static void Apply()
    {
        if (Applied || !OperatingSystem.IsLinux() ||
            string.Equals(Environment.GetEnvironmentVariable(EnvironmentVariable), "default", StringComparison.OrdinalIgnoreCase))
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

    [LibraryImport("libc.so.6", EntryPoint = "mallopt")]
    private static partial int MallOpt(int parameter, int value);
}
