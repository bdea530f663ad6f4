namespace RepLKNet.Data;

/// <summary>
/// Which part of each global batch one process of a data-parallel job reads (PyTorch's <c>DistributedSampler</c> by
/// global batch): with per-process batch B and <see cref="Count"/> processes, micro-batch k of process
/// <see cref="Index"/> holds the epoch-order positions [k·B·Count + Index·B, k·B·Count + (Index + 1)·B), so the union
/// over the processes of step k is exactly what one process with batch B·Count reads at step k, and every augmentation
/// draw stays keyed by the sample's global position (results do not depend on the number of processes).
/// </summary>
/// <param name="Index">This process's rank, in [0, <paramref name="Count"/>).</param>
/// <param name="Count">Processes (≥ 1).</param>
public readonly record struct DataShard(int Index, int Count)
{
    /// <summary>The one-process view: everything.</summary>
    public static DataShard Whole { get; } = new(0, 1);

    /// <summary>Whether this is the whole data (one process).</summary>
    public bool IsWhole => Count <= 1;

    /// <summary>Fails unless 0 ≤ <see cref="Index"/> &lt; <see cref="Count"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">It is not.</exception>
    public void Check()
    {
        if (Count < 1 || Index < 0 || Index >= Count)
        {
            throw new ArgumentOutOfRangeException(nameof(Index), $"shard {Index} of {Count} does not exist");
        }
    }

    /// <summary>The global epoch-order position of sample <paramref name="i"/> of this shard's micro-batch <paramref name="batch"/> of size <paramref name="batchSize"/>.</summary>
    public long Position(long batch, int batchSize, int i) => (batch * Math.Max(1, Count) + Index) * batchSize + i;
}
