using System.Globalization;
using System.Runtime.InteropServices;
using RepLKNet.Runtime;
using static TorchSharp.torch;

namespace RepLKNet.Distributed;

/// <summary>NCCL's <c>ncclDataType_t</c> (values of <c>nccl.h</c>; the ABI has kept them since NCCL 2.0, bfloat16 since 2.10).</summary>
internal enum NcclDataType
{
    /// <summary><c>ncclInt8</c>.</summary>
    Int8 = 0,

    /// <summary><c>ncclUint8</c>.</summary>
    Uint8 = 1,

    /// <summary><c>ncclInt32</c>.</summary>
    Int32 = 2,

    /// <summary><c>ncclUint32</c>.</summary>
    Uint32 = 3,

    /// <summary><c>ncclInt64</c>.</summary>
    Int64 = 4,

    /// <summary><c>ncclUint64</c>.</summary>
    Uint64 = 5,

    /// <summary><c>ncclFloat16</c>.</summary>
    Float16 = 6,

    /// <summary><c>ncclFloat32</c>.</summary>
    Float32 = 7,

    /// <summary><c>ncclFloat64</c>.</summary>
    Float64 = 8,

    /// <summary><c>ncclBfloat16</c>.</summary>
    Bfloat16 = 9,
}

/// <summary>NCCL's built-in <c>ncclRedOp_t</c> (values of <c>nccl.h</c>).</summary>
internal enum NcclRedOp
{
    /// <summary><c>ncclSum</c>.</summary>
    Sum = 0,

    /// <summary><c>ncclProd</c>.</summary>
    Prod = 1,

    /// <summary><c>ncclMax</c>.</summary>
    Max = 2,

    /// <summary><c>ncclMin</c>.</summary>
    Min = 3,

    /// <summary><c>ncclAvg</c>.</summary>
    Avg = 4,
}

/// <summary>
/// NCCL's <c>ncclUniqueId</c>: <c>typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;</c> with
/// <c>NCCL_UNIQUE_ID_BYTES</c> 128, passed by value to <c>ncclCommInitRank</c>.
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = Bytes)]
internal unsafe struct NcclUniqueId
{
    /// <summary><c>NCCL_UNIQUE_ID_BYTES</c>.</summary>
    public const int Bytes = 128;

    public fixed byte Internal[Bytes];

    public static NcclUniqueId From(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Bytes)
        {
            throw new CollectiveException($"an NCCL unique id has {Bytes} bytes, got {bytes.Length}");
        }

        var id = default(NcclUniqueId);
        bytes.CopyTo(new Span<byte>(id.Internal, Bytes));
        return id;
    }

    public readonly byte[] ToArray()
    {
        fixed (byte* p = Internal)
        {
            return new ReadOnlySpan<byte>(p, Bytes).ToArray();
        }
    }
}

/// <summary>
/// What a <see cref="NcclCommunicator"/> calls: NCCL itself (<see cref="NcclApi"/>) or, in tests, a stand-in.
/// Buffers are device pointers on the communicator's device; calls are enqueued on the CUDA legacy default stream.
/// </summary>
internal interface INcclApi
{
    /// <summary>Whether buffers live in CUDA device memory (false only for host-memory stand-ins in tests).</summary>
    bool DeviceMemory { get; }

    /// <summary><c>ncclGetVersion</c>: e.g. 22105 for 2.21.5.</summary>
    int Version { get; }

    /// <summary>Makes <paramref name="device"/>'s primary context (libtorch's) current on the calling thread.</summary>
    void UseDevice(int device);

    /// <summary><c>ncclGetUniqueId</c> (rank 0 only).</summary>
    byte[] GetUniqueId();

    /// <summary><c>ncclCommInitRank</c> on the current device; returns the <c>ncclComm_t</c>.</summary>
    IntPtr InitRank(int worldSize, byte[] uniqueId, int rank);

    /// <summary><c>ncclAllReduce</c> in place.</summary>
    void AllReduce(IntPtr buffer, long count, NcclDataType type, NcclRedOp op, IntPtr comm);

    /// <summary><c>ncclBroadcast</c> in place.</summary>
    void Broadcast(IntPtr buffer, long count, NcclDataType type, int root, IntPtr comm);

    /// <summary>Waits for the legacy default stream (<c>cuStreamSynchronize(0)</c>), then checks <c>ncclCommGetAsyncError</c>.</summary>
    void Synchronize(IntPtr comm);

    /// <summary><c>ncclCommDestroy</c> (or <c>ncclCommAbort</c> after a failure).</summary>
    void Destroy(IntPtr comm, bool abort);
}

/// <summary>
/// Finds and loads NCCL (<c>libnccl.so.2</c>). Search order: <c>REPLKNET_NCCL_LIBRARY</c> (a file), the system loader
/// (<c>LD_LIBRARY_PATH</c>, the ld.so cache), each <c>LD_LIBRARY_PATH</c> folder, the PyTorch installation named by
/// <c>REPLKNET_LIBTORCH</c> (<c>torch/lib</c> → <c>../../nvidia/nccl/lib</c>, where pip's <c>nvidia-nccl-cu*</c> wheel
/// puts it), <c>$VIRTUAL_ENV</c> and <c>$CONDA_PREFIX</c>, then the Python folders
/// <c>/usr/local/lib/python3*/{dist,site}-packages/nvidia/nccl/lib</c>, <c>/usr/lib/python3/dist-packages/…</c> and
/// <c>~/.local/lib/python3*/site-packages/…</c>. <c>REPLKNET_NCCL=0</c> disables NCCL.
/// </summary>
public static class NcclLibrary
{
    /// <summary>The library's soname.</summary>
    public const string FileName = "libnccl.so.2";

    private static readonly Lazy<(NcclApi? Api, string? Reason)> Loaded = new(() => Load(Environment.GetEnvironmentVariable, "/", NativeLibrary.TryLoad));

    /// <summary>Why NCCL cannot be used in this process, or null when it loaded (and the CUDA driver did).</summary>
    public static string? UnavailableReason => Loaded.Value.Reason;

    /// <summary>The loaded library, or null (see <see cref="UnavailableReason"/>).</summary>
    internal static NcclApi? Api => Loaded.Value.Api;

    /// <summary>NCCL's version as "major.minor.patch" from <c>ncclGetVersion</c>'s code (2.8 and older: X·1000 + Y·100 + Z; later: X·10000 + Y·100 + Z).</summary>
    public static string VersionText(int code) => code >= 10000
        ? string.Create(CultureInfo.InvariantCulture, $"{code / 10000}.{code / 100 % 100}.{code % 100}")
        : string.Create(CultureInfo.InvariantCulture, $"{code / 1000}.{code / 100 % 10}.{code % 100}");

    /// <summary>The paths tried, in order (existing files only, except the bare soname for the system loader).</summary>
    /// <param name="environment">Variables by name.</param>
    /// <param name="root">The file-system root the fixed folders are looked up under ("/"; a temporary folder in tests).</param>
    internal static IReadOnlyList<string> Candidates(Func<string, string?> environment, string root)
    {
        var list = new List<string>();
        void AddFile(string? path)
        {
            if (!string.IsNullOrEmpty(path) && File.Exists(path) && !list.Contains(path))
            {
                list.Add(path);
            }
        }

        void AddIn(string? folder) => AddFile(string.IsNullOrEmpty(folder) ? null : Path.Combine(folder, FileName));

        AddFile(environment("REPLKNET_NCCL_LIBRARY"));
        list.Add(FileName);
        foreach (var folder in (environment("LD_LIBRARY_PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            AddIn(folder);
        }

        if (environment("REPLKNET_LIBTORCH") is { Length: > 0 } libtorch)
        {
            AddIn(Path.GetFullPath(Path.Combine(libtorch, "..", "..", "nvidia", "nccl", "lib")));
        }

        foreach (var prefix in new[] { environment("VIRTUAL_ENV"), environment("CONDA_PREFIX") })
        {
            if (!string.IsNullOrEmpty(prefix))
            {
                AddIn(Path.Combine(prefix, "lib"));
                foreach (var python in PythonFolders(Path.Combine(prefix, "lib")))
                {
                    AddIn(Path.Combine(python, "site-packages", "nvidia", "nccl", "lib"));
                }
            }
        }

        var usrLocal = Path.Combine(root, "usr", "local", "lib");
        foreach (var python in PythonFolders(usrLocal))
        {
            AddIn(Path.Combine(python, "dist-packages", "nvidia", "nccl", "lib"));
            AddIn(Path.Combine(python, "site-packages", "nvidia", "nccl", "lib"));
        }

        AddIn(Path.Combine(root, "usr", "lib", "python3", "dist-packages", "nvidia", "nccl", "lib"));
        if (environment("HOME") is { Length: > 0 } home)
        {
            foreach (var python in PythonFolders(Path.Combine(home, ".local", "lib")))
            {
                AddIn(Path.Combine(python, "site-packages", "nvidia", "nccl", "lib"));
            }
        }

        return list;
    }

    /// <summary>
    /// Finds, loads and binds NCCL: the API, or null and why not. A candidate that loads but lacks an entry point is
    /// skipped (and named in the reason).
    /// </summary>
    internal static (NcclApi? Api, string? Reason) Load(Func<string, string?> environment, string root, TryLoadLibrary tryLoad)
    {
        if (environment("REPLKNET_NCCL") is "0" or "false" or "off")
        {
            return (null, "NCCL disabled by REPLKNET_NCCL=0");
        }

        var candidates = Candidates(environment, root);
        var skipped = new List<string>();
        foreach (var candidate in candidates)
        {
            if (!tryLoad(candidate, out var handle))
            {
                continue;
            }

            if (NcclApi.Bind(handle, out var api, out var missing))
            {
                return CudaDriverProbe.UnavailableReason is { } cuda
                    ? (null, $"{FileName} loaded from {candidate}, but {cuda}")
                    : (api, null);
            }

            skipped.Add($"{candidate} (no {missing})");
        }

        return (null, skipped.Count > 0
            ? $"no usable {FileName}: {string.Join("; ", skipped)}"
            : $"{FileName} not found (tried {string.Join(", ", candidates)}; set REPLKNET_NCCL_LIBRARY to its path)");
    }

    /// <summary><see cref="NativeLibrary.TryLoad(string, out IntPtr)"/>'s shape.</summary>
    internal delegate bool TryLoadLibrary(string path, out IntPtr handle);

    private static string[] PythonFolders(string parent)
    {
        if (!Directory.Exists(parent))
        {
            return [];
        }

        var found = Directory.GetDirectories(parent, "python3*");
        Array.Sort(found, StringComparer.Ordinal);
        return found;
    }
}

/// <summary>
/// NCCL bound through <see cref="NativeLibrary.GetExport"/> (the library is found at run time, so no <c>DllImport</c>),
/// plus the CUDA driver calls a collective needs (<c>libcuda.so.1</c>: the device's primary context, the legacy default
/// stream's synchronization). Signatures follow <c>nccl.h</c> (NVIDIA/nccl <c>src/nccl.h.in</c>): <c>ncclResult_t</c> and
/// the enums are <c>int</c>, <c>ncclComm_t</c> and <c>cudaStream_t</c> pointers, counts <c>size_t</c>, and
/// <c>ncclUniqueId</c> a 128-byte struct by value.
/// </summary>
internal sealed unsafe partial class NcclApi : INcclApi
{
    private static readonly Dictionary<int, IntPtr> PrimaryContexts = [];

    private delegate* unmanaged<int*, int> _getVersion;
    private delegate* unmanaged<NcclUniqueId*, int> _getUniqueId;
    private delegate* unmanaged<IntPtr*, int, NcclUniqueId, int, int> _commInitRank;
    private delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> _allReduce;
    private delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> _broadcast;
    private delegate* unmanaged<IntPtr, int> _commDestroy;
    private delegate* unmanaged<IntPtr, int> _commAbort;
    private delegate* unmanaged<IntPtr, int*, int> _commGetAsyncError;
    private delegate* unmanaged<int, IntPtr> _getErrorString;

    private NcclApi()
    {
    }

    /// <inheritdoc />
    public bool DeviceMemory => true;

    /// <inheritdoc />
    public int Version { get; private set; }

    /// <summary>Binds every entry point of a loaded library; false (and the first missing name) when one is absent.</summary>
    public static bool Bind(IntPtr library, out NcclApi? api, out string? missing)
    {
        api = null;
        missing = null;
        var bound = new NcclApi();
        foreach (var name in (string[])["ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRank", "ncclAllReduce", "ncclBroadcast",
                     "ncclCommDestroy", "ncclCommAbort", "ncclCommGetAsyncError", "ncclGetErrorString"])
        {
            if (!NativeLibrary.TryGetExport(library, name, out var entry))
            {
                missing = name;
                return false;
            }

            switch (name)
            {
                case "ncclGetVersion": bound._getVersion = (delegate* unmanaged<int*, int>)entry; break;
                case "ncclGetUniqueId": bound._getUniqueId = (delegate* unmanaged<NcclUniqueId*, int>)entry; break;
                case "ncclCommInitRank": bound._commInitRank = (delegate* unmanaged<IntPtr*, int, NcclUniqueId, int, int>)entry; break;
                case "ncclAllReduce": bound._allReduce = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)entry; break;
                case "ncclBroadcast": bound._broadcast = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)entry; break;
                case "ncclCommDestroy": bound._commDestroy = (delegate* unmanaged<IntPtr, int>)entry; break;
                case "ncclCommAbort": bound._commAbort = (delegate* unmanaged<IntPtr, int>)entry; break;
                case "ncclCommGetAsyncError": bound._commGetAsyncError = (delegate* unmanaged<IntPtr, int*, int>)entry; break;
                default: bound._getErrorString = (delegate* unmanaged<int, IntPtr>)entry; break;
            }
        }

        int version = 0;
        bound.Check(bound._getVersion(&version), "ncclGetVersion");
        bound.Version = version;
        api = bound;
        return true;
    }

    /// <inheritdoc />
    public void UseDevice(int device)
    {
        IntPtr context;
        lock (PrimaryContexts)
        {
            if (!PrimaryContexts.TryGetValue(device, out context))
            {
                CheckCuda(cuDeviceGet(out int handle, device), "cuDeviceGet");
                CheckCuda(cuDevicePrimaryCtxRetain(out context, handle), "cuDevicePrimaryCtxRetain");
                PrimaryContexts[device] = context;
            }
        }

        CheckCuda(cuCtxGetCurrent(out var current), "cuCtxGetCurrent");
        if (current != context)
        {
            CheckCuda(cuCtxSetCurrent(context), "cuCtxSetCurrent");
        }
    }

    /// <inheritdoc />
    public byte[] GetUniqueId()
    {
        var id = default(NcclUniqueId);
        Check(_getUniqueId(&id), "ncclGetUniqueId");
        return id.ToArray();
    }

    /// <inheritdoc />
    public IntPtr InitRank(int worldSize, byte[] uniqueId, int rank)
    {
        IntPtr comm = IntPtr.Zero;
        Check(_commInitRank(&comm, worldSize, NcclUniqueId.From(uniqueId), rank), "ncclCommInitRank");
        return comm;
    }

    /// <inheritdoc />
    public void AllReduce(IntPtr buffer, long count, NcclDataType type, NcclRedOp op, IntPtr comm) =>
        Check(_allReduce(buffer, buffer, checked((nuint)count), (int)type, (int)op, comm, IntPtr.Zero), "ncclAllReduce");

    /// <inheritdoc />
    public void Broadcast(IntPtr buffer, long count, NcclDataType type, int root, IntPtr comm) =>
        Check(_broadcast(buffer, buffer, checked((nuint)count), (int)type, root, comm, IntPtr.Zero), "ncclBroadcast");

    /// <inheritdoc />
    public void Synchronize(IntPtr comm)
    {
        CheckCuda(cuStreamSynchronize(IntPtr.Zero), "cuStreamSynchronize");
        int asyncError = 0;
        Check(_commGetAsyncError(comm, &asyncError), "ncclCommGetAsyncError");
        Check(asyncError, "an NCCL collective (asynchronous error)");
    }

    /// <inheritdoc />
    public void Destroy(IntPtr comm, bool abort) => Check(abort ? _commAbort(comm) : _commDestroy(comm), abort ? "ncclCommAbort" : "ncclCommDestroy");

    /// <summary>NCCL's text for a result (<c>ncclGetErrorString</c>).</summary>
    public string ErrorText(int result)
    {
        var text = _getErrorString(result);
        return text == IntPtr.Zero ? "unknown error" : Marshal.PtrToStringUTF8(text) ?? "unknown error";
    }

    private void Check(int result, string call)
    {
        if (result != 0)
        {
            throw new CollectiveException($"{call} failed: {ErrorText(result)} (ncclResult_t {result}; NCCL_DEBUG=WARN says more)");
        }
    }

    private static void CheckCuda(int result, string call)
    {
        if (result != 0)
        {
            throw new CollectiveException($"{call} failed: {CudaDriverProbe.ErrorText(result)} (CUresult {result})");
        }
    }

    [LibraryImport(CudaDriverProbe.Library)]
    private static partial int cuDeviceGet(out int device, int ordinal);

    [LibraryImport(CudaDriverProbe.Library)]
    private static partial int cuDevicePrimaryCtxRetain(out IntPtr context, int device);

    [LibraryImport(CudaDriverProbe.Library)]
    private static partial int cuCtxGetCurrent(out IntPtr context);

    [LibraryImport(CudaDriverProbe.Library)]
    private static partial int cuCtxSetCurrent(IntPtr context);

    [LibraryImport(CudaDriverProbe.Library)]
    private static partial int cuStreamSynchronize(IntPtr stream);
}

/// <summary>
/// An NCCL communicator over the processes of a <see cref="ProcessGroup"/>, one CUDA device per process: rank 0 makes the
/// unique id (<c>ncclGetUniqueId</c>), <see cref="ProcessGroup.Broadcast(byte[], int)"/> carries it to every rank, each
/// calls <c>ncclCommInitRank</c> with the group's rank and size (as <c>torch.distributed</c>'s NCCL backend does with its
/// store). Collectives run in place on the tensor's memory on the CUDA legacy default stream — the stream libtorch and
/// the project's kernels use, so they are ordered after the kernels that wrote the tensor — and return after
/// <c>cuStreamSynchronize(0)</c>.
/// </summary>
public sealed class NcclCommunicator : IDisposable
{
    private readonly INcclApi _api;
    private IntPtr _comm;
    private bool _failed;

    private NcclCommunicator(INcclApi api, IntPtr comm, int device)
    {
        _api = api;
        _comm = comm;
        Device = device;
    }

    /// <summary>The CUDA device index this process's rank runs on.</summary>
    public int Device { get; }

    /// <summary>NCCL's version code (<c>ncclGetVersion</c>).</summary>
    public int Version => _api.Version;

    /// <summary>
    /// Creates the communicator on every rank of <paramref name="group"/> (a collective: every rank calls it) with NCCL as
    /// loaded by <see cref="NcclLibrary"/>.
    /// </summary>
    /// <param name="group">The processes (the unique id travels over it).</param>
    /// <param name="device">This rank's CUDA device index (see <see cref="GpuPlacement"/>); one rank per device.</param>
    /// <exception cref="CollectiveException">NCCL is unavailable (the reason), or a call failed.</exception>
    public static NcclCommunicator Create(ProcessGroup group, int device) => Create(group, device, null);

    /// <summary>As <see cref="Create(ProcessGroup, int)"/>, <paramref name="watchdog"/> (if any) guarding <c>ncclCommInitRank</c>.</summary>
    /// <exception cref="CollectiveException">NCCL is unavailable (the reason), or a call failed.</exception>
    public static NcclCommunicator Create(ProcessGroup group, int device, CollectiveWatchdog? watchdog) =>
        Create(group, device, NcclLibrary.Api ?? throw new CollectiveException($"NCCL: {NcclLibrary.UnavailableReason}"), watchdog);

    /// <summary>
    /// As <see cref="Create(ProcessGroup, int)"/> with a given API (tests use a stand-in); <paramref name="watchdog"/> guards
    /// the NCCL calls (the id's broadcast is guarded by the group itself).
    /// </summary>
    internal static NcclCommunicator Create(ProcessGroup group, int device, INcclApi api, CollectiveWatchdog? watchdog = null)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(api);
        ArgumentOutOfRangeException.ThrowIfNegative(device);
        byte[]? id = null;
        if (group.IsMain)
        {
            api.UseDevice(device);
            id = api.GetUniqueId();
        }

        id = group.Broadcast(id, 0);
        if (id.Length != NcclUniqueId.Bytes)
        {
            throw new CollectiveException($"NCCL: the unique id broadcast from rank 0 has {id.Length} bytes, not {NcclUniqueId.Bytes}");
        }

        watchdog?.Enter("ncclCommInitRank");
        try
        {
            api.UseDevice(device);
            var comm = api.InitRank(group.WorldSize, id, group.Rank);
            return new NcclCommunicator(api, comm, device);
        }
        finally
        {
            watchdog?.Exit();
        }
    }

    /// <summary>NCCL's data type for a tensor dtype.</summary>
    /// <exception cref="ArgumentException">A dtype without an NCCL type.</exception>
    internal static NcclDataType DataType(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => NcclDataType.Float32,
        ScalarType.Float64 => NcclDataType.Float64,
        ScalarType.Float16 => NcclDataType.Float16,
        ScalarType.BFloat16 => NcclDataType.Bfloat16,
        ScalarType.Int64 => NcclDataType.Int64,
        ScalarType.Int32 => NcclDataType.Int32,
        ScalarType.Int8 => NcclDataType.Int8,
        ScalarType.Byte => NcclDataType.Uint8,
        _ => throw new ArgumentException($"dtype: NCCL has no type for {dtype}", nameof(dtype)),
    };

    /// <summary>NCCL's reduction for a <see cref="ReduceOp"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An unknown reduction.</exception>
    internal static NcclRedOp RedOp(ReduceOp op) => op switch
    {
        ReduceOp.Sum => NcclRedOp.Sum,
        ReduceOp.Max => NcclRedOp.Max,
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, "op: unknown reduction"),
    };

    /// <summary>
    /// Reduces <paramref name="tensor"/> over the ranks in place (<c>ncclAllReduce</c> with send = receive buffer).
    /// Float32, float64 or int64; contiguous; on <see cref="Device"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Another dtype or device, or a non-contiguous tensor.</exception>
    /// <exception cref="CollectiveException">NCCL or CUDA failed (the communicator is then aborted at disposal).</exception>
    public void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        var (pointer, count, type) = Buffer(tensor);
        var nccl = RedOp(op);
        Guarded(() =>
        {
            _api.AllReduce(pointer, count, type, nccl, _comm);
            _api.Synchronize(_comm);
        });
        GC.KeepAlive(tensor);
    }

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="tensor"/> into every rank's in place (<c>ncclBroadcast</c>).</summary>
    /// <exception cref="ArgumentException">Another dtype or device, or a non-contiguous tensor.</exception>
    /// <exception cref="CollectiveException">NCCL or CUDA failed.</exception>
    public void Broadcast(Tensor tensor, int root = 0)
    {
        var (pointer, count, type) = Buffer(tensor);
        Guarded(() =>
        {
            _api.Broadcast(pointer, count, type, root, _comm);
            _api.Synchronize(_comm);
        });
        GC.KeepAlive(tensor);
    }

    /// <summary>Destroys the communicator (<c>ncclCommAbort</c> after a failed collective, else <c>ncclCommDestroy</c>).</summary>
    public void Dispose()
    {
        if (_comm == IntPtr.Zero)
        {
            return;
        }

        var comm = _comm;
        _comm = IntPtr.Zero;
        try
        {
            _api.UseDevice(Device);
            _api.Destroy(comm, _failed);
        }
        catch (CollectiveException)
        {
            // Releasing after a failure: nothing more to do.
        }
    }

    private void Guarded(Action collective)
    {
        ObjectDisposedException.ThrowIf(_comm == IntPtr.Zero, this);
        try
        {
            _api.UseDevice(Device);
            collective();
        }
        catch (CollectiveException)
        {
            _failed = true;
            throw;
        }
    }

    private (IntPtr Pointer, long Count, NcclDataType Type) Buffer(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!tensor.is_contiguous())
        {
            throw new ArgumentException("tensor: NCCL collectives take contiguous tensors", nameof(tensor));
        }

        if (tensor.dtype is not (ScalarType.Float32 or ScalarType.Float64 or ScalarType.Int64))
        {
            throw new ArgumentException($"tensor: the NCCL path takes float32, float64 or int64 tensors, got {tensor.dtype} (16-bit ones go through float32)", nameof(tensor));
        }

        if (_api.DeviceMemory && (tensor.device_type != TorchSharp.DeviceType.CUDA || tensor.device_index != Device))
        {
            throw new ArgumentException($"tensor: on {tensor.device}, but this rank's NCCL communicator is on cuda:{Device}", nameof(tensor));
        }

        return (MpiProcessGroup.Address(tensor, 0), tensor.numel(), DataType(tensor.dtype));
    }
}

/// <summary>Which CUDA device each process of a job uses: one per local rank, as <c>torchrun</c>'s <c>LOCAL_RANK</c> convention.</summary>
public static class GpuPlacement
{
    /// <summary>The device index of local rank <paramref name="localRank"/>: <c>localRank % deviceCount</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="localRank"/> negative or <paramref name="deviceCount"/> below 1.</exception>
    public static int DeviceIndex(int localRank, int deviceCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(localRank);
        ArgumentOutOfRangeException.ThrowIfLessThan(deviceCount, 1);
        return localRank % deviceCount;
    }

    /// <summary>The device name (<c>cuda:N</c>) for <paramref name="group"/>'s process on a machine with <paramref name="deviceCount"/> devices.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="deviceCount"/> below 1.</exception>
    public static string DeviceName(ProcessGroup group, int deviceCount)
    {
        ArgumentNullException.ThrowIfNull(group);
        return string.Create(CultureInfo.InvariantCulture, $"cuda:{DeviceIndex(group.LocalRank, deviceCount)}");
    }

    /// <summary>
    /// Why NCCL cannot serve <paramref name="group"/> on this machine — more processes than devices, so two share one
    /// (NCCL refuses: "Duplicate GPU detected") — or null.
    /// </summary>
    public static string? Oversubscribed(ProcessGroup group, int deviceCount)
    {
        ArgumentNullException.ThrowIfNull(group);
        // A scheduler that gives each process its own GPUs (per-process CUDA_VISIBLE_DEVICES, e.g. SLURM's
        // --gpus-per-task) shows every process fewer devices than processes without any sharing.
        bool perProcessDevices = !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES")) && deviceCount >= 1;
        return group.LocalWorldSize > deviceCount && !perProcessDevices
            ? string.Create(CultureInfo.InvariantCulture, $"{group.LocalWorldSize} processes share {deviceCount} CUDA device(s) on this machine; NCCL needs one device per process")
            : null;
    }
}

/// <summary>The decision, made together by every rank, whether CUDA collectives go through NCCL.</summary>
internal static class NcclAgreement
{
    /// <summary>
    /// Every rank passes why it cannot use NCCL (null: it can); all return the same answer: null when every rank can, else
    /// the reason (this rank's own, or which ranks cannot). A collective (one <see cref="ProcessGroup.AllReduce(double[], ReduceOp)"/>).
    /// </summary>
    public static string? Agree(ProcessGroup group, string? localReason)
    {
        ArgumentNullException.ThrowIfNull(group);
        var lacking = new double[group.WorldSize];
        lacking[group.Rank] = localReason is null ? 0 : 1;
        group.AllReduce(lacking, ReduceOp.Sum);
        var ranks = Enumerable.Range(0, lacking.Length).Where(r => lacking[r] > 0).ToArray();
        if (ranks.Length == 0)
        {
            return null;
        }

        return localReason ?? string.Create(CultureInfo.InvariantCulture,
            $"NCCL is unavailable on rank(s) {string.Join(", ", ranks)} of {group.WorldSize}, so every rank stages CUDA tensors through host memory");
    }
}

/// <summary>
/// A check of a group's tensor collectives on a device, for <c>bench/device/nccl-check.sh</c>: allreduce (sum, max) and
/// broadcast of float32, float64, int64 and bfloat16 tensors (one of 1 M elements, one small, one a view past its storage
/// offset), each compared exactly with the result computed on the host in float64 (values are small integers, so every
/// order of summation gives the same float32 result).
/// </summary>
public static class CollectiveCheck
{
    /// <summary>Runs the check (a collective: every rank calls it); returns one line per case, "ok" or what differed.</summary>
    /// <param name="group">The processes.</param>
    /// <param name="device">Where the tensors live (e.g. this rank's <c>cuda:N</c>).</param>
    /// <returns>Lines such as <c>allreduce sum Float32 1048576: ok</c>; <see cref="Failures"/> counts the bad ones.</returns>
    public static IReadOnlyList<string> Run(ProcessGroup group, Device device)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(device);
        var lines = new List<string>();
        int world = group.WorldSize;
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64, ScalarType.Int64, ScalarType.BFloat16 })
        {
            foreach (int n in new[] { 1 << 20, 7 })
            {
                using var scope = NewDisposeScope();
                double[] Values(int rank) => [.. Enumerable.Range(0, n).Select(i => (double)((i * 3 + rank * 5) % 17))];
                var sum = new double[n];
                var max = Enumerable.Repeat(double.NegativeInfinity, n).ToArray();
                for (int r = 0; r < world; r++)
                {
                    var v = Values(r);
                    for (int i = 0; i < n; i++)
                    {
                        sum[i] += v[i];
                        max[i] = Math.Max(max[i], v[i]);
                    }
                }

                var mine = Values(group.Rank);
                var t = tensor(mine).to(dtype).to(device);
                group.AllReduce(t, ReduceOp.Sum);
                lines.Add(Compare($"allreduce sum {dtype} {n}", t, sum));
                t = tensor(mine).to(dtype).to(device);
                group.AllReduce(t, ReduceOp.Max);
                lines.Add(Compare($"allreduce max {dtype} {n}", t, max));
                double[] guard = [-1, -1, -1];
                var padded = tensor((double[])[.. guard, .. mine]).to(dtype).to(device);
                var view = padded.narrow(0, 3, n);
                group.Broadcast(view, world - 1);
                lines.Add(Compare($"broadcast from {world - 1} {dtype} {n} (offset view)", view, Values(world - 1)));
                lines.Add(Compare($"broadcast leaves memory before the view {dtype} {n}", padded.narrow(0, 0, 3), guard));
            }
        }

        return lines;
    }

    /// <summary>
    /// As <see cref="Run(ProcessGroup, Device)"/> with every tensor collective going straight to <paramref name="nccl"/>
    /// (16-bit tensors through float32), the group carrying only host data: checks NCCL itself even where the group
    /// would not choose it (one process, <see cref="ProcessGroup.Single"/>, on a one-GPU machine).
    /// </summary>
    public static IReadOnlyList<string> Run(ProcessGroup group, NcclCommunicator nccl)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(nccl);
        return Run(new ThroughNccl(group, nccl), new Device(TorchSharp.DeviceType.CUDA, nccl.Device));
    }

    /// <summary>Lines of <see cref="Run(ProcessGroup, Device)"/> that are not "ok".</summary>
    public static int Failures(IEnumerable<string> lines) => lines.Count(l => !l.EndsWith(": ok", StringComparison.Ordinal));

    private static string Compare(string what, Tensor actual, double[] expected)
    {
        using var scope = NewDisposeScope();
        var got = actual.cpu().to(ScalarType.Float64).data<double>().ToArray();
        double worst = got.Length != expected.Length ? double.PositiveInfinity : got.Zip(expected, (a, b) => Math.Abs(a - b)).DefaultIfEmpty(0).Max();
        return worst == 0 ? $"{what}: ok" : string.Create(CultureInfo.InvariantCulture, $"{what}: differs by up to {worst}");
    }
}

/// <summary>Tensor collectives on an <see cref="NcclCommunicator"/>, host ones on the group (for <see cref="CollectiveCheck"/>).</summary>
internal sealed class ThroughNccl(ProcessGroup group, NcclCommunicator nccl) : ProcessGroup
{
    public override int Rank => group.Rank;

    public override int WorldSize => group.WorldSize;

    public override string Backend => $"nccl {NcclLibrary.VersionText(nccl.Version)} (cuda:{nccl.Device}) directly, host data on {group.Backend}";

    public override void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum) => Wide(tensor, t => nccl.AllReduce(t, op));

    public override void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum) => group.AllReduce(values, op);

    public override void Broadcast(Tensor tensor, int root = 0) => Wide(tensor, t => nccl.Broadcast(t, root));

    public override byte[] Broadcast(byte[]? bytes, int root = 0) => group.Broadcast(bytes, root);

    public override void Barrier() => group.Barrier();

    public override void Abort(int exitCode) => group.Abort(exitCode);

    private static void Wide(Tensor tensor, Action<Tensor> collective)
    {
        CheckTensor(tensor);
        if (tensor.dtype is not (ScalarType.BFloat16 or ScalarType.Float16))
        {
            collective(tensor);
            return;
        }

        using var wide = tensor.to(ScalarType.Float32).contiguous();
        collective(wide);
        using var noGrad = no_grad();
        tensor.copy_(wide);
    }
}
