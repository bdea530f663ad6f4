using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;

namespace RepLKNet.Ops.Cuda;

/// <summary>Times work on the legacy default stream with CUDA events.</summary>
public sealed class CudaEventTimer : IDisposable
{
    private readonly IntPtr start = CudaDriver.CreateEvent();
    private readonly IntPtr stop = CudaDriver.CreateEvent();

    /// <summary>Records the start event.</summary>
    public void Start() => CudaDriver.RecordEvent(start);

    /// <summary>Records the stop event and returns the milliseconds since <see cref="Start"/> (waits for the GPU).</summary>
    public double Stop()
    {
        CudaDriver.RecordEvent(stop);
        return CudaDriver.ElapsedMilliseconds(start, stop);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        CudaDriver.DestroyEvent(start);
        CudaDriver.DestroyEvent(stop);
    }
}

/// <summary>The measured fp32 FFMA ceiling of a GPU (our microkernel, <c>Kernels/ffma_peak.cu</c>).</summary>
public static class CudaPeak
{
    /// <summary>Runs the microkernel on device <paramref name="device"/> and returns the best of five in TFLOP/s.</summary>
    public static unsafe double MeasureTflops(int device)
    {
        CudaDriver.UsePrimaryContext(device);
        var kernel = CudaModules.Get(new CudaKernelSpec("ffma_peak.cu", "ffma_peak", []), device);
        int sms = CudaDriver.Device(device).Multiprocessors;
        const int Threads = 256, Flops = 2 * 8 * 16;
        int blocks = sms * 16, iterations = 4096;
        IntPtr output = CudaDriver.Allocate((long)blocks * Threads * sizeof(float));
        try
        {
            float b = 0.9999f, c = 1e-7f;
            var args = stackalloc IntPtr[4];
            args[0] = (IntPtr)(&output);
            args[1] = (IntPtr)(&iterations);
            args[2] = (IntPtr)(&b);
            args[3] = (IntPtr)(&c);
            using var timer = new CudaEventTimer();
            double best = 0;
            for (int rep = 0; rep < 6; rep++)
            {
                timer.Start();
                CudaDriver.Launch(kernel.Function, ((uint)blocks, 1, 1), (Threads, 1, 1), 0, args, "ffma_peak");
                double ms = timer.Stop();
                if (rep > 0)
                {
                    best = Math.Max(best, (double)blocks * Threads * iterations * Flops / (ms / 1e3) / 1e12);
                }
            }

            return best;
        }
        finally
        {
            CudaDriver.Free(output);
        }
    }
}

/// <summary>One correctness result of the CUDA forward kernel.</summary>
/// <param name="Shape">"N×C×H×W, K".</param>
/// <param name="Tile">The tile that ran.</param>
/// <param name="VsFloat64">Max |ours − float64 reference| / max |reference| (the criterion).</param>
/// <param name="VsCudnn">The same against libtorch's fp32 CUDA conv2d (NaN when not compared).</param>
/// <param name="VsCpu">The same against our CPU kernel (NaN when not compared).</param>
/// <param name="AllWritten">Whether every output element was overwritten (outputs are poisoned with NaN before the launch).</param>
public sealed record CudaCheckResult(string Shape, string Tile, double VsFloat64, double VsCudnn, double VsCpu, bool AllWritten)
{
    /// <summary>Whether the result meets <see cref="CudaDepthwiseCheck.Tolerance"/>.</summary>
    public bool Passed => AllWritten && VsFloat64 <= CudaDepthwiseCheck.Tolerance &&
                          (double.IsNaN(VsCudnn) || VsCudnn <= CudaDepthwiseCheck.Tolerance) && (double.IsNaN(VsCpu) || VsCpu <= CudaDepthwiseCheck.Tolerance);
}

/// <summary>One correctness result of the CUDA backward kernels.</summary>
/// <param name="Shape">"N×C×H×W, K".</param>
/// <param name="InputGrad">Input-gradient error relative to the float64 reference's largest value.</param>
/// <param name="WeightGrad">Weight-gradient error, likewise.</param>
/// <param name="Deterministic">Whether two weight-gradient runs were bit-identical.</param>
public sealed record CudaBackwardCheckResult(string Shape, double InputGrad, double WeightGrad, bool Deterministic)
{
    /// <summary>Within 1e-5 (input gradient) and 1e-4 (weight gradient, long reductions), and deterministic.</summary>
    public bool Passed => InputGrad <= 1e-5 && WeightGrad <= 1e-4 && Deterministic;
}

/// <summary>Correctness sweeps of the CUDA forward kernel over awkward shapes, fresh random data per run.</summary>
public static class CudaDepthwiseCheck
{
    /// <summary>Relative tolerance.</summary>
    public const double Tolerance = 1e-5;

    /// <summary>The sweep: K larger than the map, H ≠ W, odd widths, N = 1, C = 1, 1×1, a 1-wide map, plane counts off the block's.</summary>
    public static readonly (int N, int C, int H, int W, int K)[] Shapes =
    [
        (1, 1, 7, 7, 13), (2, 3, 5, 9, 31), (1, 4, 13, 11, 7), (2, 5, 17, 33, 3), (3, 2, 64, 64, 31), (1, 1, 1, 1, 3),
        (2, 8, 56, 56, 31), (2, 8, 28, 28, 29), (4, 6, 14, 14, 27), (4, 16, 7, 7, 13), (1, 3, 112, 112, 3), (1, 2, 100, 130, 63),
        (2, 3, 20, 37, 5), (1, 1, 31, 1, 9), (3, 37, 16, 16, 17), (2, 7, 32, 32, 21), (1, 5, 65, 71, 11),
    ];

    /// <summary>Shapes on which every candidate tile is checked, not only the chosen one.</summary>
    public static readonly (int N, int C, int H, int W, int K)[] AllTileShapes = [(3, 37, 16, 16, 17), (2, 5, 17, 33, 3), (1, 3, 57, 70, 31), (2, 9, 7, 7, 13)];

    /// <summary>Checks on TorchSharp CUDA tensors of device <paramref name="device"/> against float64 conv2d, cuDNN fp32 and our CPU kernel.</summary>
    public static List<CudaCheckResult> RunOnTensors(long seed, int device)
    {
        var results = new List<CudaCheckResult>();
        var generator = new Generator((ulong)seed);
        var cuda = new Device(DeviceType.CUDA, device);
        int maxShared = CudaDepthwise.SharedLimit(device);
        foreach (var (shape, allTiles) in Shapes.Select(s => (s, false)).Concat(AllTileShapes.Select(s => (s, true))))
        {
            var (n, c, h, w, k) = shape;
            using var scope = NewDisposeScope();
            var x = randn([n, c, h, w], generator: generator);
            var weight = randn([c, 1, k, k], generator: generator);
            var bias = randn([c], generator: generator);
            var reference = nn.functional.conv2d(x.to(float64).to(cuda), weight.to(float64).to(cuda), bias.to(float64).to(cuda), padding: [k / 2, k / 2], groups: c).cpu();
            var cudnn = nn.functional.conv2d(x.to(cuda), weight.to(cuda), bias.to(cuda), padding: [k / 2, k / 2], groups: c).cpu();
            var cpu = CpuDepthwise.ForwardRaw(x, weight, bias);
            var tiles = allTiles
                ? DepthwiseTuning.Candidates((long)n * c, h, w, k, maxShared).Cast<DepthwiseTile?>().ToList()
                : [null];
            foreach (var tile in tiles)
            {
                var y = empty([n, c, h, w], dtype: float32, device: cuda).fill_(Scalars.NaN);
                CudaDepthwise.ForwardInto(x.to(cuda), weight.to(cuda), bias.to(cuda), y, tile);
                var ours = y.cpu();
                bool written = !ours.isnan().any().item<bool>();
                var chosen = tile ?? DepthwiseTuning.Lookup(CudaDriver.Device(device).Name, h, w, k) ?? CudaDepthwise.SelectTile((long)n * c, h, w, k, maxShared);
                results.Add(new CudaCheckResult($"{n}×{c}×{h}×{w}, K={k}", chosen.ToString(),
                    TensorErrors.Relative(ours, reference), TensorErrors.Relative(ours, cudnn), TensorErrors.Relative(ours, cpu), written));
            }
        }

        return results;
    }

    /// <summary>
    /// Checks on exact-size driver allocations (no libtorch CUDA at all), so that <c>compute-sanitizer --tool memcheck</c>
    /// sees any access past a buffer; the reference is libtorch's CPU float64 conv2d.
    /// </summary>
    public static List<CudaCheckResult> RunOnRawBuffers(long seed, int device)
    {
        (int N, int C, int H, int W, int K)[] shapes = [(1, 1, 7, 7, 13), (2, 3, 5, 9, 31), (1, 2, 13, 11, 7), (1, 1, 1, 1, 3), (2, 3, 17, 37, 5), (1, 2, 9, 70, 31)];
        var results = new List<CudaCheckResult>();
        var generator = new Generator((ulong)seed);
        CudaDriver.UsePrimaryContext(device);
        int maxShared = CudaDepthwise.SharedLimit(device);
        foreach (var (n, c, h, w, k) in shapes)
        {
            using var scope = NewDisposeScope();
            var x = randn([n, c, h, w], generator: generator);
            var weight = randn([c, 1, k, k], generator: generator);
            var bias = randn([c], generator: generator);
            var reference = nn.functional.conv2d(x.to(float64), weight.to(float64), bias.to(float64), padding: [k / 2, k / 2], groups: c);
            foreach (var tile in DepthwiseTuning.Candidates((long)n * c, h, w, k, maxShared))
            {
                var output = new float[n * c * h * w];
                Array.Fill(output, float.NaN);
                IntPtr dx = Upload(x), dw = Upload(weight), db = Upload(bias), dy = CudaDriver.Allocate(output.Length * sizeof(float));
                try
                {
                    CudaDriver.CopyToDevice(dy, output);
                    CudaDepthwise.Launch(device, dx, dw, db, dy, n, c, h, w, k, tile);
                    CudaDriver.Synchronize();
                    CudaDriver.CopyToHost(output, dy);
                }
                finally
                {
                    CudaDriver.Free(dx);
                    CudaDriver.Free(dw);
                    CudaDriver.Free(db);
                    CudaDriver.Free(dy);
                }

                var ours = tensor(output, [n, c, h, w]);
                results.Add(new CudaCheckResult($"{n}×{c}×{h}×{w}, K={k}", tile.ToString(), TensorErrors.Relative(ours, reference), double.NaN, double.NaN,
                    !ours.isnan().any().item<bool>()));
            }
        }

        return results;
    }

    /// <summary>
    /// Checks the CUDA backward (input gradient = forward with the rotated filter; weight gradient = the split
    /// reduction) against libtorch's float64 autograd, with a second weight-gradient run that must be bit-identical.
    /// </summary>
    public static List<CudaBackwardCheckResult> RunBackwardOnTensors(long seed, int device)
    {
        var results = new List<CudaBackwardCheckResult>();
        var generator = new Generator((ulong)seed);
        var cuda = new Device(DeviceType.CUDA, device);
        foreach (var (n, c, h, w, k) in Shapes)
        {
            using var scope = NewDisposeScope();
            var x = randn([n, c, h, w], generator: generator);
            var weight = randn([c, 1, k, k], generator: generator);
            var upstream = randn([n, c, h, w], generator: generator);
            var x64 = x.to(float64).requires_grad_(true);
            var w64 = weight.to(float64).requires_grad_(true);
            nn.functional.conv2d(x64, w64, padding: [k / 2, k / 2], groups: c).backward([upstream.to(float64)]);
            var dx = CudaDepthwise.InputGrad(upstream.to(cuda), weight.to(cuda)).cpu();
            var dw = CudaDepthwise.WeightGrad(x.to(cuda), upstream.to(cuda), k)!.cpu();
            var again = CudaDepthwise.WeightGrad(x.to(cuda), upstream.to(cuda), k)!.cpu();
            results.Add(new CudaBackwardCheckResult($"{n}×{c}×{h}×{w}, K={k}", TensorErrors.Relative(dx, x64.grad!), TensorErrors.Relative(dw, w64.grad!), dw.eq(again).all().item<bool>()));
        }

        return results;
    }

    private static IntPtr Upload(Tensor t)
    {
        var values = MemoryMarshal.Cast<byte, float>(t.contiguous().bytes).ToArray();
        IntPtr p = CudaDriver.Allocate(values.Length * sizeof(float));
        CudaDriver.CopyToDevice(p, values);
        return p;
    }
}
