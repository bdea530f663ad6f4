using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>
/// A tensor's sizes and strides read one dimension at a time. TorchSharp 0.107's whole-shape reads
/// (<c>Tensor.shape</c>, <c>size()</c>, <c>stride()</c>) pass a managed callback to libtorch that allocates a pinned
/// array (a <c>GCHandle</c>) inside a <c>PinnedArray</c> object whose <c>Dispose</c> boxes every element and does not
/// suppress its finalizer: each read costs ~2 µs and leaves one more object for the finalizer thread. The training step
/// read shapes ~1,000 times a step that way (~1,500 finalized objects a step on the default model, every GC promoting
/// them; docs/perf-notes.md, "Finalized shape reads"). <c>dim()</c> and <c>size(d)</c>/<c>stride(d)</c> are plain
/// native calls (~20 ns, nothing allocated), so these helpers return the same values as one small managed array.
/// <c>TensorSizesTests</c> fails on any whole-shape read in our assemblies, direct or inside a TorchSharp member called
/// (a short list of per-batch reads such as <c>item</c> excepted).
/// </summary>
public static class TensorSizes
{
    /// <summary>The sizes of <paramref name="t"/>, outermost first: what <c>t.shape</c> returns (an empty array for a 0-dim tensor).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="t"/> is null.</exception>
    public static long[] Of(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        var sizes = new long[t.dim()];
        for (int d = 0; d < sizes.Length; d++)
        {
            sizes[d] = t.size(d);
        }

        return sizes;
    }

    /// <summary>The strides of <paramref name="t"/> in elements, outermost first: what <c>t.stride()</c> returns.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="t"/> is null.</exception>
    public static long[] StridesOf(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        var strides = new long[t.dim()];
        for (int d = 0; d < strides.Length; d++)
        {
            strides[d] = t.stride(d);
        }

        return strides;
    }

    /// <summary>The sizes of <paramref name="t"/> written as PyTorch prints a shape list, e.g. <c>[2, 3, 28, 28]</c> (for messages).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="t"/> is null.</exception>
    public static string Text(Tensor t) => "[" + string.Join(", ", Of(t)) + "]";
}
