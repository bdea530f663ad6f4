using RepLKNet.Runtime;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// <see cref="CpuAllocatorFill"/>: the runtime sets c10's fill of new CPU tensors from <c>REPLKNET_CPU_FILL</c> (none by
/// default); junk makes every read of unwritten memory NaN (the end-to-end use is in
/// <c>SegmentorCliTests.Forward_under_junk_fill_reads_no_unwritten_memory_and_matches_float64</c>).
/// </summary>
public sealed class CpuAllocatorFillTests
{
    public CpuAllocatorFillTests() => Torch.EnsureLoaded();

    [Fact]
    public void The_loaded_runtime_has_the_fill_the_environment_asks_for()
    {
        Assert.Equal(CpuAllocatorFill.Parse(Environment.GetEnvironmentVariable(CpuAllocatorFill.EnvironmentVariable)), CpuAllocatorFill.Current());
    }

    [Theory]
    [InlineData("zero", CpuFill.Zero)]
    [InlineData(" Zero ", CpuFill.Zero)]
    [InlineData(null, CpuFill.None)]
    [InlineData("", CpuFill.None)]
    [InlineData("NONE", CpuFill.None)]
    [InlineData("junk", CpuFill.Junk)]
    public void Parses_the_setting(string? value, CpuFill expected) => Assert.Equal(expected, CpuAllocatorFill.Parse(value));

    [Fact]
    public void The_cli_reports_the_fill_honours_the_variable_and_rejects_bad_values()
    {
        foreach (var (value, shown) in new[] { ((string?)null, "none "), ("junk", @"junk: .*checked: a new tensor reads NaN"), ("zero", "zero ") })
        {
            var run = CliRunner.Run(new Dictionary<string, string?> { [CpuAllocatorFill.EnvironmentVariable] = value }, "info", "--device", "cpu");
            Assert.True(run.ExitCode == 0, run.StdErr);
            Assert.Matches(@"(?m)^CPU tensor fill\s+" + shown, run.StdOut);
        }

        var bad = CliRunner.Run(new Dictionary<string, string?> { [CpuAllocatorFill.EnvironmentVariable] = "ones" }, "info", "--device", "cpu");
        Assert.Equal(1, bad.ExitCode);
        var line = Assert.Single(bad.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("REPLKNET_CPU_FILL='ones'", line, StringComparison.Ordinal);
    }
}
