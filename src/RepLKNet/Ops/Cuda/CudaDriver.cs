using System.Runtime.InteropServices;
using System.Text;

namespace RepLKNet.Ops.Cuda;

/// <summary>A CUDA driver API call failed; the message names the call and the driver's own error text.</summary>
public sealed class CudaException : Exception
{
    /// <summary>Creates the exception for a failed driver call.</summary>
    public CudaException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception for a failed driver call.</summary>
    public CudaException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public CudaException()
    {
    }
}

/// <summary>What the CUDA driver says about one device.</summary>
/// <param name="Ordinal">The device index (as in <c>cuda:N</c>).</param>
/// <param name="Name">The marketing name, e.g. "NVIDIA H200".</param>
/// <param name="ComputeCapabilityMajor">SM major version.</param>
/// <param name="ComputeCapabilityMinor">SM minor version.</param>
/// <param name="Multiprocessors">Number of SMs.</param>
/// <param name="TotalMemoryBytes">Device memory.</param>
public sealed record CudaDeviceProperties(int Ordinal, string Name, int ComputeCapabilityMajor, int ComputeCapabilityMinor,
    int Multiprocessors, long TotalMemoryBytes)
{
    /// <summary>The NVRTC/PTX architecture name, e.g. "sm_90".</summary>
    public string Architecture => $"sm_{ComputeCapabilityMajor}{ComputeCapabilityMinor}";
}

/// <summary>
/// P/Invoke access to the CUDA driver API (<c>libcuda.so.1</c>, installed with the NVIDIA driver). Every call's result
/// is checked and turned into a <see cref="CudaException"/> with the driver's error string.
/// </summary>
public static partial class CudaDriver
{
    private const string Library = "libcuda.so.1";
    private const int AttributeMultiprocessorCount = 16;
    private const int AttributeComputeCapabilityMajor = 75;
    private const int AttributeComputeCapabilityMinor = 76;

    private static readonly Lazy<string?> LoadError = new(ProbeDriver);

    /// <summary>Whether the driver library can be loaded and initialised.</summary>
    public static bool IsAvailable => LoadError.Value is null;

    /// <summary>Why the driver is unavailable, or null when it is available.</summary>
    public static string? UnavailableReason => LoadError.Value;

    /// <summary>The driver's CUDA version as "major.minor".</summary>
    public static string DriverVersion()
    {
        EnsureAvailable();
        Check(cuDriverGetVersion(out int version), nameof(cuDriverGetVersion));
        return $"{version / 1000}.{version % 1000 / 10}";
    }

    /// <summary>Properties of every device the driver sees.</summary>
    public static IReadOnlyList<CudaDeviceProperties> Devices()
    {
        EnsureAvailable();
        Check(cuDeviceGetCount(out int count), nameof(cuDeviceGetCount));
        var devices = new List<CudaDeviceProperties>(count);
        for (int i = 0; i < count; i++)
        {
            Check(cuDeviceGet(out int device, i), nameof(cuDeviceGet));
            var name = new byte[256];
            Check(cuDeviceGetName(name, name.Length, device), nameof(cuDeviceGetName));
            Check(cuDeviceGetAttribute(out int major, AttributeComputeCapabilityMajor, device), nameof(cuDeviceGetAttribute));
            Check(cuDeviceGetAttribute(out int minor, AttributeComputeCapabilityMinor, device), nameof(cuDeviceGetAttribute));
            Check(cuDeviceGetAttribute(out int sms, AttributeMultiprocessorCount, device), nameof(cuDeviceGetAttribute));
            Check(cuDeviceTotalMem(out nuint bytes, device), nameof(cuDeviceTotalMem));
            int length = Array.IndexOf(name, (byte)0);
            devices.Add(new CudaDeviceProperties(i, Encoding.UTF8.GetString(name, 0, length < 0 ? name.Length : length),
                major, minor, sms, (long)bytes));
        }

        return devices;
    }

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> when <paramref name="result"/> is not CUDA_SUCCESS.</summary>
    public static void Check(int result, string call)
    {
        if (result == 0)
        {
            return;
        }

        string text = cuGetErrorString(result, out IntPtr message) == 0 && message != IntPtr.Zero
            ? Marshal.PtrToStringUTF8(message) ?? "unknown error"
            : "unknown error";
        throw new CudaException($"CUDA driver call {call} failed: {text} (CUresult {result})");
    }

    private static void EnsureAvailable()
    {
        if (LoadError.Value is { } reason)
        {
            throw new CudaException(reason);
        }
    }

    private static string? ProbeDriver()
    {
        if (!NativeLibrary.TryLoad(Library, out _))
        {
            return $"the CUDA driver library {Library} could not be loaded (no NVIDIA driver on this machine)";
        }

        int result = cuInit(0);
        if (result != 0)
        {
            string text = cuGetErrorString(result, out IntPtr message) == 0 && message != IntPtr.Zero
                ? Marshal.PtrToStringUTF8(message) ?? "unknown error"
                : "unknown error";
            return $"cuInit failed: {text} (CUresult {result})";
        }

        return null;
    }

    [LibraryImport(Library)]
    private static partial int cuInit(uint flags);

    [LibraryImport(Library)]
    private static partial int cuDriverGetVersion(out int version);

    [LibraryImport(Library)]
    private static partial int cuDeviceGetCount(out int count);

    [LibraryImport(Library)]
    private static partial int cuDeviceGet(out int device, int ordinal);

    [LibraryImport(Library)]
    private static partial int cuDeviceGetName([Out] byte[] name, int length, int device);

    [LibraryImport(Library)]
    private static partial int cuDeviceGetAttribute(out int value, int attribute, int device);

    [LibraryImport(Library, EntryPoint = "cuDeviceTotalMem_v2")]
    private static partial int cuDeviceTotalMem(out nuint bytes, int device);

    [LibraryImport(Library)]
    private static partial int cuGetErrorString(int result, out IntPtr message);
}
