using System.Runtime.InteropServices;

namespace RepLKNet.Runtime;

/// <summary>
/// Whether the CUDA driver (<c>libcuda.so.1</c>, installed with the NVIDIA driver) loads and initialises in this process
/// (probed once), and the driver's text for a result code: what <see cref="TorchRuntime"/> reports when libtorch sees no
/// CUDA device, and what the project's own CUDA kernels check before their first driver call.
/// </summary>
internal static partial class CudaDriverProbe
{
    /// <summary>The driver library's name.</summary>
    internal const string Library = "libcuda.so.1";

    private static readonly Lazy<string?> Reason = new(Probe);

    /// <summary>Why the driver cannot be used here, or null when it loads and <c>cuInit</c> succeeds.</summary>
    public static string? UnavailableReason => Reason.Value;

    /// <summary>The driver's error string for a <c>CUresult</c> (call only once the library has loaded).</summary>
    public static string ErrorText(int result) =>
        cuGetErrorString(result, out IntPtr message) == 0 && message != IntPtr.Zero
            ? Marshal.PtrToStringUTF8(message) ?? "unknown error"
            : "unknown error";

    private static string? Probe()
    {
        if (!NativeLibrary.TryLoad(Library, out _))
        {
            return $"the CUDA driver library {Library} could not be loaded (no NVIDIA driver on this machine)";
        }

        int result = cuInit(0);
        return result == 0 ? null : $"cuInit failed: {ErrorText(result)} (CUresult {result})";
    }

    [LibraryImport(Library)]
    private static partial int cuInit(uint flags);

    [LibraryImport(Library)]
    private static partial int cuGetErrorString(int result, out IntPtr message);
}
