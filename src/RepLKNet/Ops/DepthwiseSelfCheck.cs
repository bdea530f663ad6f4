using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;
using static TorchSharp.torch;

namespace RepLKNet.Ops;

/// <summary>Relative max errors of our kernels against libtorch's float64 conv2d for one shape and instruction set.</summary>
/// <param name="Isa">Instruction set checked.</param>
/// <param name="Shape">"N×C×H×W, K=k": input [N, C, H, W] and kernel size K (pixels).</param>
/// <param name="Forward">Forward error: max |ours − reference| / max |reference| (a ratio; +∞ when ours has NaN).</param>
/// <param name="InputGrad">Input-gradient error, likewise.</param>
/// <param name="WeightGrad">Weight-gradient error, likewise.</param>
public sealed record DepthwiseCheckResult(CpuIsa Isa, string Shape, double Forward, double InputGrad, double WeightGrad)
{
    /// <summary>The largest of the three.</summary>
    public double Max => Math.Max(Forward, Math.Max(InputGrad, WeightGrad));
}

/// <summary>
/// Checks every instruction set this machine can run against libtorch in float64 on a few awkward shapes
/// (1×1 maps, K larger than the map, widths off the vector length): run it before timing the kernels, so that a machine
/// with other vector units (e.g. AVX-512) verifies its own path first.
/// </summary>
public static class DepthwiseSelfCheck
{
    /// <summary>Tolerance on the relative errors: a result passes when its <see cref="DepthwiseCheckResult.Max"/> is at most this (the caller compares).</summary>
    public const double Tolerance = 1e-5;

    /// <summary>
    /// Runs our CPU kernels (forward, input gradient, weight gradient; stride 1, padding K/2, with bias) on five fixed
    /// shapes, from N×C×H×W = 1×2×1×1 with K = 3 to 1×3×9×17 with K = 31, for every instruction set this machine supports,
    /// and compares each with libtorch's float64 <c>conv2d</c> and its autograd on the same standard-normal float32 data.
    /// </summary>
    /// <param name="seed">Seeds the generator of inputs, weights, biases and upstream gradients (the same data for every instruction set).</param>
    /// <returns>One result per (instruction set, shape), widest instruction set first; nothing is thrown for a failing result.</returns>
    public static List<DepthwiseCheckResult> Run(long seed)
    {
        (int N, int C, int H, int W, int K)[] shapes = [(2, 5, 13, 11, 7), (1, 3, 9, 17, 31), (2, 4, 33, 40, 13), (1, 2, 1, 1, 3), (3, 6, 20, 37, 5)];
        var results = new List<DepthwiseCheckResult>();
        {
            foreach (var isa in CpuIsas.Supported)
            {
                using var scopedIsa = DepthwiseConv2d.UseIsa(isa);
                var generator = new Generator((ulong)seed);
                foreach (var (n, c, h, w, k) in shapes)
                {
                    using var scope = NewDisposeScope();
                    var x = randn([n, c, h, w], generator: generator);
                    var weight = randn([c, 1, k, k], generator: generator);
                    var bias = randn([c], generator: generator);
                    var upstream = randn([n, c, h, w], generator: generator);
                    var y = CpuDepthwise.ForwardRaw(x, weight, bias);
                    var dx = CpuDepthwise.InputGradRaw(upstream, weight);
                    var dw = CpuDepthwise.WeightGrad(x, upstream, k);

                    var x64 = x.to(float64).requires_grad_(true);
                    var w64 = weight.to(float64).requires_grad_(true);
                    var y64 = nn.functional.conv2d(x64, w64, bias.to(float64), padding: [k / 2, k / 2], groups: c);
                    y64.backward([upstream.to(float64)]);
                    results.Add(new DepthwiseCheckResult(isa, $"{n}×{c}×{h}×{w}, K={k}",
                        TensorErrors.Relative(y, y64), TensorErrors.Relative(dx, x64.grad!), TensorErrors.Relative(dw, w64.grad!)));
                }
            }
        }

        return results;
    }
}
