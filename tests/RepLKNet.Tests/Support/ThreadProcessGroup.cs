using RepLKNet.Distributed;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Support;

/// <summary>
/// An in-process stand-in for a data-parallel job: <see cref="Run"/> starts one thread per rank, each with its own
/// <see cref="ProcessGroup"/>; collectives meet at a barrier and reduce in float64 in rank order (independent of MPI, so
/// tests of what is built on collectives — SyncBN, gradient averaging, sharded evaluation — run without mpiexec).
/// </summary>
internal sealed class ThreadProcessGroup : ProcessGroup
{
    private readonly Hub _hub;
    private readonly int _rank;

    private ThreadProcessGroup(Hub hub, int rank)
    {
        _hub = hub;
        _rank = rank;
    }

    public override int Rank => _rank;

    public override int WorldSize => _hub.Size;

    public override string Backend => "threads";

    /// <summary>Collectives made by this rank so far.</summary>
    public int Collectives { get; private set; }

    /// <summary>Runs <paramref name="body"/> on <paramref name="worldSize"/> threads (rank = argument) and rethrows the first failure.</summary>
    public static void Run(int worldSize, Action<ThreadProcessGroup> body)
    {
        var hub = new Hub(worldSize);
        var errors = new Exception?[worldSize];
        var threads = Enumerable.Range(0, worldSize).Select(r => new Thread(() =>
        {
            try
            {
                body(new ThreadProcessGroup(hub, r));
            }
            catch (Exception e)
            {
                errors[r] = e;
                hub.Barrier.RemoveParticipant(); // let the others fail rather than wait forever
            }
        }, 64 * 1024 * 1024)).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }

        foreach (var t in threads)
        {
            t.Join();
        }

        if (errors.FirstOrDefault(e => e is not null) is { } first)
        {
            throw new AggregateException($"a rank failed: {first.Message}", errors.Where(e => e is not null)!);
        }
    }

    public override void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        CheckTensor(tensor);
        using var host = tensor.detach().to(ScalarType.Float64).cpu().contiguous();
        var values = host.data<double>().ToArray();
        AllReduce(values, op);
        using var noGrad = no_grad();
        using var result = TorchSharp.torch.tensor(values).view(tensor.shape);
        tensor.copy_(result);
    }

    public override void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum)
    {
        ArgumentNullException.ThrowIfNull(values);
        Collectives++;
        _hub.Slots[_rank] = (double[])values.Clone();
        _hub.Barrier.SignalAndWait(TimeSpan.FromMinutes(2));
        for (int i = 0; i < values.Length; i++)
        {
            double acc = op == ReduceOp.Sum ? 0 : double.NegativeInfinity;
            for (int r = 0; r < _hub.Size; r++)
            {
                var other = (double[])_hub.Slots[r]!;
                if (other.Length != values.Length)
                {
                    throw new InvalidOperationException($"rank {_rank}: allreduce of {values.Length} values met {other.Length} on rank {r}");
                }

                acc = op == ReduceOp.Sum ? acc + other[i] : Math.Max(acc, other[i]);
            }

            values[i] = acc;
        }

        _hub.Barrier.SignalAndWait(TimeSpan.FromMinutes(2));
    }

    public override void Broadcast(Tensor tensor, int root = 0)
    {
        CheckTensor(tensor);
        using var host = tensor.detach().to(ScalarType.Float64).cpu().contiguous();
        var values = Broadcast(System.Runtime.InteropServices.MemoryMarshal.AsBytes(host.data<double>().ToArray().AsSpan()).ToArray(), root);
        using var noGrad = no_grad();
        using var result = TorchSharp.torch.tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(values).ToArray()).view(tensor.shape);
        tensor.copy_(result);
    }

    public override byte[] Broadcast(byte[]? bytes, int root = 0)
    {
        Collectives++;
        if (_rank == root)
        {
            _hub.Slots[root] = bytes!.Clone();
        }

        _hub.Barrier.SignalAndWait(TimeSpan.FromMinutes(2));
        var result = (byte[])((byte[])_hub.Slots[root]!).Clone();
        _hub.Barrier.SignalAndWait(TimeSpan.FromMinutes(2));
        return result;
    }

    public override void Barrier()
    {
        Collectives++;
        _hub.Barrier.SignalAndWait(TimeSpan.FromMinutes(2));
    }

    public override void Abort(int exitCode) => throw new InvalidOperationException($"rank {_rank} aborted the job with exit code {exitCode}");

    private sealed class Hub(int size)
    {
        public int Size { get; } = size;

        public Barrier Barrier { get; } = new(size);

        public object?[] Slots { get; } = new object?[size];
    }
}
