using RepLKNet.Ops;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>
/// <see cref="DenseConv2d"/>: dense convolutions with channel counts that are not multiples of 16 (where libtorch 2.10's
/// oneDNN kernels are wrong on the project's machines) match a float64 convolution in the output and in every gradient.
/// </summary>
public sealed class DenseConv2dTests
{
    public DenseConv2dTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(24, 24, 3, 1, 1, true)] // the UPerHead/FCN test shapes: both counts padded under AVX-512
    [InlineData(12, 20, 3, 1, 1, false)] // 12 input channels: wrong under AVX2's 8-channel blocks
    [InlineData(40, 3, 3, 1, 1, true)] // 3 output channels: the input gradient was wrong
    [InlineData(3, 24, 3, 2, 1, false)] // a stem: 3 input channels are not padded
    [InlineData(17, 33, 5, 1, 2, true)]
    [InlineData(24, 24, 3, 2, 1, true)]
    [InlineData(20, 24, 3, 1, 2, false)] // dilation 2
    [InlineData(32, 48, 3, 1, 1, true)] // multiples of 16: unpadded
    public void Output_and_gradients_match_float64(int inChannels, int outChannels, int kernel, int stride, int dilation, bool withBias)
    {
        var generator = new Generator((ulong)Random.Shared.NextInt64(1, long.MaxValue));
        using var scope = NewDisposeScope();
        long pad = dilation * (kernel / 2);
        var x = randn([2, inChannels, 11, 14], generator: generator);
        var w = randn([outChannels, inChannels, kernel, kernel], generator: generator);
        var b = withBias ? randn([outChannels], generator: generator) : null;

        var (y, grads) = Run(x, w, b, stride, pad, dilation, ours: true);
        var (y64, grads64) = Run(x.to(float64), w.to(float64), b?.to(float64), stride, pad, dilation, ours: false);

        Assert.Equal(y64.shape, y.shape);
        Assert.True(y.is_contiguous());
        Assert.True(RelativeError(y, y64) < 1e-5, $"output error {RelativeError(y, y64):E2}");
        for (int i = 0; i < grads.Length; i++)
        {
            Assert.True(RelativeError(grads[i], grads64[i]) < 1e-5, $"gradient {i} (x, w, b) error {RelativeError(grads[i], grads64[i]):E2}");
        }
    }

    [Fact]
    public void Pads_only_where_the_defect_applies()
    {
        using var scope = NewDisposeScope();
        Assert.True(DenseConv2d.Enabled);
        Assert.Equal((8L, 8L), DenseConv2d.ChannelPadding(zeros(1, 24, 4, 4), zeros(24, 24, 3, 3), 1, inputGradient: true));
        Assert.Equal((8L, 0L), DenseConv2d.ChannelPadding(zeros(1, 24, 4, 4), zeros(24, 24, 3, 3), 1, inputGradient: false));
        Assert.Equal((4L, 13L), DenseConv2d.ChannelPadding(zeros(1, 12, 4, 4), zeros(3, 12, 3, 3), 1, inputGradient: true));
        Assert.Equal((0L, 0L), DenseConv2d.ChannelPadding(zeros(1, 3, 4, 4), zeros(32, 3, 7, 7), 1, inputGradient: true));
        Assert.Equal((0L, 0L), DenseConv2d.ChannelPadding(zeros(1, 32, 4, 4), zeros(48, 32, 3, 3), 1, inputGradient: true));
        Assert.Equal((0L, 0L), DenseConv2d.ChannelPadding(zeros(1, 24, 4, 4), zeros(24, 24, 1, 1), 1, inputGradient: true));
        Assert.Equal((0L, 0L), DenseConv2d.ChannelPadding(zeros(1, 24, 4, 4), zeros(24, 12, 3, 3), 2, inputGradient: true));
        Assert.Equal((0L, 0L), DenseConv2d.ChannelPadding(zeros(1, 24, 4, 4, float64), zeros(24, 24, 3, 3, float64), 1, inputGradient: true));
    }

    private static (Tensor Y, Tensor[] Grads) Run(Tensor x, Tensor w, Tensor? b, long stride, long pad, long dilation, bool ours)
    {
        var xg = x.detach().requires_grad_();
        var wg = w.detach().requires_grad_();
        var bg = b?.detach().requires_grad_();
        var y = ours
            ? DenseConv2d.Forward(xg, wg, bg, [stride, stride], [pad, pad], [dilation, dilation], 1)
            : nn.functional.conv2d(xg, wg, bg, strides: [stride, stride], padding: [pad, pad], dilation: [dilation, dilation]);
        // A fixed upstream gradient drawn from the output's own values (the same in both runs up to rounding).
        var upstream = cos(y.detach().to(float64) * 0.37).to(y.dtype);
        y.backward([upstream]);
        Tensor[] grads = bg is null ? [xg.grad!, wg.grad!] : [xg.grad!, wg.grad!, bg.grad!];
        return (y.detach(), grads);
    }

    private static double RelativeError(Tensor actual, Tensor reference) =>
        (actual.to(float64) - reference.to(float64)).abs().max().item<double>() / Math.Max(reference.abs().max().item<double>(), 1e-30);
}
