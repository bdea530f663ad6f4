using System.Runtime.Intrinsics.X86;
using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>A fact that needs AVX-512 (the blocked kernels' only instruction set); skipped with the reason elsewhere.</summary>
public sealed class Avx512FactAttribute : FactAttribute
{
    public Avx512FactAttribute()
    {
        if (!Avx512F.IsSupported)
        {
            Skip = "no AVX-512 on this CPU: the blocked depthwise kernels never run here";
        }
    }
}

/// <summary>
/// The channel-blocked AVX-512 kernels (<see cref="DepthwiseConvBlocked"/>) against libtorch's conv2d and its autograd in
/// float64: called directly on every shape class the tiles have (maps narrower than one 8-column tile, rows where the
/// two padding triangles overlap — for the 12-wide tile too, with K &gt; 2W —, 12- and 8-wide tiles side by side, widths
/// off 8 and 16, K from 1 to 53 and larger than the map, 1–3 threads), and through
/// the public op where the dispatch picks them. Skipped where the CPU has no AVX-512.
/// </summary>
[Collection(SerialTests.Name)] // switches DepthwiseConvBlocked.Enabled and the kernel thread count, process-wide
public sealed unsafe class DepthwiseConvBlockedTests
{
    public DepthwiseConvBlockedTests() => Torch.EnsureLoaded();

    [Avx512Fact]
    public void Forward_input_and_weight_gradients_match_libtorch_on_every_tile_shape()
    {
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        manual_seed(seed);
        var cases = new List<(int N, int C, int H, int W, int K, int Threads)>
        {
            (1, 16, 1, 1, 3, 1), (2, 16, 3, 5, 31, 2), (1, 32, 7, 7, 13, 3), (2, 16, 8, 8, 1, 2), (1, 16, 9, 15, 9, 1),
            (2, 32, 16, 16, 31, 2), (1, 16, 32, 32, 31, 2), (1, 48, 14, 14, 27, 3), (2, 16, 28, 28, 29, 2),
            (1, 16, 17, 40, 5, 2), (1, 16, 40, 17, 7, 1), (2, 16, 33, 31, 31, 2), (1, 16, 12, 24, 3, 2),
            (1, 16, 17, 17, 41, 2), (1, 32, 20, 18, 53, 2), (1, 16, 56, 56, 31, 2), (2, 16, 19, 29, 17, 1),
        };
        for (int i = 0; i < 10; i++)
        {
            cases.Add((rng.Next(1, 4), 16 * rng.Next(1, 4), rng.Next(1, 41), rng.Next(1, 41), 2 * rng.Next(0, 16) + 1, rng.Next(1, 4)));
        }

        foreach (var (n, c, h, w, k, threads) in cases)
        {
            using var scope = NewDisposeScope();
            string what = $"N={n} C={c} H={h} W={w} K={k} threads={threads} (seed {seed})";
            var x = randn(n, c, h, w);
            var weight = randn(c, 1, k, k);
            var bias = randn(c);
            var upstream = randn(n, c, h, w);
            var x64 = x.to(float64).requires_grad_(true);
            var w64 = weight.to(float64).requires_grad_(true);
            var y64 = nn.functional.conv2d(x64, w64, bias.to(float64), padding: [k / 2, k / 2], groups: c);
            y64.backward([upstream.to(float64)]);

            var y = empty(n, c, h, w);
            var dx = empty(n, c, h, w);
            var dw = full(c, 1, k, k, float.NaN);
            fixed (byte* px = x.bytes, pw = weight.bytes, pb = bias.bytes, pg = upstream.bytes, py = y.bytes, pdx = dx.bytes, pdw = dw.bytes)
            {
                DepthwiseConvBlocked.Convolve((float*)px, (float*)pw, (float*)pb, (float*)py, n, c, h, w, k, rotate: false, threads);
                DepthwiseConvBlocked.Convolve((float*)pg, (float*)pw, null, (float*)pdx, n, c, h, w, k, rotate: true, threads);
                DepthwiseConvBlocked.WeightGrad((float*)px, (float*)pg, (float*)pdw, n, c, h, w, k, threads);
            }

            DepthwiseConvTests.AssertClose(y64, y, what + " forward");
            DepthwiseConvTests.AssertClose(x64.grad!, dx, what + " input-grad");
            DepthwiseConvTests.AssertClose(w64.grad!, dw, what + " weight-grad");
        }
    }

    [Avx512Fact]
    public void The_public_op_runs_the_blocked_kernels_where_the_rules_say_and_matches_the_row_kernels()
    {
        Assert.True(DepthwiseConvBlocked.ConvApplies(CpuIsa.Vector512, 32, 32, 32, 31));
        Assert.True(DepthwiseConvBlocked.WeightGradApplies(CpuIsa.Vector512, 32, 14, 14, 27));
        Assert.False(DepthwiseConvBlocked.ConvApplies(CpuIsa.Vector256, 32, 32, 32, 31));
        Assert.False(DepthwiseConvBlocked.ConvApplies(CpuIsa.Vector512, 24, 32, 32, 31));
        Assert.False(DepthwiseConvBlocked.ConvApplies(CpuIsa.Vector512, 32, 32, 32, 7));
        Assert.False(DepthwiseConvBlocked.WeightGradApplies(CpuIsa.Vector512, 32, 7, 7, 13));
        // Where libtorch's direct forward would run, the blocked kernels take over on 16-multiple widths only.
        Assert.True(CpuDepthwise.ForwardOnLibtorch(CpuIsa.Vector512, 16, 16, 13));
        Assert.True(CpuDepthwise.BlockedBeatsLibtorch(CpuIsa.Vector512, 32, 16, 16, 13));
        Assert.True(CpuDepthwise.BlockedBeatsLibtorch(CpuIsa.Vector512, 32, 16, 16, 5));
        Assert.False(CpuDepthwise.BlockedBeatsLibtorch(CpuIsa.Vector512, 32, 14, 14, 13));
        Assert.False(CpuDepthwise.BlockedBeatsLibtorch(CpuIsa.Vector512, 24, 16, 16, 13));
        Assert.False(CpuDepthwise.BlockedBeatsLibtorch(CpuIsa.Vector256, 32, 16, 16, 13));

        using var scopedIsa = DepthwiseConv2d.UseIsa(CpuIsa.Vector512);
        // Two 16-channel blocks: the blocked weight gradient needs at least as many blocks as threads.
        int threads = DepthwiseConv2d.Threads;
        DepthwiseConv2d.Threads = 2;
        try
        {
            CompareWithRowKernels();
        }
        finally
        {
            DepthwiseConv2d.Threads = threads;
        }
    }

    private static void CompareWithRowKernels()
    {
        foreach (var (h, k) in new[] { (32, 31), (14, 27), (16, 5) })
        {
            using var scope = NewDisposeScope();
            var x = randn(2, 32, h, h).requires_grad_(true);
            var weight = randn(32, 1, k, k).requires_grad_(true);
            var upstream = randn(2, 32, h, h);
            var results = new List<Tensor[]>();
            foreach (bool blocked in new[] { true, false })
            {
                DepthwiseConvBlocked.Enabled = blocked;
                try
                {
                    var y = DepthwiseConv2d.Forward(x, weight, null);
                    var grads = torch.autograd.grad([y], [x, weight], [upstream]);
                    results.Add([y.detach(), grads[0], grads[1]]);
                }
                finally
                {
                    DepthwiseConvBlocked.Enabled = true;
                }
            }

            for (int i = 0; i < 3; i++)
            {
                DepthwiseConvTests.AssertClose(results[1][i], results[0][i], $"R {h} K {k} output {i}");
            }

            // Another summation order than the row kernels': equal to rounding, not bit for bit (so the switch did switch).
            Assert.True(results[1][2].sub(results[0][2]).abs().max().item<float>() > 0, $"R {h} K {k}: identical weight gradients");
        }
    }
}
