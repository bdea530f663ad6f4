using System.Collections;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Checkpoints;

public sealed class CheckpointLayoutAndKeyTests
{
    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, NumClasses = 4,
    };

    public CheckpointLayoutAndKeyTests() => Torch.EnsureLoaded();

    [Fact]
    public void A_channels_last_state_dict_loads_with_its_dense_values()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        RandomModels.RandomizeBatchNorms(model, new Generator((ulong)Environment.TickCount64));
        var expected = StateDicts.Ordered(model).Where(kv => kv.Value.dtype == float32).ToList();
        var file = new PthFile();
        foreach (var (key, tensor) in expected)
        {
            file.AddTensor(key, tensor, channelsLast: true);
        }

        string path = dir.File("channels-last.pth");
        file.Write(path);
        using var back = CheckpointFile.Read(path);

        Assert.Contains(expected, kv => kv.Value.dim() == 4);
        foreach (var (key, tensor) in expected)
        {
            Assert.Equal(tensor.shape, back.State[key].shape);
            Assert.True(tensor.equal(back.State[key]).all().item<bool>(), key);
        }
    }

    [Fact]
    public void Transposed_and_shared_storage_views_load_with_their_recorded_offsets_and_strides()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var conv = randn(6, 3, 5, 5);
        var linear = randn(6, 4); // saved as linear.t(): size (4, 6), stride (1, 4) on linear's storage
        var shared = randn(40);
        var file = new PthFile().AddTensor("conv.weight", conv, channelsLast: true);
        int lin = file.AddStorage(linear.data<float>().ToArray());
        file.AddView("fc.weight", lin, 0, [4, 6], [1, 4]);
        int s = file.AddStorage(shared.data<float>().ToArray());
        file.AddView("a", s, 2, [3, 4], [4, 1])      // elements 2..13
            .AddView("b", s, 14, [6], [1])           // elements 14..19
            .AddView("c", s, 21, [2, 3], [1, 5])     // a strided view: 21, 26, 31 / 22, 27, 32
            .AddView("d", s, 39, [], []);            // a scalar at the end of the storage
        string path = dir.File("views.pth");
        file.Write(path);

        using var back = CheckpointFile.Read(path);

        Assert.True(conv.equal(back.State["conv.weight"]).all().item<bool>());
        Assert.True(linear.t().equal(back.State["fc.weight"]).all().item<bool>());
        Assert.True(shared[2..14].view(3, 4).equal(back.State["a"]).all().item<bool>());
        Assert.True(shared[14..20].equal(back.State["b"]).all().item<bool>());
        Assert.True(shared.as_strided([2, 3], [1, 5], 21).equal(back.State["c"]).all().item<bool>());
        Assert.Equal(shared[39].item<float>(), back.State["d"].item<float>());
        Assert.All(back.State.Values, t => Assert.True(t.is_contiguous()));
    }

    [Theory]
    [InlineData(4L, new long[] { 3, 3 }, new long[] { 3, 1 })]   // needs 13 elements of 10
    [InlineData(0L, new long[] { 2, 2 }, new long[] { 9, 1 })]   // the stride reaches element 10
    [InlineData(11L, new long[] { 0 }, new long[] { 1 })]        // an empty view past the end
    [InlineData(0L, new long[] { 2 }, new long[] { -1 })]        // negative stride
    public void A_view_outside_its_storage_fails_with_one_line_naming_file_and_key(long offset, long[] size, long[] stride)
    {
        using var dir = new TempDirectory();
        var file = new PthFile();
        int s = file.AddStorage(new float[10]);
        file.AddView("ok", s, 0, [10], [1]).AddView("stages.0.bad.weight", s, offset, size, stride);
        string path = dir.File("out-of-bounds.pth");
        file.Write(path);

        var e = Assert.Throws<CheckpointException>(() => CheckpointFile.Read(path));

        Assert.Contains($"'{path}'", e.Message, StringComparison.Ordinal);
        Assert.Contains("'stages.0.bad.weight'", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    public static TheoryData<string> Formats => ["pth", "pth-model", "pth-state_dict", "safetensors", "replknet"];

    [Theory]
    [MemberData(nameof(Formats))]
    public void Data_parallel_module_prefixes_come_off_in_every_format(string format)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        RandomModels.RandomizeBatchNorms(model, new Generator((ulong)Environment.TickCount64));
        var prefixed = StateDicts.Ordered(model).Select(kv => KeyValuePair.Create("module." + kv.Key, kv.Value)).ToList();
        string path = dir.File(format == "safetensors" || format == "replknet" ? "dp.safetensors" : "dp.pth");
        switch (format)
        {
            case "safetensors":
                SafetensorsFile.Write(path, prefixed, metadata: null);
                break;
            case "replknet":
                CheckpointFile.WriteRepLKNet(path, prefixed, new CheckpointMetadata("tiny", Tiny, ModelForm.Train));
                break;
            default:
                var table = new Hashtable();
                foreach (var (key, tensor) in prefixed)
                {
                    table[key] = tensor;
                }

                using (var fs = File.Create(path))
                {
                    PyTorchPickler.PickleStateDict(fs, format == "pth" ? table : new Hashtable { [format[4..]] = table, ["epoch"] = 3 });
                }

                break;
        }

        using var back = CheckpointFile.Read(path);

        Assert.Equal(StateDicts.Ordered(model).Select(kv => kv.Key).Order(), back.State.Keys.Order());
        var target = new RepLKNetModel(Tiny);
        Assert.True(StateDictLoader.Load(target, back.State, strict: true, skipHead: false, path).IsExact);
        Assert.True(model.state_dict()["stem.0.bn.running_var"].equal(target.state_dict()["stem.0.bn.running_var"]).all().item<bool>());
    }

    [Fact]
    public void Normalization_strips_backbone_then_module_and_leaves_partial_prefixes()
    {
        var mmseg = StateDictKeys.Normalize(
            [KeyValuePair.Create("backbone.module.stem.0.conv.weight", 1), KeyValuePair.Create("backbone.module.head.weight", 2),
             KeyValuePair.Create("decode_head.conv_seg.weight", 3)],
            "backbone.");
        Assert.Equal(["stem.0.conv.weight", "head.weight"], mmseg.Select(kv => kv.Key.Normalized));
        Assert.Equal(["backbone.module.stem.0.conv.weight", "backbone.module.head.weight"], mmseg.Select(kv => kv.Key.Original));

        var partial = StateDictKeys.Normalize([KeyValuePair.Create("module.a", 1), KeyValuePair.Create("b", 2)], keepPrefix: null);
        Assert.Equal(["module.a", "b"], partial.Select(kv => kv.Key.Normalized));
    }
}
