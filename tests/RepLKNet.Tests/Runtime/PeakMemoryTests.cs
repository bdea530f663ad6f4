using System.Runtime.InteropServices;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// The peak-RSS figure the benchmarks and training print: it rises by what was touched and a reset brings it back down.
/// Serial: the counter is process-wide, and a reset or a large allocation elsewhere would blur these bounds.
/// </summary>
[Collection(SerialTests.Name)]
public sealed partial class PeakMemoryTests
{
    private const int Size = 200 << 20; // 200 MiB = 209.7 MB
    private const long Rise = 200_000_000; // 200 MB: the touched buffer less 9.7 MB of slack

    [Fact]
    public unsafe void A_touched_200_MiB_native_buffer_raises_the_peak_by_200_MB_and_a_reset_brings_it_back_down()
    {
        // Libtorch is loaded (and with it HeapTuning, which keeps freed heap memory resident) as in every tool.
        Torch.EnsureLoaded();
        var window = PeakMemory.Start();
        Assert.True(window.SinceReset, "this project's machines run Linux, where /proc/self/clear_refs resets the counter");
        var before = window.Read()!.Value;
        Assert.True(before.SinceReset);
        Assert.True(before.Bytes > 50 << 20, $"a .NET process with libtorch resident in {before} only");

        // Fresh pages straight from the kernel (not the heap, which may hold freed memory that is resident already),
        // each written once so that it is resident, then handed back.
        byte* buffer = Map(Size);
        try
        {
            new Span<byte>(buffer, Size).Fill(1);
            var raised = window.Read()!.Value;
            Assert.True(raised.Bytes - before.Bytes >= Rise, $"peak {raised} while 200 MiB are touched, {before} before");
        }
        finally
        {
            Assert.Equal(0, Unmap((nint)buffer, (nuint)Size));
        }

        long peak = window.Read()!.Value.Bytes;
        Assert.True(peak - before.Bytes >= Rise, "the peak stays after the buffer is gone");

        // The buffer is gone, so a fresh window starts from the RSS without it; the process peak is the counter as it is.
        var after = PeakMemory.Start().Read()!.Value;
        Assert.True(peak - after.Bytes >= Rise - (20 << 20), $"peak {after} after a reset, {peak >> 20} MiB with the buffer");
        var process = PeakMemory.ProcessPeak()!.Value;
        Assert.False(process.SinceReset);
        // Two reads of VmHWM need not be ordered to the page: the kernel counts RSS per thread and folds the counts in
        // batches ("some of these values are inaccurate", proc(5)), so a read may fall a few pages short of the last one.
        const long countingSlack = 4 << 20;
        Assert.True(process.Bytes >= after.Bytes - countingSlack && process.Bytes < peak - Rise / 2,
            $"process peak {process.Bytes} B after the reset (that read {after.Bytes} B); {before.Bytes} B before, {peak} B with the buffer");
    }

    [Fact]
    public void The_figure_prints_in_MiB_and_says_when_it_is_the_process_peak()
    {
        Assert.Equal("3 MiB", new PeakResidentMemory(3 << 20, true).ToString());
        Assert.Equal("812 MiB (process peak)", new PeakResidentMemory(812L << 20, false).ToString());
        Assert.Equal(1.5, new PeakResidentMemory(3 << 19, true).Mebibytes);
        Assert.Contains("VmHWM", new PeakResidentMemory(1, true).Source, StringComparison.Ordinal);
        Assert.Contains("cannot reset", new PeakResidentMemory(1, false).Source, StringComparison.Ordinal);
    }

    internal static unsafe byte* Map(int bytes)
    {
        const int readWrite = 0x1 | 0x2; // PROT_READ | PROT_WRITE
        const int privateAnonymous = 0x02 | 0x20; // MAP_PRIVATE | MAP_ANONYMOUS
        nint address = MapMemory(0, (nuint)bytes, readWrite, privateAnonymous, -1, 0);
        Assert.True(address != -1, $"mmap of {bytes} bytes failed: errno {Marshal.GetLastPInvokeError()}");
        return (byte*)address;
    }

    [LibraryImport("libc.so.6", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint MapMemory(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc.so.6", EntryPoint = "munmap", SetLastError = true)]
    internal static partial int Unmap(nint address, nuint length);
}
