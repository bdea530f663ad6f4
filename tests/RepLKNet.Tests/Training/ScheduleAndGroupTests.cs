using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Tests.Support;
using RepLKNet.Training;

namespace RepLKNet.Tests.Training;

public sealed class ScheduleAndGroupTests
{
    [Fact]
    public void Cosine_schedule_equals_the_official_numpy_formula_at_every_step()
    {
        // Official: warmup = np.linspace(start, base, warmup_iters);
        //           rest[i] = final + 0.5 * (base - final) * (1 + cos(pi * i / len(rest))), i = 0 .. len(rest) - 1.
        const double baseLr = 4e-3, minLr = 1e-6;
        int epochs = 5, perEpoch = 7, warmupEpochs = 2;
        var schedule = new CosineSchedule(baseLr, minLr, epochs, perEpoch, warmupEpochs);
        int warmup = warmupEpochs * perEpoch, total = epochs * perEpoch, rest = total - warmup;
        var expected = new List<double>();
        for (int i = 0; i < warmup; i++)
        {
            expected.Add(0 + (baseLr - 0) * i / (warmup - 1));
        }

        for (int i = 0; i < rest; i++)
        {
            expected.Add(minLr + 0.5 * (baseLr - minLr) * (1 + Math.Cos(Math.PI * i / rest)));
        }

        for (int step = 0; step < total; step++)
        {
            Assert.Equal(expected[step], schedule[step], 15);
        }

        Assert.Equal(0, schedule[0]);
        Assert.Equal(baseLr, schedule[warmup - 1], 15);
        Assert.Equal(baseLr, schedule[warmup], 15);
        Assert.True(schedule[total - 1] > minLr && schedule[total - 1] < 1e-4);
        Assert.Equal(schedule[total - 1], schedule[total + 100]);
        Assert.Equal(0.05, new CosineSchedule(0.05, 0.05, 3, 4)[7], 15); // wd_end = wd: constant
    }

    [Fact]
    public void No_decay_group_holds_every_bias_and_batchnorm_parameter()
    {
        Torch.EnsureLoaded();
        var config = new RepLKNetConfig { LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, NumClasses = 4 };
        using var model = new RepLKNetModel(config);
        var (decay, noDecay) = ParameterGroups.Split(model);

        Assert.All(decay, p => Assert.True(p.Name.EndsWith(".weight", StringComparison.Ordinal) && p.Parameter.dim() > 1, p.Name));
        Assert.Contains(decay, p => p.Name == "head.weight");
        Assert.Contains(decay, p => p.Name == "stages.0.blocks.0.large_kernel.lkb_origin.conv.weight");
        Assert.Contains(noDecay, p => p.Name == "head.bias");
        Assert.Contains(noDecay, p => p.Name == "stages.0.blocks.0.prelkb_bn.weight");
        Assert.All(noDecay, p => Assert.True(p.Parameter.dim() == 1, p.Name));
        Assert.Equal(model.parameters().Count(), decay.Count + noDecay.Count);

        Reparameterizer.Reparameterize(model);
        var (_, deployNoDecay) = ParameterGroups.Split(model);
        Assert.Contains(deployNoDecay, p => p.Name == "stages.0.blocks.0.large_kernel.lkb_reparam.bias");
    }

    [Theory]
    [InlineData("stem.0.conv.weight", 0)]
    [InlineData("stem.3.bn.running_mean", 0)]
    [InlineData("stages.0.blocks.3.pw1.conv.weight", 1)]
    [InlineData("transitions.0.1.conv.weight", 1)]
    [InlineData("stages.1.blocks.0.large_kernel.lkb_origin.conv.weight", 2)]
    [InlineData("transitions.1.0.bn.bias", 2)]
    [InlineData("stages.2.blocks.0.prelkb_bn.weight", 3)]
    [InlineData("stages.2.blocks.3.pw2.conv.weight", 3)]
    [InlineData("stages.2.blocks.4.pw1.conv.weight", 4)]
    [InlineData("stages.2.blocks.17.preffn_bn.bias", 7)]
    [InlineData("stages.2.blocks.35.pw2.bn.weight", 11)]
    [InlineData("transitions.2.0.conv.weight", 11)]
    [InlineData("stages.3.blocks.1.pw1.conv.weight", 12)]
    [InlineData("norm.weight", 13)]
    [InlineData("head.bias", 13)]
    public void Layer_ids_follow_the_official_fourteen_group_mapping_for_31B(string name, int expected)
    {
        // The official optim_factory table for layers [2, 2, 18, 2]: stem 0; stage/transition 0 → 1, 1 → 2; stage 2 block
        // module k → 3 + k // 4; transition 2 → 11; stage 3 → 12; the rest → 13. Scale = decay^(13 − id).
        int[] layers = [2, 2, 18, 2];
        Assert.Equal(14, LayerDecay.LayerCount(layers));
        Assert.Equal(expected, LayerDecay.LayerId(name, layers));
        Assert.Equal(Math.Pow(0.7, 13 - expected), LayerDecay.Scale(name, layers, 0.7), 12);
    }

    [Fact]
    public void Layer_ids_of_other_depths_give_one_group_per_stage()
    {
        int[] three = [1, 1, 1];
        Assert.Equal(5, LayerDecay.LayerCount(three));
        string[] names = ["stem.0.conv.weight", "stages.0.blocks.1.pw1.conv.weight", "transitions.0.0.conv.weight", "stages.2.blocks.0.pw1.conv.weight", "head.weight"];
        Assert.Equal([0, 1, 1, 3, 4], names.Select(n => LayerDecay.LayerId(n, three)));
        Assert.Equal(1.0, LayerDecay.Scale("head.weight", three, 0.5));
        Assert.Equal(0.0625, LayerDecay.Scale("stem.0.conv.weight", three, 0.5));
    }
}

public sealed class PolyScheduleAndNormGroupTests
{
    private static void Close(double expected, double actual, double relative = 1e-12) =>
        Assert.True(Math.Abs(expected - actual) <= relative * Math.Abs(expected), $"expected {expected:R}, got {actual:R}");

    [Fact]
    public void Poly_schedule_with_linear_warm_up_matches_hand_computed_mmcv_values()
    {
        // The official config: lr 2e-4, power 1, min 0, warm-up 400 iterations from ratio 1e-6, here over 1000 iterations.
        var s = new PolySchedule(2e-4, 1000, power: 1, minValue: 0, warmupIterations: 400, warmupRatio: 1e-6);
        Close(2e-4 * 1e-6, s[0], 1e-9);                       // regular 2e-4, k = 1·(1 − 1e-6); 1 − k cancels to ~1e-11 relative in float64
        Close(1.6e-4 * (1 - 0.5 * (1 - 1e-6)), s[200]);        // regular 2e-4·0.8, k = 0.5·(1 − 1e-6)
        Close(8.000008e-5, s[200]);
        Close(2e-4 * 0.601 * (1 - 0.0025 * (1 - 1e-6)), s[399]); // the last warm-up iteration
        Close(1.2e-4, s[400]);                                 // warm-up over: regular 2e-4·0.6
        Close(2e-7, s[999]);
        Assert.Equal(0, s[1000]);
        Assert.Equal(0, s[5000]);
        Assert.Equal(s[321], s.At(321, 0.99));

        // Power 2 and a floor: (2e-4 − 1e-5)·(1 − 500/1000)² + 1e-5 = 5.75e-5; no warm-up.
        var p = new PolySchedule(2e-4, 1000, power: 2, minValue: 1e-5);
        Close(5.75e-5, p[500]);
        Close(2e-4, p[0]);
        Close(1e-5, p[1000]);

        Assert.Equal("maxIterations", Assert.Throws<ArgumentOutOfRangeException>(() => new PolySchedule(1, 0)).ParamName);
        Assert.Equal("warmupRatio", Assert.Throws<ArgumentOutOfRangeException>(() => new PolySchedule(1, 10, warmupIterations: 2, warmupRatio: 0)).ParamName);
        Assert.Equal("power", Assert.Throws<ArgumentOutOfRangeException>(() => new PolySchedule(1, 10, power: 0)).ParamName);
        Assert.Equal("iteration", Assert.Throws<ArgumentOutOfRangeException>(() => s[-1]).ParamName);
    }

    private sealed class Small : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> conv = nn.Conv2d(3, 4, 3, bias: true);
        private readonly RepLKNet.Layers.BatchNorm2d bn = new(4);
        private readonly Module<Tensor, Tensor> head = nn.Sequential(("0", nn.LayerNorm(4)), ("1", nn.Linear(4, 2)), ("2", nn.GroupNorm(1, 2)));

        public Small()
            : base("Small") => RegisterComponents();

        public override Tensor forward(Tensor x) => head.call(bn.call(conv.call(x)).mean([2, 3]));
    }

    [Fact]
    public void Norm_layers_rule_exempts_norm_weights_and_biases_only_and_conv_biases_decay()
    {
        Torch.EnsureLoaded();
        using var model = new Small();
        var rule = ParameterGroups.NormLayers(model);
        var (decay, noDecay) = ParameterGroups.Split(model, rule);
        Assert.Equal(["conv.weight", "conv.bias", "head.1.weight", "head.1.bias"], decay.Select(p => p.Name));
        Assert.Equal(["bn.weight", "bn.bias", "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"], noDecay.Select(p => p.Name));

        // The classification rule differs exactly on the biases of conv and linear layers.
        var (_, officialNoDecay) = ParameterGroups.Split(model);
        Assert.Contains(officialNoDecay, p => p.Name == "conv.bias");

        var (optimizer, scales) = TrainStep.CreateOptimizer(model, 2e-4, 0.05, noDecay: rule, betas: (0.8, 0.99));
        using var disposeOptimizer = optimizer;
        var groups = optimizer.ParamGroups.Cast<TorchSharp.Modules.AdamW.ParamGroup>().ToList();
        Assert.Equal([0.05, 0.0], groups.Select(g => g.Options.weight_decay!.Value));
        Assert.Equal([4, 6], groups.Select(g => g.Parameters.Count()));
        Assert.Equal((0.8, 0.99), (groups[0].Options.beta1!.Value, groups[0].Options.beta2!.Value));
        Assert.Equal([1.0, 1.0], scales);
    }
}
