using System.Collections;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Checkpoints;

public sealed class CheckpointTests
{
    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, NumClasses = 4,
    };

    public CheckpointTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData("model.safetensors", CheckpointFormat.RepLKNet)]
    [InlineData("model.pth", CheckpointFormat.PyTorch)]
    public void Round_trip_preserves_every_key_in_order_with_dtype_and_value(string name, CheckpointFormat format)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        RandomModels.RandomizeBatchNorms(model, new Generator((ulong)Environment.TickCount64));
        SetBatchCounts(model, 7);
        string path = dir.File(name);
        var metadata = new CheckpointMetadata("tiny", Tiny, ModelForm.Train, ["a", "b", "c", "d"], "runs/x/state.json");

        CheckpointFile.Write(path, StateDicts.Ordered(model), metadata);
        using var back = CheckpointFile.Read(path);

        Assert.Equal(format, back.Format);
        var expected = StateDicts.Ordered(model);
        if (format != CheckpointFormat.PyTorch)
        {
            // Formats with an order keep it; a pickled dict is matched by key.
            Assert.Equal(expected.Select(kv => kv.Key), back.State.Keys);
            Assert.Equal(metadata with { Config = back.Metadata!.Config, ClassNames = back.Metadata.ClassNames }, back.Metadata);
            Assert.Equal(Tiny.ToJson(), back.Metadata.Config.ToJson());
            Assert.Equal(["a", "b", "c", "d"], back.Metadata.ClassNames);
        }

        Assert.Equal(expected.Count, back.State.Count);
        foreach (var (key, tensor) in expected)
        {
            Assert.Equal(tensor.dtype, back.State[key].dtype);
            Assert.Equal(tensor.shape, back.State[key].shape);
            Assert.True(tensor.equal(back.State[key]).all().item<bool>(), key);
        }

        Assert.Equal(7L, back.State["stem.0.bn.num_batches_tracked"].item<long>());
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp", SearchOption.AllDirectories));
    }

    [Fact]
    public void Plain_safetensors_without_metadata_reads_as_safetensors()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        string path = dir.File("plain.safetensors");
        SafetensorsFile.Write(path, StateDicts.Ordered(model), metadata: null);
        using var back = CheckpointFile.Read(path);
        Assert.Equal(CheckpointFormat.Safetensors, back.Format);
        Assert.Null(back.Metadata);
        Assert.Equal(ModelForm.Train, back.Form);
    }

    [Fact]
    public void Training_containers_give_model_or_model_ema_and_mmseg_strips_backbone()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        var ema = new RepLKNetModel(Tiny);
        string training = dir.File("checkpoint-best.pth");
        using (var fs = File.Create(training))
        {
            PyTorchPickler.PickleStateDict(fs, new Hashtable
            {
                ["model"] = ToTable(model, string.Empty),
                ["model_ema"] = ToTable(ema, string.Empty),
                ["epoch"] = 12,
                ["optimizer"] = new Hashtable { ["state"] = new Hashtable(), ["param_groups"] = new ArrayList() },
            });
        }

        using (var plain = CheckpointFile.Read(training))
        using (var averaged = CheckpointFile.Read(training, ema: true))
        {
            Assert.Equal("'model'", plain.Source);
            Assert.Equal("'model_ema'", averaged.Source);
            Assert.True(plain.State["head.weight"].equal(model.state_dict()["head.weight"]).all().item<bool>());
            Assert.True(averaged.State["head.weight"].equal(ema.state_dict()["head.weight"]).all().item<bool>());
        }

        string mmseg = dir.File("upernet.pth");
        var backbone = new RepLKNetModel(Tiny with { NumClasses = null, OutIndices = [0, 1] });
        var table = ToTable(backbone, "backbone.");
        table["decode_head.conv_seg.weight"] = zeros(3, 3);
        using (var fs = File.Create(mmseg))
        {
            PyTorchPickler.PickleStateDict(fs, new Hashtable { ["state_dict"] = table, ["meta"] = new Hashtable() });
        }

        using var seg = CheckpointFile.Read(mmseg);
        Assert.Equal(StateDicts.Ordered(backbone).Select(kv => kv.Key).Order(), seg.State.Keys.Order());
        var report = StateDictLoader.Load(new RepLKNetModel(Tiny with { NumClasses = null, OutIndices = [0, 1] }), seg.State, strict: true, skipHead: false, "upernet.pth");
        Assert.True(report.IsExact);

        var e = Assert.Throws<CheckpointException>(() => CheckpointFile.Read(mmseg, ema: true));
        Assert.Contains("no 'model_ema'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Strict_loading_names_missing_unexpected_and_mismatched_keys_and_copies_nothing()
    {
        using var scope = NewDisposeScope();
        var source = StateDicts.Ordered(new RepLKNetModel(Tiny)).ToDictionary();
        source.Remove("stem.1.conv.weight");
        source["extra.weight"] = zeros(2);
        source["stem.0.conv.weight"] = zeros(8, 3, 5, 5);
        var target = new RepLKNetModel(Tiny);
        var before = target.state_dict()["head.weight"].clone();

        var e = Assert.Throws<CheckpointException>(() => StateDictLoader.Load(target, source, strict: true, skipHead: false, "'x.pth'"));

        Assert.Contains("'x.pth' does not fit", e.Message, StringComparison.Ordinal);
        Assert.Contains("1 missing key(s): stem.1.conv.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("1 unexpected key(s): extra.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("stem.0.conv.weight checkpoint [8, 3, 5, 5] vs model [8, 3, 3, 3]", e.Message, StringComparison.Ordinal);
        Assert.True(before.equal(target.state_dict()["head.weight"]).all().item<bool>(), "strict failure must not half-load");

        var report = StateDictLoader.Load(target, source, strict: false, skipHead: false, "'x.pth'");
        Assert.Equal(["stem.1.conv.weight"], report.Missing);
        Assert.False(before.equal(target.state_dict()["head.weight"]).all().item<bool>());
    }

    [Fact]
    public void A_head_of_another_size_can_be_skipped_for_transfer_learning()
    {
        using var scope = NewDisposeScope();
        var source = StateDicts.Ordered(new RepLKNetModel(Tiny with { NumClasses = 1000 })).ToDictionary();
        var target = new RepLKNetModel(Tiny);
        var report = StateDictLoader.Load(target, source, strict: true, skipHead: true, "'in1k.pth'");
        Assert.Equal(["head.weight", "head.bias"], report.SkippedHead);
        Assert.True(source["stem.0.conv.weight"].equal(target.state_dict()["stem.0.conv.weight"]).all().item<bool>());
    }

    public static TheoryData<string, string> CorruptInputs => new()
    {
        { "empty", "is empty" },
        { "random", "is not a checkpoint" },
        { "text", "is not a checkpoint" },
        { "pth-truncated-10", "not a readable PyTorch checkpoint" },
        { "pth-truncated-half", "not a readable PyTorch checkpoint" },
        { "pth-truncated-end", "not a readable PyTorch checkpoint" },
        { "st-truncated-header", "truncated" },
        { "st-truncated-data", "truncated" },
        { "st-truncated-last-byte", "truncated" },
        { "st-bad-json", "is corrupt" },
        { "st-bad-offsets", "is corrupt" },
        { "legacy-pickle", "legacy" },
        { "missing", "no such checkpoint file" },
    };

    [Theory]
    [MemberData(nameof(CorruptInputs))]
    public void Corrupt_inputs_fail_with_one_clear_error_naming_the_file(string kind, string expected)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var model = new RepLKNetModel(Tiny);
        string good = dir.File("good.safetensors");
        SafetensorsFile.Write(good, StateDicts.Ordered(model), null);
        string pth = dir.File("good.pth");
        CheckpointFile.WritePyTorch(pth, StateDicts.Ordered(model));
        byte[] st = File.ReadAllBytes(good);
        byte[] pt = File.ReadAllBytes(pth);
        int headerEnd = 8 + (int)BitConverter.ToUInt64(st, 0);
        byte[] content = kind switch
        {
            "empty" => [],
            "random" => RandomBytes(4096),
            "text" => "model = RepLKNet-31B\n"u8.ToArray(),
            "pth-truncated-10" => pt[..10],
            "pth-truncated-half" => pt[..(pt.Length / 2)],
            "pth-truncated-end" => pt[..^30],
            "st-truncated-header" => st[..(headerEnd / 2)],
            "st-truncated-data" => st[..(headerEnd + (st.Length - headerEnd) / 2)],
            "st-truncated-last-byte" => st[..^1],
            "st-bad-json" => [.. st[..8], .. Enumerable.Repeat((byte)'{', headerEnd - 8), .. st[headerEnd..]],
            "st-bad-offsets" => [.. st[..8], .. System.Text.Encoding.UTF8.GetBytes(System.Text.Encoding.UTF8.GetString(st, 8, headerEnd - 8)
                .Replace("\"data_offsets\":[0,", "\"data_offsets\":[4,", StringComparison.Ordinal)), .. st[headerEnd..]],
            "legacy-pickle" => [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19],
            _ => [],
        };
        string path = dir.File($"{kind}.ckpt");
        if (kind != "missing")
        {
            File.WriteAllBytes(path, content);
        }

        var e = Assert.Throws<CheckpointException>(() => CheckpointFile.Read(path));
        Assert.Contains($"'{path}'", e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_checkpoint_of_another_architecture_is_rejected_by_name_without_loading()
    {
        var e = Assert.Throws<CheckpointException>(() =>
            ModelLoader.Load(OfficialFixture.File("small-train.pth"), new ModelLoadOptions { Arch = "RepLKNet-31B" }));
        Assert.Contains("small-train.pth", e.Message, StringComparison.Ordinal);
        Assert.Contains("does not fit", e.Message, StringComparison.Ordinal);
        Assert.Contains("RepLKNet-31B", e.Message, StringComparison.Ordinal);
        Assert.Contains("shape mismatch", e.Message, StringComparison.Ordinal);
    }

    private static byte[] RandomBytes(int n)
    {
        var bytes = new byte[n];
        Random.Shared.NextBytes(bytes);
        bytes[0] = 0x13; // not 'P', not a plausible safetensors length prefix followed by '{'
        return bytes;
    }

    private static Hashtable ToTable(RepLKNetModel model, string prefix)
    {
        var table = new Hashtable();
        foreach (var (key, tensor) in StateDicts.Ordered(model))
        {
            table[prefix + key] = tensor;
        }

        return table;
    }

    private static void SetBatchCounts(RepLKNetModel model, long value)
    {
        using var noGrad = no_grad();
        foreach (var (key, tensor) in StateDicts.Ordered(model).Where(kv => kv.Key.EndsWith("num_batches_tracked", StringComparison.Ordinal)))
        {
            tensor.fill_(value);
        }
    }
}
