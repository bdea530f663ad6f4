using RepLKNet.Ops;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>A fact that needs a thread on which libtorch counts one thread while the test thread counts more (libtorch's OpenMP runtime found).</summary>
public sealed class OneThreadPartFactAttribute : FactAttribute
{
    public OneThreadPartFactAttribute() => Skip = OneThreadPart.SkipReason();
}

/// <summary>The theory form of <see cref="OneThreadPartFactAttribute"/>.</summary>
public sealed class OneThreadPartTheoryAttribute : TheoryAttribute
{
    public OneThreadPartTheoryAttribute() => Skip = OneThreadPart.SkipReason();
}

internal static class OneThreadPart
{
    public static string? SkipReason()
    {
        Torch.EnsureLoaded();
        return get_num_threads() > 1 && RepLKNet.Runtime.OpenMpTeam.IsActive
            ? null
            : $"needs libtorch's OpenMP runtime and more than one libtorch thread on the test thread (threads: {get_num_threads()}, OpenMP: {RepLKNet.Runtime.OpenMpTeam.IsActive})";
    }
}

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
        long seed = Random.Shared.NextInt64(1, long.MaxValue);
        var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        long pad = dilation * (kernel / 2);
        var x = randn([2, inChannels, 11, 14], generator: generator);
        var w = randn([outChannels, inChannels, kernel, kernel], generator: generator);
        var b = withBias ? randn([outChannels], generator: generator) : null;
        long[] size = [2, outChannels, (11 + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1, (14 + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1];
        var upstream = randn(size, generator: generator);

        // Training with the input gradient (input and output channels padded), training without it (input channels
        // only: a first layer), and inference.
        foreach (var mode in new[] { Mode.InputGradient, Mode.WeightGradientOnly, Mode.NoGrad })
        {
            var (y, grads) = Run(x, w, b, upstream, stride, pad, dilation, mode, ours: true);
            var (y64, grads64) = Run(x.to(float64), w.to(float64), b?.to(float64), upstream.to(float64), stride, pad, dilation, mode, ours: false);
            Assert.Equal(y64.shape, y.shape);
            Assert.True(y.is_contiguous(), $"{mode}: not contiguous");
            Assert.True(RelativeError(y, y64) < 1e-5, $"{mode}, seed {seed}: output error {RelativeError(y, y64):E2}");
            Assert.Equal(grads64.Length, grads.Length);
            for (int i = 0; i < grads.Length; i++)
            {
                Assert.True(RelativeError(grads[i], grads64[i]) < 1e-5, $"{mode}, seed {seed}: gradient {i} error {RelativeError(grads[i], grads64[i]):E2}");
            }
        }
    }

    [Fact]
    public void A_channel_mismatch_names_the_unpadded_counts()
    {
        using var scope = NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => DenseConv2d.Forward(zeros(1, 20, 5, 5), zeros(24, 24, 3, 3), null, [1, 1], [1, 1], [1, 1], 1));
        Assert.Contains("expects 24 input channels, but the input [1, 20, 5, 5] has 20", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_padded_cut_result_keeps_channels_last()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 9, 9, 24).permute(0, 3, 1, 2).requires_grad_(); // [2, 24, 9, 9] with NHWC strides
        var w = randn(20, 24, 3, 3);
        var y = DenseConv2d.Forward(x, w, null, [1, 1], [1, 1], [1, 1], 1);
        Assert.False(y.is_contiguous());
        Assert.True(y.permute(0, 2, 3, 1).is_contiguous());
        var y64 = nn.functional.conv2d(x.detach().to(float64), w.to(float64), null, padding: [1, 1]);
        Assert.True(RelativeError(y, y64) < 1e-5, $"output error {RelativeError(y, y64):E2}");
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

    [OneThreadPartFact]
    public void Small_one_thread_1x1_convolutions_are_steered_to_oneDNN_and_nothing_else()
    {
        // The main test thread: libtorch counts more than one thread there, so libtorch itself already picks oneDNN.
        long[] unit = [1, 1];
        using (var scope = NewDisposeScope())
        {
            Assert.Same(unit, DenseConv2d.PointwiseDilation(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1), unit, unit, 1));
        }

        OnOneThread(() =>
        {
            using var scope = NewDisposeScope();
            long[] one = [1, 1];
            long[] Decide(Tensor x, Tensor w, long[]? stride = null, long[]? dilation = null, long groups = 1, bool enabled = true) =>
                DenseConv2d.PointwiseDilation(x, w, stride ?? one, dilation ?? one, groups, enabled);

            Assert.Equal([2L, 2L], Decide(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1)));
            Assert.Equal([2L, 2L], Decide(zeros(15, 512, 2, 2), zeros(128, 512, 1, 1)));
            Assert.Equal([2L, 2L], Decide(zeros(2, 16, 1, 1), zeros(16, 16, 1, 1)));
            Assert.Same(one, Decide(zeros(1, 512, 8, 5), zeros(128, 512, 1, 1))); // one sample of exactly 20,480 values: native either way
            Assert.Equal([2L, 2L], Decide(zeros(1, 512, 8, 6), zeros(128, 512, 1, 1))); // one sample of 24,576 values: oneDNN when dilated
            Assert.Equal([2L, 2L], DenseConv2d.PointwiseDilation(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1), null, null, 1, enabled: true));
            Assert.Same(one, Decide(zeros(16, 32, 7, 7), zeros(64, 32, 1, 1))); // 16 samples: libtorch's own oneDNN
            Assert.Same(one, Decide(zeros(8, 32, 7, 7), zeros(64, 32, 3, 3))); // not 1×1
            Assert.Same(one, Decide(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1), stride: [2, 2]));
            long[] two = [2, 2];
            Assert.Same(two, Decide(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1), dilation: two));
            Assert.Same(one, Decide(zeros(8, 24, 7, 7), zeros(64, 24, 1, 1))); // channels not multiples of 16
            Assert.Same(one, Decide(zeros(8, 32, 7, 7), zeros(40, 32, 1, 1)));
            Assert.Same(one, Decide(zeros(8, 64, 7, 7), zeros(64, 32, 1, 1), groups: 2));
            Assert.Same(one, Decide(zeros(8, 32, 7, 7, float64), zeros(64, 32, 1, 1, float64)));
            Assert.Same(one, Decide(zeros(1, 128, 2, 2), zeros(512, 128, 1, 1))); // one sample of 512 values: native either way
            Assert.Same(one, Decide(zeros(8, 32, 7, 7), zeros(64, 32, 1, 1), enabled: false));
        });
    }

    [OneThreadPartTheory]
    [InlineData(8, 512, 128, 2)] // RepLKNet-31B's last stage at 64×64, a part of 8 samples
    [InlineData(4, 256, 1024, 8)]
    [InlineData(3, 32, 128, 7)] // RepLKNet-FMNIST's first stage
    public void A_steered_1x1_convolution_is_the_dilated_one_and_matches_float64(int batch, int inChannels, int outChannels, int size)
    {
        long seed = Random.Shared.NextInt64(1, long.MaxValue);
        var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        var x = randn([batch, inChannels, size, size], generator: generator);
        var w = randn([outChannels, inChannels, 1, 1], generator: generator);
        var b = randn([outChannels], generator: generator);
        var upstream = randn([batch, outChannels, size, size], generator: generator);
        var (y64, grads64) = Run(x.to(float64), w.to(float64), b.to(float64), upstream.to(float64), 1, 0, 1, Mode.InputGradient, ours: false);
        OnOneThread(() =>
        {
            // On this thread libtorch counts one thread, as in a part of the batch split.
            using var inner = NewDisposeScope();
            var (y, grads) = Run(x, w, b, upstream, 1, 0, 1, Mode.InputGradient, ours: true);
            Assert.True(RelativeError(y, y64) < 1e-5, $"seed {seed}: output error {RelativeError(y, y64):E2}");
            for (int i = 0; i < grads.Length; i++)
            {
                Assert.True(RelativeError(grads[i], grads64[i]) < 1e-5, $"seed {seed}: gradient {i} error {RelativeError(grads[i], grads64[i]):E2}");
            }

            using var noGrad = no_grad();
            var dilated = nn.functional.conv2d(x, w, b, dilation: [2, 2]);
            var native = nn.functional.conv2d(x, w, b);
            // The bits of libtorch's dilated call (oneDNN), where libtorch's own call (its native kernel) rounds otherwise
            // once the sums are long enough to part: the steering happened, and it changed the kernel.
            Assert.True(SameBits(y, dilated), $"seed {seed}: the steered forward is not the dilated call's");
            if (inChannels >= 256)
            {
                Assert.False(SameBits(native, dilated), $"seed {seed}: libtorch's own one-thread call gave the dilated call's bits");
            }
        });
    }

    /// <summary>Runs <paramref name="body"/> on a new thread on which libtorch counts one thread, as inside a batch-split part.</summary>
    private static void OnOneThread(Action body)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                _ = get_num_threads(); // libtorch sizes a thread's OpenMP count on its first query (BatchSplit does this first too)
                RepLKNet.Runtime.OpenMpTeam.SetThreadsHere(1);
                Assert.Equal(1, get_num_threads());
                body();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        }
    }

    private enum Mode
    {
        InputGradient,
        WeightGradientOnly,
        NoGrad,
    }

    private static (Tensor Y, Tensor[] Grads) Run(Tensor x, Tensor w, Tensor? b, Tensor upstream, long stride, long pad, long dilation, Mode mode, bool ours)
    {
        var xg = mode == Mode.InputGradient ? x.detach().requires_grad_() : x.detach();
        var wg = w.detach().requires_grad_(mode != Mode.NoGrad);
        var bg = b?.detach().requires_grad_(mode != Mode.NoGrad);
        using var grad = mode == Mode.NoGrad ? no_grad() : null;
        var y = ours
            ? DenseConv2d.Forward(xg, wg, bg, [stride, stride], [pad, pad], [dilation, dilation], 1)
            : nn.functional.conv2d(xg, wg, bg, strides: [stride, stride], padding: [pad, pad], dilation: [dilation, dilation]);
        if (mode == Mode.NoGrad)
        {
            return (y, []);
        }

        y.backward([upstream]);
        var grads = new List<Tensor>();
        if (mode == Mode.InputGradient)
        {
            grads.Add(xg.grad!);
        }

        grads.Add(wg.grad!);
        if (bg is not null)
        {
            grads.Add(bg.grad!);
        }

        return (y.detach(), [.. grads]);
    }

    private static bool SameBits(Tensor a, Tensor b) => a.eq(b).all().item<bool>();

    private static double RelativeError(Tensor actual, Tensor reference) =>
        (actual.to(float64) - reference.to(float64)).abs().max().item<double>() / Math.Max(reference.abs().max().item<double>(), 1e-30);
}
