using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>What libtorch's CPU allocator writes into the memory of each new CPU tensor.</summary>
public enum CpuFill
{
    /// <summary>Nothing: new tensors hold whatever the heap held (libtorch's default, and the project's).</summary>
    None,

    /// <summary>Zeros (c10's <c>caffe2_cpu_allocator_do_zero_fill</c>).</summary>
    Zero,

    /// <summary>A NaN pattern (<c>0x7fedbeef</c>, c10's <c>caffe2_cpu_allocator_do_junk_fill</c>): exposes reads of memory never written.</summary>
    Junk,
}

/// <summary>
/// Chooses what libtorch's CPU allocator writes into each new CPU tensor: nothing (libtorch's default and ours), zeros, or
/// c10's NaN junk pattern, which makes any read of memory an op never wrote visible as NaN. The fill is c10's own (the
/// flags <c>FLAGS_caffe2_cpu_allocator_do_zero_fill</c> and <c>…_do_junk_fill</c>, exported by libc10 and read by
/// <c>c10::alloc_cpu</c> at every allocation, which Python PyTorch sets from its command-line flags); this class writes the
/// flags once libtorch is loaded.
/// <para>
/// Why it exists: the junk fill is how the wrong results of libtorch 2.10's oneDNN convolutions with odd channel counts
/// were pinned down (docs/runtime.md, "Dense convolutions with odd channel counts"; <see cref="Ops.DenseConv2d"/>): with
/// junk every affected convolution came out NaN, without it 3–5 of 8 fresh processes did. Run a command or the tests
/// with <c>REPLKNET_CPU_FILL=junk</c> to look for such reads; <c>zero</c> costs one <c>memset</c> per allocation.
/// </para>
/// <para>
/// <c>REPLKNET_CPU_FILL</c>: <c>none</c> (the default), <c>zero</c> or <c>junk</c>; a bad value, or zero/junk with a
/// libc10 that does not export the flags, fails the runtime's load with one line. Thread safety: the flags are written
/// once, inside <see cref="TorchRuntime"/>'s one-time load (under its lock), before the process creates tensors; c10 reads
/// the flag bytes without synchronisation at each allocation, so the value must not change while other threads allocate
/// (c10 aborts the process if an allocation sees both flags set, which is why both are cleared, fenced, then one set).
/// </para>
/// </summary>
public static class CpuAllocatorFill
{
    /// <summary>Environment variable: <c>none</c> (default), <c>zero</c> or <c>junk</c>.</summary>
    public const string EnvironmentVariable = "REPLKNET_CPU_FILL";

    private const string ZeroSymbol = "FLAGS_caffe2_cpu_allocator_do_zero_fill";
    private const string JunkSymbol = "FLAGS_caffe2_cpu_allocator_do_junk_fill";

    /// <summary>
    /// Sets <paramref name="fill"/> in the libc10 this process has loaded. Call it only before the process creates CPU
    /// tensors on other threads (<see cref="TorchRuntime"/> calls it once, while loading).
    /// </summary>
    /// <param name="fill">The fill (see <see cref="Parse"/>).</param>
    /// <returns>Whether libc10's flags were found; when not, nothing is changed.</returns>
    internal static bool Apply(CpuFill fill)
    {
        if (Flags() is not var (zero, junk))
        {
            return false;
        }

        // Clear before set: c10 CHECK-fails (aborts) on an allocation that sees both flags on; the fence keeps the
        // clearing store ahead of the setting one on weakly ordered CPUs too.
        Marshal.WriteByte(zero, 0);
        Marshal.WriteByte(junk, 0);
        Thread.MemoryBarrier();
        if (fill == CpuFill.Zero)
        {
            Marshal.WriteByte(zero, 1);
        }
        else if (fill == CpuFill.Junk)
        {
            Marshal.WriteByte(junk, 1);
        }

        return true;
    }

    /// <summary>The fill libc10's flags select now, or null when libc10 or its flags are not found.</summary>
    public static CpuFill? Current() => Flags() is var (zero, junk)
        ? Marshal.ReadByte(zero) != 0 ? CpuFill.Zero : Marshal.ReadByte(junk) != 0 ? CpuFill.Junk : CpuFill.None
        : null;

    /// <summary>Parses a <see cref="EnvironmentVariable"/> value (case-insensitive); null or empty gives <see cref="CpuFill.None"/>.</summary>
    /// <exception cref="TorchLoadException">The value is not none, zero or junk.</exception>
    public static CpuFill Parse(string? value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return CpuFill.None;
        }

        return value.Trim().ToUpperInvariant() switch
        {
            "ZERO" => CpuFill.Zero,
            "NONE" => CpuFill.None,
            "JUNK" => CpuFill.Junk,
            _ => throw new TorchLoadException($"{EnvironmentVariable}='{value}' is not a CPU tensor fill (none, the default; zero; junk)"),
        };
    }

    private static (IntPtr Zero, IntPtr Junk)? Flags()
    {
        // The libc10 actually mapped (the bundled one, or an external CUDA libtorch's): dlopen by full path returns it.
        foreach (string path in NativeLibraries.MappedLibraries("libc10.so"))
        {
            if (NativeLibrary.TryLoad(path, out var handle) && NativeLibrary.TryGetExport(handle, ZeroSymbol, out var zero) &&
                NativeLibrary.TryGetExport(handle, JunkSymbol, out var junk))
            {
                return (zero, junk);
            }
        }

        return null;
    }
}
