using System.Text.Json;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class CliTests
{
    [Fact]
    public void Info_prints_versions_threads_vectors_and_the_GLIBCXX_fix()
    {
        var result = CliRunner.Run("info", "--device", "cpu");

        Assert.True(result.ExitCode == 0, result.StdErr);
        string libtorch = Torch.EnsureLoaded().LibTorchVersion;
        Assert.Matches($@"(?m)^libtorch\s+{System.Text.RegularExpressions.Regex.Escape(libtorch)}\s*$", result.StdOut);
        Assert.Matches(@"(?m)^TorchSharp\s+0\.107\.0", result.StdOut);
        Assert.Matches(@"(?m)^\.NET\s+\.NET 10\.", result.StdOut);
        Assert.Matches($@"(?m)^threads\s+\d+ intra-op \(libtorch\), {Environment.ProcessorCount} logical CPUs", result.StdOut);
        Assert.Matches(@"(?m)^CPU vectors\s+.*Vector256", result.StdOut);
        Assert.Matches(@"(?m)^GLIBCXX fix\s+(applied|not needed)", result.StdOut);
        Assert.Matches(@"(?m)^device\s+cpu", result.StdOut);
        Assert.Empty(result.StdErr);
    }

    [Fact]
    public void Info_json_is_one_parseable_object_with_the_same_facts()
    {
        var result = CliRunner.Run("info", "--json", "--device", "cpu");

        Assert.True(result.ExitCode == 0, result.StdErr);
        using var doc = JsonDocument.Parse(result.StdOut);
        Assert.Equal(Torch.EnsureLoaded().LibTorchVersion, doc.RootElement.GetProperty("libtorch").GetString());
        Assert.Equal("cpu", doc.RootElement.GetProperty("device").GetString());
    }

    [Fact]
    public void Info_check_runs_a_convolution_on_the_device()
    {
        var result = CliRunner.Run("info", "--device", "cpu", "--check");

        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.Matches(@"(?m)^self-check\s+conv2d on cpu vs float64 CPU: forward \d\.\d+E-0\d\d", result.StdOut);
        // The padded odd-channel conv is exact to float32 rounding whether or not this machine's libtorch has the defect.
        Assert.Matches(@"(?m)^odd-channel conv\s+CPU 3x3 at 24 channels vs float64: libtorch out .*; padded \d\.\d+E-0(0[5-9]|1\d), \d\.\d+E-0(0[5-9]|1\d)", result.StdOut);

        // JSON: the table wraps long rows at the console width.
        var off = CliRunner.Run(new Dictionary<string, string?> { ["REPLKNET_CONV_CHANNEL_PAD"] = "0" }, "info", "--device", "cpu", "--check", "--json");
        using var doc = System.Text.Json.JsonDocument.Parse(off.StdOut);
        string row = doc.RootElement.GetProperty("odd-channel conv").GetString()!;
        Assert.Contains("REPLKNET_CONV_CHANNEL_PAD=off: not padded", row, StringComparison.Ordinal);
        Assert.Equal(row.Contains("oneDNN defect", StringComparison.Ordinal) ? 1 : 0, off.ExitCode);
    }

    [Fact]
    public void Unknown_command_exits_2_with_one_message_on_stderr()
    {
        var result = CliRunner.Run("frobnicate");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("Unknown command 'frobnicate'", result.StdErr, StringComparison.Ordinal);
        Assert.StartsWith("replknet: usage:", result.StdErr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Unknown_option_exits_2_naming_the_option()
    {
        var result = CliRunner.Run("info", "--no-such-option");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("no-such-option", result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_device_value_exits_2_naming_the_option_and_value()
    {
        var result = CliRunner.Run("info", "--device", "tpu");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("--device", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("'tpu'", result.StdErr, StringComparison.Ordinal);
    }


    // Spectre words these by .NET type ("Failed to convert '__default_command' to Int32.", "… to Nullable`1."): the line must
    // name the flag the user typed and what it takes.
    [Theory]
    [InlineData("--epochs needs a value (an integer)", "train", "--epochs")]
    [InlineData("--epochs needs a value (an integer)", "train", "--epochs", "--lr", "1")]
    [InlineData("--lr needs a value (a number)", "train", "--resume", "--lr")]
    [InlineData("--seed needs a value (an integer)", "train", "--seed", "--device", "cpu")]
    [InlineData("--warmup '1.5' is not an integer", "bench", "model", "--warmup", "1.5")]
    [InlineData("--warmup needs a value (an integer)", "bench", "model", "--warmup")]
    [InlineData("--num-classes needs a value (an integer)", "describe", "--json", "--num-classes")] // --json is a switch here, a file elsewhere
    [InlineData("--epochs 'x' is not an integer", "train", "--out", "x", "--epochs", "x")] // the flag whose type refused the value
    [InlineData("--input-size '1.5' is not an integer", "train", "--input-size", "1.5")] // an integer here, text in predict
    [InlineData("--max-steps '1.5' is not an integer", "train", "--max-steps=1.5")]
    [InlineData("--epochs 'abc' is not an integer", "train", "--epochs:abc")]
    [InlineData("--epochs needs a value (an integer)", "train", "--epochs=")]
    [InlineData("--epochs needs a value (an integer)", "train", "--epochs", "--bogus")]
    // Text flags: Spectre takes its placeholder as the value; nothing may run with it as a folder, file or device.
    [InlineData("--out needs a value", "train", "--out", "--epochs", "1")]
    [InlineData("--out needs a value", "train", "--out=")]
    [InlineData("--device needs a value", "train", "--device", "--epochs", "1")]
    [InlineData("--onnx needs a value", "bench", "onnx", "--onnx", "--warmup", "1")]
    [InlineData("--weights needs a value", "export", "onnx", "--weights", "--out", "x.onnx")]
    [InlineData("--weights needs a value", "export", "onnx", "--weights")] // before the command's own "--out is required"
    [InlineData("--compare needs a value", "erf", "--compare", "--out", "x.png")]
    public void A_flag_without_its_value_or_with_a_wrong_kind_is_named(string expected, params string[] args)
    {
        var result = CliRunner.Run(args);

        Assert.Equal(2, result.ExitCode);
        Assert.Equal($"replknet: usage: {expected}", result.StdErr.Split('\n')[0]);
        Assert.DoesNotContain("__default_command", result.StdErr + result.StdOut, StringComparison.Ordinal);
    }
    [Fact]
    public void Cuda_without_a_CUDA_libtorch_fails_with_exit_1_and_says_what_to_do()
    {
        var result = CliRunner.Run("info", "--device", "cuda");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("CUDA is not available", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("REPLKNET_LIBTORCH", result.StdErr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bad_REPLKNET_LIBTORCH_is_named_in_the_error_and_verbose_adds_the_stack()
    {
        using var dir = new TempDirectory();
        var env = new Dictionary<string, string?> { ["REPLKNET_LIBTORCH"] = dir.Path };

        var plain = CliRunner.Run(env, "info");
        var verbose = CliRunner.Run(env, "info", "--verbose");

        Assert.Equal(1, plain.ExitCode);
        Assert.Contains($"REPLKNET_LIBTORCH='{dir.Path}' has no libtorch_cuda.so", plain.StdErr, StringComparison.Ordinal);
        Assert.Single(plain.StdErr.Trim().Split('\n'));
        Assert.Equal(1, verbose.ExitCode);
        Assert.Contains("   at ", verbose.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Every_command_has_help()
    {
        var top = CliRunner.Run("--help");
        Assert.Equal(0, top.ExitCode);
        Assert.Contains("info", top.StdOut, StringComparison.Ordinal);

        var info = CliRunner.Run("info", "--help");
        Assert.Equal(0, info.ExitCode);
        Assert.Contains("--device", info.StdOut, StringComparison.Ordinal);
        Assert.Contains("--json", info.StdOut, StringComparison.Ordinal);
    }
}
