using System.Globalization;
using System.Runtime.InteropServices;
using RepLKNet.Runtime;
using static TorchSharp.torch;

namespace RepLKNet.Distributed;

/// <summary>
/// How this process was started: by an MPI launcher (MPICH's <c>mpiexec</c>/Hydra sets <c>PMI_RANK</c>, <c>PMI_SIZE</c>,
/// <c>MPI_LOCALRANKID</c>, <c>MPI_LOCALNRANKS</c>) or on its own.
/// </summary>
/// <param name="Rank">The launcher's rank of this process.</param>
/// <param name="WorldSize">Processes the launcher started.</param>
/// <param name="LocalRank">Rank among the processes on this machine.</param>
/// <param name="LocalWorldSize">Processes on this machine.</param>
public sealed record MpiLaunch(int Rank, int WorldSize, int LocalRank, int LocalWorldSize)
{
    /// <summary>
    /// Reads the launcher's environment: the launch of this process, or null when no MPI launcher started it.
    /// </summary>
    /// <param name="environment">Variables by name (null: the process's own).</param>
    /// <exception cref="CollectiveException">Open MPI's launcher started it (MPI.NET runs on MPICH's ABI only), or the variables are malformed.</exception>
    public static MpiLaunch? Detect(Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        if (environment("PMI_SIZE") is not string size || environment("PMI_RANK") is not string rank)
        {
            // No MPICH launcher. Open MPI's starts several processes with OMPI_COMM_WORLD_SIZE > 1 (a stray 1 is one process).
            if (environment("OMPI_COMM_WORLD_SIZE") is { } ompi && ompi.Trim() != "1")
            {
                throw new CollectiveException($"this process was started by Open MPI's mpirun/mpiexec (OMPI_COMM_WORLD_SIZE={ompi}); replknet runs on MPICH (Debian: apt install mpich): launch with mpiexec.mpich -n N …");
            }

            return null;
        }

        int Parse(string name, string? text, int fallback) => text is null ? fallback
            : int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v
            : throw new CollectiveException($"the MPI launcher's {name}='{text}' is not a number");
        int n = Parse("PMI_SIZE", size, 1), r = Parse("PMI_RANK", rank, 0);
        int localN = Parse("MPI_LOCALNRANKS", environment("MPI_LOCALNRANKS"), n), localR = Parse("MPI_LOCALRANKID", environment("MPI_LOCALRANKID"), r);
        if (n < 1 || r < 0 || r >= n)
        {
            throw new CollectiveException($"the MPI launcher's PMI_RANK={r} does not fit PMI_SIZE={n}");
        }

        return new MpiLaunch(r, n, localR, Math.Max(1, localN));
    }
}

/// <summary>
/// A <see cref="ProcessGroup"/> on MPI through the MPI.NET binding (NuGet <c>MPI.NET</c> 1.4.0, built for MS-MPI) running on
/// Debian's MPICH (<c>libmpich.so.12</c>; MS-MPI's ABI is MPICH's: integer handles): host-memory collectives on tensor
/// storage without copies (<c>MPI_Allreduce</c> with <c>MPI_IN_PLACE</c>, <c>MPI_Bcast</c>); CUDA tensors go through NCCL when
/// <c>libnccl.so.2</c> loads on every rank (<see cref="NcclLibrary"/>, <see cref="NcclCommunicator"/>), else through host memory. Every collective is guarded by a <see cref="CollectiveWatchdog"/>.
/// One per process (MPI is initialized once): <see cref="Initialize"/>.
/// </summary>
public sealed class MpiProcessGroup : ProcessGroup
{
    private static readonly Lock InitGate = new();
    private static bool _resolverSet;
    private static MpiProcessGroup? _current;

    private readonly MPI.Environment _environment;
    private readonly MpiLaunch _launch;
    private readonly CollectiveWatchdog _watchdog;
    private readonly int _comm = MPI.Unsafe.MPI_COMM_WORLD;
    private readonly string _mpiBackend;
    private NcclCommunicator? _nccl;
    private string? _ncclOff;
    private bool _ncclDecided;
    private bool _disposed;

    private MpiProcessGroup(MPI.Environment environment, MpiLaunch launch, TimeSpan timeout, Action<string>? onTimeout)
    {
        _environment = environment;
        _launch = launch;
        Check(MPI.Unsafe.MPI_Comm_rank(_comm, out int rank), "MPI_Comm_rank");
        Check(MPI.Unsafe.MPI_Comm_size(_comm, out int size), "MPI_Comm_size");
        if (rank != launch.Rank || size != launch.WorldSize)
        {
            throw new CollectiveException($"MPI says rank {rank} of {size}, the launcher's environment rank {launch.Rank} of {launch.WorldSize}: mixed MPI installations? (replknet needs MPICH's mpiexec)");
        }

        _watchdog = new CollectiveWatchdog(timeout, rank, onTimeout ?? AbortJob);
        _mpiBackend = $"mpi, {LibraryVersion()}";
    }

    /// <summary>The default collective timeout: 30 minutes, <c>torch.distributed</c>'s.</summary>
    public static TimeSpan DefaultTimeout { get; } = TimeSpan.FromMinutes(30);

    /// <inheritdoc />
    public override int Rank => _launch.Rank;

    /// <inheritdoc />
    public override int WorldSize => _launch.WorldSize;

    /// <inheritdoc />
    public override int LocalRank => _launch.LocalRank;

    /// <inheritdoc />
    public override int LocalWorldSize => _launch.LocalWorldSize;

    /// <summary>
    /// <c>mpi, MPICH 4.0.2</c>; once CUDA collectives ran: <c>nccl 2.x.y (cuda:N) + mpi, …</c>, or
    /// <c>mpi, …; CUDA tensors staged through host memory</c> (<see cref="NcclUnavailableReason"/> says why).
    /// </summary>
    public override string Backend => _nccl is { } nccl
        ? $"nccl {NcclLibrary.VersionText(nccl.Version)} (cuda:{nccl.Device}) + {_mpiBackend}"
        : _ncclDecided ? $"{_mpiBackend}; CUDA tensors staged through host memory" : _mpiBackend;

    /// <summary>Why CUDA collectives are staged through host memory rather than run on NCCL; null while NCCL is used or not yet decided.</summary>
    public string? NcclUnavailableReason => _ncclOff;

    /// <summary>The watchdog of this group's collectives.</summary>
    public CollectiveWatchdog Watchdog => _watchdog;

    /// <summary>
    /// Initializes MPI (thread level <c>MPI_THREAD_MULTIPLE</c> asked, at least <c>MPI_THREAD_SERIALIZED</c> required) for a process an MPI launcher started and returns its
    /// group; once per process (a second call returns the same group).
    /// </summary>
    /// <param name="launch">From <see cref="MpiLaunch.Detect"/>.</param>
    /// <param name="timeout">Collective timeout (null: <see cref="DefaultTimeout"/>).</param>
    /// <param name="onTimeout">Runs when a collective expires (null: report on stderr and end the job).</param>
    /// <exception cref="CollectiveException">MPICH is not installed, or MPI cannot start.</exception>
    public static MpiProcessGroup Initialize(MpiLaunch launch, TimeSpan? timeout = null, Action<string>? onTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(launch);
        lock (InitGate)
        {
            if (_current is { _disposed: false })
            {
                return _current;
            }

            if (_current is not null)
            {
                throw new CollectiveException("MPI was finalized in this process and cannot start again (MPI allows one MPI_Init per process)");
            }

            SetResolver();
            var args = Array.Empty<string>();
            MPI.Environment environment;
            try
            {
                // Multiple: the collective watchdog may call MPI_Abort while the training thread waits in a collective.
                environment = new MPI.Environment(ref args, MPI.Threading.Multiple);
            }
            catch (DllNotFoundException e)
            {
                throw new CollectiveException($"MPI: cannot load MPICH's libmpich.so.12 ({e.Message}); install it (Debian: apt install mpich)", e);
            }

            if (MPI.Environment.Threading is MPI.Threading.Single or MPI.Threading.Funneled)
            {
                throw new CollectiveException($"MPI provides thread level {MPI.Environment.Threading}; replknet needs Serialized (libtorch may run backward on its own threads)");
            }

            _current = new MpiProcessGroup(environment, launch, timeout ?? DefaultTimeout, onTimeout);
            return _current;
        }
    }

    /// <summary>Maps MPI.NET's <c>msmpi.dll</c> to MPICH's <c>libmpich.so.12</c> (once per process).</summary>
    private static void SetResolver()
    {
        if (_resolverSet)
        {
            return;
        }

        NativeLibrary.SetDllImportResolver(typeof(MPI.Environment).Assembly, static (name, _, _) =>
        {
            if (!name.Contains("msmpi", StringComparison.OrdinalIgnoreCase))
            {
                return IntPtr.Zero;
            }

            foreach (var candidate in (string[])["libmpich.so.12", "libmpi.so.12"])
            {
                if (NativeLibrary.TryLoad(candidate, out var handle))
                {
                    return handle;
                }
            }

            throw new DllNotFoundException("neither libmpich.so.12 nor libmpi.so.12 (MPICH ABI) could be loaded");
        });
        _resolverSet = true;
    }

    /// <inheritdoc />
    public override void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        CheckTensor(tensor);
        if (tensor.device_type != TorchSharp.DeviceType.CPU)
        {
            if (!UseNccl(tensor))
            {
                StagedThroughHost(tensor, t => AllReduce(t, op));
            }
            else if (tensor.dtype is ScalarType.BFloat16 or ScalarType.Float16)
            {
                StagedAsFloat(tensor, t => AllReduce(t, op));
            }
            else
            {
                using var ncclWatch = _watchdog.Enter(Describe("NCCL allreduce", tensor.numel() * tensor.element_size()));
                _nccl!.AllReduce(tensor, op);
            }

            return;
        }

        if (tensor.dtype is ScalarType.BFloat16 or ScalarType.Float16)
        {
            StagedAsFloat(tensor, t => AllReduce(t, op));
            return;
        }

        var (type, size) = MpiType(tensor.dtype);
        long count = tensor.numel();
        using var watch = _watchdog.Enter(Describe("allreduce", count * size));
        long done = 0;
        while (done < count)
        {
            int chunk = (int)Math.Min(count - done, int.MaxValue / 2);
            Check(MPI.Unsafe.MPI_Allreduce(InPlace, Address(tensor, done * size), chunk, type, Op(op), _comm), "MPI_Allreduce");
            done += chunk;
        }

        GC.KeepAlive(tensor);
    }

    /// <inheritdoc />
    public override unsafe void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum)
    {
        ArgumentNullException.ThrowIfNull(values);
        using var watch = _watchdog.Enter(Describe("allreduce", values.LongLength * sizeof(double)));
        fixed (double* p = values)
        {
            Check(MPI.Unsafe.MPI_Allreduce(InPlace, (IntPtr)p, values.Length, MPI.Unsafe.MPI_DOUBLE, Op(op), _comm), "MPI_Allreduce");
        }
    }

    /// <inheritdoc />
    public override void Broadcast(Tensor tensor, int root = 0)
    {
        CheckTensor(tensor);
        CheckRoot(root);
        if (tensor.device_type != TorchSharp.DeviceType.CPU)
        {
            if (!UseNccl(tensor))
            {
                StagedThroughHost(tensor, t => Broadcast(t, root));
            }
            else if (tensor.dtype is ScalarType.BFloat16 or ScalarType.Float16)
            {
                StagedAsFloat(tensor, t => Broadcast(t, root));
            }
            else
            {
                using var ncclWatch = _watchdog.Enter(Describe("NCCL broadcast", tensor.numel() * tensor.element_size()));
                _nccl!.Broadcast(tensor, root);
            }

            return;
        }

        if (tensor.dtype is ScalarType.BFloat16 or ScalarType.Float16)
        {
            StagedAsFloat(tensor, t => Broadcast(t, root));
            return;
        }

        long bytes = tensor.numel() * tensor.element_size();
        using var watch = _watchdog.Enter(Describe("broadcast", bytes));
        long done = 0;
        while (done < bytes)
        {
            int chunk = (int)Math.Min(bytes - done, int.MaxValue / 2);
            Check(MPI.Unsafe.MPI_Bcast(Address(tensor, done), chunk, MPI.Unsafe.MPI_BYTE, root, _comm), "MPI_Bcast");
            done += chunk;
        }

        GC.KeepAlive(tensor);
    }

    /// <inheritdoc />
    public override unsafe byte[] Broadcast(byte[]? bytes, int root = 0)
    {
        CheckRoot(root);
        if (Rank == root)
        {
            ArgumentNullException.ThrowIfNull(bytes);
        }

        var length = new long[] { Rank == root ? bytes!.LongLength : 0 };
        using (_watchdog.Enter("broadcast of a length"))
        {
            fixed (long* p = length)
            {
                Check(MPI.Unsafe.MPI_Bcast((IntPtr)p, 1, MPI.Unsafe.MPI_LONG_LONG, root, _comm), "MPI_Bcast");
            }
        }

        var data = Rank == root ? bytes! : new byte[length[0]];
        using (_watchdog.Enter(Describe("broadcast", data.LongLength)))
        {
            fixed (byte* p = data)
            {
                Check(MPI.Unsafe.MPI_Bcast((IntPtr)p, data.Length, MPI.Unsafe.MPI_BYTE, root, _comm), "MPI_Bcast");
            }
        }

        return data;
    }

    /// <inheritdoc />
    public override void Barrier()
    {
        using var watch = _watchdog.Enter("barrier");
        Check(MPI.Unsafe.MPI_Barrier(_comm), "MPI_Barrier");
    }

    /// <inheritdoc />
    public override void Abort(int exitCode)
    {
        Console.Error.Flush();
        Console.Out.Flush();
        // The launcher forwards this process's output asynchronously and drops what is still in flight when it ends the
        // job: give the last lines (the error) time to arrive. The others are waiting for this process anyway.
        Thread.Sleep(TimeSpan.FromSeconds(1));
        _ = MPI.Unsafe.MPI_Abort(_comm, exitCode);
        Environment.Exit(exitCode);
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (disposing)
        {
            _nccl?.Dispose();
            _nccl = null;
            _watchdog.Dispose();
            _environment.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>The default expiry: report on stderr, then <c>MPI_Abort</c> (the launcher ends every process); exit if that hangs.</summary>
    private void AbortJob(string message)
    {
        Console.Error.WriteLine($"replknet: {message}");
        Console.Error.Flush();
        Thread.Sleep(TimeSpan.FromSeconds(1)); // let the launcher forward the line (see Abort)
        if (MPI.Environment.Threading == MPI.Threading.Multiple)
        {
            // Safe while the training thread is inside a collective only at MPI_THREAD_MULTIPLE.
            var abort = new Thread(() => _ = MPI.Unsafe.MPI_Abort(_comm, 1)) { IsBackground = true };
            abort.Start();
            abort.Join(TimeSpan.FromSeconds(10));
        }

        // Without MPI_Abort, exiting makes the launcher end the others (a process that leaves without MPI_Finalize).
        Environment.Exit(1);
    }

    /// <summary>
    /// Whether this CUDA collective runs on NCCL. The first CUDA collective decides, on every rank together (all ranks make
    /// it at the same point): NCCL must load on every rank (<see cref="NcclLibrary"/>; <c>REPLKNET_NCCL=0</c> disables it),
    /// the tensor must be a CUDA one and no two local ranks may share a device; then the communicator is created on the
    /// tensor's device (unique id from rank 0 over MPI). Otherwise every CUDA collective is staged through host memory.
    /// </summary>
    private bool UseNccl(Tensor tensor)
    {
        if (!_ncclDecided)
        {
            string? local = NcclLibrary.UnavailableReason;
            if (local is null && tensor.device_type != TorchSharp.DeviceType.CUDA)
            {
                local = $"tensors on {tensor.device_type}";
            }

            local ??= GpuPlacement.Oversubscribed(this, (int)TorchSharp.torch.cuda.device_count());
            _ncclOff = NcclAgreement.Agree(this, local);
            _ncclDecided = true;
            if (_ncclOff is null)
            {
                _nccl = NcclCommunicator.Create(this, tensor.device_index, _watchdog);
            }
        }

        return _nccl is not null;
    }

    private static readonly IntPtr InPlace = new(-1); // MPICH's (and MS-MPI's) MPI_IN_PLACE

    private static void StagedThroughHost(Tensor tensor, Action<Tensor> collective)
    {
        using var host = tensor.cpu().contiguous();
        collective(host);
        using var noGrad = no_grad();
        tensor.copy_(host);
    }

    private static void StagedAsFloat(Tensor tensor, Action<Tensor> collective)
    {
        using var wide = tensor.to(ScalarType.Float32).contiguous();
        collective(wide);
        using var noGrad = no_grad();
        tensor.copy_(wide);
    }

    private static (int Type, long Size) MpiType(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => (MPI.Unsafe.MPI_FLOAT, 4),
        ScalarType.Float64 => (MPI.Unsafe.MPI_DOUBLE, 8),
        ScalarType.Int64 => (MPI.Unsafe.MPI_LONG_LONG, 8),
        _ => throw new ArgumentException($"tensor: no MPI type for {dtype}", "tensor"),
    };

    private static int Op(ReduceOp op) => op switch
    {
        ReduceOp.Sum => MPI.Unsafe.MPI_SUM,
        ReduceOp.Max => MPI.Unsafe.MPI_MAX,
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, "unknown reduction"),
    };

    /// <summary>The address of a contiguous CPU tensor's byte <paramref name="byteOffset"/> (past its storage offset).</summary>
    internal static IntPtr Address(Tensor tensor, long byteOffset) => tensor.dtype switch
    {
        ScalarType.Float32 => Pointer<float>(tensor, byteOffset),
        ScalarType.Float64 => Pointer<double>(tensor, byteOffset),
        ScalarType.Int64 => Pointer<long>(tensor, byteOffset),
        _ => throw new ArgumentException($"tensor: no address for {tensor.dtype}", nameof(tensor)),
    };

    private static unsafe IntPtr Pointer<T>(Tensor tensor, long byteOffset)
        where T : unmanaged
    {
        using var storage = tensor.storage<T>();
        return storage.data_ptr() + checked((nint)(tensor.storage_offset() * sizeof(T) + byteOffset));
    }

    private void CheckRoot(int root)
    {
        if (root < 0 || root >= WorldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(root), root, $"root must be a rank in [0, {WorldSize})");
        }
    }

    private static string Describe(string what, long bytes) =>
        string.Create(CultureInfo.InvariantCulture, $"{what} of {bytes / 1e6:0.###} MB");

    private static void Check(int rc, string call)
    {
        if (rc != 0)
        {
            throw new CollectiveException($"{call} failed with MPI error {rc}");
        }
    }

    private static string LibraryVersion()
    {
        // MPI_Get_library_version is MPI-3; MPI.NET does not bind it, so ask the loaded library directly.
        if (NativeLibrary.TryLoad("libmpich.so.12", out var lib) && NativeLibrary.TryGetExport(lib, "MPI_Get_library_version", out var entry))
        {
            unsafe
            {
                var buffer = new byte[8192];
                int length = 0;
                fixed (byte* b = buffer)
                {
                    var get = (delegate* unmanaged<byte*, int*, int>)entry;
                    if (get(b, &length) == 0 && length > 0)
                    {
                        // "MPICH Version:\t4.0.2\n…" → "MPICH 4.0.2".
                        string first = System.Text.Encoding.ASCII.GetString(buffer, 0, Math.Min(length, buffer.Length)).Split('\n')[0];
                        return string.Join(' ', first.Replace("Version:", "", StringComparison.Ordinal).Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries));
                    }
                }
            }
        }

        return "MPICH";
    }
}
