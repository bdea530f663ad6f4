using System.Runtime.InteropServices;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// The minor-fault counter the benchmarks print beside each timing (<see cref="PageFaults"/>). Serial: the counter is
/// process-wide, and a test allocating beside this one would blur its bounds.
/// </summary>
[Collection(SerialTests.Name)]
public sealed partial class PageFaultsTests
{
    private const int EInval = 22;
    private const int MadvNoHugePage = 15;

    [Fact]
    public unsafe void Each_first_touch_of_a_fresh_page_counts_one_minor_fault_and_a_second_touch_none()
    {
        const int bytes = 64 << 20;
        int page = Environment.SystemPageSize, pages = bytes / page;
        byte* buffer = PeakMemoryTests.Map(bytes);
        try
        {
            // Base pages, so that one fault is one page whatever the machine's transparent-huge-page setting (a kernel
            // built without huge pages rejects the advice and faults base pages anyway).
            if (Advise((nint)buffer, bytes, MadvNoHugePage) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                Assert.True(errno == EInval, $"madvise(MADV_NOHUGEPAGE) failed: errno {errno}");
            }

            long before = PageFaults.Minor()!.Value;
            for (int i = 0; i < bytes; i += page)
            {
                buffer[i] = 1;
            }

            long first = PageFaults.Minor()!.Value - before;
            for (int i = 0; i < bytes; i += page)
            {
                buffer[i] = 2;
            }

            long second = PageFaults.Minor()!.Value - before - first;
            // The runtime's other threads (GC, JIT, libtorch's) may fault meanwhile: a little slack above, none below.
            Assert.InRange(first, pages, pages + (pages / 20));
            Assert.InRange(second, 0, pages / 100);
        }
        finally
        {
            Assert.Equal(0, PeakMemoryTests.Unmap((nint)buffer, bytes));
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Advise(nint address, nuint length, int advice);
}
