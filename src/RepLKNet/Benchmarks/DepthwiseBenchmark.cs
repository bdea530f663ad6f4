using System.Diagnostics;
using RepLKNet.Ops;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Benchmarks;

/// <summary>The passes the depthwise benchmark times.</summary>
public static class BenchPasses
{
    /// <summary>Forward through the stack of layers.</summary>
    public const string Forward = "fwd";

    /// <summary>Input gradient only.</summary>
    public const string InputGrad = "dgrad";

    /// <summary>Weight gradient only.</summary>
    public const string WeightGrad = "wgrad";

    /// <summary>Both gradients together (a training backward).</summary>
    public const string Backward = "bwd";

    /// <summary>
    /// The passes of <paramref name="pass"/> (case-insensitive): <c>fwd</c> (<see cref="Forward"/>), <c>bwd</c> (the gradients:
    /// <see cref="InputGrad"/>, <see cref="WeightGrad"/>, <see cref="Backward"/>), <c>all</c> (all four), or a comma-separated
    /// list of these and of <c>dgrad</c> and <c>wgrad</c> alone (e.g. <c>fwd,dgrad</c>: libtorch's weight gradient is slow
    /// enough to dominate a sweep), in the order fwd, dgrad, wgrad, bwd.
    /// </summary>
    /// <exception cref="ArgumentException">Another text; the message starts with <c>pass</c>.</exception>
    public static IReadOnlyList<string> Parse(string pass)
    {
        ArgumentNullException.ThrowIfNull(pass);
        var chosen = new HashSet<string>();
        foreach (string part in pass.Split(',', StringSplitOptions.TrimEntries))
        {
            string[] passes = part.ToLowerInvariant() switch
            {
                "fwd" => [Forward],
                "dgrad" => [InputGrad],
                "wgrad" => [WeightGrad],
                "bwd" => [InputGrad, WeightGrad, Backward],
                "all" => [Forward, InputGrad, WeightGrad, Backward],
                _ => throw new ArgumentException($"{nameof(pass)} '{pass}': use fwd, bwd, all, or a list of fwd, dgrad, wgrad, bwd", nameof(pass)),
            };
            chosen.UnionWith(passes);
        }

        return [.. new[] { Forward, InputGrad, WeightGrad, Backward }.Where(chosen.Contains)];
    }
}

/// <summary>One timed (implementation, pass, shape) cell of the paper's Table 1.</summary>
/// <param name="Implementation">"ours" or "torch".</param>
/// <param name="Pass">fwd, dgrad, wgrad or bwd.</param>
/// <param name="N">Batch.</param>
/// <param name="C">Channels.</param>
/// <param name="R">Resolution (R×R).</param>
/// <param name="K">Kernel size.</param>
/// <param name="Layers">Depthwise layers in the stack.</param>
/// <param name="Ms">Median milliseconds for the whole stack.</param>
/// <param name="Gflops">Nominal GFLOP/s: 2·N·C·R²·K² per layer and pass (padded taps counted, as the paper does).</param>
/// <param name="Reps">Timed repetitions behind the median.</param>
/// <param name="CheckError">For "ours": max |ours − libtorch| / max |libtorch| on the first layer of the timed stack (NaN when not checked).</param>
/// <param name="PeakMemory">
/// Peak resident memory of the whole process during the cell's timed runs (<see cref="Runtime.PeakMemory"/>: Linux
/// <c>VmHWM</c>, reset after the warm-up; it includes what the allocator kept from earlier cells); null on CUDA (host
/// memory says little there) or where the system reports none.
/// </param>
public sealed record DepthwiseBenchResult(string Implementation, string Pass, int N, int C, int R, int K, int Layers, double Ms, double Gflops, int Reps,
    double CheckError = double.NaN, PeakResidentMemory? PeakMemory = null);

/// <summary>What to time.</summary>
public sealed record DepthwiseBenchOptions
{
    /// <summary>Batch.</summary>
    public int Batch { get; init; } = 8;

    /// <summary>Channels.</summary>
    public int Channels { get; init; } = 384;

    /// <summary>Resolutions.</summary>
    public IReadOnlyList<int> Sizes { get; init; } = [16, 32, 64];

    /// <summary>Kernel sizes.</summary>
    public IReadOnlyList<int> Kernels { get; init; } = [3, 5, 7, 9, 13, 17, 21, 27, 29, 31];

    /// <summary>Layers in the stack.</summary>
    public int Layers { get; init; } = 24;

    /// <summary>Passes to time.</summary>
    public IReadOnlyList<string> Passes { get; init; } = [BenchPasses.Forward];

    /// <summary>Implementations, compared in the same process.</summary>
    public IReadOnlyList<DepthwiseBackend> Implementations { get; init; } = [DepthwiseBackend.Ours, DepthwiseBackend.Torch];

    /// <summary>Timed repetitions (median); fewer when one repetition exceeds <see cref="MaxSecondsPerCell"/>.</summary>
    public int Reps { get; init; } = 3;

    /// <summary>Time after which no more repetitions of a cell are run.</summary>
    public double MaxSecondsPerCell { get; init; } = 20;

    /// <summary>Device.</summary>
    public Device Device { get; init; } = CPU;

    /// <summary>Compare our first layer's output with libtorch's in every cell (cheap on a GPU; a sanity check of the timed code path).</summary>
    public bool CheckCells { get; init; }
}

/// <summary>Times stacks of depthwise convolutions for each implementation side by side (the paper's Table 1).</summary>
public static class DepthwiseBenchmark
{
    /// <summary>Nominal FLOPs of one depthwise layer: 2·N·C·R²·K².</summary>
    public static double LayerFlops(int n, int c, int r, int k) => 2.0 * n * c * r * r * k * k;

    /// <summary>Runs every cell; <paramref name="onResult"/> sees each result as it is measured.</summary>
    public static List<DepthwiseBenchResult> Run(DepthwiseBenchOptions options, Action<DepthwiseBenchResult>? onResult = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var results = new List<DepthwiseBenchResult>();
        foreach (int r in options.Sizes)
        {
            foreach (int k in options.Kernels)
            {
                foreach (string pass in options.Passes)
                {
                    foreach (var impl in options.Implementations)
                    {
                        var result = Cell(options, impl, pass, r, k);
                        results.Add(result);
                        onResult?.Invoke(result);
                    }
                }
            }
        }

        return results;
    }

    private static DepthwiseBenchResult Cell(DepthwiseBenchOptions o, DepthwiseBackend impl, string pass, int r, int k)
    {
        using var scope = NewDisposeScope();
        using var backend = DepthwiseConv2d.Use(impl);
        var device = o.Device;
        var x = randn([o.Batch, o.Channels, r, r], device: device);
        var upstream = randn([o.Batch, o.Channels, r, r], device: device);
        // Weights scaled by 1/K keep activations O(1) through the stack (no overflow, no denormals).
        var weights = Enumerable.Range(0, o.Layers).Select(_ => Scalars.Div(randn([o.Channels, 1, k, k], device: device), k)).ToArray();

        double Once()
        {
            using var inner = NewDisposeScope();
            return pass == BenchPasses.Forward ? ForwardStack(x, weights, device) : BackwardStack(x, weights, upstream, pass, device);
        }

        Once(); // warm-up: JIT, NVRTC or the cubin cache, allocator, caches
        Once();
        double check = double.NaN;
        if (o.CheckCells && impl == DepthwiseBackend.Ours)
        {
            using var inner = NewDisposeScope();
            using var noGrad = no_grad();
            var ours = DepthwiseConv2d.Forward(x, weights[0]);
            var reference = nn.functional.conv2d(x, weights[0], padding: [k / 2, k / 2], groups: o.Channels);
            check = (ours - reference).abs().max().item<float>() / Math.Max(reference.abs().max().item<float>(), 1e-30);
        }

        var memory = PeakMemory.Start();
        var times = new List<double>();
        var budget = Stopwatch.StartNew();
        for (int rep = 0; rep < o.Reps; rep++)
        {
            times.Add(Once());
            if (budget.Elapsed.TotalSeconds > o.MaxSecondsPerCell)
            {
                break;
            }
        }

        times.Sort();
        double ms = times[times.Count / 2];
        double gflops = LayerFlops(o.Batch, o.Channels, r, k) * o.Layers / (ms / 1e3) / 1e9;
        var peak = device.type == DeviceType.CPU ? memory.Read() : null;
        return new DepthwiseBenchResult(impl == DepthwiseBackend.Ours ? "ours" : "torch", pass, o.Batch, o.Channels, r, k, o.Layers, ms, gflops, times.Count, check, peak);
    }

    private static double ForwardStack(Tensor x, Tensor[] weights, Device device)
    {
        using var noGrad = no_grad();
        using var timer = StackTimer.Start(device);
        var y = x;
        foreach (var w in weights)
        {
            var next = DepthwiseConv2d.Forward(y, w);
            if (!ReferenceEquals(y, x))
            {
                y.Dispose();
            }

            y = next;
        }

        return timer.Stop();
    }

    // Each layer is its own one-conv graph so dgrad, wgrad and bwd each time exactly the gradients they name. The
    // gradients are taken with autograd.grad, not accumulated into .grad: the stack's input is a leaf here, as a
    // network's activations are not, and accumulating a custom function's gradient into a leaf copies it (our wrappers
    // still hold it when libtorch's AccumulateGrad runs, so it cannot take it over): 1.6 ms per layer at R = 32 that
    // no training step pays (docs/perf-notes.md, "Table 1 on AVX2 and AVX-512").
    private static double BackwardStack(Tensor x, Tensor[] weights, Tensor upstream, string pass, Device device)
    {
        bool inputGrad = pass is BenchPasses.InputGrad or BenchPasses.Backward;
        bool weightGrad = pass is BenchPasses.WeightGrad or BenchPasses.Backward;
        double total = 0;
        foreach (var w in weights)
        {
            using var scope = NewDisposeScope();
            var xi = x.detach().requires_grad_(inputGrad);
            var wi = w.detach().requires_grad_(weightGrad);
            var y = DepthwiseConv2d.Forward(xi, wi);
            Tensor[] wrt = inputGrad && weightGrad ? [xi, wi] : inputGrad ? [xi] : [wi];
            using var timer = StackTimer.Start(device);
            torch.autograd.grad([y], wrt, [upstream]);
            DepthwiseConv2d.ReleaseBackwardOutputs();
            total += timer.Stop();
        }

        return total;
    }

    /// <summary>CUDA events on the default stream for CUDA devices (after a synchronize), a stopwatch on the CPU.</summary>
    private sealed class StackTimer : IDisposable
    {
        private readonly Ops.Cuda.CudaEventTimer? events;
        private readonly Stopwatch clock;

        private StackTimer(Device device)
        {
            if (device.type == DeviceType.CUDA)
            {
                torch.cuda.synchronize();
                Ops.Cuda.CudaDriver.UsePrimaryContext(device.index < 0 ? 0 : device.index);
                events = new Ops.Cuda.CudaEventTimer();
                events.Start();
            }

            clock = Stopwatch.StartNew();
        }

        public static StackTimer Start(Device device) => new(device);

        public double Stop() => events?.Stop() ?? clock.Elapsed.TotalMilliseconds;

        public void Dispose() => events?.Dispose();
    }
}
