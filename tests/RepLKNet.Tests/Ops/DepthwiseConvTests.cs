using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>Our CPU depthwise conv against libtorch's conv2d (float64 where the sums are long).</summary>
public sealed class DepthwiseConvTests
{
    public DepthwiseConvTests() => Torch.EnsureLoaded();

    /// <summary>The vector instruction sets this machine runs: the dispatch rules differ between them.</summary>
    public static TheoryData<string> VectorIsas => [.. new[] { CpuIsa.Vector512, CpuIsa.Vector256 }.Where(CpuIsas.IsSupported).Select(i => i.ToString())];

    [Theory]
    [MemberData(nameof(VectorIsas))]
    public void The_dispatch_takes_the_measured_routes_and_each_matches_libtorch(string isaName)
    {
        var isa = Enum.Parse<CpuIsa>(isaName);
        using var scopedIsa = DepthwiseConv2d.UseIsa(isa);
        Assert.Equal(isa, CpuDepthwise.RuleIsa);
        bool wide = isa == CpuIsa.Vector512;

        // The measured crossovers (docs/perf-notes.md, "Table 1 on AVX2 and AVX-512"). libtorch's forward is direct up to
        // K 13 on AVX-512 and K 9 on AVX2 (and K/2 ≤ H, W); past that it is a GEMM, never taken.
        Assert.Equal(wide, CpuDepthwise.LibtorchForwardIsDirect(isa, 16, 16, 13));
        Assert.True(CpuDepthwise.LibtorchForwardIsDirect(isa, 16, 16, 9));
        Assert.False(CpuDepthwise.LibtorchForwardIsDirect(isa, 4, 4, 13));
        Assert.True(CpuDepthwise.LibtorchForwardIsDirect(isa, 2, 2, 5));
        Assert.False(CpuDepthwise.LibtorchForwardIsDirect(isa, 64, 64, 17));
        Assert.True(CpuDepthwise.ForwardOnLibtorch(isa, 16, 16, 9));
        Assert.Equal(wide, CpuDepthwise.ForwardOnLibtorch(isa, 16, 16, 13));
        Assert.Equal(wide, CpuDepthwise.ForwardOnLibtorch(isa, 7, 7, 13));
        Assert.False(CpuDepthwise.ForwardOnLibtorch(isa, 21, 8, 3));
        Assert.False(CpuDepthwise.ForwardOnLibtorch(isa, 32, 32, 3));
        Assert.False(CpuDepthwise.ForwardOnLibtorch(isa, 16, 16, 17));

        // Tiny maps (≤ 12 on AVX-512, ≤ 8 on AVX2): libtorch's input gradient for K ≤ 13, and at K = 3 (maps of at least
        // 3×3, where its weight gradient is direct) the whole tracked call. Table 1's R 16 keeps ours.
        Assert.True(CpuDepthwise.InputGradOnLibtorch(isa, 7, 7, 13));
        Assert.True(CpuDepthwise.InputGradOnLibtorch(isa, 8, 8, 3));
        Assert.Equal(wide, CpuDepthwise.InputGradOnLibtorch(isa, 12, 10, 9));
        Assert.False(CpuDepthwise.InputGradOnLibtorch(isa, 13, 13, 3));
        Assert.False(CpuDepthwise.InputGradOnLibtorch(isa, 16, 16, 5));
        Assert.False(CpuDepthwise.InputGradOnLibtorch(isa, 7, 7, 15));
        Assert.True(CpuDepthwise.TrainingOnLibtorch(isa, 4, 4, 3));
        Assert.True(CpuDepthwise.TrainingOnLibtorch(isa, 8, 3, 3));
        Assert.False(CpuDepthwise.TrainingOnLibtorch(isa, 2, 2, 3));
        Assert.Equal(wide, CpuDepthwise.TrainingOnLibtorch(isa, 12, 10, 3));
        Assert.False(CpuDepthwise.TrainingOnLibtorch(isa, 16, 16, 3));
        Assert.False(CpuDepthwise.TrainingOnLibtorch(isa, 7, 7, 5));

        // Shapes on both sides of each crossover, N = 2, C = 3 (odd widths included): forward, input gradient and weight
        // gradient through autograd, each bit-identical to the route the rules pick and close to libtorch in float64.
        var generator = new Generator((ulong)Environment.TickCount);
        foreach (var (h, w, k) in new[]
        {
            (2, 2, 3), (2, 2, 5), (4, 4, 3), (4, 4, 9), (4, 4, 13), (7, 7, 13), (8, 8, 13), (9, 9, 3), (12, 10, 3), (12, 12, 13),
            (13, 13, 5), (14, 14, 3), (16, 16, 3), (16, 16, 9), (16, 16, 13), (16, 16, 17), (16, 16, 31), (20, 17, 13), (21, 21, 5),
            (24, 24, 13), (32, 32, 3), (32, 31, 13), (33, 33, 3),
        })
        {
            CheckRoute(isa, h, w, k, generator);
        }
    }

    [Theory]
    [MemberData(nameof(VectorIsas))]
    public void With_a_frozen_weight_small_kernels_on_avx512_maps_up_to_20_go_to_libtorch_whole_and_match_it(string isaName)
    {
        var isa = Enum.Parse<CpuIsa>(isaName);
        using var scopedIsa = DepthwiseConv2d.UseIsa(isa);
        bool wide = isa == CpuIsa.Vector512;
        Assert.Equal(wide, CpuDepthwise.InputGradientOnlyOnLibtorch(isa, 16, 16, 3));
        Assert.Equal(wide, CpuDepthwise.InputGradientOnlyOnLibtorch(isa, 20, 17, 9));
        Assert.False(CpuDepthwise.InputGradientOnlyOnLibtorch(isa, 16, 16, 13));
        Assert.False(CpuDepthwise.InputGradientOnlyOnLibtorch(isa, 21, 21, 5));
        Assert.False(CpuDepthwise.InputGradientOnlyOnLibtorch(isa, 32, 32, 3));

        var generator = new Generator((ulong)Environment.TickCount);
        foreach (var (h, k) in new[] { (16, 5), (16, 13), (20, 9), (24, 5) })
        {
            using var scope = NewDisposeScope();
            string what = $"{isa} {h}×{h} K={k}";
            var x = randn([2, 3, h, h], generator: generator).requires_grad_(true);
            var frozen = randn([3, 1, k, k], generator: generator);
            var trained = frozen.clone().requires_grad_(true);
            var bias = randn([3], generator: generator);
            bool libtorchWhole = CpuDepthwise.InputGradientOnlyOnLibtorch(isa, h, h, k);
            Assert.Equal(libtorchWhole, DepthwiseConv2d.Select(x, frozen, bias, tracked: true) is null);
            Assert.NotNull(DepthwiseConv2d.Select(x, trained, bias, tracked: true));

            // Input gradient only: whichever route, the values are libtorch's in float64 to float rounding.
            var y = DepthwiseConv2d.Forward(x, frozen, bias);
            var upstream = randn([2, 3, h, h], generator: generator);
            var dx = torch.autograd.grad([y], [x], [upstream])[0];
            DepthwiseConv2d.ReleaseBackwardOutputs();
            var x64 = x.detach().to(float64).requires_grad_(true);
            var y64 = nn.functional.conv2d(x64, frozen.to(float64), bias.to(float64), padding: [k / 2, k / 2], groups: 3);
            var dx64 = torch.autograd.grad([y64], [x64], [upstream.to(float64)])[0];
            AssertClose(y64, y, what + " forward");
            AssertClose(dx64, dx, what + " input-grad");
        }
    }

    private static void CheckRoute(CpuIsa isa, int h, int w, int k, Generator generator)
    {
        using var scope = NewDisposeScope();
        const int n = 2, c = 3;
        string what = $"{isa} {h}×{w} K={k}";
        var x = randn([n, c, h, w], generator: generator).requires_grad_(true);
        var weight = randn([c, 1, k, k], generator: generator).requires_grad_(true);
        var upstream = randn([n, c, h, w], generator: generator);
        var y = DepthwiseConv2d.Forward(x, weight);
        var grads = torch.autograd.grad([y], [x, weight], [upstream]);
        DepthwiseConv2d.ReleaseBackwardOutputs();

        // The route's own results.
        Tensor yRoute, dxRoute, dwRoute;
        if (CpuDepthwise.TrainingOnLibtorch(isa, h, w, k))
        {
            Assert.Null(DepthwiseConv2d.Select(x, weight, null, tracked: true));
            var xt = x.detach().requires_grad_(true);
            var wt = weight.detach().requires_grad_(true);
            yRoute = nn.functional.conv2d(xt, wt, padding: [k / 2, k / 2], groups: c);
            var torchGrads = torch.autograd.grad([yRoute], [xt, wt], [upstream]);
            (dxRoute, dwRoute) = (torchGrads[0], torchGrads[1]);
        }
        else
        {
            Assert.Same(CpuDepthwise.Kernels, DepthwiseConv2d.Select(x, weight, null, tracked: true));
            using var noGrad = no_grad();
            var xd = x.detach();
            var wd = weight.detach();
            yRoute = CpuDepthwise.ForwardOnLibtorch(isa, h, w, k) ? nn.functional.conv2d(xd, wd, padding: [k / 2, k / 2], groups: c) : CpuDepthwise.ForwardRaw(xd, wd, null);
            dxRoute = CpuDepthwise.InputGradOnLibtorch(isa, h, w, k)
                ? CpuDepthwise.LibtorchInputGrad(upstream, wd, CpuDepthwise.LibtorchForwardIsDirect(isa, h, w, k))
                : CpuDepthwise.InputGradRaw(upstream, wd);
            dwRoute = CpuDepthwise.WeightGrad(xd, upstream, k);
        }

        Assert.True(y.detach().eq(yRoute).all().item<bool>(), what + ": forward is the route's");
        Assert.True(grads[0].eq(dxRoute).all().item<bool>(), what + ": input grad is the route's");
        Assert.True(grads[1].eq(dwRoute).all().item<bool>(), what + ": weight grad is the route's");

        // Reference: libtorch's conv2d in float64 on the same values.
        var x64 = x.detach().to(float64).requires_grad_(true);
        var w64 = weight.detach().to(float64).requires_grad_(true);
        var y64 = nn.functional.conv2d(x64, w64, padding: [k / 2, k / 2], groups: c);
        var grads64 = torch.autograd.grad([y64], [x64, w64], [upstream.to(float64)]);
        AssertClose(y64, y, what + " forward");
        AssertClose(grads64[0], grads[0], what + " input-grad");
        AssertClose(grads64[1], grads[1], what + " weight-grad");
    }

    public static TheoryData<string> Isas => [.. CpuIsas.Supported.Select(i => i.ToString())];

    [Theory]
    [MemberData(nameof(Isas))]
    public void Forward_and_all_gradients_match_libtorch_over_a_random_sweep(string isaName)
    {
        var isa = Enum.Parse<CpuIsa>(isaName);
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        // Fixed corner cases first, then random shapes: 1×1 maps, K > H, H ≠ W, widths off the vector length, N = C = 1.
        var cases = new List<(int N, int C, int H, int W, int K, bool Bias)>
        {
            (1, 1, 1, 1, 3, true), (1, 1, 1, 1, 31, false), (2, 3, 7, 7, 13, true), (1, 2, 5, 9, 27, true), (3, 1, 17, 8, 5, false),
            (1, 4, 33, 31, 31, true), (2, 2, 16, 16, 3, false), (1, 1, 2, 40, 9, true), (2, 5, 14, 14, 63, false),
        };
        for (int i = 0; i < 8; i++)
        {
            int k = 2 * rng.Next(1, 18) + 1;
            cases.Add((rng.Next(1, 4), rng.Next(1, 6), rng.Next(1, 40), rng.Next(1, 40), k, rng.Next(2) == 0));
        }

        using var scopedIsa = DepthwiseConv2d.UseIsa(isa);
        foreach (var (n, c, h, w, k, hasBias) in cases)
        {
            CheckCase(n, c, h, w, k, hasBias, seed, isa);
        }
    }

    [Theory]
    [MemberData(nameof(Isas))]
    public void The_k3_weight_gradient_matches_libtorch_at_widths_off_the_vector_length(string isaName)
    {
        // K = 3 has its own kernel (vectors along x over a zero-padded copy of the output gradient); the dispatch sends
        // small K = 3 maps to libtorch whole, so call the kernel directly, on both channel splits (C ≥ 2·threads and C = 1).
        using var scopedIsa = DepthwiseConv2d.UseIsa(Enum.Parse<CpuIsa>(isaName));
        var generator = new Generator((ulong)Environment.TickCount);
        foreach (var (n, c, h, w) in new[] { (2, 5, 1, 1), (3, 4, 5, 7), (2, 6, 12, 12), (1, 5, 9, 17), (2, 4, 23, 31), (2, 1, 33, 40), (1, 8, 16, 64) })
        {
            using var scope = NewDisposeScope();
            var x = randn([n, c, h, w], generator: generator);
            var upstream = randn([n, c, h, w], generator: generator);
            var dw = CpuDepthwise.WeightGrad(x, upstream, 3);
            var w64 = zeros([c, 1, 3, 3], dtype: float64).requires_grad_(true);
            var y64 = nn.functional.conv2d(x.to(float64), w64, padding: [1, 1], groups: c);
            var expected = torch.autograd.grad([y64], [w64], [upstream.to(float64)])[0];
            AssertClose(expected, dw, $"{isaName} N={n} C={c} {h}×{w}");
        }
    }

    /// <summary>
    /// Our forward and input-gradient kernels themselves (not the dispatch, which sends some tiny maps to libtorch), on
    /// every register-tile shape: widths around one and two vector lengths (the 4 × 2, 4 × 1 and 8 × 1 tiles), heights
    /// off the 4- and 8-row blocks, kernels of the direct tap loop (K ≤ 5) and of the row band, K larger than the map.
    /// </summary>
    [Theory]
    [MemberData(nameof(Isas))]
    public void The_raw_kernels_match_libtorch_on_every_tile_shape(string isaName)
    {
        var isa = Enum.Parse<CpuIsa>(isaName);
        int vl = isa switch { CpuIsa.Vector512 => 16, CpuIsa.Vector256 => 8, _ => 1 };
        int[] widths = [.. new[] { 1, vl - 1, vl, vl + 1, 2 * vl, 2 * vl + 3 }.Where(v => v >= 1).Distinct()];
        int[] heights = [1, 5, 8, 9, 12, 13, 14];
        int[] kernels = [3, 5, 7, 13, 27];
        int seed = Environment.TickCount;
        manual_seed(seed);
        using var scopedIsa = DepthwiseConv2d.UseIsa(isa);
        foreach (int w in widths)
        {
            foreach (int h in heights)
            {
                foreach (int k in kernels)
                {
                    using var scope = NewDisposeScope();
                    string what = $"{isa} N=2 C=3 H={h} W={w} K={k} (seed {seed})";
                    var x = randn(2, 3, h, w);
                    var weight = randn(3, 1, k, k);
                    var bias = randn(3);
                    var upstream = randn(2, 3, h, w);
                    var x64 = x.to(float64).requires_grad_(true);
                    var y64 = nn.functional.conv2d(x64, weight.to(float64), bias.to(float64), padding: [k / 2, k / 2], groups: 3);
                    y64.backward([upstream.to(float64)]);
                    AssertClose(y64, CpuDepthwise.ForwardRaw(x, weight, bias), what + " forward");
                    AssertClose(x64.grad!, CpuDepthwise.InputGradRaw(upstream, weight), what + " input-grad");
                }
            }
        }
    }

    private static void CheckCase(int n, int c, int h, int w, int k, bool hasBias, int seed, CpuIsa isa)
    {
        using var scope = NewDisposeScope();
        string what = $"{isa} N={n} C={c} H={h} W={w} K={k} bias={hasBias} (seed {seed})";
        var x = randn(n, c, h, w).requires_grad_(true);
        var weight = randn(c, 1, k, k).requires_grad_(true);
        var bias = hasBias ? randn(c).requires_grad_(true) : null;
        var upstream = randn(n, c, h, w);
        Assert.True(DepthwiseConv2d.Fits(x, weight, bias), what);

        var y = DepthwiseConv2d.Forward(x, weight, bias);
        y.backward([upstream]);

        // Reference: libtorch's conv2d in float64 on the same values.
        var x64 = x.detach().to(float64).requires_grad_(true);
        var w64 = weight.detach().to(float64).requires_grad_(true);
        var b64 = bias?.detach().to(float64).requires_grad_(true);
        var y64 = nn.functional.conv2d(x64, w64, b64, padding: [k / 2, k / 2], groups: c);
        y64.backward([upstream.to(float64)]);

        AssertClose(y64, y, what + " forward");
        AssertClose(x64.grad!, x.grad!, what + " input-grad");
        // The weight and bias gradients are sums over N·H·W products that cancel: a float32 sum's error is bounded by the
        // sum of its terms' magnitudes (γₙ Σ|tᵢ|), not by the result, so they are judged against Σ|tᵢ| — in float64, the
        // same gradients of |x| and |upstream|.
        var wAbs = zeros([c, 1, k, k], dtype: float64).requires_grad_(true);
        var yAbs = nn.functional.conv2d(x.detach().abs().to(float64), wAbs, padding: [k / 2, k / 2], groups: c);
        var weightTerms = torch.autograd.grad([yAbs], [wAbs], [upstream.abs().to(float64)])[0];
        AssertCloseToSum(w64.grad!, weight.grad!, weightTerms, what + " weight-grad");
        if (hasBias)
        {
            AssertCloseToSum(b64!.grad!, bias!.grad!, upstream.abs().to(float64).sum([0, 2, 3]), what + " bias-grad");
        }
    }

    /// <summary>
    /// A float32 reduction against its float64 reference, element by element, where <paramref name="magnitudes"/> holds
    /// Σ|tᵢ| of each element's terms: the error of any summation order is at most ~n·u·Σ|tᵢ| and in practice ~u·Σ|tᵢ|
    /// (u = 6e-8), so 1e-6 of each element's own Σ|tᵢ| allows ~16 u while one missing or wrong term is far above it.
    /// </summary>
    internal static void AssertCloseToSum(Tensor expected, Tensor actual, Tensor magnitudes, string what)
    {
        using var scope = NewDisposeScope();
        var bound = magnitudes.to(float64).mul(1e-6).add(1e-30);
        var ratio = expected.to(float64).sub(actual.to(float64)).abs().div(bound);
        double worst = ratio.max().item<double>();
        Assert.True(worst <= 1, $"{what}: an element is off by {worst:F2}× its bound of 1e-6 Σ|terms| (index {ratio.argmax().item<long>()} of the flattened tensor)");
    }

    [Fact]
    public void Finite_differences_agree_with_the_analytic_gradients_in_float64_terms()
    {
        // Our kernels are float32: check d(loss)/dθ against central differences of our own forward, on a tiny case
        // with a step large enough for float32 but small enough for the (linear) op: the conv is linear, so the only
        // error is rounding.
        using var scope = NewDisposeScope();
        var rng = new Random(Environment.TickCount);
        int n = 1, c = 2, h = 4, w = 5, k = 5;
        var x = randn(n, c, h, w).requires_grad_(true);
        var weight = randn(c, 1, k, k).requires_grad_(true);
        var bias = randn(c).requires_grad_(true);
        var g = randn(n, c, h, w);
        float Loss() { using var s = NewDisposeScope(); using var ng = no_grad(); return (DepthwiseConv2d.Forward(x, weight, bias) * g).sum().item<float>(); }

        DepthwiseConv2d.Forward(x, weight, bias).mul(g).sum().backward();
        const float eps = 1e-2f;
        foreach (var (param, name) in new[] { (x, "x"), (weight, "w"), (bias, "b") })
        {
            var flat = param.detach().view(-1);
            var grad = param.grad!.view(-1);
            for (int probe = 0; probe < 6; probe++)
            {
                long i = rng.Next((int)flat.numel());
                float original = flat[i].item<float>();
                using (no_grad())
                {
                    flat[i] = original + eps;
                }

                float plus = Loss();
                using (no_grad())
                {
                    flat[i] = original - eps;
                }

                float minus = Loss();
                using (no_grad())
                {
                    flat[i] = original;
                }

                double numeric = (plus - minus) / (2.0 * eps);
                double analytic = grad[i].item<float>();
                Assert.True(Math.Abs(numeric - analytic) <= 2e-3 * Math.Max(1, Math.Abs(analytic)), $"{name}[{i}]: numeric {numeric} vs analytic {analytic}");
            }
        }
    }

    [Fact]
    public void Calls_outside_the_contract_fall_back_to_libtorch()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 4, 9, 9, dtype: float64);
        var w = randn(4, 1, 5, 5, dtype: float64);
        Assert.False(DepthwiseConv2d.Fits(x, w, null));
        var y = DepthwiseConv2d.Forward(x, w);
        Assert.True(y.allclose(nn.functional.conv2d(x, w, padding: [2, 2], groups: 4)));
        var even = randn(1, 3, 8, 8);
        Assert.False(DepthwiseConv2d.Fits(even, randn(3, 1, 4, 4), null));
        Assert.False(DepthwiseConv2d.Fits(even, randn(3, 1, 65, 65), null));
    }

    [Fact]
    public void The_dispatcher_picks_our_cpu_kernels_for_calls_that_fit_and_libtorch_otherwise()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 4, 9, 9);
        var w = randn(4, 1, 5, 5);
        Assert.Same(CpuDepthwise.Kernels, DepthwiseConv2d.Select(x, w, null, tracked: false));
        // Tracked with a trained weight (a frozen one on this small map may go to libtorch whole: the frozen-weight test).
        Assert.Same(CpuDepthwise.Kernels, DepthwiseConv2d.Select(x, w.clone().requires_grad_(true), randn(4), tracked: true));
        Assert.Null(DepthwiseConv2d.Select(x.to(float64), w.to(float64), null, tracked: false));
        Assert.Null(DepthwiseConv2d.Select(x, randn(4, 1, 4, 4), null, tracked: false));
        using (DepthwiseConv2d.Use(DepthwiseBackend.Torch))
        {
            Assert.Null(DepthwiseConv2d.Select(x, w, null, tracked: true));
            var y = DepthwiseConv2d.Forward(x, w);
            Assert.True(y.eq(nn.functional.conv2d(x, w, padding: [2, 2], groups: 4)).all().item<bool>());
        }

        Assert.Same(CpuDepthwise.Kernels, DepthwiseConv2d.Select(x, w, null, tracked: false));
    }

    [Theory]
    [InlineData(true, false, false)]
    [InlineData(false, true, true)]
    [InlineData(false, false, true)]
    public void Only_the_tensors_that_require_grad_get_one(bool inputGrad, bool weightGrad, bool biasGrad)
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 12, 10).requires_grad_(inputGrad);
        var weight = randn(3, 1, 7, 7).requires_grad_(weightGrad);
        var bias = randn(3).requires_grad_(biasGrad);
        var upstream = randn(2, 3, 12, 10);
        DepthwiseConv2d.Forward(x, weight, bias).backward([upstream]);
        DepthwiseConv2d.ReleaseBackwardOutputs();

        var x64 = x.detach().to(float64).requires_grad_(true);
        var w64 = weight.detach().to(float64).requires_grad_(true);
        var b64 = bias.detach().to(float64).requires_grad_(true);
        nn.functional.conv2d(x64, w64, b64, padding: [3, 3], groups: 3).backward([upstream.to(float64)]);
        foreach (var (actual, wanted, reference, what) in new[] { (x, inputGrad, x64, "input"), (weight, weightGrad, w64, "weight"), (bias, biasGrad, b64, "bias") })
        {
            if (wanted)
            {
                AssertClose(reference.grad!, actual.grad!, what);
            }
            else
            {
                Assert.Null(actual.grad);
            }
        }
    }

    /// <summary>Max |expected − actual| within 1e-5 of max |expected| (float64), naming <paramref name="what"/> when not.</summary>
    internal static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        var e = expected.to(float64);
        double scale = Math.Max(e.abs().max().item<double>(), 1e-12);
        double diff = (e - actual.to(float64)).abs().max().item<double>();
        Assert.True(diff <= 1e-5 * scale, $"{what}: max abs diff {diff:E3}, scale {scale:E3}, relative {diff / scale:E2}");
    }
}
