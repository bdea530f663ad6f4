using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Checkpoints;

/// <summary>What loading a state dict into a model found.</summary>
/// <param name="Loaded">Keys copied into the model.</param>
/// <param name="Missing">Model keys the checkpoint lacks.</param>
/// <param name="Unexpected">Checkpoint keys the model lacks.</param>
/// <param name="ShapeMismatched">Keys present in both with different shapes: (key, checkpoint shape, model shape).</param>
/// <param name="SkippedHead">Classifier keys deliberately skipped (a head of another size, for transfer learning).</param>
public sealed record LoadReport(
    IReadOnlyList<string> Loaded,
    IReadOnlyList<string> Missing,
    IReadOnlyList<string> Unexpected,
    IReadOnlyList<(string Key, long[] Checkpoint, long[] Model)> ShapeMismatched,
    IReadOnlyList<string> SkippedHead)
{
    /// <summary>Whether every key matched exactly.</summary>
    public bool IsExact => Missing.Count == 0 && Unexpected.Count == 0 && ShapeMismatched.Count == 0;

    /// <summary>One-paragraph description naming the keys (a few of each kind).</summary>
    public string Describe()
    {
        static string Few(IEnumerable<string> keys, int count) =>
            string.Join(", ", keys.Take(5)) + (count > 5 ? $", … ({count - 5} more)" : string.Empty);
        var parts = new List<string>();
        if (Missing.Count > 0)
        {
            parts.Add($"{Missing.Count} missing key(s): {Few(Missing, Missing.Count)}");
        }

        if (Unexpected.Count > 0)
        {
            parts.Add($"{Unexpected.Count} unexpected key(s): {Few(Unexpected, Unexpected.Count)}");
        }

        if (ShapeMismatched.Count > 0)
        {
            parts.Add($"{ShapeMismatched.Count} shape mismatch(es): " + Few(ShapeMismatched.Select(m =>
                $"{m.Key} checkpoint [{string.Join(", ", m.Checkpoint)}] vs model [{string.Join(", ", m.Model)}]"), ShapeMismatched.Count));
        }

        if (SkippedHead.Count > 0)
        {
            parts.Add($"classifier skipped: {string.Join(", ", SkippedHead)}");
        }

        return parts.Count == 0 ? $"all {Loaded.Count} keys matched" : string.Join("; ", parts);
    }
}

/// <summary>Copies a state dict into a model by key (never by position), reporting every difference.</summary>
public static class StateDictLoader
{
    /// <summary>
    /// Loads <paramref name="state"/> into <paramref name="model"/>. Strict: any missing, unexpected or mismatched key
    /// fails before anything is copied (no half-loaded model). Non-strict: copies what fits. <paramref name="skipHead"/>
    /// ignores <c>head.*</c> keys whose shape differs (a classifier of another size). A missing
    /// <c>num_batches_tracked</c> (older checkpoints) is not an error.
    /// </summary>
    /// <param name="model">The model to fill.</param>
    /// <param name="state">The checkpoint's tensors by key.</param>
    /// <param name="strict">Fail on any difference.</param>
    /// <param name="skipHead">Skip <c>head.*</c> keys of another shape.</param>
    /// <param name="sourceName">How errors name the checkpoint (they start with it).</param>
    /// <param name="paramName">The library's name of the argument that gave the checkpoint (e.g. "weights"), set as the
    /// exception's <see cref="CheckpointException.ParamName"/> when <paramref name="sourceName"/> starts with it; or null.</param>
    /// <exception cref="CheckpointException">Strict loading found differences; the message names <paramref name="sourceName"/> and the keys.</exception>
    public static LoadReport Load(Module model, IReadOnlyDictionary<string, Tensor> state, bool strict, bool skipHead, string sourceName, string? paramName = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(state);
        var target = model.state_dict();
        var missing = target.Keys.Where(k => !state.ContainsKey(k) && !k.EndsWith(".num_batches_tracked", StringComparison.Ordinal)).ToList();
        var unexpected = state.Keys.Where(k => !target.ContainsKey(k)).ToList();
        var mismatched = new List<(string, long[], long[])>();
        var skipped = new List<string>();
        var loadable = new List<string>();
        foreach (var (key, tensor) in target)
        {
            if (!state.TryGetValue(key, out var source))
            {
                continue;
            }

            if (!TensorSizes.Of(source).SequenceEqual(TensorSizes.Of(tensor)))
            {
                if (skipHead && key.StartsWith("head.", StringComparison.Ordinal))
                {
                    skipped.Add(key);
                }
                else
                {
                    mismatched.Add((key, TensorSizes.Of(source), TensorSizes.Of(tensor)));
                }

                continue;
            }

            loadable.Add(key);
        }

        var report = new LoadReport(loadable, missing, unexpected, mismatched, skipped);
        if (strict && !report.IsExact)
        {
            throw new CheckpointException($"{sourceName} does not fit the model: {report.Describe()}", paramName);
        }

        using (no_grad())
        {
            foreach (var key in loadable)
            {
                target[key].copy_(state[key]);
            }
        }

        return report;
    }
}
