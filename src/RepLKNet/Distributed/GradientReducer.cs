using System.Globalization;
using RepLKNet.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace RepLKNet.Distributed;

/// <summary>
/// Data-parallel gradient averaging (what PyTorch's <c>DistributedDataParallel</c> does after backward): the gradients of
/// the trainable parameters, in the model's parameter order, are flattened into buckets of at most
/// <see cref="BucketBytes"/> (DDP's <c>bucket_cap_mb</c>, 25 MB), each bucket is summed over the processes with one
/// allreduce and divided by the world size, and the averages are copied back. The order and the buckets are the same
/// on every process and in every step, so the sums are deterministic. A parameter without a gradient in this step (none
/// of its outputs reached the loss on this process) takes part with zeros and then holds the average, so every process
/// makes the same optimizer update (unlike DDP with <c>find_unused_parameters</c>, which leaves an unused parameter's
/// gradient None: AdamW then applies its weight decay and moments to such a parameter; the project's models use every
/// parameter). The layout (sizes and dtypes in order) is checked once, before the first allreduce, to be the same on every
/// process.
/// </summary>
public sealed class GradientReducer
{
    private readonly ProcessGroup _group;
    private readonly Parameter[] _parameters;
    private bool _layoutChecked;

    /// <summary>Creates the reducer.</summary>
    /// <param name="group">The job's processes.</param>
    /// <param name="parameters">The parameters whose gradients are averaged (frozen ones are left out).</param>
    /// <param name="bucketBytes">Largest bucket in bytes (positive).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bucketBytes"/> is not positive.</exception>
    public GradientReducer(ProcessGroup group, IEnumerable<Parameter> parameters, long bucketBytes = DefaultBucketBytes)
    {
        _group = group ?? throw new ArgumentNullException(nameof(group));
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bucketBytes);
        _parameters = [.. parameters.Where(p => p.requires_grad)];
        BucketBytes = bucketBytes;
    }

    /// <summary>DDP's default bucket: 25 MB.</summary>
    public const long DefaultBucketBytes = 25L * 1024 * 1024;

    /// <summary>Largest bucket in bytes.</summary>
    public long BucketBytes { get; }

    /// <summary>Time spent in the last <see cref="Reduce"/> (flatten, allreduce, copy back).</summary>
    public TimeSpan LastReduceTime { get; private set; }

    /// <summary>Bytes the last <see cref="Reduce"/> sent through allreduce.</summary>
    public long LastReduceBytes { get; private set; }

    /// <summary>
    /// Averages the gradients over the processes, in place (call after backward on every process, before clipping and the
    /// optimizer step). Does nothing in a one-process group. Temporaries belong to the caller's dispose scope.
    /// </summary>
    /// <exception cref="CollectiveException">A collective failed or timed out.</exception>
    /// <exception cref="InvalidOperationException">The processes disagree on the gradients' layout (different models).</exception>
    public void Reduce()
    {
        if (!_group.IsDistributed)
        {
            return;
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var noGrad = no_grad();
        if (!_layoutChecked)
        {
            CheckLayout();
            _layoutChecked = true;
        }

        long bytes = 0;
        // Group gradients by dtype and device (each bucket is one flat tensor), keeping the parameter order within a bucket.
        var bucket = new List<Tensor>();
        long bucketBytes = 0;
        foreach (var p in _parameters)
        {
            var grad = p.grad;
            if (grad is null)
            {
                grad = zeros_like(p);
                p.grad = grad;
            }

            long size = grad.numel() * grad.element_size();
            if (bucket.Count > 0 && (bucketBytes + size > BucketBytes || bucket[0].dtype != grad.dtype || bucket[0].device != grad.device))
            {
                bytes += Flush(bucket);
                bucketBytes = 0;
            }

            bucket.Add(grad);
            bucketBytes += size;
        }

        bytes += Flush(bucket);
        LastReduceBytes = bytes;
        LastReduceTime = clock.Elapsed;
    }

    /// <summary>Copies rank 0's parameters and buffers of <paramref name="model"/> into every process (DDP's start).</summary>
    /// <exception cref="CollectiveException">A collective failed or timed out.</exception>
    public static void BroadcastState(ProcessGroup group, TorchSharp.torch.nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(model);
        if (!group.IsDistributed)
        {
            return;
        }

        using var noGrad = no_grad();
        foreach (var (_, tensor) in model.state_dict())
        {
            if (tensor.is_contiguous())
            {
                group.Broadcast(tensor, 0);
            }
            else
            {
                using var copy = tensor.contiguous();
                group.Broadcast(copy, 0);
                tensor.copy_(copy);
            }
        }
    }

    /// <summary>
    /// Copies rank 0's floating-point buffers of <paramref name="model"/> (BatchNorm running statistics) into every process,
    /// flattened into one broadcast per dtype: PyTorch DDP's <c>broadcast_buffers=True</c> before each forward, so that the
    /// processes evaluate and save the same statistics without SyncBN. Integer buffers (<c>num_batches_tracked</c>) are
    /// the same everywhere already.
    /// </summary>
    /// <exception cref="CollectiveException">A collective failed or timed out.</exception>
    public static void BroadcastBuffers(ProcessGroup group, TorchSharp.torch.nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(model);
        if (!group.IsDistributed)
        {
            return;
        }

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var buffers in model.buffers().Where(b => b.is_floating_point()).GroupBy(b => (b.dtype, b.device.ToString())))
        {
            var list = buffers.ToList();
            var flat = cat([.. list.Select(b => b.reshape(-1))]);
            group.Broadcast(flat, 0);
            long offset = 0;
            foreach (var b in list)
            {
                long n = b.numel();
                b.copy_(flat.narrow(0, offset, n).view(TensorSizes.Of(b)));
                offset += n;
            }
        }
    }

    private void CheckLayout()
    {
        // Every parameter's size and dtype in order, as exact small numbers: (count, Σ i·size mod 2^24, Σ dtype·(i+1)
        // mod 2^24, Σ size mod 2^40), compared through max of (x) and max of (−x) over the processes.
        double count = _parameters.Length, weighted = 0, types = 0, total = 0;
        for (int i = 0; i < _parameters.Length; i++)
        {
            long size = _parameters[i].numel();
            weighted = (weighted + (double)((i + 1L) * (size % (1 << 24)) % (1 << 24))) % (1 << 24);
            types = (types + (double)((long)_parameters[i].dtype * (i + 1L) % (1 << 24))) % (1 << 24);
            total = (total + size) % (1L << 40);
        }

        var mine = new[] { count, weighted, types, total };
        var check = new double[8];
        for (int k = 0; k < 4; k++)
        {
            check[k] = mine[k];
            check[k + 4] = -mine[k];
        }

        _group.AllReduce(check, ReduceOp.Max);
        if (Enumerable.Range(0, 4).Any(k => check[k] != -check[k + 4]))
        {
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"rank {_group.Rank}: the processes' gradients differ in layout ({_parameters.Length} parameters here): every process must train the same model"));
        }
    }

    private long Flush(List<Tensor> bucket)
    {
        if (bucket.Count == 0)
        {
            return 0;
        }

        long bytes;
        if (bucket.Count == 1 && bucket[0].is_contiguous())
        {
            var g = bucket[0];
            _group.AllReduce(g);
            Scalars.DivInPlace(g, _group.WorldSize);
            bytes = g.numel() * g.element_size();
        }
        else
        {
            using var flat = cat([.. bucket.Select(g => g.reshape(-1))]);
            _group.AllReduce(flat);
            Scalars.DivInPlace(flat, _group.WorldSize);
            long offset = 0;
            foreach (var g in bucket)
            {
                long n = g.numel();
                g.copy_(flat.narrow(0, offset, n).view(TensorSizes.Of(g)));
                offset += n;
            }

            bytes = flat.numel() * flat.element_size();
        }

        bucket.Clear();
        return bytes;
    }
}
