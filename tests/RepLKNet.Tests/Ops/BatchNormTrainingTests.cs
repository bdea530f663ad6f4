using RepLKNet.Ops;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;

namespace RepLKNet.Tests.Ops;

/// <summary>
/// Our training batch norm (<c>Ops.BatchNormTraining</c>, <c>Ops.Cpu.BatchNormCpu</c>) against libtorch's
/// <c>F.batch_norm</c> in float64 on the default model's shapes and odd ones, on one thread and two, and where it must
/// leave the call to libtorch.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class BatchNormTrainingTests : IDisposable
{
    private readonly bool _enabled = BatchNormTraining.Enabled;

    public BatchNormTrainingTests()
    {
        Torch.EnsureLoaded();
        BatchNormTraining.Enabled = true; // also under REPLKNET_BATCHNORM=libtorch: these tests are about our kernels
    }

    public void Dispose() => BatchNormTraining.Enabled = _enabled;

    [Theory]
    [InlineData(128, 32, 14, 14, true)] // the default model's shapes (batch 128)
    [InlineData(128, 64, 7, 7, true)]
    [InlineData(128, 128, 4, 4, true)]
    [InlineData(128, 256, 2, 2, true)]
    [InlineData(64, 8, 8, 8, false)] // exactly the two-thread threshold, no weight or bias
    [InlineData(3, 5, 17, 13, true)] // a tail after the 8-wide vectors in every row
    [InlineData(2, 3, 1, 1, false)]
    [InlineData(9, 1, 3, 3, true)]
    public void Training_forward_backward_and_running_statistics_match_float64(int n, int c, int h, int w, bool affine)
    {
        using var scope = NewDisposeScope();
        using var layer = new BatchNorm2d(c, momentum: 0.2, affine: affine);
        layer.train();
        var x = (randn(n, c, h, w) * 2 + 3).requires_grad_(true);
        Assert.True(BatchNormTraining.Takes(x, layer.running_mean, layer.running_var, layer.weight, layer.bias));
        Tensor? gamma = null, beta = null;
        if (affine)
        {
            gamma = rand(c) + 0.5;
            beta = randn(c);
            using (no_grad())
            {
                layer.weight!.copy_(gamma);
                layer.bias!.copy_(beta);
            }
        }

        var upstream = randn(n, c, h, w);
        var y = layer.forward(x);
        y.backward([upstream]);

        var x64 = x.detach().to(float64).requires_grad_(true);
        var g64 = gamma?.to(float64).requires_grad_(true);
        var b64 = beta?.to(float64).requires_grad_(true);
        var mean64 = zeros(c, dtype: float64);
        var var64 = ones(c, dtype: float64);
        var y64 = nn.functional.batch_norm(x64, mean64, var64, g64, b64, true, 0.2, 1e-5);
        y64.backward([upstream.to(float64)]);

        string what = $"({n}, {c}, {h}, {w}) affine {affine}";
        Close(y64, y, what + " output");
        var sigma = (x64.detach().var([0, 2, 3], unbiased: false) + 1e-5).sqrt();
        double natural = ((gamma?.to(float64).abs() ?? ones(c, dtype: float64)) / sigma).max().item<double>() * upstream.abs().max().item<float>();
        Close(x64.grad!, x.grad!, what + " input grad", natural);
        if (affine)
        {
            Close(g64!.grad!, layer.weight!.grad!, what + " weight grad");
            Close(b64!.grad!, layer.bias!.grad!, what + " bias grad");
        }

        Close(mean64, layer.running_mean!, what + " running_mean");
        Close(var64, layer.running_var!, what + " running_var");
        Assert.Equal(1, layer.num_batches_tracked!.item<long>());
    }

    [Theory]
    [InlineData(128, 32, 7, 7)]
    [InlineData(128, 128, 2, 2)]
    [InlineData(5, 6, 9, 11)]
    [InlineData(64, 8, 8, 8)]
    public void The_fused_relu_matches_batch_norm_then_relu_in_float64(int n, int c, int h, int w)
    {
        using var scope = NewDisposeScope();
        using var layer = new BatchNorm2d(c, momentum: 0.1);
        layer.train();
        var gamma = rand(c) + 0.5;
        var beta = randn(c) * 0.5;
        using (no_grad())
        {
            layer.weight!.copy_(gamma);
            layer.bias!.copy_(beta);
        }

        var x = (randn(n, c, h, w) * 2 - 1).requires_grad_(true);
        var upstream = randn(n, c, h, w);
        var y = layer.ForwardRelu(x);
        y.backward([upstream]);

        var x64 = x.detach().to(float64).requires_grad_(true);
        var g64 = gamma.to(float64).requires_grad_(true);
        var b64 = beta.to(float64).requires_grad_(true);
        var y64 = nn.functional.batch_norm(x64, zeros(c, dtype: float64), ones(c, dtype: float64), g64, b64, true, 0.1, 1e-5).relu();
        y64.backward([upstream.to(float64)]);

        string what = $"({n}, {c}, {h}, {w}) fused ReLU";
        Assert.True(y.min().item<float>() >= 0, what);
        Assert.True(y.eq(0).sum().item<long>() > 0, what + ": no element was clipped"); // the mask is exercised
        Close(y64, y, what + " output");
        var sigma = (x64.detach().var([0, 2, 3], unbiased: false) + 1e-5).sqrt();
        double natural = (gamma.to(float64).abs() / sigma).max().item<double>() * upstream.abs().max().item<float>();
        // Elements within float32 rounding of the ReLU's kink may fall on either side in the two computations.
        var nearKink = y64.detach().abs().lt(1e-5 * (y64.detach().abs().max().item<double>() + 1));
        var dx = x.grad!.to(float64).masked_fill(nearKink, 0);
        Close(x64.grad!.masked_fill(nearKink, 0), dx, what + " input grad", natural);
        Close(g64.grad!, layer.weight!.grad!, what + " weight grad");
        Close(b64.grad!, layer.bias!.grad!, what + " bias grad");
    }

    [Fact]
    public void The_fused_relu_keeps_a_nan_as_torch_relu_does()
    {
        using var scope = NewDisposeScope();
        var x = randn(16, 3, 4, 4);
        x[3, 1, 2, 2] = tensor(float.NaN);
        Tensor Run(bool ours)
        {
            BatchNormTraining.Enabled = ours;
            try
            {
                using var layer = new BatchNorm2d(3);
                layer.train();
                var input = x.clone().requires_grad_(true);
                var y = layer.ForwardRelu(input);
                y.backward([ones_like(y)]);
                Assert.True(layer.running_mean![1].isnan().item<bool>()); // the statistics see the NaN, as libtorch's do
                return y.detach();
            }
            finally
            {
                BatchNormTraining.Enabled = true;
            }
        }

        var fused = Run(true);
        var reference = Run(false);
        Assert.True(fused.isnan().equal(reference.isnan()).all().item<bool>());
        Assert.True(fused.select(1, 1).isnan().all().item<bool>()); // the whole channel, not zeros
        Assert.True(fused.select(1, 0).allclose(reference.select(1, 0), rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void A_conv_bn_relu_trains_the_same_with_the_fused_relu_and_without()
    {
        using var scope = NewDisposeScope();
        manual_seed(8);
        using var fused = new RepLKNet.Layers.ConvBn(8, 16, 1, 1, 0, 1, relu: true);
        using var plain = new RepLKNet.Layers.ConvBn(8, 16, 1, 1, 0, 1, relu: true);
        plain.load_state_dict(fused.state_dict());
        fused.train();
        plain.train();
        var x = randn(32, 8, 6, 6);
        var upstream = randn(32, 16, 6, 6);
        var xa = x.clone().requires_grad_(true);
        var xb = x.clone().requires_grad_(true);
        var ya = fused.forward(xa);
        ya.backward([upstream]);
        BatchNormTraining.Enabled = false;
        Tensor yb;
        try
        {
            yb = plain.forward(xb);
            yb.backward([upstream]);
        }
        finally
        {
            BatchNormTraining.Enabled = true;
        }

        Assert.True(ya.allclose(yb, rtol: 1e-5, atol: 1e-5));
        Assert.True(xa.grad!.allclose(xb.grad!, rtol: 1e-4, atol: 1e-5));
        Assert.True(fused.Conv.weight!.grad!.allclose(plain.Conv.weight!.grad!, rtol: 1e-4, atol: 1e-4));
        Assert.True(fused.Bn!.running_var!.allclose(plain.Bn!.running_var!, rtol: 1e-5, atol: 1e-6));
        Assert.Equal(1, fused.Bn!.num_batches_tracked!.item<long>());

        // Eval mode and no-grad keep the layer's function.
        fused.eval();
        plain.eval();
        using (no_grad())
        {
            Assert.True(fused.forward(x).allclose(plain.forward(x), rtol: 1e-6, atol: 1e-6));
        }
    }

    [Fact]
    public void One_thread_and_two_give_the_same_bits()
    {
        using var scope = NewDisposeScope();
        int saved = DepthwiseConv2d.Threads;
        try
        {
            var x = randn(64, 24, 7, 7) * 3 - 1;
            var upstream = randn(64, 24, 7, 7);
            (Tensor Y, Tensor Dx, Tensor Dw, Tensor Db, Tensor Mean, Tensor Var) Run(int threads)
            {
                DepthwiseConv2d.Threads = threads;
                using var layer = new BatchNorm2d(24);
                layer.train();
                var input = x.clone().requires_grad_(true);
                var y = layer.forward(input);
                y.backward([upstream]);
                return (y.detach(), input.grad!, layer.weight!.grad!.clone(), layer.bias!.grad!.clone(), layer.running_mean!.clone(), layer.running_var!.clone());
            }

            var one = Run(1);
            var two = Run(2);
            Assert.True(one.Y.equal(two.Y).all().item<bool>());
            Assert.True(one.Dx.equal(two.Dx).all().item<bool>());
            Assert.True(one.Dw.equal(two.Dw).all().item<bool>());
            Assert.True(one.Db.equal(two.Db).all().item<bool>());
            Assert.True(one.Mean.equal(two.Mean).all().item<bool>());
            Assert.True(one.Var.equal(two.Var).all().item<bool>());
        }
        finally
        {
            DepthwiseConv2d.Threads = saved;
        }
    }

    [Fact]
    public void Other_inputs_and_the_switch_leave_the_call_to_libtorch()
    {
        using var scope = NewDisposeScope();
        var mean = zeros(4);
        var variance = ones(4);
        Assert.False(BatchNormTraining.Takes(randn(8, 3, 3, 4).permute(0, 3, 1, 2), mean, variance, null, null));
        Assert.False(BatchNormTraining.Takes(randn(8, 4, 3, 3, dtype: float64), mean, variance, null, null));
        Assert.False(BatchNormTraining.Takes(randn(1, 4, 1, 1), mean, variance, null, null)); // one value per channel: left to libtorch, as before
        Assert.False(BatchNormTraining.Takes(randn(8, 4, 3, 3), zeros(5), variance, null, null));
        Assert.False(BatchNormTraining.Takes(randn(8, 4, 3, 3), mean, variance, ones(4, dtype: float64), null));
        Assert.True(BatchNormTraining.Takes(randn(8, 4, 3, 3), mean, variance, ones(4), zeros(4)));
        Assert.True(BatchNormTraining.Takes(randn(8, 4, 3, 3), null, null, null, null));
        BatchNormTraining.Enabled = false;
        try
        {
            Assert.False(BatchNormTraining.Takes(randn(8, 4, 3, 3), mean, variance, ones(4), zeros(4)));
        }
        finally
        {
            BatchNormTraining.Enabled = true;
        }
    }

    [Fact]
    public void Ours_and_libtorchs_path_agree_over_several_training_steps_of_a_layer()
    {
        using var scope = NewDisposeScope();
        using var ours = new BatchNorm2d(16, momentum: 0.1);
        using var theirs = new BatchNorm2d(16, momentum: 0.1);
        ours.train();
        theirs.train();
        for (int step = 0; step < 4; step++)
        {
            var x = randn(32, 16, 5, 5) * (step + 1) + step;
            var up = randn(32, 16, 5, 5);
            var xa = x.clone().requires_grad_(true);
            var xb = x.clone().requires_grad_(true);
            ours.forward(xa).backward([up]);
            BatchNormTraining.Enabled = false;
            try
            {
                theirs.forward(xb).backward([up]);
            }
            finally
            {
                BatchNormTraining.Enabled = true;
            }

            Assert.True(xa.grad!.allclose(xb.grad!, rtol: 1e-4, atol: 1e-5), $"step {step} input grad");
            Assert.True(ours.weight!.grad!.allclose(theirs.weight!.grad!, rtol: 1e-4, atol: 1e-4), $"step {step} weight grad");
            Assert.True(ours.running_var!.allclose(theirs.running_var!, rtol: 1e-5, atol: 1e-6), $"step {step} running_var");
            Assert.True(ours.running_mean!.allclose(theirs.running_mean!, rtol: 1e-5, atol: 1e-6), $"step {step} running_mean");
        }

        Assert.Equal(4, ours.num_batches_tracked!.item<long>());
    }

    private static void Close(Tensor expected, Tensor actual, string what, double naturalScale = 1.0)
    {
        var e = expected.detach().to(float64);
        double scale = Math.Max(e.abs().max().item<double>(), naturalScale);
        double diff = (e - actual.detach().to(float64)).abs().max().item<double>();
        Assert.True(diff <= 1e-5 * scale, $"{what}: max abs diff {diff:E3}, scale {scale:E3}");
    }
}
