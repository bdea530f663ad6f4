using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class StderrTests
{
    [Fact]
    public void A_batch_1_forward_writes_only_our_own_lines_to_stderr()
    {
        // libtorch logs "Could not initialize NNPACK! Reason: Unsupported hardware." once per CPU convolution that
        // reaches its NNPACK check (small 1×1 convs at batch 1) on CPUs NNPACK does not support; the CLI keeps libtorch's
        // warning-level log off, so on any CPU stderr holds our report lines only.
        using var dir = new TempDirectory();
        string arch = dir.File("small.json");
        File.WriteAllText(arch, """{"large_kernel_sizes":[13,11,9,5],"layers":[1,1,2,1],"channels":[16,32,64,128],"small_kernel":5,"dw_ratio":1.5,"ffn_ratio":4,"num_classes":10}""");
        string input = dir.File("x.bin");
        var image = new byte[3 * 64 * 64 * 4];
        Random.Shared.NextBytes(image);
        for (int i = 0; i < image.Length; i += 4)
        {
            BitConverter.TryWriteBytes(image.AsSpan(i), (float)(Random.Shared.NextDouble() * 2 - 1));
        }

        File.WriteAllBytes(input, image);
        string output = dir.File("y.bin");

        var result = CliRunner.Run("forward", "--device", "cpu", "--arch", arch, "--weights", OfficialFixture.File("small-train.pth"),
            "--input", input, "--input-shape", "1,3,64,64", "--output", output);

        Assert.True(result.ExitCode == 0, result.StdErr);
        Assert.DoesNotContain("NNPACK", result.StdErr, StringComparison.Ordinal);
        var lines = result.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.All(lines, line => Assert.Matches("^(loaded |wrote )", line));
        Assert.Equal(2, lines.Length);
        Assert.Equal(10 * 4, new FileInfo(output).Length);
    }

    [Fact]
    public void The_libtorch_log_level_is_error_by_default_and_follows_TORCH_CPP_LOG_LEVEL()
    {
        var byDefault = CliRunner.Run(new Dictionary<string, string?> { ["TORCH_CPP_LOG_LEVEL"] = null }, "info", "--device", "cpu");
        Assert.True(byDefault.ExitCode == 0, byDefault.StdErr);
        Assert.Matches(@"(?m)^libtorch log\s+ERROR and above", byDefault.StdOut);

        var warnings = CliRunner.Run(new Dictionary<string, string?> { ["TORCH_CPP_LOG_LEVEL"] = "warning" }, "info", "--device", "cpu");
        Assert.True(warnings.ExitCode == 0, warnings.StdErr);
        Assert.Matches(@"(?m)^libtorch log\s+WARNING and above", warnings.StdOut);

        var bad = CliRunner.Run(new Dictionary<string, string?> { ["TORCH_CPP_LOG_LEVEL"] = "loud" }, "info", "--device", "cpu");
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("TORCH_CPP_LOG_LEVEL='loud'", bad.StdErr, StringComparison.Ordinal);
    }
}
