using static TorchSharp.torch;

namespace RepLKNet.Distributed;

/// <summary>A reduction of a collective (<c>torch.distributed.ReduceOp</c>).</summary>
public enum ReduceOp
{
    /// <summary>Element-wise sum.</summary>
    Sum,

    /// <summary>Element-wise maximum.</summary>
    Max,
}

/// <summary>
/// The processes of one data-parallel job and the collectives between them (<c>torch.distributed</c>'s process group):
/// every process calls the same collectives in the same order with buffers of the same size; each call returns once all
/// processes took part. <see cref="Single"/> is the one-process group (every collective returns its input);
/// <see cref="MpiProcessGroup"/> runs them on MPI (NCCL for CUDA tensors when present). Collectives are made on the
/// training thread (or, inside backward, on the thread libtorch runs it on while the training thread waits in
/// <c>backward()</c>): never two at once from one process.
/// </summary>
public abstract class ProcessGroup : IDisposable
{
    /// <summary>The one-process group: rank 0 of 1; collectives leave their input as it is.</summary>
#pragma warning disable CA1720 // "Single" is the group's name here, not the type
    public static ProcessGroup Single { get; } = new SingleProcessGroup();
#pragma warning restore CA1720

    /// <summary>This process's rank in [0, <see cref="WorldSize"/>).</summary>
    public abstract int Rank { get; }

    /// <summary>Processes in the job.</summary>
    public abstract int WorldSize { get; }

    /// <summary>Processes of the job on this machine (MPICH's <c>MPI_LOCALNRANKS</c>; 1 for one process).</summary>
    public virtual int LocalWorldSize => 1;

    /// <summary>This process's rank among those on its machine (<c>MPI_LOCALRANKID</c>; picks the GPU on multi-GPU nodes).</summary>
    public virtual int LocalRank => 0;

    /// <summary>Whether more than one process takes part.</summary>
    public bool IsDistributed => WorldSize > 1;

    /// <summary>Whether this process writes the job's files and output (rank 0).</summary>
    public bool IsMain => Rank == 0;

    /// <summary>The engine, e.g. <c>single</c>, <c>mpi (MPICH …)</c>, <c>nccl + mpi</c>.</summary>
    public abstract string Backend { get; }

    /// <summary>
    /// Reduces <paramref name="tensor"/> over the processes in place (<c>dist.all_reduce</c>): afterwards every process holds
    /// the element-wise reduction. Float32, float64 or int64; contiguous; CPU (MPI) or CUDA (NCCL, else staged through host memory).
    /// </summary>
    /// <exception cref="ArgumentException">An unsupported dtype or a non-contiguous tensor.</exception>
    /// <exception cref="CollectiveException">The collective failed.</exception>
    public abstract void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum);

    /// <summary>Reduces <paramref name="values"/> over the processes in place (small host arrays: losses, counts, flags).</summary>
    /// <exception cref="CollectiveException">The collective failed.</exception>
    public abstract void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum);

    /// <summary>Copies <paramref name="root"/>'s <paramref name="tensor"/> into every process's (<c>dist.broadcast</c>), in place.</summary>
    /// <exception cref="ArgumentException">An unsupported dtype or a non-contiguous tensor.</exception>
    /// <exception cref="CollectiveException">The collective failed.</exception>
    public abstract void Broadcast(Tensor tensor, int root = 0);

    /// <summary>Copies <paramref name="root"/>'s bytes into every process (the length travels first); returns them.</summary>
    /// <exception cref="CollectiveException">The collective failed.</exception>
    public abstract byte[] Broadcast(byte[]? bytes, int root = 0);

    /// <summary>Returns once every process has called it.</summary>
    /// <exception cref="CollectiveException">The collective failed.</exception>
    public abstract void Barrier();

    /// <summary>
    /// Ends the whole job at once with <paramref name="exitCode"/> (<c>MPI_Abort</c>) after a failure on this process, so that
    /// the others do not wait for it; the one-process group just exits.
    /// </summary>
    public abstract void Abort(int exitCode);

    /// <inheritdoc />
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the engine (MPI_Finalize).</summary>
    protected virtual void Dispose(bool disposing)
    {
    }

    /// <summary>Fails unless <paramref name="tensor"/> can go through a collective.</summary>
    protected static void CheckTensor(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.dtype is not (ScalarType.Float32 or ScalarType.Float64 or ScalarType.Int64 or ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new ArgumentException($"tensor: collectives take float32, float64, float16, bfloat16 or int64 tensors, got {tensor.dtype}", nameof(tensor));
        }

        if (!tensor.is_contiguous())
        {
            throw new ArgumentException("tensor: collectives take contiguous tensors", nameof(tensor));
        }
    }

    private sealed class SingleProcessGroup : ProcessGroup
    {
        public override int Rank => 0;

        public override int WorldSize => 1;

        public override string Backend => "single";

        public override void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum) => CheckTensor(tensor);

        public override void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum) => ArgumentNullException.ThrowIfNull(values);

        public override void Broadcast(Tensor tensor, int root = 0) => CheckTensor(tensor);

        public override byte[] Broadcast(byte[]? bytes, int root = 0) => bytes ?? throw new ArgumentNullException(nameof(bytes));

        public override void Barrier()
        {
        }

        public override void Abort(int exitCode) => Environment.Exit(exitCode);
    }
}

/// <summary>A collective failed or did not complete in time (another process probably died).</summary>
public sealed class CollectiveException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CollectiveException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }

    /// <summary>Creates the exception.</summary>
    public CollectiveException()
    {
    }

    /// <summary>Creates the exception.</summary>
    public CollectiveException(string message)
        : base(message)
    {
    }
}
