using RepLKNet.Checkpoints;
using RepLKNet.Experiments;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using Linear = TorchSharp.Modules.Linear;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

public sealed class MobileNetV2Tests
{
    public MobileNetV2Tests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(13, true)]
    [InlineData(9, false)]
    [InlineData(5, true)]
    public void The_re_parameterized_network_matches_the_two_branch_one_within_1e_5(int kernel, bool shortcuts)
    {
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        var config = MobileNetV2Config.SmallImages(3, 7, width: 0.35).WithKernel(kernel) with { SmallKernel = 3, Shortcuts = shortcuts };
        manual_seed(seed);
        using var model = new MobileNetV2(config);
        RandomModels.RandomizeBatchNorms(model, generator);
        model.eval();
        var x = randn([3, 3, 30, 30], generator: generator);   // stride-2 blocks on an even and then an odd map
        using var noGrad = no_grad();
        var before = model.call(x).to(float64);
        int merged = model.SwitchToDeploy();
        var after = model.call(x).to(float64);
        Assert.Equal(model.Blocks.Count, merged);
        Assert.True(model.IsDeploy);
        Assert.DoesNotContain(StateDicts.Ordered(model), kv => kv.Key.Contains("small_conv", StringComparison.Ordinal));
        double err = (before - after).abs().max().item<double>() / before.abs().max().item<double>();
        Assert.True(err < 1e-5, $"deploy vs train form: {err:E2} relative (seed {seed})");
    }

    [Fact]
    public void Layouts_reach_7x7_and_shortcuts_follow_the_switch()
    {
        using var scope = NewDisposeScope();
        using var imagenet = new MobileNetV2(MobileNetV2Config.ImageNet(10));
        using var small = new MobileNetV2(MobileNetV2Config.SmallImages(1, 10));
        using var noGrad = no_grad();
        imagenet.eval();
        small.eval();
        Assert.Equal([2, 1280, 7, 7], imagenet.forward_features(randn(2, 3, 224, 224)).shape);
        Assert.Equal([2, 1280, 7, 7], small.forward_features(randn(2, 1, 28, 28)).shape);
        Assert.Equal([2, 10], small.call(randn(2, 1, 28, 28)).shape);
        Assert.Equal([5, 6], small.Config.LastStages);
        // Torchvision's MobileNetV2 (width 1, 1000 classes) has 3,504,872 parameters and 300.8 M MACs at 224.
        using var reference = new MobileNetV2(MobileNetV2Config.ImageNet());
        Assert.Equal(3_504_872, reference.parameters().Sum(p => p.numel()));
        Assert.InRange(reference.Config.Macs(224, 224, ModelForm.Deploy) / 1e6, 299, 302);
        // Shape-keeping blocks have shortcuts (10 of 17 in the ImageNet layout) unless switched off.
        Assert.Equal(10, imagenet.Blocks.Count(b => b.HasShortcut));
        using var plain = new MobileNetV2(MobileNetV2Config.ImageNet(10) with { Shortcuts = false });
        Assert.DoesNotContain(plain.Blocks, b => b.HasShortcut);
    }

    [Fact]
    public void Macs_match_a_count_from_the_convolutions_actually_run()
    {
        using var scope = NewDisposeScope();
        var config = MobileNetV2Config.SmallImages(1, 10).WithKernel(13, [5, 6]) with { SmallKernel = 3 };
        using var model = new MobileNetV2(config);
        model.eval();
        // Independent count: every conv's output elements × (in/groups)·k², taken from the tensors of a real forward pass.
        var x = randn(1, 1, 28, 28);
        Assert.Equal(config.Macs(28, 28, ModelForm.Train), CountByHooks(model, x));
        model.SwitchToDeploy();
        Assert.Equal(config.Macs(28, 28, ModelForm.Deploy), CountByHooks(model, x));
    }

    [Fact]
    public void Checkpoints_round_trip_in_both_forms_and_bad_files_are_named()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var config = MobileNetV2Config.SmallImages(1, 4).WithKernel(7) with { SmallKernel = 3 };
        using var model = new MobileNetV2(config);
        RandomModels.RandomizeBatchNorms(model, new Generator(3));
        model.eval();
        var x = randn(2, 1, 28, 28);
        using var noGrad = no_grad();
        var expected = model.call(x);
        MobileNetV2Checkpoint.Write(dir.File("train.safetensors"), model, ["a", "b", "c", "d"]);
        model.SwitchToDeploy();
        MobileNetV2Checkpoint.Write(dir.File("deploy.safetensors"), model);
        foreach (var name in new[] { "train", "deploy" })
        {
            using var read = MobileNetV2Checkpoint.Read(dir.File($"{name}.safetensors"));
            Assert.Equal(name == "deploy", read.IsDeploy);
            Assert.Equal(config.ToJson(), read.Config.ToJson());
            Assert.True((read.call(x) - expected).abs().max().item<float>() < 1e-5);
        }

        File.WriteAllBytes(dir.File("junk.safetensors"), [1, 2, 3]);
        Assert.Contains("junk.safetensors", Assert.ThrowsAny<Exception>(() => MobileNetV2Checkpoint.Read(dir.File("junk.safetensors"))).Message, StringComparison.Ordinal);
        Assert.Throws<ConfigException>(() => new MobileNetV2(config with { KernelSizes = [3, 3, 4, 3, 3, 3, 3] }));
        Assert.Throws<ConfigException>(() => new MobileNetV2(config with { SmallKernel = 9 }));
    }

    [Fact]
    public void The_kernel_size_tables_hold_the_papers_variants()
    {
        var b = MobileNetV2Config.SmallImages(1, 10);
        var shortcut = KernelSizeExperiment.Cells(KernelSizeTable.Shortcut, b);
        Assert.Equal([(true, 3), (true, 13), (false, 3), (false, 13)], shortcut.Select(c => (c.Config.Shortcuts, c.Config.KernelSizes.Max())));
        var reparam = KernelSizeExperiment.Cells(KernelSizeTable.Reparam, b);
        Assert.Equal([(3, (int?)null), (9, null), (9, 3), (13, null), (13, 3)], reparam.Select(c => (c.Config.KernelSizes.Min(), c.Config.SmallKernel)));
        var last = KernelSizeExperiment.Cells(KernelSizeTable.LastStage, b);
        Assert.Equal([[3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 7, 7], [3, 3, 3, 3, 3, 13, 13]], last.Select(c => c.Config.KernelSizes.ToArray()));
        Assert.Equal([71.76, 72.67, 73.09, 72.53, 73.24], reparam.Select(c => c.PaperTop1));
    }

    private static long CountByHooks(MobileNetV2 model, Tensor x)
    {
        long macs = 0;
        var handles = new List<Action>();
        foreach (var module in model.modules())
        {
            // ConvBn and a merged depthwise conv run their kernel directly (our depthwise op), so hook the modules that own it.
            switch (module)
            {
                case RepLKNet.Layers.ConvBn convBn:
                    handles.Add(convBn.register_forward_hook((m, input, output) =>
                    {
                        var w = convBn.Conv.weight!;
                        macs += output.numel() * w.shape[1] * w.shape[2] * w.shape[3];
                        return output;
                    }).remove);
                    break;
                case RepLKNet.Layers.ReparamLargeKernelConv dw when dw.IsDeploy:
                    handles.Add(dw.register_forward_hook((m, input, output) =>
                    {
                        macs += output.numel() * dw.KernelSize * dw.KernelSize;
                        return output;
                    }).remove);
                    break;
                case Linear linear:
                    handles.Add(linear.register_forward_hook((m, input, output) =>
                    {
                        macs += output.numel() * linear.weight!.shape[1];
                        return output;
                    }).remove);
                    break;
            }
        }

        using (no_grad())
        {
            model.call(x);
        }

        foreach (var remove in handles)
        {
            remove();
        }

        return macs;
    }
}
