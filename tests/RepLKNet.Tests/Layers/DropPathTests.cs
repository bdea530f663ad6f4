using RepLKNet.Layers;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Layers;

public sealed class DropPathTests
{
    public DropPathTests() => Torch.EnsureLoaded();

    [Fact]
    public void Training_drops_whole_samples_with_probability_p_and_rescales_the_rest()
    {
        using var scope = NewDisposeScope();
        var dropPath = new DropPath(0.3);
        dropPath.train();
        var x = ones(20000, 2, 3, 3);
        var y = dropPath.call(x);

        var perSample = y.view(20000, -1);
        var first = perSample[.., 0].unsqueeze(1);
        Assert.True(perSample.eq(first).all().item<bool>(), "a sample is kept or dropped as a whole");
        var kept = first.squeeze(1).ne(0);
        Assert.True(first.squeeze(1).masked_select(kept).sub(1 / 0.7).abs().max().item<float>() < 1e-5);
        double dropped = 1 - kept.to(float64).mean().item<double>();
        Assert.InRange(dropped, 0.28, 0.32);
    }

    [Fact]
    public void Eval_is_the_identity_and_zero_probability_builds_an_identity()
    {
        using var scope = NewDisposeScope();
        var dropPath = new DropPath(0.5);
        dropPath.eval();
        var x = randn(4, 3, 2, 2);
        Assert.True(dropPath.call(x).equal(x).all().item<bool>());
        Assert.IsNotType<DropPath>(DropPath.OrIdentity(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DropPath(1.0));
    }
}
