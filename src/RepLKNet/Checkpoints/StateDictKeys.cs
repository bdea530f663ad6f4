namespace RepLKNet.Checkpoints;

/// <summary>A state-dict key as stored in a file and as the model names it.</summary>
/// <param name="Original">The key in the file (used in error messages).</param>
/// <param name="Normalized">The key after <see cref="StateDictKeys.Normalize{T}"/>.</param>
public readonly record struct NormalizedKey(string Original, string Normalized);

/// <summary>
/// The one key normalization every checkpoint format goes through (PyTorch raw and container files, safetensors, the
/// project's format), in the spirit of timm's checkpoint filter functions: wrappers' prefixes come off, the model's
/// own names stay.
/// </summary>
public static class StateDictKeys
{
    /// <summary>The prefix <c>torch.nn.DataParallel</c> / <c>DistributedDataParallel</c> put on every key.</summary>
    public const string DataParallelPrefix = "module.";

    /// <summary>
    /// Normalizes keys, keeping file order: with <paramref name="keepPrefix"/> (MMSeg/MMDet's <c>backbone.</c>) only the
    /// entries under it are kept, without it; then, when every remaining key starts with <c>module.</c>, that prefix is
    /// removed. Keys are otherwise unchanged (a file where only some keys carry <c>module.</c> keeps them, so the
    /// loader's report names them).
    /// </summary>
    public static List<KeyValuePair<NormalizedKey, T>> Normalize<T>(IEnumerable<KeyValuePair<string, T>> entries, string? keepPrefix)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var kept = entries
            .Where(e => keepPrefix is null || e.Key.StartsWith(keepPrefix, StringComparison.Ordinal))
            .Select(e => KeyValuePair.Create(new NormalizedKey(e.Key, keepPrefix is null ? e.Key : e.Key[keepPrefix.Length..]), e.Value))
            .ToList();
        if (kept.Count > 0 && kept.All(e => e.Key.Normalized.StartsWith(DataParallelPrefix, StringComparison.Ordinal)))
        {
            kept = kept.Select(e => KeyValuePair.Create(e.Key with { Normalized = e.Key.Normalized[DataParallelPrefix.Length..] }, e.Value)).ToList();
        }

        return kept;
    }
}
