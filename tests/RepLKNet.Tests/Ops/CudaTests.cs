using System.Diagnostics;
using System.Globalization;
using RepLKNet.Ops;
using RepLKNet.Ops.Cuda;
using RepLKNet.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Ops;

/// <summary>A fact that needs NVRTC (CI installs Debian's libnvrtc11.2; skipped elsewhere with the reason).</summary>
public sealed class NvrtcFactAttribute : FactAttribute
{
    public NvrtcFactAttribute()
    {
        if (!Nvrtc.IsAvailable)
        {
            Skip = $"NVRTC is not installed: {Nvrtc.UnavailableReason}";
        }
    }
}

/// <summary>A fact that needs a CUDA GPU with libtorch's CUDA backend (REPLKNET_LIBTORCH); skipped on machines without one.</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (!CudaDepthwise.IsAvailable)
        {
            Skip = $"no CUDA GPU here: {CudaDepthwise.UnavailableReason}";
        }
    }
}

/// <summary>The CUDA kernels without a GPU (compile, tile rules, tuning table, cache, CPU emulation) and with one.</summary>
public sealed class CudaTests(ITestOutputHelper output)
{
    private static readonly string[] CompilerCandidates = ["/usr/bin/g++", "/usr/local/bin/g++"];
    // The smallest and largest sizes, RepLKNet's (31, 29, 27, 13 and the 5×5 branch) and the table's extremes; `replknet cuda compile` does all 31.
    private static readonly int[] CiKernels = [3, 5, 13, 27, 29, 31, 63];

    [NvrtcFact]
    public void Every_kernel_variant_compiles_for_sm80_and_sm90_without_spills()
    {
        var results = CudaKernelCatalog.CompileAll(["sm_80", "sm_90"], CiKernels);
        Assert.Contains(results, r => r.Spec.Function == "dwconv_fwd_small");
        Assert.Contains(results, r => r.Spec.Function == "dwconv_fwd");
        Assert.Contains(results, r => r.Spec.Function == "ffma_peak");
        Assert.Contains(results, r => r.Spec.Function == "dwconv_wgrad");
        foreach (var r in results.Where(r => r.Spec.Function == "ffma_peak" || r.Spec.Defines[0].Value is 3 or 31 or 63))
        {
            output.WriteLine($"{r.Spec.Label} {r.Architecture}: {r.Report?.Registers} registers, spills {r.Report?.SpillStoreBytes}/{r.Report?.SpillLoadBytes} B");
        }

        Assert.All(results, r => Assert.True(r.Error is null, r.Error));
        Assert.All(results, r => Assert.True(r.Report is { Spills: false, Registers: > 0 and <= 255 }, $"{r.Spec.Label} {r.Architecture}: {r.Report}"));
        output.WriteLine($"{results.Count} variants, NVRTC {Nvrtc.Version()}, max {results.Max(r => r.Report!.Registers)} registers");
    }

    [NvrtcFact]
    public void A_compile_error_carries_the_log_and_the_options()
    {
        var e = Assert.Throws<NvrtcException>(() => Nvrtc.Compile("extern \"C\" __global__ void k() { undefined_thing(); }", "broken.cu", ["--gpu-architecture=sm_90"]));
        Assert.Contains("broken.cu", e.Message, StringComparison.Ordinal);
        Assert.Contains("undefined_thing", e.Message, StringComparison.Ordinal);
        Assert.Contains("sm_90", e.Message, StringComparison.Ordinal);
        var virtualArch = Assert.Throws<NvrtcException>(() => Nvrtc.Compile("extern \"C\" __global__ void k() {}", "virtual.cu", ["--gpu-architecture=compute_90"]));
        Assert.Contains("no cubin", virtualArch.Message, StringComparison.Ordinal);
    }

    [NvrtcFact]
    public void The_disk_cache_serves_the_second_request_without_compiling()
    {
        using var dir = new TempDirectory();
        var spec = new DepthwiseTile(4, 4, 2, 8).Spec(7, 16);
        int before = CudaModules.Compilations;
        var first = CudaModules.CubinFor(spec, "sm_90", dir.Path);
        Assert.Equal(before + 1, CudaModules.Compilations);
        Assert.Single(Directory.GetFiles(dir.Path, "*.cubin"));
        var second = CudaModules.CubinFor(spec, "sm_90", dir.Path);
        Assert.Equal(before + 1, CudaModules.Compilations);
        Assert.Equal(first.Cubin, second.Cubin);
        Assert.Equal(PtxasReport.Parse(first.Log!), PtxasReport.Parse(second.Log!));
        // Another architecture is another entry.
        CudaModules.CubinFor(spec, "sm_80", dir.Path);
        Assert.Equal(2, Directory.GetFiles(dir.Path, "*.cubin").Length);
    }

    [Fact]
    public void Ptxas_reports_are_read_from_the_log()
    {
        const string log = "ptxas info    : Compiling entry function 'dwconv_fwd' for 'sm_90'\n" +
                           "ptxas info    : Function properties for dwconv_fwd\n" +
                           "    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n" +
                           "ptxas info    : Used 96 registers, 432 bytes cmem[0]";
        Assert.Equal(new PtxasReport(96, 8, 12, 16), PtxasReport.Parse(log));
        Assert.True(PtxasReport.Parse(log)!.Spills);
        Assert.Null(PtxasReport.Parse("no resource lines"));
    }

    [Fact]
    public void Tiles_fit_the_block_limits_for_every_shape()
    {
        var rng = new Random(Environment.TickCount);
        var shapes = new List<(long Planes, int H, int W, int K)> { (1, 1, 1, 3), (24576, 64, 64, 31), (65536, 7, 7, 13), (2, 1024, 3, 63), (8, 5, 300, 63) };
        for (int i = 0; i < 300; i++)
        {
            shapes.Add((rng.Next(1, 100000), rng.Next(1, 300), rng.Next(1, 300), 2 * rng.Next(1, 32) + 1));
        }

        foreach (var (planes, h, w, k) in shapes)
        {
            foreach (var tile in DepthwiseTuning.Candidates(planes, h, w, k, 227 * 1024))
            {
                string what = $"{planes} planes {h}×{w} K={k}: {tile}";
                Assert.True(tile.Threads is > 0 and <= 1024, what);
                Assert.True(tile.Planes is >= 1 and <= 64, what);
                Assert.True(tile.SharedBytes(h, w, k) <= 227 * 1024, what);
                Assert.True(tile.Accepts(w), what);
                Assert.True(!tile.SmallMap || w <= 32, what);
            }
        }

        Assert.True(CudaDepthwise.SelectTile(24576, 14, 14, 27, 227 * 1024).SmallMap);
        Assert.False(CudaDepthwise.SelectTile(24576, 64, 64, 31, 227 * 1024).SmallMap);
        Assert.Equal(7, CudaDepthwise.SelectTile(8192, 28, 28, 31, 227 * 1024).RowsPerThread);
        Assert.Equal(8, CudaDepthwise.SelectTile(8192, 56, 56, 31, 227 * 1024).RowsPerThread);
    }

    [Fact]
    public void The_committed_tuning_table_is_well_formed_and_round_trips()
    {
        var entries = DepthwiseTuning.Entries;
        Assert.NotEmpty(entries);
        Assert.All(entries, e =>
        {
            Assert.True(e.Tile.Accepts(e.Width), $"{e}");
            Assert.True(e.Tile.SharedBytes(e.Height, e.Width, e.K) <= 227 * 1024, $"{e}");
            Assert.True(e.Ms > 0 && e.Ms < e.DefaultMs, $"{e}");
        });
        var again = DepthwiseTuning.Parse(DepthwiseTuning.Serialize(entries, "round trip"));
        Assert.Equal(entries.Count, again.Count);
        for (int i = 0; i < entries.Count; i++)
        {
            Assert.Equal(entries[i].Tile, again[i].Tile);
            Assert.Equal((entries[i].Card, entries[i].Height, entries[i].Width, entries[i].K), (again[i].Card, again[i].Height, again[i].Width, again[i].K));
        }

        Assert.Equal(entries[0].Tile, DepthwiseTuning.Lookup(entries[0].Card, entries[0].Height, entries[0].Width, entries[0].K));
        Assert.Null(DepthwiseTuning.Lookup("no such card", 64, 64, 31));
    }

    [Fact]
    public void Cpu_tensors_never_reach_the_cuda_kernel()
    {
        Torch.EnsureLoaded();
        using var x = randn([1, 2, 5, 5]);
        using var w = randn([2, 1, 3, 3]);
        Assert.False(CudaDepthwise.Fits(x, w, null));
        using var y = DepthwiseConv2d.Forward(x, w);
        using var reference = nn.functional.conv2d(x, w, padding: [1, 1], groups: 2);
        Assert.True(y.allclose(reference, rtol: 1e-5, atol: 1e-5));
    }

    /// <summary>
    /// Runs the real kernel sources on the CPU (g++ and a thread per CUDA thread, cuda_shim.h) for tiles the selector
    /// picks, tuned tiles and small-map candidates, so that indexing, halo, padding and plane packing are checked in CI
    /// without a GPU. Skips (with the reason) when g++ is missing.
    /// </summary>
    [Fact]
    public void Kernel_sources_compute_the_convolution_when_emulated_on_the_cpu()
    {
        if (Compiler() is not { } gxx)
        {
            return;
        }

        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        var cases = new List<(int N, int C, int H, int W, int K, DepthwiseTile Tile)>
        {
            (2, 3, 5, 9, 31, CudaDepthwise.SelectTile(6, 5, 9, 31, 227 * 1024)),
            (1, 5, 14, 14, 27, CudaDepthwise.SelectTile(5, 14, 14, 27, 227 * 1024)),
            (1, 2, 28, 28, 29, new DepthwiseTile(2, 8, 14, 1, SmallMap: true)),
            (2, 37, 7, 7, 13, new DepthwiseTile(2, 2, 4, 8, SmallMap: true)),
            (1, 3, 57, 70, 31, CudaDepthwise.SelectTile(3, 57, 70, 31, 227 * 1024)),
            (1, 2, 40, 64, 31, new DepthwiseTile(4, 16, 16, 1)),
            (1, 1, 31, 1, 9, CudaDepthwise.SelectTile(1, 31, 1, 9, 227 * 1024)),
            (3, 4, 17, 32, 3, new DepthwiseTile(2, 8, 16, 1)),
        };
        int k = 2 * rng.Next(1, 20) + 1, h = rng.Next(1, 40), w = rng.Next(1, 33);
        cases.Add((1, 3, h, w, k, DepthwiseTuning.Candidates(3, h, w, k, 227 * 1024)[rng.Next(1, DepthwiseTuning.Candidates(3, h, w, k, 227 * 1024).Count)]));

        foreach (var (n, c, height, width, ks, tile) in cases)
        {
            var spec = tile.Spec(ks, width);
            string exe = BuildEmulator(gxx, dir, "emulate.cpp", spec, $"-DKFUNC={spec.Function}");
            string result = Run(exe, [n.ToString(CultureInfo.InvariantCulture), c.ToString(CultureInfo.InvariantCulture),
                height.ToString(CultureInfo.InvariantCulture), width.ToString(CultureInfo.InvariantCulture), rng.Next().ToString(CultureInfo.InvariantCulture)]);
            output.WriteLine($"{n}×{c}×{height}×{width} K={ks} {tile}: max rel, NaNs = {result.Trim()}");
        }
    }

    /// <summary>The weight-gradient kernel and its reduction, emulated: exact against float64 and bit-identical twice.</summary>
    [Fact]
    public void Weight_gradient_kernel_source_is_exact_and_deterministic_when_emulated()
    {
        if (Compiler() is not { } gxx)
        {
            return;
        }

        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        // (N, C, H, W, K): K > H, H ≠ W, widths off 4, more splits than some channels have work, K = 63.
        (int N, int C, int H, int W, int K)[] cases = [(2, 3, 10, 14, 31), (1, 2, 7, 7, 13), (2, 3, 33, 17, 5), (1, 1, 20, 20, 63), (3, 2, 5, 9, 3)];
        foreach (var (n, c, h, w, k) in cases)
        {
            int rows = CudaDepthwise.WeightGradRows(h, w, k, 227 * 1024);
            int splits = CudaDepthwise.WeightGradSplits(n, c, h, rows, 132);
            var spec = CudaDepthwise.WeightGradSpec(k, Math.Min(rows, rng.Next(1, 12)));
            string exe = BuildEmulator(gxx, dir, "emulate_wgrad.cpp", spec);
            string result = Run(exe, [.. new[] { n, c, h, w, Math.Min(splits, 5), rng.Next() }.Select(v => v.ToString(CultureInfo.InvariantCulture))]);
            output.WriteLine($"{n}×{c}×{h}×{w} K={k} {spec.Label}: {result.Trim()}");
        }
    }

    [NvrtcFact]
    public void Cli_compile_reports_and_cuda_check_explains_a_missing_gpu()
    {
        var compile = CliRunner.Run("cuda", "compile", "--arch", "sm_90", "--kernels", "13");
        Assert.True(compile.ExitCode == 0, compile.StdOut + compile.StdErr);
        Assert.Contains("0 errors, 0 with spills", compile.StdOut, StringComparison.Ordinal);
        var badArch = CliRunner.Run("cuda", "compile", "--arch", "compute_90");
        Assert.Equal(2, badArch.ExitCode);
        Assert.Contains("--arch", badArch.StdErr, StringComparison.Ordinal);
        if (!CudaDepthwise.IsAvailable)
        {
            var check = CliRunner.Run("cuda", "check", "--raw");
            Assert.Equal(2, check.ExitCode);
            Assert.Contains("libcuda.so.1", check.StdErr, StringComparison.Ordinal);
        }
    }

    [GpuFact]
    public void Gpu_backward_matches_float64_autograd_and_is_deterministic()
    {
        var runtime = RepLKNet.Runtime.TorchRuntime.Initialize(RepLKNet.Runtime.DeviceRequest.Parse("cuda"));
        var results = CudaDepthwiseCheck.RunBackwardOnTensors(Environment.TickCount64, runtime.Device.index < 0 ? 0 : runtime.Device.index);
        Assert.All(results, r => Assert.True(r.Passed, $"{r.Shape}: {r.InputGrad} {r.WeightGrad} deterministic={r.Deterministic}"));
    }

    [GpuFact]
    public void Gpu_forward_matches_float64_cudnn_and_the_cpu_kernel_over_the_sweep()
    {
        var runtime = RepLKNet.Runtime.TorchRuntime.Initialize(RepLKNet.Runtime.DeviceRequest.Parse("cuda"));
        var results = CudaDepthwiseCheck.RunOnTensors(Environment.TickCount64, runtime.Device.index < 0 ? 0 : runtime.Device.index);
        Assert.All(results, r => Assert.True(r.Passed, $"{r.Shape} {r.Tile}: {r.VsFloat64} {r.VsCudnn} {r.VsCpu} written={r.AllWritten}"));
        using var x = randn([2, 8, 14, 14], device: runtime.Device);
        using var w = randn([8, 1, 27, 27], device: runtime.Device);
        DepthwiseConv2d.Forward(x, w).Dispose();
        int compiled = CudaModules.Compilations;
        using var ours = DepthwiseConv2d.Forward(x, w);
        Assert.Equal(compiled, CudaModules.Compilations);
        using var reference = nn.functional.conv2d(x, w, padding: [13, 13], groups: 8);
        Assert.True((ours - reference).abs().max().item<float>() <= 1e-5f * reference.abs().max().item<float>());
    }

    // g++ for the CPU emulation of the kernel sources; null (and a note) when missing, which CI must not be.
    private string? Compiler()
    {
        string? gxx = CompilerCandidates.FirstOrDefault(File.Exists);
        if (gxx is null)
        {
            output.WriteLine("g++ not found: emulation skipped (CI installs it)");
            Assert.Null(Environment.GetEnvironmentVariable("CI"));
        }

        return gxx;
    }

    // Compiles a harness of Ops/CudaEmulation with the kernel source of spec and its -D constants, as NVRTC would get them.
    private static string BuildEmulator(string gxx, TempDirectory dir, string harness, CudaKernelSpec spec, params string[] extra)
    {
        string source = Path.Combine(AppContext.BaseDirectory, "Ops", "CudaEmulation");
        File.WriteAllText(dir.File(spec.SourceFile), Nvrtc.EmbeddedSource(spec.SourceFile));
        string exe = dir.File($"e{Guid.NewGuid():N}");
        var args = new List<string> { "-std=c++20", "-O1", "-pthread", $"-I{source}", "-o", exe, Path.Combine(source, harness),
            $"-DKERNEL_FILE=\"{dir.File(spec.SourceFile)}\"" };
        args.AddRange(extra);
        args.AddRange(spec.Defines.Select(d => string.Create(CultureInfo.InvariantCulture, $"-D{d.Name}={d.Value}")));
        Run(gxx, args);
        return exe;
    }

    private static string Run(string file, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(3)), $"{file} did not finish");
        Assert.True(process.ExitCode == 0, $"{Path.GetFileName(file)} {string.Join(' ', args)} failed ({process.ExitCode}):\n{stdout.Result}\n{stderr.Result}");
        return stdout.Result;
    }
}
