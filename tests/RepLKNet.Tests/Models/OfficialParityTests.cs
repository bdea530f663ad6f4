using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Reparam;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

/// <summary>Reproduces the official PyTorch code's outputs on its own checkpoints (shared/fixtures/official-small).</summary>
public sealed class OfficialParityTests
{
    private const double Tolerance = 1e-5;

    public OfficialParityTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(DepthwiseBackend.Ours)]
    [InlineData(DepthwiseBackend.Torch)]
    public void Train_checkpoint_reproduces_the_official_logits_and_every_stage_feature(DepthwiseBackend backend)
    {
        using var scope = NewDisposeScope();
        using var use = DepthwiseConv2d.Use(backend);
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        var model = new RepLKNetModel(OfficialFixture.Config);
        var report = StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, "small-train.pth");
        Assert.Equal(297, report.Loaded.Count);
        model.eval();
        var x = OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64);

        using var noGrad = no_grad();
        AssertClose(OfficialFixture.ReadBin("small-logits-train.bin", 2, 10), model.call(x), "logits");
        var features = model.forward_intermediates(x);
        long[][] shapes = [[2, 16, 16, 16], [2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]];
        for (int i = 0; i < 4; i++)
        {
            AssertClose(OfficialFixture.ReadBin($"small-features-train-s{i}.bin", shapes[i]), features[i], $"stage {i} feature");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Without_autograd_the_in_place_activations_and_residual_sums_give_bit_identical_outputs(bool deploy)
    {
        // No gradient: ReLU, GELU and the residual add run in place (RepLKBlock, ConvFFN, ConvBn); with autograd they
        // do not. Both must agree bit for bit, at every stage, and leave the caller's input as it was.
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        var model = new RepLKNetModel(OfficialFixture.Config);
        StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, "small-train.pth");
        model.eval();
        if (deploy)
        {
            Reparameterizer.Reparameterize(model, fuseBn: true);
        }

        var x = randn([3, 3, 48, 40], generator: new Generator((ulong)Environment.TickCount));
        var copy = x.clone();
        Tensor[] tracked, inPlace;
        using (enable_grad())
        {
            Assert.True(is_grad_enabled());
            tracked = [model.call(x), .. model.forward_intermediates(x)];
        }

        using (no_grad())
        {
            inPlace = [model.call(x), .. model.forward_intermediates(x)];
        }

        Assert.True(x.eq(copy).all().item<bool>(), "the input is not modified");
        Assert.Equal(tracked.Length, inPlace.Length);
        for (int i = 0; i < tracked.Length; i++)
        {
            Assert.True(tracked[i].requires_grad, "the first pass ran with autograd");
            Assert.True(tracked[i].detach().eq(inPlace[i]).all().item<bool>(), $"output {i} differs between the in-place and autograd paths");
        }
    }

    [Fact]
    public void Deploy_checkpoint_loads_strictly_into_a_deploy_built_model_and_reproduces_its_logits()
    {
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-deploy.pth"));
        Assert.Equal(ModelForm.Deploy, checkpoint.Form);
        var model = new RepLKNetModel(OfficialFixture.Config, deploy: true);
        StateDictLoader.Load(model, checkpoint.State, strict: true, skipHead: false, "small-deploy.pth");
        model.eval();

        using var noGrad = no_grad();
        var logits = model.call(OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64));
        AssertClose(OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10), logits, "deploy logits");
    }

    [Fact]
    public void Our_reparameterization_of_the_train_checkpoint_equals_the_official_deploy_checkpoint()
    {
        using var scope = NewDisposeScope();
        using var train = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        using var deploy = CheckpointFile.Read(OfficialFixture.File("small-deploy.pth"));
        var model = new RepLKNetModel(OfficialFixture.Config);
        StateDictLoader.Load(model, train.State, strict: true, skipHead: false, "small-train.pth");
        model.eval();

        Assert.Equal(5, Reparameterizer.Reparameterize(model));

        var ours = StateDicts.Ordered(model).ToDictionary();
        var official = OfficialFixture.StateDictTable("deploy");
        Assert.Equal(official.Select(r => r.Key), StateDicts.Ordered(model).Select(kv => kv.Key));
        foreach (var (key, shape, dtype, _, _) in official)
        {
            Assert.Equal(shape, ours[key].shape);
            Assert.Equal(dtype == "int64" ? ScalarType.Int64 : ScalarType.Float32, ours[key].dtype);
            double diff = (ours[key].to(float64) - deploy.State[key].to(float64)).abs().max().item<double>();
            Assert.True(diff <= 1e-6, $"{key}: max |ours − official| = {diff:E2}");
        }

        using var noGrad = no_grad();
        var logits = model.call(OfficialFixture.ReadBin("small-input.bin", 2, 3, 64, 64));
        AssertClose(OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10), logits, "reparameterized logits");
    }

    [Theory]
    [InlineData("train", false)]
    [InlineData("deploy", true)]
    public void State_dict_keys_order_shapes_and_dtypes_match_the_official_table(string form, bool deploy)
    {
        var model = new RepLKNetModel(OfficialFixture.Config, deploy);
        var ours = StateDicts.Ordered(model).Select(kv => (kv.Key, kv.Value.shape, kv.Value.dtype == ScalarType.Int64 ? "int64" : kv.Value.dtype == ScalarType.Float32 ? "float32" : kv.Value.dtype.ToString()));
        var official = OfficialFixture.StateDictTable(form).Select(r => (r.Key, r.Shape, r.DType));
        Assert.Equal(official.Select(o => $"{o.Key} [{string.Join(",", o.Shape)}] {o.DType}"),
            ours.Select(o => $"{o.Key} [{string.Join(",", o.shape)}] {o.Item3}"));
    }

    [Fact]
    public void Loaded_values_match_the_oracle_checksums()
    {
        using var checkpoint = CheckpointFile.Read(OfficialFixture.File("small-train.pth"));
        foreach (var (key, _, _, sum, absSum) in OfficialFixture.StateDictTable("train"))
        {
            var t = checkpoint.State[key].to(float64);
            Assert.Equal(sum, t.sum().item<double>(), 1e-6 * Math.Max(1, Math.Abs(absSum)));
            Assert.Equal(absSum, t.abs().sum().item<double>(), 1e-6 * Math.Max(1, absSum));
        }
    }

    private static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= Tolerance, $"{what}: max abs diff {diff:E3} > {Tolerance:E0}");
    }
}
