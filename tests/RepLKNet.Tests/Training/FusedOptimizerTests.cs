using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

/// <summary>
/// The fused CPU pass of AdamW and the EMA (<c>Ops.Cpu.OptimizerCpu</c>) against a float64 evaluation of the same formulas,
/// against TorchSharp's own AdamW step, and against itself on another thread count.
/// </summary>
[Collection(SerialTests.Name)]
public sealed class FusedOptimizerTests : IDisposable
{
    private readonly bool _fused = AdamWStep.UseFused;

    public FusedOptimizerTests()
    {
        Torch.EnsureLoaded();
        AdamWStep.UseFused = true; // also under REPLKNET_FUSED_OPTIMIZER=0: these tests are about the fused pass
    }

    public void Dispose() => AdamWStep.UseFused = _fused;

    // Sizes on both sides of the vector width (8), the piece (16384) and the parallel threshold (65536 in all).
    private static readonly long[][] Shapes = [[8, 4, 3, 3], [8], [5, 7], [3], [70001], [129, 131]];

    private static Parameter[] Make(int seed) =>
        [.. Shapes.Select((s, i) => new Parameter(randn(s, generator: new Generator((ulong)(seed + i)))))];

    private static AdamW Optimizer(Parameter[] p) => optim.AdamW(
        [
            new AdamW.ParamGroup(p[..2], new AdamW.Options { LearningRate = 3e-3, weight_decay = 0.05 }),
            new AdamW.ParamGroup(p[2..4], new AdamW.Options { LearningRate = 1e-3, weight_decay = 0, beta1 = 0.8, eps = 1e-6 }),
            new AdamW.ParamGroup(p[4..], new AdamW.Options { LearningRate = 2e-2, weight_decay = 0.1, beta2 = 0.99 }),
        ], 3e-3, 0.9, 0.999, 1e-8, 0.05);

    /// <summary>Random gradients of step <paramref name="step"/>; parameter 3 gets none at step 2 (it must stay as it is).</summary>
    private static Tensor?[] Gradients(int step)
    {
        var g = new Generator((ulong)(1000 + step));
        return [.. Shapes.Select((s, i) => step == 2 && i == 3 ? null : randn(s, generator: g) * (i + 1))];
    }

    [Fact]
    public void Fused_AdamW_matches_a_float64_evaluation_and_TorchSharps_step_to_float32_rounding()
    {
        using var scope = NewDisposeScope();
        var ours = Make(100);
        var theirs = Make(100);
        var a = Optimizer(ours);
        var b = Optimizer(theirs);
        // The float64 reference: parameters, first and second moments, each parameter's step count.
        var p64 = ours.Select(p => p.detach().to(float64)).ToArray();
        var m64 = ours.Select(p => zeros_like(p, dtype: float64)).ToArray();
        var v64 = ours.Select(p => zeros_like(p, dtype: float64)).ToArray();
        var steps = new int[Shapes.Length];
        (double Lr, double B1, double B2, double Eps, double Wd)[] hyper =
            [(3e-3, 0.9, 0.999, 1e-8, 0.05), (3e-3, 0.9, 0.999, 1e-8, 0.05), (1e-3, 0.8, 0.999, 1e-6, 0), (1e-3, 0.8, 0.999, 1e-6, 0),
                (2e-2, 0.9, 0.99, 1e-8, 0.1), (2e-2, 0.9, 0.99, 1e-8, 0.1)];
        for (int step = 0; step < 8; step++)
        {
            var grads = Gradients(step);
            for (int i = 0; i < Shapes.Length; i++)
            {
                // No new gradient: what zero_grad left (zeros, or none: then the parameter is not updated).
                var grad = grads[i] ?? (ours[i].grad is { } left ? left.clone() : null);
                if (grad is null)
                {
                    continue;
                }

                ours[i].grad = grad.clone();
                theirs[i].grad = grad.clone();
                var (lr, b1, b2, eps, wd) = hyper[i];
                int t = ++steps[i];
                var g64 = grad.to(float64);
                p64[i] = p64[i] * (1 - lr * wd);
                m64[i] = m64[i] * b1 + g64 * (1 - b1);
                v64[i] = v64[i] * b2 + g64 * g64 * (1 - b2);
                var denominator = v64[i].sqrt() / Math.Sqrt(1 - Math.Pow(b2, t)) + eps;
                p64[i] = p64[i] - m64[i] / denominator * (lr / (1 - Math.Pow(b1, t)));
            }

            AdamWStep.Apply(a);
            b.step();
            a.zero_grad();
            b.zero_grad();
            for (int i = 0; i < Shapes.Length; i++)
            {
                // Each element's update is at most lr·(1 + rounding); its float32 error is a few units of the parameter's
                // last place, and the float64 reference carries none of it.
                double scale = ours[i].abs().max().item<float>() + 1;
                double toReference = (ours[i].to(float64) - p64[i]).abs().max().item<double>();
                double toTorchSharp = (ours[i] - theirs[i]).abs().max().item<float>();
                Assert.True(toReference < 4e-7 * scale, $"parameter {i}, step {step + 1}: {toReference:E2} from float64");
                Assert.True(toTorchSharp < 4e-7 * scale, $"parameter {i}, step {step + 1}: {toTorchSharp:E2} from TorchSharp's step");
            }
        }

        var state = (AdamW.State)a.state_dict().State[4];
        Assert.Equal(8, state.step);
        Assert.True((state.exp_avg.to(float64) - m64[4]).abs().max().item<double>() < 1e-5);
    }

    [Fact]
    public void Fused_AdamW_gives_the_same_bits_on_one_thread_and_on_two()
    {
        using var scope = NewDisposeScope();
        int saved = DepthwiseConv2d.Threads;
        try
        {
            Parameter[] Run(int threads)
            {
                DepthwiseConv2d.Threads = threads;
                var p = Make(7);
                var o = Optimizer(p);
                for (int step = 0; step < 3; step++)
                {
                    var grads = Gradients(step);
                    for (int i = 0; i < p.Length; i++)
                    {
                        p[i].grad = grads[i];
                    }

                    AdamWStep.Apply(o);
                    o.zero_grad();
                }

                return p;
            }

            var one = Run(1);
            var two = Run(2);
            for (int i = 0; i < one.Length; i++)
            {
                Assert.True(one[i].equal(two[i]).all().item<bool>(), $"parameter {i}");
            }
        }
        finally
        {
            DepthwiseConv2d.Threads = saved;
        }
    }

    [Fact]
    public void Fused_AdamW_leaves_non_contiguous_and_float64_parameters_to_libtorchs_ops()
    {
        using var scope = NewDisposeScope();
        // A transposed (non-contiguous) float32 parameter and a float64 one, next to a plain one.
        var strided = new Parameter(randn(6, 5, generator: new Generator(3)).t());
        var wide = new Parameter(randn(9, dtype: float64, generator: new Generator(4)));
        var plain = new Parameter(randn(9, generator: new Generator(5)));
        Parameter[] ours = [strided, wide, plain];
        Parameter[] theirs = [.. ours.Select(p => new Parameter(p.detach().clone()))];
        Assert.False(strided.is_contiguous());
        var a = optim.AdamW(ours, 1e-2, 0.9, 0.999, 1e-8, 0.05);
        var b = optim.AdamW(theirs, 1e-2, 0.9, 0.999, 1e-8, 0.05);
        for (int step = 0; step < 3; step++)
        {
            for (int i = 0; i < 3; i++)
            {
                var grad = randn(ours[i].shape, dtype: ours[i].dtype, generator: new Generator((ulong)(50 + 3 * step + i)));
                ours[i].grad = grad;
                theirs[i].grad = grad.clone();
            }

            AdamWStep.Apply(a);
            b.step();
        }

        // The libtorch path is TorchSharp's step to the bit; the fused one (plain) to float32 rounding.
        Assert.True(ours[0].equal(theirs[0]).all().item<bool>());
        Assert.True(ours[1].equal(theirs[1]).all().item<bool>());
        Assert.True(ours[2].allclose(theirs[2], rtol: 1e-6, atol: 1e-7));
    }

    [Fact]
    public void Fused_Ema_matches_a_float64_evaluation_and_the_libtorch_path()
    {
        using var scope = NewDisposeScope();
        var config = new RepLKNetConfig { LargeKernelSizes = [5, 3], Layers = [1, 1], Channels = [16, 32], SmallKernel = 3, NumClasses = 3 };
        var model = new RepLKNetModel(config);
        var fusedEma = new ModelEma(model, new RepLKNetModel(config), decay: 0.97);
        var opsEma = new ModelEma(model, new RepLKNetModel(config), decay: 0.97);
        var reference = StateDicts.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value.detach().to(float64));
        var g = new Generator(21);
        for (int update = 0; update < 4; update++)
        {
            using (no_grad())
            {
                foreach (var (key, tensor) in StateDicts.Ordered(model))
                {
                    if (tensor.is_floating_point())
                    {
                        tensor.copy_(randn(tensor.shape, generator: g));
                        reference[key] = reference[key] * 0.97 + tensor.to(float64) * (1 - 0.97);
                    }
                }
            }

            fusedEma.Update(model);
            AdamWStep.UseFused = false;
            try
            {
                opsEma.Update(model);
            }
            finally
            {
                AdamWStep.UseFused = true;
            }
        }

        var fused = StateDicts.Ordered(fusedEma.Average).ToDictionary();
        var ops = StateDicts.Ordered(opsEma.Average).ToDictionary();
        foreach (var (key, expected) in reference)
        {
            if (!fused[key].is_floating_point())
            {
                continue;
            }

            double error = (fused[key].to(float64) - expected).abs().max().item<double>();
            Assert.True(error < 1e-6, $"{key}: {error:E2} from float64");
            Assert.True(fused[key].allclose(ops[key], rtol: 0, atol: 1e-6), key);
        }
    }
}
