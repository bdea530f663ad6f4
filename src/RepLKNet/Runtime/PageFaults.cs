using System.Globalization;

namespace RepLKNet.Runtime;

/// <summary>
/// The page faults of this process as the kernel counts them (Linux <c>/proc/self/stat</c>, field 10 of proc(5):
/// <c>minflt</c>). A minor fault is a first touch of a page the process has not used before (or got back from the
/// kernel): on the project's VMs each costs several microseconds, so a timed section that allocates fresh memory times
/// the kernel as well (docs/perf-notes.md: "Page faults: glibc returning tensor memory to the kernel" and "2026-12-01:
/// the RepLKNet-31B training step was timed while its heap grew"). Process-wide: every thread's faults count.
/// </summary>
public static class PageFaults
{
    /// <summary>The minor page faults of the process since it started; null where the system does not report them (not Linux).</summary>
    public static long? Minor() => Read(7);

    // /proc/self/stat: "pid (comm) state ppid …"; comm may hold spaces and parentheses, so fields are counted after the
    // last ')'. Index 0 there is field 3 (state), so minflt (field 10) is index 7.
    private static long? Read(int index)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            string stat = File.ReadAllText("/proc/self/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[index], NumberStyles.None, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }
}
