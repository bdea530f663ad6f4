using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Runtime;

public sealed class TorchRuntimeTests
{
    [Fact]
    public void TorchSharp_loads_from_the_output_copy_and_reports_where_from()
    {
        var info = Torch.EnsureLoaded();

        Assert.Equal(Paths.OutputTorchSharpNative, info.NativeLibrary);
        Assert.NotEqual(GlibcxxFixState.Missing, info.GlibcxxFix);
        Assert.Equal(DeviceType.CPU, info.Device.type);
        Assert.Matches(@"^\d+\.\d+\.\d+", info.LibTorchVersion);
        Assert.True(File.Exists(Path.Combine(info.LibTorchDirectory, "libtorch_cpu.so")));
        // TorchSharp falls back to copying natives into cpu/ when its first load fails; ours must succeed first time.
        Assert.False(Directory.Exists(Path.Combine(AppContext.BaseDirectory, "cpu")));
    }

    [Fact]
    public void A_device_that_cannot_be_had_is_an_error_about_the_device_argument_in_library_words()
    {
        Torch.EnsureLoaded();
        Assert.Equal(TorchRuntime.CudaNotRequested, TorchRuntime.Initialize(DeviceRequest.Cpu).CudaUnavailableReason);

        // Without CUDA: "was requested but CUDA is not available"; with it: "asks for CUDA device 99, but libtorch sees …".
        var e = Assert.Throws<TorchLoadException>(() => TorchRuntime.Initialize(DeviceRequest.Parse("cuda:99")));
        Assert.Equal("device", e.ParamName);
        Assert.StartsWith("device cuda:99 ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("--", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Conv2d_forward_and_backward_match_a_float64_reference()
    {
        Torch.EnsureLoaded();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        // A grouped conv with stride 1, padding and a non-square input: N=2, C=6, groups=3, O=9, 5×3 kernel.
        const int n = 2, c = 6, h = 9, w = 11, groups = 3, o = 9, kh = 5, kw = 3, ph = 2, pw = 1;
        double[] x = Random(rng, n * c * h * w);
        double[] wt = Random(rng, o * (c / groups) * kh * kw);
        double[] g = Random(rng, n * o * h * w);

        using var scope = NewDisposeScope();
        var xt = tensor(x.Select(v => (float)v).ToArray(), [n, c, h, w]).requires_grad_(true);
        var wtt = tensor(wt.Select(v => (float)v).ToArray(), [o, c / groups, kh, kw]).requires_grad_(true);
        var y = nn.functional.conv2d(xt, wtt, padding: [ph, pw], groups: groups);
        y.backward([tensor(g.Select(v => (float)v).ToArray(), [n, o, h, w])]);

        var (yRef, dxRef, dwRef) = NaiveConv2d(x, wt, g, n, c, h, w, o, kh, kw, ph, pw, groups);
        AssertClose(yRef, y.data<float>().ToArray(), seed, "forward");
        AssertClose(dxRef, xt.grad!.data<float>().ToArray(), seed, "input grad");
        AssertClose(dwRef, wtt.grad!.data<float>().ToArray(), seed, "weight grad");
    }

    [Fact]
    public void DeviceSelfCheck_agrees_with_float64_on_the_cpu()
    {
        Torch.EnsureLoaded();
        var result = DeviceSelfCheck.Run(CPU, seed: Environment.TickCount);
        Assert.InRange(result.MaxError, 0, 1e-5);
        Assert.True(result.ForwardError > 0, "float32 against float64 cannot be bit-identical: the check must compare real results");
    }

    [Fact]
    public void A_library_that_fails_to_load_is_explained_with_the_loaders_own_message()
    {
        using var dir = new TempDirectory();
        string fake = dir.File("libLibTorchSharp.so");
        File.WriteAllText(fake, "not a shared object");

        var e = Assert.Throws<TorchLoadException>(() => TorchRuntime.LoadOrExplain(fake, "TorchSharp's native library", " Context."));

        Assert.Contains(fake, e.Message, StringComparison.Ordinal);
        // glibc says "invalid ELF header" or "file too short": the real dlopen text, not a generic one.
        Assert.Matches("invalid ELF header|file too short", e.Message);
        Assert.EndsWith("Context.", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_unpatched_copy_fails_with_the_GLIBCXX_reason_exactly_when_the_system_lacks_the_version()
    {
        Torch.EnsureLoaded();
        string? libstdcxx = ElfSymbolVersions.FindSystemLibStdCxx();
        Assert.NotNull(libstdcxx);
        bool systemHasIt = ElfSymbolVersions.LibraryDefinesVersion(libstdcxx, ElfSymbolVersions.TorchSharpGlibcxxVersion);
        using var dir = new TempDirectory();
        string copy = dir.File("libLibTorchSharp.so");
        File.Copy(Paths.PackageTorchSharpNative, copy);
        Assert.Equal(systemHasIt ? GlibcxxFixState.NotNeeded : GlibcxxFixState.Missing, TorchRuntime.DiagnoseGlibcxx(copy, libstdcxx));

        if (systemHasIt)
        {
            TorchRuntime.LoadOrExplain(copy, "an unpatched copy", string.Empty);
        }
        else
        {
            var e = Assert.Throws<TorchLoadException>(() => TorchRuntime.LoadOrExplain(copy, "an unpatched copy", string.Empty));
            Assert.Contains("GLIBCXX_3.4.32", e.Message, StringComparison.Ordinal);
            Assert.Contains(copy, e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("auto", DeviceRequestKind.Auto, 0)]
    [InlineData("CPU", DeviceRequestKind.Cpu, 0)]
    [InlineData("cuda", DeviceRequestKind.Cuda, 0)]
    [InlineData(" cuda:3 ", DeviceRequestKind.Cuda, 3)]
    public void Device_requests_parse(string text, DeviceRequestKind kind, int index)
    {
        Assert.Equal(new DeviceRequest(kind, index), DeviceRequest.Parse(text));
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("")]
    public void Bad_device_requests_name_the_value(string text)
    {
        var e = Assert.Throws<FormatException>(() => DeviceRequest.Parse(text));
        Assert.Contains($"'{text}'", e.Message, StringComparison.Ordinal);
    }

    private static double[] Random(Random rng, int count) =>
        Enumerable.Range(0, count).Select(_ => rng.NextDouble() * 2 - 1).ToArray();

    private static void AssertClose(double[] expected, float[] actual, int seed, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = expected.Max(Math.Abs);
        double worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.True(worst <= 1e-5 * Math.Max(scale, 1), $"{what}: max abs error {worst:E3} (scale {scale:F3}, seed {seed})");
    }

    /// <summary>Direct float64 convolution and its gradients for upstream gradient <paramref name="g"/>.</summary>
    private static (double[] Y, double[] Dx, double[] Dw) NaiveConv2d(double[] x, double[] wt, double[] g,
        int n, int c, int h, int w, int o, int kh, int kw, int ph, int pw, int groups)
    {
        int cg = c / groups, og = o / groups;
        var y = new double[n * o * h * w];
        var dx = new double[x.Length];
        var dw = new double[wt.Length];
        for (int b = 0; b < n; b++)
        for (int oc = 0; oc < o; oc++)
        for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++)
        {
            int yi = ((b * o + oc) * h + i) * w + j;
            int group = oc / og;
            for (int ic = 0; ic < cg; ic++)
            for (int u = 0; u < kh; u++)
            for (int v = 0; v < kw; v++)
            {
                int si = i + u - ph, sj = j + v - pw;
                if (si < 0 || si >= h || sj < 0 || sj >= w)
                {
                    continue;
                }

                int xi = ((b * c + group * cg + ic) * h + si) * w + sj;
                int wi = ((oc * cg + ic) * kh + u) * kw + v;
                y[yi] += x[xi] * wt[wi];
                dx[xi] += g[yi] * wt[wi];
                dw[wi] += g[yi] * x[xi];
            }
        }

        return (y, dx, dw);
    }
}
