using System.Text.Json;
using RepLKNet.Checkpoints;
using RepLKNet.IO;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Cli;

public sealed class ModelCommandsTests
{
    private static string SmallConfigJson => OfficialFixture.Config.ToJson();

    public ModelCommandsTests() => Torch.EnsureLoaded();

    [Fact]
    public void Models_json_lists_the_three_variants_with_official_sizes_and_readme_macs()
    {
        var result = CliRunner.Run("models", "--json");
        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(result.StdOut);
        var rows = doc.RootElement.EnumerateArray().ToDictionary(r => r.GetProperty("name").GetString()!);
        Assert.Equal(["RepLKNet-31B", "RepLKNet-31L", "RepLKNet-XL", "RepLKNet-FMNIST"], rows.Keys);
        Assert.Equal(79_864_168, rows["RepLKNet-31B"].GetProperty("params").GetInt64());
        Assert.Equal(172_165_672, rows["RepLKNet-31L"].GetProperty("deploy_params").GetInt64());
        // The README's "FLOPs" are deploy-form conv+FC MACs (spec §6): 15.3G, 96.0G, 128.7G.
        Assert.Equal(15.354, rows["RepLKNet-31B"].GetProperty("macs").GetInt64() / 1e9, 3);
        Assert.Equal(15.431, rows["RepLKNet-31B"].GetProperty("macs_train").GetInt64() / 1e9, 3);
        Assert.Equal(95.989, rows["RepLKNet-31L"].GetProperty("macs").GetInt64() / 1e9, 3);
        Assert.Equal(128.730, rows["RepLKNet-XL"].GetProperty("macs").GetInt64() / 1e9, 3);
        Assert.Equal(JsonValueKind.Null, rows["RepLKNet-XL"].GetProperty("small_kernel").ValueKind);
    }

    [Fact]
    public void Complexity_matches_the_spec_at_other_resolutions()
    {
        var b = ModelRegistry.Find("31B")!.Config;
        Assert.Equal(45.347, Complexity.Macs(b, 384, 384, ModelForm.Train) / 1e9, 3);
        Assert.Equal(45.119, Complexity.Macs(b, 384, 384, ModelForm.Deploy) / 1e9, 3);
        Assert.Equal(96.332, Complexity.Macs(ModelRegistry.Find("31L")!.Config, 384, 384, ModelForm.Train) / 1e9, 3);
    }

    [Theory]
    [InlineData("RepLKNet-31B", "", "train", 1171)]
    [InlineData("replknet-31l", "--deploy", "deploy", 931)]
    [InlineData("RepLKNet-XL", "", "train", 1027)]
    public void Describe_json_prints_the_state_dict_in_order(string arch, string flag, string form, int count)
    {
        string[] args = flag.Length > 0 ? ["describe", "--arch", arch, flag, "--json"] : ["describe", "--arch", arch, "--json"];
        var result = CliRunner.Run(args);
        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(result.StdOut);
        var root = doc.RootElement;
        Assert.Equal(form, root.GetProperty("form").GetString());
        var entries = root.GetProperty("state_dict").EnumerateArray().ToList();
        Assert.Equal(count, entries.Count);
        Assert.Equal("stem.0.conv.weight", entries[0].GetProperty("key").GetString());
        Assert.Equal("head.bias", entries[^1].GetProperty("key").GetString());
        Assert.Equal("int64", entries[5].GetProperty("dtype").GetString());
        Assert.Equal(0, entries[5].GetProperty("shape").GetArrayLength());
        var config = ModelRegistry.Find(arch)!.Config;
        var expected = VariantTestsKeys(config, form == "deploy");
        Assert.Equal(expected, entries.Select(e => e.GetProperty("key").GetString()!));
    }

    [Fact]
    public void Describe_takes_a_json_config_and_num_classes()
    {
        using var dir = new TempDirectory();
        string config = dir.File("small.json");
        File.WriteAllText(config, SmallConfigJson);
        var result = CliRunner.Run("describe", "--arch", config, "--num-classes", "3", "--json");
        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(result.StdOut);
        var head = doc.RootElement.GetProperty("state_dict").EnumerateArray().Single(e => e.GetProperty("key").GetString() == "head.weight");
        Assert.Equal([3, 128], head.GetProperty("shape").EnumerateArray().Select(s => s.GetInt32()));
    }

    [Fact]
    public void Forward_reproduces_the_official_logits_and_features_through_the_cli()
    {
        using var dir = new TempDirectory();
        string config = dir.File("small.json");
        File.WriteAllText(config, SmallConfigJson);
        string logits = dir.File("y.bin");
        var result = CliRunner.Run("forward", "--arch", config, "--weights", OfficialFixture.File("small-train.pth"),
            "--input", OfficialFixture.File("small-input.bin"), "--input-shape", "2,3,64,64", "--output", logits,
            "--features", dir.File("f"), "--device", "cpu");
        Assert.True(result.ExitCode == 0, result.StdErr);
        AssertClose(OfficialFixture.ReadBin("small-logits-train.bin", 2, 10), RawTensorFile.Read(logits, [2, 10]));
        AssertClose(OfficialFixture.ReadBin("small-features-train-s2.bin", 2, 64, 4, 4), RawTensorFile.Read(dir.File("f2.bin"), [2, 64, 4, 4]));

        var reparam = CliRunner.Run("forward", "--arch", config, "--weights", OfficialFixture.File("small-train.pth"), "--reparam",
            "--input", OfficialFixture.File("small-input.bin"), "--input-shape", "2,3,64,64", "--output", logits);
        Assert.True(reparam.ExitCode == 0, reparam.StdErr);
        AssertClose(OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10), RawTensorFile.Read(logits, [2, 10]));
    }

    [Fact]
    public void Reparam_writes_a_verified_deploy_checkpoint_that_equals_the_official_one()
    {
        using var dir = new TempDirectory();
        string config = dir.File("small.json");
        File.WriteAllText(config, SmallConfigJson);
        string output = dir.File("deploy.safetensors");
        var result = CliRunner.Run("reparam", "--arch", config, "--weights", OfficialFixture.File("small-train.pth"), "--out", output, "--input-size", "64");
        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Matches(@"stages\.0\.blocks\.0\s+│\s+\d\.\d\de[-+]\d\d", result.StdOut);
        Assert.Contains("end to end: max abs diff", result.StdOut, StringComparison.Ordinal);

        using var ours = CheckpointFile.Read(output);
        using var official = CheckpointFile.Read(OfficialFixture.File("small-deploy.pth"));
        Assert.Equal(CheckpointFormat.RepLKNet, ours.Format);
        Assert.Equal(ModelForm.Deploy, ours.Metadata!.Form);
        Assert.Equal(official.State.Keys.Order(), ours.State.Keys.Order());
        foreach (var (key, tensor) in official.State)
        {
            Assert.True((tensor.to(float64) - ours.State[key].to(float64)).abs().max().item<double>() <= 1e-6, key);
        }

        // The written file carries its architecture: forward needs no --arch.
        string logits = dir.File("y.bin");
        var forward = CliRunner.Run("forward", "--weights", output, "--input", OfficialFixture.File("small-input.bin"), "--input-shape", "2,3,64,64", "--output", logits);
        Assert.True(forward.ExitCode == 0, forward.StdErr);
        AssertClose(OfficialFixture.ReadBin("small-logits-deploy.bin", 2, 10), RawTensorFile.Read(logits, [2, 10]));
    }

    [Fact]
    public void Reparam_fuse_bn_writes_the_fused_key_set_as_pth()
    {
        using var dir = new TempDirectory();
        string config = dir.File("small.json");
        File.WriteAllText(config, SmallConfigJson);
        string output = dir.File("fused.pth");
        var result = CliRunner.Run("reparam", "--arch", config, "--weights", OfficialFixture.File("small-train.pth"), "--out", output, "--fuse-bn", "--input-size", "64");
        Assert.True(result.ExitCode == 0, result.StdErr);
        using var fused = CheckpointFile.Read(output);
        Assert.Equal(127, fused.State.Count);
        Assert.Equal(ModelForm.Fused, fused.Form);
    }

    [Theory]
    [InlineData("bad-shape")]
    [InlineData("wrong-arch")]
    [InlineData("corrupt")]
    [InlineData("no-arch")]
    [InlineData("unknown-arch")]
    public void Forward_rejects_bad_input_with_one_clear_line(string kind)
    {
        using var dir = new TempDirectory();
        string corrupt = dir.File("corrupt.pth");
        File.WriteAllBytes(corrupt, File.ReadAllBytes(OfficialFixture.File("small-train.pth"))[..5000]);
        string input = OfficialFixture.File("small-input.bin");
        string train = OfficialFixture.File("small-train.pth");
        (string[] args, int code, string expected) = kind switch
        {
            "bad-shape" => (new[] { "--arch", "31B", "--weights", train, "--input", input, "--input-shape", "2,3,64" }, 2, "--input-shape '2,3,64'"),
            "wrong-arch" => (new[] { "--arch", "RepLKNet-31B", "--weights", train, "--input", input, "--input-shape", "2,3,64,64" }, 1, "does not fit"),
            "corrupt" => (new[] { "--arch", "31B", "--weights", corrupt, "--input", input, "--input-shape", "2,3,64,64" }, 1, "corrupt.pth"),
            "no-arch" => (new[] { "--weights", train, "--input", input, "--input-shape", "2,3,64,64" }, 1, "pass --arch"),
            _ => (new[] { "--arch", "RepLKNet-99Z", "--weights", train, "--input", input, "--input-shape", "2,3,64,64" }, 2, "'RepLKNet-99Z'"),
        };

        var result = CliRunner.Run(["forward", .. args]);

        Assert.Equal(code, result.ExitCode);
        Assert.Contains(expected, result.StdErr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StdErr, StringComparison.Ordinal);
    }

    private static IEnumerable<string> VariantTestsKeys(RepLKNetConfig config, bool deploy) =>
        RepLKNet.Tests.Models.VariantTests.ExpectedKeys(config, deploy).Select(k => k.Key);

    private static void AssertClose(Tensor expected, Tensor actual)
    {
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 1e-5, $"max abs diff {diff:E3}");
    }
}
