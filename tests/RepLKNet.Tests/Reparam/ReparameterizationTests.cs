using RepLKNet.Checkpoints;
using RepLKNet.Layers;
using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Reparam;

public sealed class ReparameterizationTests
{
    public ReparameterizationTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(13, 5, 16)]
    [InlineData(7, 3, 9)]
    [InlineData(31, 5, 8)]     // kernel far larger than the feature map
    [InlineData(9, null, 12)]  // no small kernel (as in XL): only the BN is folded
    [InlineData(5, 5, 6)]      // small kernel as large as the large one: zero re-param padding
    public void Large_kernel_module_deploy_form_matches_a_float64_two_branch_reference(int kernel, int? small, int size)
    {
        using var scope = NewDisposeScope();
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        var module = new ReparamLargeKernelConv(6, kernel, small, deploy: false);
        RandomModels.RandomizeBatchNorms(module, generator);
        module.eval();
        var x = randn([2, 6, size, size + 1], generator: generator);
        var reference = Float64TwoBranch(module, x, kernel, small);

        using var noGrad = no_grad();
        var trainOut = module.call(x);
        module.SwitchToDeploy();
        var deployOut = module.call(x);

        Assert.True(module.IsDeploy);
        Assert.Equal(["lkb_reparam.weight", "lkb_reparam.bias"], StateDicts.Ordered(module).Select(kv => kv.Key));
        double scale = reference.abs().max().item<double>();
        double trainErr = (trainOut.to(float64) - reference).abs().max().item<double>() / scale;
        double deployErr = (deployOut.to(float64) - reference).abs().max().item<double>() / scale;
        Assert.True(trainErr < 1e-6, $"train form vs float64: {trainErr:E2} (seed {seed})");
        Assert.True(deployErr < 1e-6, $"deploy form vs float64: {deployErr:E2} (seed {seed})");
    }

    [Theory]
    [InlineData(new[] { 13, 11, 9, 5 }, 5, 1.5)]
    [InlineData(new[] { 15, 13, 11, 7 }, 3, 1.0)]
    [InlineData(new[] { 11, 9, 9, 7 }, null, 1.5)]
    public void Whole_model_deploy_and_fused_forms_match_the_train_form(int[] kernels, int? small, double dwRatio)
    {
        using var scope = NewDisposeScope();
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        var config = new RepLKNetConfig
        {
            LargeKernelSizes = kernels, Layers = [1, 1, 2, 1], Channels = [8, 16, 24, 32], SmallKernel = small, DwRatio = dwRatio,
            NumClasses = 7,
        };
        var model = new RepLKNetModel(config);
        RandomModels.RandomizeBatchNorms(model, generator);
        model.eval();
        var x = randn([2, 3, 48, 40], generator: generator);
        using var noGrad = no_grad();
        var expected = model.call(x);

        var deploy = Reparameterizer.ReparameterizedCopy(model);
        var fused = Reparameterizer.ReparameterizedCopy(model, fuseBn: true);

        Assert.False(model.IsDeploy);
        Assert.True(deploy.IsDeploy);
        double scale = expected.abs().max().item<float>();
        Assert.True((deploy.call(x) - expected).abs().max().item<float>() / scale < 1e-5, $"deploy (seed {seed})");
        Assert.True((fused.call(x) - expected).abs().max().item<float>() / scale < 1e-5, $"fused (seed {seed})");

        // The deploy copy's state dict is exactly that of a model built in deploy form (same keys, order, shapes).
        var built = new RepLKNetModel(config, deploy: true, device: new Device("meta"));
        Assert.Equal(StateDicts.Ordered(built).Select(kv => $"{kv.Key} {string.Join(",", kv.Value.shape)}"),
            StateDicts.Ordered(deploy).Select(kv => $"{kv.Key} {string.Join(",", kv.Value.shape)}"));
        Assert.Equal(ModelForm.Deploy, ModelForms.Detect(StateDicts.Ordered(deploy).Select(kv => kv.Key)));
        Assert.Equal(ModelForm.Fused, ModelForms.Detect(StateDicts.Ordered(fused).Select(kv => kv.Key)));
        Assert.Equal(StateDicts.Ordered(ModelForms.Create(config, ModelForm.Fused, new Device("meta"))).Select(kv => kv.Key),
            StateDicts.Ordered(fused).Select(kv => kv.Key));
        // Fused: no conv_bn BN remains, the pre-BNs and the classifier norm stay.
        var fusedKeys = StateDicts.Ordered(fused).Select(kv => kv.Key).ToList();
        Assert.DoesNotContain(fusedKeys, k => k.Contains(".bn.", StringComparison.Ordinal));
        Assert.Contains("stages.0.blocks.0.prelkb_bn.weight", fusedKeys);
        Assert.Contains("stem.0.conv.bias", fusedKeys);
    }

    [Fact]
    public void Reparameterizing_twice_changes_nothing_more()
    {
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(new RepLKNetConfig { LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], NumClasses = 3 });
        Assert.Equal(2, Reparameterizer.Reparameterize(model));
        var before = StateDicts.Ordered(model).Select(kv => kv.Value.clone()).ToList();
        Assert.Equal(0, Reparameterizer.Reparameterize(model));
        Assert.All(StateDicts.Ordered(model).Zip(before), p => Assert.True(p.First.Value.equal(p.Second).all().item<bool>(), p.First.Key));
    }

    /// <summary>lkb_origin (conv → BN) + small_conv (conv → BN) computed independently in float64 with libtorch's ops.</summary>
    private static Tensor Float64TwoBranch(ReparamLargeKernelConv module, Tensor x, int kernel, int? small)
    {
        var sd = StateDicts.Ordered(module).ToDictionary(kv => kv.Key, kv => kv.Value.detach().to(float64));
        Tensor Branch(string p, int k)
        {
            var y = nn.functional.conv2d(x.to(float64), sd[$"{p}.conv.weight"], padding: [k / 2, k / 2], groups: 6);
            var shape = new long[] { 1, -1, 1, 1 };
            return (y - sd[$"{p}.bn.running_mean"].view(shape)) / (sd[$"{p}.bn.running_var"].view(shape) + 1e-5).sqrt()
                * sd[$"{p}.bn.weight"].view(shape) + sd[$"{p}.bn.bias"].view(shape);
        }

        var output = Branch("lkb_origin", kernel);
        return small is int s ? output + Branch("small_conv", s) : output;
    }
}
