using RepLKNet.Analysis;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

public sealed class ResNetTests
{
    public ResNetTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(18, 11_689_512, 512)]
    [InlineData(50, 25_557_032, 2048)]
    public void TorchVision_ResNets_keep_torchvision_keys_sizes_and_feature_maps(int depth, long parameters, long channels)
    {
        using var scope = NewDisposeScope();
        using var net = new TorchVisionResNet(depth);
        Assert.Equal(parameters, net.parameters().Sum(p => p.numel()));
        var keys = StateDicts.Ordered(net).Select(kv => kv.Key).ToList();
        Assert.Equal("conv1.weight", keys[0]);
        Assert.Contains("layer4.1.bn2.running_var", keys);
        Assert.Equal(["fc.weight", "fc.bias"], keys.TakeLast(2));
        net.eval();
        using var noGrad = no_grad();
        var x = randn(2, 3, 96, 96);
        var features = net.forward_features(x);
        Assert.Equal([2, channels, 3, 3], features.shape);
        Assert.Equal([2, 1000], net.call(x).shape);
        // Grey input runs through the RGB stem as three equal channels.
        var grey = randn(1, 1, 64, 64);
        Assert.True((net.forward_features(grey) - net.forward_features(grey.expand(-1, 3, -1, -1))).abs().max().item<float>() == 0);
    }

    [Fact]
    public void A_torchvision_format_file_loads_into_an_erf_subject_and_mismatches_are_named()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        using var net = new TorchVisionResNet(18, 10);
        CheckpointFile.WritePyTorch(dir.File("r18.pth"), StateDicts.Ordered(net));
        using (var subject = ErfSubject.Create("resnet18", dir.File("r18.pth")))
        {
            Assert.Equal("ResNet-18", subject.Label);
            Assert.Equal(0, RandomModels.MaxStateDiff(net, subject.Module));
            Assert.All(subject.Module.parameters(), p => Assert.False(p.requires_grad));
        }

        var state = StateDicts.Ordered(net).Where(kv => !kv.Key.StartsWith("layer4.1.", StringComparison.Ordinal));
        CheckpointFile.WritePyTorch(dir.File("partial.pth"), state);
        var e = Assert.Throws<CheckpointException>(() => ErfSubject.Create("resnet18", dir.File("partial.pth")));
        Assert.Contains("partial.pth", e.Message, StringComparison.Ordinal);
        Assert.Contains("layer4.1.", e.Message, StringComparison.Ordinal);
        Assert.Throws<ConfigException>(() => new TorchVisionResNet(34));
    }
}
