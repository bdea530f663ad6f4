using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// <see cref="OpenMpTeam"/>: our CPU kernels start their threads through libtorch's own OpenMP runtime (the workers
/// libtorch's ops use), exceptions cross back to the caller, and the kernels stay exact under concurrent callers and
/// garbage collections.
/// </summary>
public sealed partial class OpenMpTeamTests
{
    public OpenMpTeamTests() => Torch.EnsureLoaded();

    [Fact]
    public void Uses_the_openmp_runtime_that_libtorch_loaded()
    {
        Assert.True(OperatingSystem.IsLinux());
        Assert.Null(Environment.GetEnvironmentVariable(OpenMpTeam.EnvironmentVariable));
        Assert.True(OpenMpTeam.IsActive, "no OpenMP runtime found beside libtorch");
        Assert.Contains("omp", Path.GetFileName(OpenMpTeam.Library!), StringComparison.Ordinal);
        var torchDir = Path.GetDirectoryName(Assert.Single(NativeLibraries.MappedLibraries("libtorch_cpu")));
        Assert.Equal(torchDir, Path.GetDirectoryName(OpenMpTeam.Library));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    public void The_team_is_libtorchs_reused_between_its_ops_and_ours_and_runs_up_to_the_threads_asked(int threads)
    {
        int team = torch.get_num_threads(); // also sets this thread's OpenMP team size to libtorch's
        Assert.True(team >= 2, $"this test needs 2 threads, libtorch has {team}");
        int caller = Environment.CurrentManagedThreadId;
        var osThreads = new ConcurrentDictionary<int, bool>();
        using var a = randn(1 << 22);
        using var b = randn(1 << 22);
        for (int call = 0; call < 200; call++)
        {
            // A libtorch op that runs on the team between our calls: a pool resized to another size would end or
            // create OS threads here, every time.
            using (var sum = a.add(b, Scalars.One))
            {
            }

            var ran = new ConcurrentBag<(int Managed, int Os, bool Pool)>();
            OpenMpTeam.Run(threads, () => ran.Add((Environment.CurrentManagedThreadId, gettid(), Thread.CurrentThread.IsThreadPoolThread)));
            Assert.Equal(Math.Min(threads, team), ran.Count);
            Assert.Equal(ran.Count, ran.Select(r => r.Os).Distinct().Count());
            Assert.Contains(caller, ran.Select(r => r.Managed));
            Assert.All(ran.Where(r => r.Managed != caller), r => Assert.False(r.Pool, "a team thread is not a .NET pool thread"));
            foreach (var r in ran)
            {
                osThreads[r.Os] = true;
            }
        }

        // The same OS threads on every call (gettid: managed ids are recycled and would hide new threads).
        Assert.Equal(Math.Min(threads, team), osThreads.Count);
    }

    [Fact]
    public void A_kernel_started_inside_a_team_thread_runs_on_that_thread_alone_and_stays_exact()
    {
        // Nested: the inner team has one thread, so the kernel's chunk loop must do all the work on it.
        var errors = new ConcurrentBag<string>();
        OpenMpTeam.Run(2, () =>
        {
            try
            {
                CheckOnce(new Random(Environment.CurrentManagedThreadId));
            }
            catch (Exception e)
            {
                errors.Add(e.Message);
            }
        });
        Assert.Empty(errors);
    }

    [LibraryImport("libc", EntryPoint = "gettid")]
    private static partial int gettid();

    [Fact]
    public void An_exception_on_any_thread_reaches_the_caller_and_the_team_keeps_working()
    {
        int caller = Environment.CurrentManagedThreadId;
        var onWorker = Assert.Throws<InvalidOperationException>(() => OpenMpTeam.Run(2, () =>
        {
            if (Environment.CurrentManagedThreadId != caller)
            {
                throw new InvalidOperationException("worker failed");
            }
        }));
        Assert.Equal("worker failed", onWorker.Message);

        var onCaller = Assert.Throws<ArgumentException>(() => OpenMpTeam.Run(2, () =>
        {
            if (Environment.CurrentManagedThreadId == caller)
            {
                throw new ArgumentException("caller failed");
            }
        }));
        Assert.Equal("caller failed", onCaller.Message);

        int runs = 0;
        OpenMpTeam.Run(2, () => Interlocked.Increment(ref runs));
        Assert.Equal(2, runs);
        Assert.Throws<ArgumentOutOfRangeException>(() => OpenMpTeam.Run(0, () => { }));
        Assert.Throws<ArgumentNullException>(() => OpenMpTeam.Run(2, null!));
    }

    [Fact]
    public async Task Kernels_on_the_team_stay_exact_under_concurrent_callers_and_collections()
    {
        using var stop = new CancellationTokenSource();
        var collector = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }, TaskCreationOptions.LongRunning);

        var seed = Environment.TickCount;
        var callers = Enumerable.Range(0, 4).Select(t => Task.Factory.StartNew(() =>
        {
            var random = new Random(seed + t);
            for (int iteration = 0; iteration < 25; iteration++)
            {
                CheckOnce(random);
            }
        }, TaskCreationOptions.LongRunning)).ToArray();

        try
        {
            await Task.WhenAll(callers);
        }
        finally
        {
            await stop.CancelAsync();
            await collector;
        }
    }

    // One random forward + weight gradient on 3 team threads against libtorch in float64.
    private static unsafe void CheckOnce(Random random)
    {
        using var scope = NewDisposeScope();
        int n = random.Next(1, 4), c = random.Next(1, 9), h = random.Next(5, 40), w = random.Next(5, 40);
        int k = 2 * random.Next(1, 10) + 1;
        var x = randn([n, c, h, w]);
        var weight = randn([c, 1, k, k]);
        var dy = randn([n, c, h, w]);
        var y = empty([n, c, h, w]);
        var dw = empty([c, 1, k, k]);
        fixed (byte* px = x.bytes, pw = weight.bytes, py = y.bytes, pdy = dy.bytes, pdw = dw.bytes)
        {
            DepthwiseConvCpu.Forward((float*)px, (float*)pw, null, (float*)py, n, c, h, w, k, CpuIsa.Auto, threads: 3);
            DepthwiseConvCpu.WeightGrad((float*)px, (float*)pdy, (float*)pdw, n, c, h, w, k, CpuIsa.Auto, threads: 3);
        }

        var x64 = x.to(float64).requires_grad_(true);
        var w64 = weight.to(float64).requires_grad_(true);
        var y64 = nn.functional.conv2d(x64, w64, padding: [k / 2, k / 2], groups: c);
        y64.backward([dy.to(float64)]);
        Assert.True((y.to(float64) - y64).abs().max().item<double>() <= 1e-5 * (1 + y64.abs().max().item<double>()), $"forward {n}×{c}×{h}×{w} K={k}");
        Assert.True((dw.to(float64) - w64.grad!).abs().max().item<double>() <= 1e-5 * (1 + w64.grad!.abs().max().item<double>()), $"weight grad {n}×{c}×{h}×{w} K={k}");
    }
}
