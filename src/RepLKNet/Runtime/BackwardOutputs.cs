using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>
/// Keeps the gradients a custom autograd function's backward hands to libtorch reachable after it returns: libtorch copies
/// them right after, and only then may our wrappers go (on a thread without a dispose scope — libtorch's CUDA backward
/// threads — the GC could otherwise free one in between; docs/runtime.md, "Object lifetimes"). A thread's list is
/// released at its next hand-back (by then libtorch has copied the previous one), or all at once by <see cref="ReleaseAll"/>
/// once <c>backward()</c> has returned. Used by the depthwise convolution and SyncBN; safe from any thread (one lock).
/// </summary>
internal static class BackwardOutputs
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<int, List<Tensor>> Held = [];

    /// <summary>
    /// Moves <paramref name="gradients"/> out of the backward's own dispose scope (null entries: inputs without a gradient)
    /// and holds them for the calling thread, releasing what it held before.
    /// </summary>
    public static void HandBack(List<Tensor> gradients)
    {
        foreach (var t in gradients)
        {
            t?.MoveToOuterDisposeScope();
        }

        List<Tensor>? previous;
        lock (Gate)
        {
            int thread = Environment.CurrentManagedThreadId;
            Held.TryGetValue(thread, out previous);
            Held[thread] = gradients;
        }

        Dispose(previous);
    }

    /// <summary>Releases every held gradient (call after <c>backward()</c> has returned: libtorch has copied them all).</summary>
    public static void ReleaseAll()
    {
        List<List<Tensor>> all;
        lock (Gate)
        {
            all = [.. Held.Values];
            Held.Clear();
        }

        foreach (var list in all)
        {
            Dispose(list);
        }
    }

    private static void Dispose(List<Tensor>? tensors)
    {
        if (tensors is not null)
        {
            foreach (var t in tensors)
            {
                t?.Dispose();
            }
        }
    }
}
