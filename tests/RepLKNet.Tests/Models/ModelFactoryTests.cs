using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

/// <summary>One factory for every family, the common model surface, and the one place that fits a configuration.</summary>
public sealed class ModelFactoryTests
{
    public ModelFactoryTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData("RepLKNet-FMNIST", ModelFamily.RepLKNet, "RepLKNet-FMNIST", 1, 10, 128)]
    [InlineData("fmnist", ModelFamily.RepLKNet, "RepLKNet-FMNIST", 1, 10, 128)]
    [InlineData("ResNet-18", ModelFamily.ResNet, "ResNet-18", 3, 1000, 512)]
    [InlineData("mobilenetv2-k7", ModelFamily.MobileNetV2, "MobileNetV2", 3, 1000, 1280)]
    public void Every_family_is_built_by_name_with_its_own_defaults(string arch, ModelFamily family, string name, int inChannels, int classes, int features)
    {
        Assert.Equal(family, ModelFactory.FamilyOf(arch));
        using var model = ModelFactory.Create(arch, device: new Device("meta"));
        Assert.Equal(family, model.Family);
        Assert.Equal(name, model.Name);
        Assert.Equal(inChannels, model.InChannels);
        Assert.Equal(classes, model.NumClasses);
        Assert.Equal(features, model.NumFeatures);
        Assert.Same(model, model.AsModule());
    }

    [Fact]
    public void A_fit_sets_classes_channels_and_drop_path_in_one_place()
    {
        var variant = ModelRegistry.Find("31B")!.Config;
        var fitted = ModelFactory.Fit(variant, new ModelFit(7, 1, 0.1));
        Assert.Equal(variant with { NumClasses = 7, InChannels = 1, DropPathRate = 0.1 }, fitted);
        Assert.Same(variant, ModelFactory.Fit(variant, new ModelFit()));
        // A backbone configuration becomes a classifier.
        var backbone = variant with { NumClasses = null, OutIndices = [0, 1, 2, 3], NormIntermediateFeatures = true };
        var classifier = ModelFactory.Fit(backbone, new ModelFit(NumClasses: 5));
        Assert.Equal((5, null, false), (classifier.NumClasses, classifier.OutIndices, classifier.NormIntermediateFeatures));

        using var model = (RepLKNetModel)ModelFactory.Create("RepLKNet-FMNIST", new ModelFit(4, 3, 0.2), new Device("meta"));
        Assert.Equal(ModelFactory.Fit(ModelRegistry.Find("RepLKNet-FMNIST")!.Config, new ModelFit(4, 3, 0.2)), model.Config);

        // MobileNetV2 fitted to small images: the experiments' layout; ResNet: the classes.
        using var mobile = (MobileNetV2)ModelFactory.Create("mobilenetv2-k13", new ModelFit(10, 1) { SmallImages = true }, new Device("meta"));
        Assert.Equal(MobileNetV2Config.SmallImages(1, 10).WithKernel(13).ToJson(), mobile.Config.ToJson());
        Assert.Equal(4, mobile.Config.TotalStride);
        using var imagenet = (MobileNetV2)ModelFactory.Create("mobilenetv2", device: new Device("meta"));
        Assert.Equal(32, imagenet.Config.TotalStride);
        using var resnet = ModelFactory.Create("resnet50", new ModelFit(NumClasses: 3, InChannels: 1), new Device("meta"));
        Assert.Equal(3, resnet.NumClasses);
    }

    [Fact]
    public void Unknown_names_and_unsuitable_fits_are_named_in_library_words()
    {
        Assert.Null(ModelFactory.FamilyOf("vgg16"));
        var unknown = Assert.Throws<ConfigException>(() => ModelFactory.Create("vgg16"));
        Assert.Equal("arch", unknown.ParamName);
        Assert.StartsWith("arch 'vgg16' is neither a model (RepLKNet-31B", unknown.Message, StringComparison.Ordinal);
        Assert.Contains("resnet18", unknown.Message, StringComparison.Ordinal);
        var registry = Assert.Throws<ConfigException>(() => ModelRegistry.Resolve("nosuch"));
        Assert.Equal("arch", registry.ParamName);
        Assert.StartsWith("arch 'nosuch' is neither a model variant", registry.Message, StringComparison.Ordinal);
        var channels = Assert.Throws<ConfigException>(() => ModelFactory.Create("resnet18", new ModelFit(InChannels: 4)));
        Assert.Equal("InChannels", channels.ParamName);
        Assert.Equal(ModelFamily.MobileNetV2, ModelFactory.FamilyOf("mobilenetv2-k4"));
        Assert.Throws<ConfigException>(() => ModelFactory.Create("mobilenetv2-k4"));
    }

    [Theory]
    [InlineData("RepLKNet-FMNIST", 32)]
    [InlineData("resnet18", 64)]
    [InlineData("mobilenetv2", 64)]
    public void Forward_is_the_head_on_the_features_and_feature_info_gives_every_stage(string arch, int size)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        using var model = ModelFactory.Create(arch, new ModelFit(5, arch.StartsWith("RepLKNet", StringComparison.Ordinal) ? 1 : 3));
        var module = model.AsModule();
        RandomModels.RandomizeBatchNorms(module, new Generator(4));
        module.eval();
        using var noGrad = no_grad();
        var x = randn(2, model.InChannels, size, size);
        var features = model.forward_features(x);
        var last = model.FeatureInfo[^1];
        Assert.Equal([2, model.NumFeatures, size / last.Reduction, size / last.Reduction], features.shape);
        Assert.Equal(module.call(x).data<float>().ToArray(), model.forward_head(features).data<float>().ToArray());
        Assert.Equal([2, model.NumFeatures], model.forward_head(features, preLogits: true).shape);
        // Each stage's module exists and the strides grow.
        var names = module.named_modules().Select(m => m.name).ToHashSet();
        Assert.All(model.FeatureInfo, f => Assert.Contains(f.Module, names));
        Assert.Equal(model.FeatureInfo.Select(f => f.Reduction).Order(), model.FeatureInfo.Select(f => f.Reduction));
    }

    [Fact]
    public void MobileNetV2_feature_info_matches_the_blocks_outputs()
    {
        using var scope = NewDisposeScope();
        using var model = new MobileNetV2(MobileNetV2Config.SmallImages(1, 10, 0.25));
        model.eval();
        using var noGrad = no_grad();
        var x = randn(1, 1, 28, 28);
        var outputs = new Dictionary<string, Tensor>();
        var h = nn.functional.relu6(((nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == "stem").module).call(x));
        for (int i = 0; i < model.Blocks.Count; i++)
        {
            h = model.Blocks[i].call(h);
            outputs[$"blocks.{i}"] = h;
        }

        foreach (var f in model.FeatureInfo)
        {
            Assert.Equal([1, f.Channels, 28 / f.Reduction, 28 / f.Reduction], outputs[f.Module].shape);
        }
    }

    [Fact]
    public void Reparameterize_and_describe_work_on_every_family()
    {
        using var replknet = ModelFactory.Create("RepLKNet-FMNIST", device: new Device("meta"));
        using var resnet = ModelFactory.Create("resnet18", device: new Device("meta"));
        using var mobile = ModelFactory.Create("mobilenetv2", device: new Device("meta"));
        foreach (var model in new[] { replknet, resnet, mobile })
        {
            var description = model.Describe();
            Assert.Equal(StateDicts.Ordered(model.AsModule()).Select(kv => (kv.Key, kv.Value.shape)),
                description.StateDict.Select(e => (e.Key, e.Shape.ToArray())));
            Assert.Equal(model.AsModule().parameters().Sum(p => p.numel()), description.Parameters);
            Assert.Equal((model.Name, model.Family, model.NumClasses), (description.Name, description.Family, description.NumClasses));
        }

        Assert.Equal(3, replknet.Reparameterize());
        Assert.Equal(0, replknet.Reparameterize());
        Assert.Contains(replknet.Describe().StateDict, e => e.Key.EndsWith("large_kernel.lkb_reparam.weight", StringComparison.Ordinal));
        Assert.Equal(0, resnet.Reparameterize(fuseBn: true));
        Assert.Equal(17, mobile.Reparameterize()); // every depthwise conv + BN becomes one biased conv, even without a small kernel
    }
}
