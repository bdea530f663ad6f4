using RepLKNet.Checkpoints;
using RepLKNet.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Tests.Support;

internal static class RandomModels
{
    /// <summary>Gives every BatchNorm non-trivial statistics and affine parameters, as the official oracle does.</summary>
    public static void RandomizeBatchNorms(Module model, Generator generator)
    {
        using var noGrad = no_grad();
        // BatchNorm is the base of TorchSharp's BatchNorm2d and of the project's Layers.BatchNorm2d alike.
        var norms = model.modules().OfType<BatchNorm>().ToList();
        Assert.True(norms.Count > 0, "the model has no BatchNorm to randomize");
        foreach (var bn in norms)
        {
            long n = bn.weight!.shape[0];
            // Scalars holds each number until libtorch has read it (a temporary Scalar can be finalized mid-call: docs/runtime.md).
            bn.weight!.copy_(Scalars.AddInPlace(rand(n, generator: generator), 0.5));
            bn.bias!.copy_(Scalars.MulInPlace(randn(n, generator: generator), 0.2));
            bn.running_mean!.copy_(Scalars.MulInPlace(randn(n, generator: generator), 0.5));
            bn.running_var!.copy_(Scalars.AddInPlace(Scalars.MulInPlace(rand(n, generator: generator), 1.5), 0.5));
        }
    }

    /// <summary>Max |a − b| over two state dicts with the same keys.</summary>
    public static double MaxStateDiff(Module a, Module b)
    {
        var sb = StateDicts.Ordered(b).ToDictionary();
        return StateDicts.Ordered(a).Max(kv => (kv.Value.to(float64) - sb[kv.Key].to(float64)).abs().max().item<double>());
    }
}
