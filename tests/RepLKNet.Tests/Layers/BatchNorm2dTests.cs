using RepLKNet.Tests.Support;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;

namespace RepLKNet.Tests.Layers;

/// <summary>Our BatchNorm2d against libtorch's own NCHW <c>batch_norm</c> in float64, on the maps where it changes layout.</summary>
public sealed class BatchNorm2dTests
{
    public BatchNorm2dTests() => Torch.EnsureLoaded();

    [Fact]
    public void The_row_layout_is_taken_exactly_on_maps_of_2_to_15_pixels_with_2_or_more_channels()
    {
        using var scope = NewDisposeScope();
        Assert.True(BatchNorm2d.UsesRowsLayout(zeros(2, 3, 2, 1)));
        Assert.True(BatchNorm2d.UsesRowsLayout(zeros(2, 3, 3, 5)));
        Assert.False(BatchNorm2d.UsesRowsLayout(zeros(2, 3, 1, 1)));
        Assert.False(BatchNorm2d.UsesRowsLayout(zeros(2, 3, 4, 4)));
        Assert.False(BatchNorm2d.UsesRowsLayout(zeros(2, 1, 2, 2)));
        Assert.False(BatchNorm2d.UsesRowsLayout(zeros(2, 3, 2, 2, dtype: float64)));
        Assert.False(BatchNorm2d.UsesRowsLayout(zeros(2, 2, 3, 3).transpose(2, 3)));
    }

    [Fact]
    public void The_output_has_the_strides_of_libtorchs_nchw_call_also_with_one_channel()
    {
        using var scope = NewDisposeScope();
        foreach (var shape in new long[][] { [4, 1, 2, 3], [4, 3, 2, 3], [1, 5, 3, 3] })
        {
            using var layer = new BatchNorm2d(shape[1]);
            layer.train();
            var x = randn(shape);
            var expected = nn.functional.batch_norm(x, zeros(shape[1]), ones(shape[1]), ones(shape[1]), zeros(shape[1]), true, 0.1, 1e-5);
            Assert.Equal(expected.stride(), layer.forward(x).stride());
        }
    }

    [Theory]
    [InlineData(1, 1, 2)]
    [InlineData(2, 2, 2)]
    [InlineData(3, 3, 1)]
    [InlineData(3, 5, 3)]
    [InlineData(7, 7, 1)]
    [InlineData(4, 4, 2)]
    [InlineData(1, 1, 1)]
    public void Training_and_eval_match_libtorchs_nchw_batch_norm_in_float64(int h, int w, int steps)
    {
        using var scope = NewDisposeScope();
        var rng = new Random(Environment.TickCount);
        int n = rng.Next(2, 9), c = rng.Next(1, 40);
        string what = $"N={n} C={c} H={h} W={w}";
        using var layer = new BatchNorm2d(c, momentum: 0.3);
        var gamma = (rand(c) + 0.5).to(float64);
        var beta = randn(c).to(float64);
        using (no_grad())
        {
            layer.weight!.copy_(gamma);
            layer.bias!.copy_(beta);
        }

        var refGamma = gamma.clone().requires_grad_(true);
        var refBeta = beta.clone().requires_grad_(true);
        var refMean = zeros(c, dtype: float64);
        var refVar = ones(c, dtype: float64);
        layer.train();
        for (int step = 0; step < steps; step++)
        {
            layer.zero_grad();
            var x = (randn(n, c, h, w) * 3 + 1).requires_grad_(true);
            var upstream = randn(n, c, h, w);
            var y = layer.forward(x);
            y.backward([upstream]);

            var x64 = x.detach().to(float64).requires_grad_(true);
            refGamma.grad?.zero_();
            refBeta.grad?.zero_();
            var y64 = nn.functional.batch_norm(x64, refMean, refVar, refGamma, refBeta, true, 0.3, 1e-5);
            y64.backward([upstream.to(float64)]);

            Assert.True(y.is_contiguous(), what);
            AssertClose(y64, y, $"{what} step {step} output");
            // The input gradient's natural scale is |upstream|·γ/σ per channel (σ the batch's): with few values per
            // channel σ can be small and the float32 rounding of both libtorch paths grows with 1/σ (N·H·W = 2 makes the
            // exact gradient 0, all rounding).
            var sigma = (x64.detach().var([0, 2, 3], unbiased: false) + 1e-5).sqrt();
            double natural = (gamma.abs() / sigma).max().item<double>() * upstream.abs().max().item<float>();
            AssertClose(x64.grad!, x.grad!, $"{what} step {step} input grad", natural);
            AssertClose(refGamma.grad!, layer.weight!.grad!, $"{what} step {step} weight grad");
            AssertClose(refBeta.grad!, layer.bias!.grad!, $"{what} step {step} bias grad");
            AssertClose(refMean, layer.running_mean!, $"{what} step {step} running_mean");
            AssertClose(refVar, layer.running_var!, $"{what} step {step} running_var");
        }

        Assert.Equal(steps, layer.num_batches_tracked!.item<long>());
        layer.eval();
        var xe = randn(n, c, h, w);
        AssertClose(nn.functional.batch_norm(xe.to(float64), refMean, refVar, gamma, beta, false, 0.3, 1e-5), layer.forward(xe), what + " eval");
    }

    private static void AssertClose(Tensor expected, Tensor actual, string what, double naturalScale = 1.0)
    {
        var e = expected.detach().to(float64);
        double scale = Math.Max(e.abs().max().item<double>(), naturalScale);
        double diff = (e - actual.detach().to(float64)).abs().max().item<double>();
        Assert.True(diff <= 2e-5 * scale, $"{what}: max abs diff {diff:E3}, scale {scale:E3}");
    }
}
