using RepLKNet.Runtime;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Runtime;

/// <summary>A fact that needs gperftools' tcmalloc (CI installs Debian's <c>libtcmalloc-minimal4</c>; skipped elsewhere with the reason).</summary>
public sealed class TcmallocFactAttribute : FactAttribute
{
    public TcmallocFactAttribute()
    {
        if (MemoryAllocatorTests.Tcmalloc is null)
        {
            Skip = "gperftools' tcmalloc is not installed (Debian: apt install libtcmalloc-minimal4)";
        }
    }
}

/// <summary>
/// The native allocator (<see cref="HeapTuning"/>): the settings, what <c>info</c> reports, and that training on tcmalloc
/// (preloaded as <c>./replknet</c> preloads it) gives the same bits as on glibc's malloc.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class MemoryAllocatorTests
{
    [System.Runtime.Versioning.SupportedOSPlatformGuard("linux")]
    internal static string? Tcmalloc { get; } = !OperatingSystem.IsLinux() ? null : new[]
    {
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
    }.FirstOrDefault(File.Exists);

    [Fact]
    public void The_setting_accepts_the_three_allocators_and_refuses_anything_else_naming_the_variable()
    {
        Assert.Equal("tcmalloc", HeapTuning.Parse(null));
        Assert.Equal("tcmalloc", HeapTuning.Parse(""));
        Assert.Equal("glibc", HeapTuning.Parse("glibc"));
        Assert.Equal("default", HeapTuning.Parse("default"));
        var e = Assert.Throws<TorchLoadException>(() => HeapTuning.Parse("jemalloc"));
        Assert.Equal("REPLKNET_MALLOC='jemalloc' is not an allocator: use tcmalloc (the default of ./replknet), glibc or default", e.Message);
        // Exactly as the launcher accepts them: no case folding, no trimming.
        foreach (var other in new[] { "GLIBC", " glibc", "default ", " " })
        {
            Assert.Throws<TorchLoadException>(() => HeapTuning.Parse(other));
        }
    }

    [Fact]
    public void The_test_host_runs_on_glibc_tuned_unless_something_was_preloaded()
    {
        Torch.EnsureLoaded(); // the runtime's load applies the tuning
        string? preloaded = HeapTuning.Preloaded();
        string? ldPreload = Environment.GetEnvironmentVariable("LD_PRELOAD");
        if (preloaded is null)
        {
            Assert.True(string.IsNullOrEmpty(ldPreload) || !ldPreload.Contains("malloc", StringComparison.Ordinal), ldPreload);
            bool untouched = HeapTuning.Parse(Environment.GetEnvironmentVariable(HeapTuning.EnvironmentVariable)) == "default";
            Assert.Equal(untouched ? NativeAllocator.Glibc : NativeAllocator.GlibcTuned, HeapTuning.Current());
            Assert.Equal(!untouched, HeapTuning.Applied);
        }
        else
        {
            Assert.False(HeapTuning.Applied, "glibc was tuned although another allocator replaced it");
        }
    }

    [Fact]
    public void A_bad_setting_fails_the_cli_with_one_line()
    {
        var result = CliRunner.Run(new Dictionary<string, string?> { ["REPLKNET_MALLOC"] = "bogus" }, "info", "--device", "cpu");

        Assert.Equal(1, result.ExitCode);
        var line = Assert.Single(result.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("REPLKNET_MALLOC='bogus' is not an allocator", line, StringComparison.Ordinal);
    }

    [TcmallocFact]
    public void Training_on_tcmalloc_gives_the_bits_of_glibc_and_info_names_the_allocator()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 320, test: 64);
        string arch = dir.File("tiny.json");
        // No stochastic depth: on 2 threads the steps then run as a batch split (every op of a part on its own thread).
        File.WriteAllText(arch, """{"large_kernel_sizes": [7, 5], "layers": [1, 1], "channels": [8, 16], "small_kernel": 3, "ffn_ratio": 2, "drop_path_rate": 0}""");
        string[] train = ["train", "--data", data, "--arch", arch, "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--threads", "2", "--workers", "2", "--seed", "5"];
        var tc = new Dictionary<string, string?> { ["LD_PRELOAD"] = Tcmalloc };
        var glibc = new Dictionary<string, string?> { ["REPLKNET_MALLOC"] = "glibc", ["LD_PRELOAD"] = null };

        var info = CliRunner.Run(tc, "info", "--device", "cpu", "--json");
        Assert.True(info.ExitCode == 0, info.StdErr);
        using (var doc = System.Text.Json.JsonDocument.Parse(info.StdOut))
        {
            Assert.StartsWith("tcmalloc (gperftools, preloaded: ", doc.RootElement.GetProperty("memory allocator").GetString(), StringComparison.Ordinal);
        }

        info = CliRunner.Run(glibc, "info", "--device", "cpu", "--json");
        using (var doc = System.Text.Json.JsonDocument.Parse(info.StdOut))
        {
            Assert.StartsWith("glibc malloc, mmap off and trimming at 1 GiB (REPLKNET_MALLOC=glibc", doc.RootElement.GetProperty("memory allocator").GetString(), StringComparison.Ordinal);
        }

        var a = CliRunner.Run(tc, [.. train, "--out", dir.File("tc")]);
        Assert.True(a.ExitCode == 0, a.StdErr + a.StdOut);
        var b = CliRunner.Run(glibc, [.. train, "--out", dir.File("glibc")]);
        Assert.True(b.ExitCode == 0, b.StdErr + b.StdOut);
        foreach (var file in new[] { "last.safetensors", "last-ema.safetensors" })
        {
            CheckpointAssert.SameTensors(Path.Combine(dir.File("tc"), file), Path.Combine(dir.File("glibc"), file), " between tcmalloc and glibc");
        }
    }
}
