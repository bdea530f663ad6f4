using System.Diagnostics;
using System.Text.Json;
using RepLKNet.Checkpoints;
using RepLKNet.IO;
using RepLKNet.Models.Segmentation;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Models;

/// <summary>
/// Checkpoint interchange with PyTorch and MMSeg-structured heads (mmseg_heads_reference.py, Debian's python3-torch,
/// which .ci/run installs): our .pth loads with torch.load into heads built the MMSeg way, strictly and in MMSeg's key
/// order, and gives our logits; an mmcv-style {'meta', 'state_dict', 'optimizer'} file written by torch.save loads here
/// strictly and gives PyTorch's logits.
/// </summary>
public sealed class SegmentorPyTorchTests
{
    internal const string Python = "/usr/bin/python3";

    [PyTorchReferenceTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void Checkpoints_cross_between_pytorch_and_us_with_the_same_logits(bool alignCorners)
    {
        using var dir = new TempDirectory();
        using var scope = NewDisposeScope();
        var config = SegmentorTests.Small(alignCorners, classes: 3);
        using var model = new EncoderDecoder(config);
        SegmentorTests.Randomize(model, 31);
        model.eval();
        string configPath = dir.File("seg.json");
        File.WriteAllText(configPath, config.ToJson());
        SegmentorCheckpoint.Save(dir.File("ours.pth"), model, "seg", ["sky", "road", "car"], [(10, 20, 30), (40, 50, 60), (70, 80, 90)]);

        var input = randn([1, 3, 45, 61], generator: new Generator(3));
        using (no_grad())
        {
            var features = model.ExtractFeatures(input);
            var shapes = new Dictionary<string, long[]>();
            for (int i = 0; i < features.Count; i++)
            {
                RawTensorFile.Write(dir.File($"f{i}.bin"), features[i]);
                shapes[$"f{i}"] = features[i].shape;
            }

            File.WriteAllText(dir.File("shapes.json"), JsonSerializer.Serialize(shapes));
            var (decode, aux) = model.ForwardTrain(input);
            RawTensorFile.Write(dir.File("decode.bin"), decode);
            RawTensorFile.Write(dir.File("aux.bin"), aux!);
        }

        var result = RunReference(configPath, dir.File("ours.pth"), dir.Path);
        Assert.Equal(["meta", "state_dict"], result.GetProperty("top_level_keys").EnumerateArray().Select(e => e.GetString()!));
        Assert.Equal(["sky", "road", "car"], result.GetProperty("classes").EnumerateArray().Select(e => e.GetString()!));
        Assert.True(result.GetProperty("classes_is_tuple").GetBoolean(), "meta['CLASSES'] is a tuple in MMSeg");
        Assert.Equal(70, result.GetProperty("palette")[2][0].GetInt32());
        Assert.True(result.GetProperty("decode_head_key_order_matches").GetBoolean(), "decode_head keys in MMSeg's order");
        Assert.True(result.GetProperty("auxiliary_head_key_order_matches").GetBoolean(), "auxiliary_head keys in MMSeg's order");
        foreach (var name in new[] { "decode", "aux" })
        {
            double diff = result.GetProperty($"{name}_max_abs_diff").GetDouble();
            double scale = Math.Max(1, result.GetProperty($"{name}_scale").GetDouble());
            Assert.True(diff <= 2e-5 * scale, $"{name} logits: PyTorch vs ours max |diff| {diff:E3}");
        }

        // The mmcv-style file (meta with Python values, OrderedDict state, AdamW state) loads strictly.
        var loaded = SegmentorCheckpoint.Load(dir.File("mmseg.pth"), configPath, strict: true);
        using var theirs = loaded.Model;
        theirs.eval();
        Assert.True(loaded.Report.IsExact, loaded.Report.Describe());
        Assert.Equal(["a", "b", "c"], loaded.Info.Classes!);
        Assert.Equal((7, 8, 9), loaded.Info.Palette![2]);
        using (no_grad())
        {
            var (decode, aux) = theirs.ForwardTrain(input);
            foreach (var (name, tensor) in new[] { ("decode2", decode), ("aux2", aux!) })
            {
                var expected = RawTensorFile.Read(dir.File(name + ".bin"), tensor.shape);
                double scale = Math.Max(1, expected.abs().max().item<float>());
                double diff = (expected - tensor).abs().max().item<float>();
                Assert.True(diff <= 2e-5 * scale, $"{name}: ours vs PyTorch on the PyTorch-written checkpoint, max |diff| {diff:E3}");
            }
        }

        // Without --arch an official file (no replknet record) is a clear error naming arch.
        var noArch = Assert.Throws<CheckpointException>(() => SegmentorCheckpoint.Load(dir.File("mmseg.pth")));
        Assert.Equal("arch", noArch.ParamName);
    }

    private static JsonElement RunReference(string config, string checkpoint, string work)
    {
        Assert.True(File.Exists(Python), $"{Python} is missing: .ci/run installs python3-torch (Debian) for the PyTorch reference tests");
        string script = Path.Combine(Paths.RepositoryRoot(), "tests", "RepLKNet.Tests", "Models", "mmseg_heads_reference.py");
        var start = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { script, config, checkpoint, work })
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["OMP_NUM_THREADS"] = "1";
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(120_000), "the PyTorch reference did not finish within 120 s");
        Assert.True(process.ExitCode == 0, $"the PyTorch reference failed ({process.ExitCode}): {stderr.Result}");
        return JsonDocument.Parse(stdout.Trim().Split('\n')[^1]).RootElement.Clone();
    }
}

/// <summary>
/// A theory that needs Debian's PyTorch as its reference (<c>python3-torch</c> and <c>python3-numpy</c> for
/// /usr/bin/python3, which <c>.ci/run</c> installs): skipped, with the reason, where they cannot be imported.
/// </summary>
public sealed class PyTorchReferenceTheoryAttribute : TheoryAttribute
{
    private static readonly Lazy<string?> Missing = new(() =>
    {
        if (!File.Exists(SegmentorPyTorchTests.Python))
        {
            return $"{SegmentorPyTorchTests.Python} is missing";
        }

        try
        {
            var start = new System.Diagnostics.ProcessStartInfo(SegmentorPyTorchTests.Python, ["-c", "import torch, numpy"])
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            using var process = System.Diagnostics.Process.Start(start)!;
            string error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return process.ExitCode == 0 ? null : error.Trim().Split('\n')[^1];
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return e.Message;
        }
    });

    public PyTorchReferenceTheoryAttribute()
    {
        if (Missing.Value is { } reason)
        {
            Skip = $"Debian's PyTorch reference is not available ({reason}): apt install python3-torch python3-numpy, as .ci/run does";
        }
    }
}
