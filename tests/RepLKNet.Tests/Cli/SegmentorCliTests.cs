using System.Text.Json;
using RepLKNet.Checkpoints;
using RepLKNet.IO;
using RepLKNet.Models.Segmentation;
using RepLKNet.Tests.Models;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Cli;

/// <summary><c>describe</c> and <c>forward</c> on segmenters, through the real CLI.</summary>
public sealed class SegmentorCliTests
{
    [Fact]
    public void Describe_lists_mmsegs_keys_of_a_segmenter_json()
    {
        using var dir = new TempDirectory();
        string config = dir.File("seg.json");
        File.WriteAllText(config, SegmentorTests.Small().ToJson());
        var result = CliRunner.Run("describe", "--arch", config, "--json");
        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(result.StdOut);
        var keys = doc.RootElement.GetProperty("state_dict").EnumerateArray().Select(e => e.GetProperty("key").GetString()!).ToList();
        using var model = new EncoderDecoder(SegmentorTests.Small(), device: new Device("meta"));
        Assert.Equal(model.Describe().StateDict.Select(e => e.Key), keys);
        Assert.Equal("backbone.stem.0.conv.weight", keys[0]);
        Assert.Equal("decode_head.conv_seg.weight", keys.First(k => k.StartsWith("decode_head.", StringComparison.Ordinal)));
        Assert.Equal("auxiliary_head.convs.0.bn.num_batches_tracked", keys[^1]);

        var preset = CliRunner.Run("describe", "--arch", "upernet-31B-ade20k-512", "--deploy");
        Assert.True(preset.ExitCode == 0, preset.StdErr);
        Assert.Contains("upernet-31B-ade20k-512, deploy form", preset.StdOut, StringComparison.Ordinal);
    }

    [Fact]
    public void Forward_writes_input_sized_logits_for_odd_non_square_inputs()
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var config = SegmentorTests.Small(alignCorners: true, classes: 5);
        string configPath = dir.File("seg.json");
        File.WriteAllText(configPath, config.ToJson());
        using var model = new EncoderDecoder(config);
        SegmentorTests.Randomize(model, 12);
        model.eval();
        SegmentorCheckpoint.Save(dir.File("seg.pth"), model, "seg");
        var input = randn([2, 3, 37, 50], generator: new Generator(4));
        RawTensorFile.Write(dir.File("x.bin"), input);

        var result = CliRunner.Run("forward", "--arch", configPath, "--weights", dir.File("seg.pth"), "--input", dir.File("x.bin"),
            "--input-shape", "2,3,37,50", "--output", dir.File("y.bin"));
        Assert.True(result.ExitCode == 0, result.StdErr);
        var written = RawTensorFile.Read(dir.File("y.bin"), [2, 5, 37, 50]);
        Assert.Equal(2L * 5 * 37 * 50 * 4, new FileInfo(dir.File("y.bin")).Length);
        using (no_grad())
        {
            Assert.True((written - model.call(input)).abs().max().item<float>() <= 1e-5f);
        }

        Assert.Contains("sample 1: logits [5, 37, 50]", result.StdOut, StringComparison.Ordinal);

        // Without --arch the checkpoint's own record is used; --reparam gives the same logits.
        var again = CliRunner.Run("forward", "--weights", dir.File("seg.pth"), "--input", dir.File("x.bin"), "--input-shape", "2,3,37,50",
            "--output", dir.File("y2.bin"), "--reparam");
        Assert.True(again.ExitCode == 0, again.StdErr);
        Assert.True((RawTensorFile.Read(dir.File("y2.bin"), [2, 5, 37, 50]) - written).abs().max().item<float>() <= 1e-4f);

        var bad = CliRunner.Run("forward", "--arch", configPath, "--weights", dir.File("seg.pth"), "--input", dir.File("x.bin"),
            "--input-shape", "2,1,37,50");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("--input-shape", bad.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Forward_under_junk_fill_reads_no_unwritten_memory_and_matches_float64()
    {
        // REPLKNET_CPU_FILL=junk: every new CPU tensor starts as NaN, so any op that reads memory it never wrote (as
        // libtorch 2.10's oneDNN convs do at 24 channels without DenseConv2d's padding) turns the logits NaN.
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var config = SegmentorTests.Small(alignCorners: false, classes: 7);
        string configPath = dir.File("seg.json");
        File.WriteAllText(configPath, config.ToJson());
        using var model = new EncoderDecoder(config);
        SegmentorTests.Randomize(model, Random.Shared.Next());
        model.eval();
        SegmentorCheckpoint.Save(dir.File("seg.pth"), model, "seg");
        var input = randn([2, 3, 45, 38], generator: new Generator((ulong)Random.Shared.NextInt64(1, long.MaxValue)));
        RawTensorFile.Write(dir.File("x.bin"), input);

        var result = CliRunner.Run(new Dictionary<string, string?> { ["REPLKNET_CPU_FILL"] = "junk" }, "forward", "--arch", configPath,
            "--weights", dir.File("seg.pth"), "--input", dir.File("x.bin"), "--input-shape", "2,3,45,38", "--output", dir.File("y.bin"));
        Assert.True(result.ExitCode == 0, result.StdErr);
        var written = RawTensorFile.Read(dir.File("y.bin"), [2, 7, 45, 38]);
        Assert.Equal(0, written.isnan().sum().item<long>());
        model.to(float64);
        using (no_grad())
        {
            var reference = model.call(input.to(float64));
            double error = (written.to(float64) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
            Assert.True(error < 1e-4, $"relative error {error:E2} against the float64 model");
        }
    }

    [Theory]
    [InlineData(false, "deploy.pth")]
    [InlineData(true, "fused.safetensors")]
    public void Reparam_converts_a_segmenter_checkpoint_verified_and_keeps_its_records(bool fuse, string file)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        using var model = new EncoderDecoder(SegmentorTests.Small(classes: 3));
        SegmentorTests.Randomize(model, 17);
        model.eval();
        SegmentorCheckpoint.Save(dir.File("train.pth"), model, "seg", ["a", "b", "c"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)]);
        string[] args = ["reparam", "--weights", dir.File("train.pth"), "--out", dir.File(file), "--input-size", "45"];
        var result = CliRunner.Run(fuse ? [.. args, "--fuse-bn"] : args);
        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Contains("decode_head", result.StdOut, StringComparison.Ordinal);
        Assert.Contains("end to end: max abs diff", result.StdOut, StringComparison.Ordinal);

        var loaded = SegmentorCheckpoint.Load(dir.File(file));
        using var converted = loaded.Model;
        converted.eval();
        Assert.Equal(fuse ? RepLKNet.Models.ModelForm.Fused : RepLKNet.Models.ModelForm.Deploy, loaded.Info.Form);
        Assert.Equal(["a", "b", "c"], loaded.Info.Classes!);
        var input = randn([1, 3, 39, 52], generator: new Generator(6));
        using (no_grad())
        {
            var reference = model.call(input);
            double diff = (reference - converted.call(input)).abs().max().item<float>();
            Assert.True(diff <= 1e-4 * Math.Max(1, reference.abs().max().item<float>()), $"converted vs train form: {diff:E3}");
        }

        var again = CliRunner.Run("reparam", "--weights", dir.File(file), "--out", dir.File("again.pth"));
        Assert.Equal(2, again.ExitCode);
        Assert.Contains("--weights", again.StdErr, StringComparison.Ordinal);
        Assert.Contains("already in the", again.StdErr, StringComparison.Ordinal);
    }
}
