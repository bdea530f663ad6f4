using System.Runtime.InteropServices;
using System.Text;
using RepLKNet.Runtime;

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
    private const string Library = CudaDriverProbe.Library;
    private const int AttributeMultiprocessorCount = 16;
    private const int AttributeComputeCapabilityMajor = 75;
    private const int AttributeComputeCapabilityMinor = 76;
    private const int AttributeMaxSharedMemoryPerBlockOptin = 97;
    private const int FunctionAttributeNumRegs = 4;
    private const int FunctionAttributeLocalSizeBytes = 3;
    private const int FunctionAttributeMaxDynamicSharedSize = 8;

    private static readonly Dictionary<int, IntPtr> PrimaryContexts = [];

    /// <summary>Whether the driver library can be loaded and initialised.</summary>
    public static bool IsAvailable => CudaDriverProbe.UnavailableReason is null;

    /// <summary>Why the driver is unavailable, or null when it is available.</summary>
    public static string? UnavailableReason => CudaDriverProbe.UnavailableReason;

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

    /// <summary>Properties of device <paramref name="ordinal"/>.</summary>
    public static CudaDeviceProperties Device(int ordinal)
    {
        var devices = Devices();
        return ordinal >= 0 && ordinal < devices.Count
            ? devices[ordinal]
            : throw new CudaException($"CUDA device {ordinal} does not exist ({devices.Count} device(s) visible)");
    }

    /// <summary>The largest dynamic shared memory one block of device <paramref name="ordinal"/> may opt into, in bytes.</summary>
    public static int MaxSharedMemoryPerBlockOptin(int ordinal)
    {
        EnsureAvailable();
        Check(cuDeviceGet(out int device, ordinal), nameof(cuDeviceGet));
        Check(cuDeviceGetAttribute(out int bytes, AttributeMaxSharedMemoryPerBlockOptin, device), nameof(cuDeviceGetAttribute));
        return bytes;
    }

    /// <summary>
    /// Makes the primary context of device <paramref name="ordinal"/> — the one libtorch uses, so its device pointers are
    /// valid — current on the calling thread (retaining it once per device for the life of the process).
    /// </summary>
    public static void UsePrimaryContext(int ordinal)
    {
        EnsureAvailable();
        IntPtr context;
        lock (PrimaryContexts)
        {
            if (!PrimaryContexts.TryGetValue(ordinal, out context))
            {
                Check(cuDeviceGet(out int device, ordinal), nameof(cuDeviceGet));
                Check(cuDevicePrimaryCtxRetain(out context, device), nameof(cuDevicePrimaryCtxRetain));
                PrimaryContexts[ordinal] = context;
            }
        }

        Check(cuCtxGetCurrent(out IntPtr current), nameof(cuCtxGetCurrent));
        if (current != context)
        {
            Check(cuCtxSetCurrent(context), nameof(cuCtxSetCurrent));
        }
    }

    /// <summary>Loads a cubin into the current context and returns the module handle.</summary>
    public static IntPtr LoadModule(byte[] image, string what)
    {
        ArgumentNullException.ThrowIfNull(image);
        EnsureAvailable();
        Check(cuModuleLoadData(out IntPtr module, image), $"cuModuleLoadData({what})");
        return module;
    }

    /// <summary>A kernel of a loaded module.</summary>
    public static IntPtr GetFunction(IntPtr module, string name)
    {
        Check(cuModuleGetFunction(out IntPtr function, module, name), $"cuModuleGetFunction({name})");
        return function;
    }

    /// <summary>Allows <paramref name="function"/> up to <paramref name="bytes"/> of dynamic shared memory (needed above 48 KB).</summary>
    public static void SetMaxDynamicSharedMemory(IntPtr function, int bytes) =>
        Check(cuFuncSetAttribute(function, FunctionAttributeMaxDynamicSharedSize, bytes), "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");

    /// <summary>Registers per thread and local (spill/stack) bytes per thread of a loaded kernel.</summary>
    public static (int Registers, int LocalBytes) FunctionResources(IntPtr function)
    {
        Check(cuFuncGetAttribute(out int registers, FunctionAttributeNumRegs, function), "cuFuncGetAttribute(NUM_REGS)");
        Check(cuFuncGetAttribute(out int local, FunctionAttributeLocalSizeBytes, function), "cuFuncGetAttribute(LOCAL_SIZE_BYTES)");
        return (registers, local);
    }

    /// <summary>
    /// Launches <paramref name="function"/> on the legacy default stream (libtorch's default stream). Each entry of
    /// <paramref name="arguments"/> points at one kernel argument's value.
    /// </summary>
    public static unsafe void Launch(IntPtr function, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, uint sharedBytes, IntPtr* arguments, string what) =>
        Check(cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, IntPtr.Zero, arguments, null), $"cuLaunchKernel({what})");

    /// <summary>Waits for all work of the current context.</summary>
    public static void Synchronize() => Check(cuCtxSynchronize(), nameof(cuCtxSynchronize));

    /// <summary>Allocates device memory in the current context.</summary>
    public static IntPtr Allocate(long bytes)
    {
        Check(cuMemAlloc(out IntPtr pointer, (nuint)bytes), $"cuMemAlloc({bytes} bytes)");
        return pointer;
    }

    /// <summary>Frees memory from <see cref="Allocate"/>.</summary>
    public static void Free(IntPtr address) => Check(cuMemFree(address), nameof(cuMemFree));

    /// <summary>Copies host floats to device memory.</summary>
    public static unsafe void CopyToDevice(IntPtr destination, ReadOnlySpan<float> source)
    {
        fixed (float* p = source)
        {
            Check(cuMemcpyHtoD(destination, p, (nuint)(source.Length * sizeof(float))), nameof(cuMemcpyHtoD));
        }
    }

    /// <summary>Copies device floats to the host.</summary>
    public static unsafe void CopyToHost(Span<float> destination, IntPtr source)
    {
        fixed (float* p = destination)
        {
            Check(cuMemcpyDtoH(p, source, (nuint)(destination.Length * sizeof(float))), nameof(cuMemcpyDtoH));
        }
    }

    /// <summary>Creates a timing event.</summary>
    public static IntPtr CreateEvent()
    {
        Check(cuEventCreate(out IntPtr e, 0), nameof(cuEventCreate));
        return e;
    }

    /// <summary>Records <paramref name="e"/> on the legacy default stream.</summary>
    public static void RecordEvent(IntPtr e) => Check(cuEventRecord(e, IntPtr.Zero), nameof(cuEventRecord));

    /// <summary>Milliseconds between two recorded events (waits for the second).</summary>
    public static float ElapsedMilliseconds(IntPtr start, IntPtr end)
    {
        Check(cuEventSynchronize(end), nameof(cuEventSynchronize));
        Check(cuEventElapsedTime(out float ms, start, end), nameof(cuEventElapsedTime));
        return ms;
    }

    /// <summary>Destroys an event.</summary>
    public static void DestroyEvent(IntPtr e) => Check(cuEventDestroy(e), nameof(cuEventDestroy));

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> when <paramref name="result"/> is not CUDA_SUCCESS.</summary>
    public static void Check(int result, string call)
    {
        if (result == 0)
        {
            return;
        }

        throw new CudaException($"CUDA driver call {call} failed: {CudaDriverProbe.ErrorText(result)} (CUresult {result})");
    }

    private static void EnsureAvailable()
    {
        if (CudaDriverProbe.UnavailableReason is { } reason)
        {
            throw new CudaException(reason);
        }
    }

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

    [LibraryImport(Library, EntryPoint = "cuDevicePrimaryCtxRetain")]
    private static partial int cuDevicePrimaryCtxRetain(out IntPtr context, int device);

    [LibraryImport(Library)]
    private static partial int cuCtxGetCurrent(out IntPtr context);

    [LibraryImport(Library)]
    private static partial int cuCtxSetCurrent(IntPtr context);

    [LibraryImport(Library)]
    private static partial int cuCtxSynchronize();

    [LibraryImport(Library)]
    private static partial int cuModuleLoadData(out IntPtr module, byte[] image);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int cuModuleGetFunction(out IntPtr function, IntPtr module, string name);

    [LibraryImport(Library)]
    private static partial int cuFuncSetAttribute(IntPtr function, int attribute, int value);

    [LibraryImport(Library)]
    private static partial int cuFuncGetAttribute(out int value, int attribute, IntPtr function);

    [LibraryImport(Library)]
    private static unsafe partial int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, IntPtr* kernelParams, IntPtr* extra);

    [LibraryImport(Library, EntryPoint = "cuMemAlloc_v2")]
    private static partial int cuMemAlloc(out IntPtr pointer, nuint bytes);

    [LibraryImport(Library, EntryPoint = "cuMemFree_v2")]
    private static partial int cuMemFree(IntPtr pointer);

    [LibraryImport(Library, EntryPoint = "cuMemcpyHtoD_v2")]
    private static unsafe partial int cuMemcpyHtoD(IntPtr destination, void* source, nuint bytes);

    [LibraryImport(Library, EntryPoint = "cuMemcpyDtoH_v2")]
    private static unsafe partial int cuMemcpyDtoH(void* destination, IntPtr source, nuint bytes);

    [LibraryImport(Library)]
    private static partial int cuEventCreate(out IntPtr e, uint flags);

    [LibraryImport(Library)]
    private static partial int cuEventRecord(IntPtr e, IntPtr stream);

    [LibraryImport(Library)]
    private static partial int cuEventSynchronize(IntPtr e);

    [LibraryImport(Library)]
    private static partial int cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(Library, EntryPoint = "cuEventDestroy_v2")]
    private static partial int cuEventDestroy(IntPtr e);
}
