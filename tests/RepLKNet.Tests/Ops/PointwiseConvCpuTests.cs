using RepLKNet.Ops.Cpu;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>The fused channels_last 1×1 convolution (<see cref="PointwiseConvCpu"/>) against libtorch's conv2d in float64.</summary>
public sealed class PointwiseConvCpuTests
{
    public PointwiseConvCpuTests() => Torch.EnsureLoaded();

    public static TheoryData<string> Isas => [.. CpuIsas.Supported.Select(i => i.ToString())];

    private static Tensor ChannelsLast(Tensor t) => t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    [Theory]
    [MemberData(nameof(Isas))]
    public void Every_tile_and_tail_matches_libtorch_in_float64(string isaName)
    {
        // Rows (N·H·W) that are and are not multiples of the 6-row tile, output channels that fill two vectors, one, and
        // leave single floats (1, 7, 17, 24, 33, 40, 48, 64), input channels from 1; ReLU, residual, both, neither; 1 to 3
        // threads (rows spread over up to 3 when there are enough: the 243- and 98-row shapes); the input given channels_last
        // and NCHW (then copied). Fresh random values each run (seed in messages).
        var isa = Enum.Parse<CpuIsa>(isaName);
        int seed = Environment.TickCount;
        var generator = new Generator((ulong)seed);
        (int N, int Cin, int H, int W, int Cout)[] shapes =
        [
            (1, 1, 1, 1, 1), (2, 3, 1, 5, 7), (3, 8, 2, 2, 17), (2, 16, 3, 3, 24), (1, 5, 7, 7, 33), (4, 32, 2, 3, 40), (2, 64, 7, 7, 64), (5, 7, 4, 4, 32),
            (3, 16, 9, 9, 48),
        ];
        using var scope = NewDisposeScope();
        foreach (var (n, cin, h, w, cout) in shapes)
        {
            foreach (bool relu in new[] { false, true })
            {
                foreach (bool withResidual in new[] { false, true })
                {
                    var x = randn([n, cin, h, w], generator: generator);
                    var weight = randn([cout, cin, 1, 1], generator: generator) * 0.3;
                    var bias = randn([cout], generator: generator);
                    var residual = randn([n, cout, h, w], generator: generator);
                    var expected = nn.functional.conv2d(x.to(float64), weight.to(float64), bias.to(float64));
                    if (relu)
                    {
                        expected = expected.relu();
                    }

                    if (withResidual)
                    {
                        expected = expected + residual.to(float64);
                    }

                    bool channelsLastInput = (n + cin + (relu ? 1 : 0) + (withResidual ? 2 : 0)) % 2 == 0;
                    int threads = 1 + (cout + (relu ? 1 : 0) + (withResidual ? 1 : 0)) % 3;
                    var input = channelsLastInput ? ChannelsLast(x) : x;
                    var target = withResidual ? ChannelsLast(residual) : null;
                    var y = PointwiseConvCpu.Forward(input, PointwiseConvCpu.PackWeight(weight), bias, relu, target, isa, threads);
                    string what = $"seed {seed}, {isa}, ({n}, {cin}, {h}, {w}) → {cout}, relu {relu}, residual {withResidual}, threads {threads}, channels_last input {channelsLastInput}";
                    Assert.Equal(new long[] { n, cout, h, w }, y.shape);
                    Assert.True(PointwiseConvCpu.IsChannelsLast(y), what + ": output not channels_last");
                    if (target is not null)
                    {
                        Assert.Same(target, y); // the sum is written into the residual
                    }

                    double scale = expected.abs().max().item<double>() + 1;
                    double diff = (y.to(float64) - expected).abs().max().item<double>();
                    Assert.True(diff <= 2e-6 * scale * Math.Sqrt(cin + 1), $"{what}: max |Δ| {diff:E2}");
                }
            }
        }
    }

    [Fact]
    public void Mismatched_inputs_are_rejected_with_what_was_given()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 8, 3, 3);
        var packed = PointwiseConvCpu.PackWeight(randn(16, 8, 1, 1));
        var bias = randn(16);
        var e = Assert.Throws<ArgumentException>(() => PointwiseConvCpu.Forward(randn(2, 4, 3, 3), packed, bias, false, null, CpuIsa.Scalar, 1));
        Assert.Contains("(2, 4, 3, 3)", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => PointwiseConvCpu.Forward(x.to(float64), packed, bias, false, null, CpuIsa.Scalar, 1));
        Assert.Throws<ArgumentException>(() => PointwiseConvCpu.Forward(x, packed, randn(15), false, null, CpuIsa.Scalar, 1));
        var r = Assert.Throws<ArgumentException>(() => PointwiseConvCpu.Forward(x, packed, bias, false, randn(2, 16, 3, 3).contiguous(), CpuIsa.Scalar, 1));
        Assert.Equal("residual", r.ParamName);
        Assert.Throws<ArgumentException>(() => PointwiseConvCpu.Forward(x, packed, bias, false, ChannelsLast(randn(2, 16, 3, 4)), CpuIsa.Scalar, 1));
    }
}
