using System.Runtime.ExceptionServices;
using System.Text;
using RepLKNet.Data;
using RepLKNet.Distributed;

namespace RepLKNet.Training;

/// <summary>
/// Evaluation split over the processes of a data-parallel job (what <c>mmseg.apis.multi_gpu_test</c> and timm's distributed
/// validation do, with the counts summed instead of the results gathered): each process scores a contiguous block of the
/// held-out set (<see cref="Block"/>), then one <see cref="ProcessGroup.AllReduce(double[], ReduceOp)"/> sums the counts
/// behind the score, so every process computes the score of the whole set — the same numbers as one process.
/// <para>
/// Cancellation and failures: a process never leaves the others inside a collective. A process whose part is cancelled
/// (<see cref="OperationCanceledException"/>) or fails (any other exception) still makes the reduction, with a flag;
/// afterwards every process throws: the failing one its own exception, the others a <see cref="CollectiveException"/>
/// naming the failure, or, when a part was cancelled (and none failed), an <see cref="OperationCanceledException"/> on
/// every process. A cancelled process thus answers at once, but the others finish their part first (the cancellation
/// is seen at the reduction, not between images). In a one-process group exceptions simply propagate.
/// </para>
/// </summary>
public static class ShardedEvaluation
{
    /// <summary>
    /// The contiguous block of a held-out set of <paramref name="total"/> samples that <paramref name="shard"/> scores,
    /// made of whole batches of <paramref name="unit"/> samples (the batches are those one process would make, so per-batch
    /// numerics do not change): batches ⌊b·Index/W⌋ … ⌊b·(Index+1)/W⌋ − 1 of the b = ⌈total/unit⌉. The blocks of the W
    /// shards are disjoint and cover [0, total) in rank order; a block may be empty when there are fewer batches than shards.
    /// </summary>
    /// <param name="total">Samples in the set (≥ 0).</param>
    /// <param name="unit">Samples per batch (≥ 1).</param>
    /// <param name="shard">The process's shard.</param>
    /// <returns>(first sample, samples).</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="total"/> is negative, <paramref name="unit"/> is not positive, or the shard does not exist.</exception>
    public static (long First, long Count) Block(long total, int unit, DataShard shard)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(total);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(unit);
        shard.Check();
        long batches = (total + unit - 1) / unit;
        long first = (long)((Int128)batches * shard.Index / shard.Count) * unit;
        long end = Math.Min(total, (long)((Int128)batches * (shard.Index + 1) / shard.Count) * unit);
        return (first, Math.Max(0, end - first));
    }

    /// <summary>The shard of <paramref name="group"/>'s process: (rank, world size).</summary>
    public static DataShard ShardOf(ProcessGroup group)
    {
        ArgumentNullException.ThrowIfNull(group);
        return new DataShard(group.Rank, group.WorldSize);
    }

    /// <summary>
    /// Runs <paramref name="local"/> (this process's part) and sums its counts over <paramref name="group"/> (one
    /// reduction of <paramref name="length"/> + 3 + W values); when some part skipped samples, each process that did
    /// broadcasts its list (in rank order), so every process returns the whole set's skipped samples in the order one
    /// process would (blocks are contiguous in set order). Counts travel as float64: exact up to 2⁵³.
    /// </summary>
    /// <param name="group">The job's processes.</param>
    /// <param name="length">Counts the part returns.</param>
    /// <param name="local">This process's part: its counts (<paramref name="length"/> of them) and its skipped samples in order.</param>
    /// <returns>The summed counts and every process's skipped samples.</returns>
    /// <exception cref="OperationCanceledException">Some process's part was cancelled.</exception>
    /// <exception cref="CollectiveException">Another process's part failed, or a collective failed.</exception>
    /// <exception cref="ArgumentException">The part returned another number of counts (ParamName <c>local</c>).</exception>
    public static (double[] Sums, IReadOnlyList<SkippedImage> Skipped) Reduce(ProcessGroup group, int length,
        Func<(double[] Counts, IReadOnlyList<SkippedImage> Skipped)> local)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(local);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        int world = group.WorldSize, rank = group.Rank;
        double[]? counts = null;
        IReadOnlyList<SkippedImage> skipped = [];
        ExceptionDispatchInfo? failure = null;
        try
        {
            (counts, skipped) = local();
            if (counts.Length != length)
            {
                throw new ArgumentException($"local returned {counts.Length} counts, expected {length}", nameof(local));
            }
        }
        catch (Exception e) when (group.IsDistributed)
        {
            failure = ExceptionDispatchInfo.Capture(e);
        }

        // [counts…, skipped, cancelled, failed, one flag per rank that skipped samples]
        var buffer = new double[length + 3 + world];
        counts?.CopyTo(buffer, 0);
        buffer[length] = skipped.Count;
        bool cancelled = failure?.SourceException is OperationCanceledException;
        buffer[length + 1] = cancelled ? 1 : 0;
        buffer[length + 2] = failure is not null && !cancelled ? 1 : 0;
        buffer[length + 3 + rank] = skipped.Count > 0 ? 1 : 0;
        group.AllReduce(buffer);
        if (buffer[length + 2] > 0)
        {
            if (failure is not null && !cancelled)
            {
                failure.Throw();
            }

            throw new CollectiveException($"rank {rank}: the evaluation failed on {buffer[length + 2]} other process(es)");
        }

        if (buffer[length + 1] > 0)
        {
            failure?.Throw();
            throw new OperationCanceledException($"rank {rank}: the evaluation was cancelled on {buffer[length + 1]} process(es)");
        }

        var all = new List<SkippedImage>();
        if (world > 1 && buffer[length] > 0)
        {
            for (int r = 0; r < world; r++)
            {
                if (buffer[length + 3 + r] > 0)
                {
                    all.AddRange(Decode(group.Broadcast(r == rank ? Encode(skipped) : null, r)));
                }
            }
        }

        return (buffer[..length], world > 1 ? all : skipped);
    }

    private static byte[] Encode(IReadOnlyList<SkippedImage> skipped)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write(skipped.Count);
            foreach (var s in skipped)
            {
                writer.Write(s.Index);
                writer.Write(s.Source);
                writer.Write(s.Reason);
            }
        }

        return stream.ToArray();
    }

    private static List<SkippedImage> Decode(byte[] bytes)
    {
        using var reader = new BinaryReader(new MemoryStream(bytes), Encoding.UTF8);
        int n = reader.ReadInt32();
        var list = new List<SkippedImage>(n);
        for (int i = 0; i < n; i++)
        {
            list.Add(new SkippedImage(reader.ReadInt64(), reader.ReadString(), reader.ReadString()));
        }

        return list;
    }
}
