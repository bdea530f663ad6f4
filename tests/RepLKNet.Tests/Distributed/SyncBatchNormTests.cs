using RepLKNet.Distributed;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;

namespace RepLKNet.Tests.Distributed;

/// <summary>
/// SyncBatchNorm over an in-process group (<see cref="ThreadProcessGroup"/>, W = 2 and 3, uneven and empty local batches)
/// against one plain <see cref="BatchNorm2d"/> (libtorch's <c>batch_norm</c>) on the concatenated batch, in float64:
/// outputs, running statistics, num_batches_tracked, and the gradients of a loss whose per-rank parts sum to the
/// single-process loss (dx per sample; dweight and dbias summed over the ranks, which DDP's averaging then divides by W).
/// </summary>
public sealed class SyncBatchNormTests(ITestOutputHelper output)
{
    private const int Channels = 3;
    private const int Height = 3;
    private const int Width = 4;

    static SyncBatchNormTests() => Torch.EnsureLoaded();

    /// <summary>Batch norm layers in float64 with the same random affine parameters; momentum null = cumulative average.</summary>
    private static BatchNorm2d Layer(double? momentum, Tensor weight, Tensor bias)
    {
        var bn = new BatchNorm2d(Channels);
        bn.to(ScalarType.Float64);
        bn.momentum = momentum;
        using (no_grad())
        {
            bn.weight!.copy_(weight);
            bn.bias!.copy_(bias);
        }

        bn.train();
        return bn;
    }

    /// <summary>(N, C, H, W) float64 with channel offsets far from zero (exercises the combination of local statistics).</summary>
    private static Tensor Batch(int n, Generator g, double offset = 3.0)
    {
        var x = randn([n, Channels, Height, Width], ScalarType.Float64, generator: g);
        var shift = Scalars.Mul(arange(Channels, ScalarType.Float64).view(1, Channels, 1, 1), offset);
        return Scalars.AddInPlace(x, shift);
    }

    private static long[] Starts(int[] batches)
    {
        var starts = new long[batches.Length];
        for (int r = 1; r < batches.Length; r++)
        {
            starts[r] = starts[r - 1] + batches[r - 1];
        }

        return starts;
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.equal(b).all().item<bool>();

    private static double MaxError(Tensor a, Tensor b) => a.numel() == 0 ? 0 : (a - b).abs().max().item<double>();

    [Theory]
    [InlineData(new[] { 3, 5 }, 0.1)]
    [InlineData(new[] { 2, 1, 4 }, 0.1)]
    [InlineData(new[] { 2, 1, 4 }, null)]
    [InlineData(new[] { 1, 0, 5 }, 0.3)]
    public void Forward_and_running_statistics_equal_one_BatchNorm2d_on_the_concatenated_batch(int[] batches, double? momentum)
    {
        using var scope = NewDisposeScope();
        var g = new Generator(7);
        int total = batches.Sum();
        var weight = Scalars.AddInPlace(rand([Channels], ScalarType.Float64, generator: g), 0.5);
        var bias = randn([Channels], ScalarType.Float64, generator: g);
        var steps = new[] { Batch(total, g), Batch(total, g) };
        var starts = Starts(batches);

        var reference = Layer(momentum, weight, bias);
        var expected = steps.Select(x => reference.call(x).detach()).ToArray();

        int world = batches.Length;
        var errors = new double[world];
        var collectives = new int[world];
        ThreadProcessGroup.Run(world, group =>
        {
            using var rankScope = NewDisposeScope();
            int r = group.Rank;
            var bn = Layer(momentum, weight, bias);
            Assert.Equal(1, SyncBatchNorm.Convert(bn, group));
            double error = 0;
            for (int step = 0; step < steps.Length; step++)
            {
                var y = bn.call(steps[step].narrow(0, starts[r], batches[r]));
                error = Math.Max(error, MaxError(y, expected[step].narrow(0, starts[r], batches[r])));
            }

            error = Math.Max(error, MaxError(bn.running_mean!, reference.running_mean!));
            error = Math.Max(error, MaxError(bn.running_var!, reference.running_var!));
            Assert.Equal(reference.num_batches_tracked!.item<long>(), bn.num_batches_tracked!.item<long>());
            errors[r] = error;
            collectives[r] = group.Collectives;
        });

        output.WriteLine($"batches {string.Join(",", batches)} momentum {momentum?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "None"}: max error {errors.Max():E2}");
        Assert.All(errors, e => Assert.True(e < 1e-12, $"max error {e:E3}"));
        Assert.All(collectives, c => Assert.Equal(steps.Length, c)); // one collective per forward
        // The reference moved away from its initial zeros: the check above compares something that changed.
        Assert.True(MaxError(reference.running_mean!, zeros(Channels, ScalarType.Float64)) > 0.5);
    }

    [Theory]
    [InlineData(new[] { 3, 5 })]
    [InlineData(new[] { 2, 1, 4 })]
    [InlineData(new[] { 1, 0, 5 })]
    public void Gradients_equal_autograd_on_the_concatenated_batch(int[] batches)
    {
        using var scope = NewDisposeScope();
        var g = new Generator(11);
        int total = batches.Sum();
        var weight = Scalars.AddInPlace(rand([Channels], ScalarType.Float64, generator: g), 0.5);
        var bias = randn([Channels], ScalarType.Float64, generator: g);
        var x = Batch(total, g);
        // L = Σ y ⊙ G over the whole batch; rank r's loss is the part over its samples, so Σ_r L_r = L and dy = G.
        var upstream = Scalars.AddInPlace(randn([total, Channels, Height, Width], ScalarType.Float64, generator: g), 0.3);
        var starts = Starts(batches);

        var reference = Layer(0.1, weight, bias);
        var xRef = x.detach().clone().requires_grad_(true);
        (reference.call(xRef) * upstream).sum().backward();
        var dxRef = xRef.grad!;
        var dwRef = reference.weight!.grad!;
        var dbRef = reference.bias!.grad!;

        int world = batches.Length;
        var dxErrors = new double[world];
        var dw = new double[world][];
        var db = new double[world][];
        var collectives = new int[world];
        ThreadProcessGroup.Run(world, group =>
        {
            using var rankScope = NewDisposeScope();
            int r = group.Rank;
            var bn = Layer(0.1, weight, bias);
            bn.SyncGroup = group;
            var xr = x.narrow(0, starts[r], batches[r]).clone().requires_grad_(true);
            (bn.call(xr) * upstream.narrow(0, starts[r], batches[r])).sum().backward();
            dxErrors[r] = MaxError(xr.grad!, dxRef.narrow(0, starts[r], batches[r]));
            dw[r] = bn.weight!.grad!.data<double>().ToArray();
            db[r] = bn.bias!.grad!.data<double>().ToArray();
            collectives[r] = group.Collectives;
        });
        SyncBatchNorm.ReleaseBackwardOutputs();

        var dwSum = tensor(Enumerable.Range(0, Channels).Select(ch => dw.Sum(d => d[ch])).ToArray());
        var dbSum = tensor(Enumerable.Range(0, Channels).Select(ch => db.Sum(d => d[ch])).ToArray());
        double dxError = dxErrors.Max(), dwError = MaxError(dwSum, dwRef), dbError = MaxError(dbSum, dbRef);

        // What a backward with this rank's sums instead of the global ones would give (global statistics in x̂): the test
        // must tell the two apart.
        var mean = x.mean([0, 2, 3], keepdim: true);
        var invstd = Scalars.Add(x.var([0, 2, 3], unbiased: false, keepdim: true), 1e-5).rsqrt();
        var w = weight.view(1, Channels, 1, 1);
        double localError = 0;
        for (int r = 0; r < world; r++)
        {
            if (batches[r] == 0)
            {
                continue;
            }

            var xhat = (x.narrow(0, starts[r], batches[r]) - mean) * invstd;
            var dy = upstream.narrow(0, starts[r], batches[r]);
            var local = w * invstd * (dy - dy.mean([0, 2, 3], keepdim: true) - xhat * (dy * xhat).mean([0, 2, 3], keepdim: true));
            localError = Math.Max(localError, MaxError(local, dxRef.narrow(0, starts[r], batches[r])));
        }

        output.WriteLine($"batches {string.Join(",", batches)}: max error dx {dxError:E2}, Σ dweight {dwError:E2}, Σ dbias {dbError:E2}; local-sum backward would be off by {localError:E2}");
        Assert.True(dxError < 1e-12, $"dx max error {dxError:E3}");
        Assert.True(dwError < 1e-12, $"dweight max error {dwError:E3}");
        Assert.True(dbError < 1e-12, $"dbias max error {dbError:E3}");
        Assert.True(localError > 1e-2, $"a backward ignoring the global sums would pass: {localError:E3}");
        Assert.All(collectives, c => Assert.Equal(2, c)); // one in forward, one in backward
    }

    [Fact]
    public void Float32_with_large_channel_means_matches_the_float64_reference()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(3);
        int[] batches = [5, 3];
        var weight = Scalars.AddInPlace(rand([Channels], ScalarType.Float64, generator: g), 0.5);
        var bias = randn([Channels], ScalarType.Float64, generator: g);
        var x = Batch(8, g, offset: 100.0);
        var expected = Layer(0.1, weight, bias).call(x).detach();
        var starts = Starts(batches);

        var errors = new double[2];
        ThreadProcessGroup.Run(2, group =>
        {
            using var rankScope = NewDisposeScope();
            int r = group.Rank;
            var bn = Layer(0.1, weight, bias);
            bn.to(ScalarType.Float32);
            bn.SyncGroup = group;
            var y = bn.call(x.narrow(0, starts[r], batches[r]).to(ScalarType.Float32));
            errors[r] = MaxError(y.to(ScalarType.Float64), expected.narrow(0, starts[r], batches[r]));
        });

        var plain = Layer(0.1, weight, bias);
        plain.to(ScalarType.Float32);
        double plainError = MaxError(plain.call(x.to(ScalarType.Float32)).to(ScalarType.Float64), expected);
        output.WriteLine($"float32, channel means up to 200: max error {errors.Max():E2} (one plain float32 BatchNorm2d: {plainError:E2})");
        Assert.All(errors, e => Assert.True(e < 1e-4, $"max error {e:E3}"));
    }

    [Fact]
    public void A_one_process_group_and_eval_mode_leave_the_layer_bit_identical_without_collectives()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(5);
        var weight = Scalars.AddInPlace(rand([Channels], ScalarType.Float64, generator: g), 0.5);
        var bias = randn([Channels], ScalarType.Float64, generator: g);
        var x = Batch(6, g);
        var upstream = randn([6, Channels, Height, Width], ScalarType.Float64, generator: g);

        var plain = Layer(0.1, weight, bias);
        var xPlain = x.clone().requires_grad_(true);
        var yPlain = plain.call(xPlain);
        (yPlain * upstream).sum().backward();
        plain.eval();
        var evalPlain = plain.call(x);

        ThreadProcessGroup.Run(1, group =>
        {
            using var rankScope = NewDisposeScope();
            var bn = Layer(0.1, weight, bias);
            bn.SyncGroup = group;
            var xs = x.clone().requires_grad_(true);
            var y = bn.call(xs);
            (y * upstream).sum().backward();
            Assert.True(Same(y, yPlain));
            Assert.True(Same(xs.grad!, xPlain.grad!));
            Assert.True(Same(bn.weight!.grad!, plain.weight!.grad!));
            Assert.True(Same(bn.bias!.grad!, plain.bias!.grad!));
            Assert.True(Same(bn.running_mean!, plain.running_mean!));
            Assert.True(Same(bn.running_var!, plain.running_var!));
            Assert.Equal(0, group.Collectives);
        });

        ThreadProcessGroup.Run(2, group =>
        {
            using var rankScope = NewDisposeScope();
            var bn = Layer(0.1, weight, bias);
            using (no_grad())
            {
                bn.running_mean!.copy_(plain.running_mean!);
                bn.running_var!.copy_(plain.running_var!);
            }

            bn.SyncGroup = group;
            bn.eval();
            Assert.True(Same(bn.call(x), evalPlain));
            Assert.Equal(0, group.Collectives);
        });
    }

    [Fact]
    public void Convert_sets_the_group_on_every_batch_norm_in_place_and_keeps_the_state_dict()
    {
        using var model = nn.Sequential(
            ("conv", nn.Conv2d(3, 4, 3)),
            ("bn", new BatchNorm2d(4)),
            ("act", nn.ReLU()),
            ("block", nn.Sequential(("bn", new BatchNorm2d(4)), ("conv", nn.Conv2d(4, 4, 1)))));
        var keys = model.state_dict().Keys.ToArray();

        ThreadProcessGroup.Run(2, group =>
        {
            Assert.Equal(2, SyncBatchNorm.Convert(model, group));
        });

        Assert.Equal(keys, model.state_dict().Keys.ToArray());
        Assert.All(model.modules().OfType<BatchNorm2d>(), bn => Assert.Equal(2, bn.SyncGroup!.WorldSize));
        Assert.Equal("model", Assert.Throws<ArgumentNullException>(() => SyncBatchNorm.Convert(null!, ProcessGroup.Single)).ParamName);
        Assert.Equal("group", Assert.Throws<ArgumentNullException>(() => SyncBatchNorm.Convert(model, null!)).ParamName);
    }

    [Fact]
    public void One_value_per_channel_over_all_processes_fails_on_every_process()
    {
        var failure = Assert.Throws<AggregateException>(() => ThreadProcessGroup.Run(2, group =>
        {
            using var rankScope = NewDisposeScope();
            var bn = new BatchNorm2d(2) { SyncGroup = group };
            bn.train();
            bn.call(zeros(group.Rank == 0 ? 1 : 0, 2, 1, 1));
        }));
        Assert.Equal(2, failure.InnerExceptions.Count);
        Assert.All(failure.InnerExceptions, e => Assert.Equal("input", Assert.IsType<ArgumentException>(e).ParamName));
    }
}
