using System.Diagnostics;
using System.Globalization;

namespace RepLKNet.Runtime;

/// <summary>
/// The peak resident memory (RSS) of this process as the kernel counts it, shared by every speed figure the tools print.
/// On Linux the source is <c>VmHWM</c> of <c>/proc/self/status</c>, which writing 5 to <c>/proc/self/clear_refs</c> resets
/// to the current RSS (<see cref="Start"/>); elsewhere <see cref="Process.PeakWorkingSet64"/>, which cannot be reset: the
/// peak since the process started (<see cref="PeakResidentMemory.SinceReset"/> false). The counter is process-wide: every
/// thread's pages count, managed and native (libtorch, ONNX Runtime), and a reset by anyone starts it again for all.
/// </summary>
public static class PeakMemory
{
    private const string ClearRefs = "/proc/self/clear_refs";
    private const string Status = "/proc/self/status";

    /// <summary>Starts a measurement: resets the peak to the current RSS where the system allows it (<see cref="Reset"/>).</summary>
    public static PeakMemoryWindow Start() => new(Reset());

    /// <summary>The peak of the process so far, without a reset (the peak since the last reset on Linux, if anything reset it).</summary>
    /// <returns>The peak, with <see cref="PeakResidentMemory.SinceReset"/> false; null where the system reports none.</returns>
    public static PeakResidentMemory? ProcessPeak() => PeakResidentBytes() is long bytes ? new PeakResidentMemory(bytes, false) : null;

    /// <summary>Resets the kernel's peak-RSS counter of this process to its current RSS (Linux: writes 5 to <c>/proc/self/clear_refs</c>).</summary>
    /// <returns>true when the counter was reset; false where it cannot be (not Linux, or <c>clear_refs</c> not writable).</returns>
    public static bool Reset()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            File.WriteAllText(ClearRefs, "5");
            return true;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>
    /// The peak resident set size in bytes: Linux <c>VmHWM</c> (since the last <see cref="Reset"/>, else since the process
    /// started), elsewhere <see cref="Process.PeakWorkingSet64"/>; null where neither is reported.
    /// </summary>
    public static long? PeakResidentBytes()
    {
        if (OperatingSystem.IsLinux())
        {
            try
            {
                var line = File.ReadLines(Status).FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
                if (line is not null && long.TryParse(line["VmHWM:".Length..].Trim().Split(' ')[0], NumberStyles.None, CultureInfo.InvariantCulture, out long kb))
                {
                    return kb * 1024;
                }
            }
            catch (IOException)
            {
                // Fall back to the runtime's figure.
            }
            catch (UnauthorizedAccessException)
            {
                // Same.
            }
        }

        using var process = Process.GetCurrentProcess();
        long peak = process.PeakWorkingSet64;
        return peak > 0 ? peak : null;
    }
}

/// <summary>A stretch of work whose peak RSS is measured, from <see cref="PeakMemory.Start"/> to <see cref="Read"/>.</summary>
/// <param name="SinceReset">Whether <see cref="PeakMemory.Start"/> could reset the counter (else <see cref="Read"/> gives the process's peak so far).</param>
public readonly record struct PeakMemoryWindow(bool SinceReset)
{
    /// <summary>The peak resident memory since the window started (or of the process so far, where the counter cannot be reset); null where none is reported.</summary>
    public PeakResidentMemory? Read() => PeakMemory.PeakResidentBytes() is long bytes ? new PeakResidentMemory(bytes, SinceReset) : null;
}

/// <summary>A measured peak resident set size (<see cref="PeakMemory"/>).</summary>
/// <param name="Bytes">Peak resident memory of the whole process, in bytes.</param>
/// <param name="SinceReset">
/// true: the peak since the counter was reset at the start of the measurement (Linux <c>VmHWM</c> after <c>clear_refs</c>);
/// false: the process's peak since it started (the system cannot reset it), an upper bound of the measurement's.
/// </param>
public readonly record struct PeakResidentMemory(long Bytes, bool SinceReset)
{
    /// <summary>The peak in MiB (2^20 bytes).</summary>
    public double Mebibytes => Bytes / 1048576.0;

    /// <summary>Where the figure comes from, in words (for reports and JSON).</summary>
    public string Source => SinceReset
        ? "Linux VmHWM, reset through /proc/self/clear_refs when the measurement started"
        : "the process's peak since it started: this system cannot reset the counter";

    /// <summary>"123 MiB", with "(process peak)" added when <see cref="SinceReset"/> is false.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Mebibytes:F0} MiB{(SinceReset ? string.Empty : " (process peak)")}");
}
