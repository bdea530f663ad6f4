using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Ops.Cuda;

/// <summary>
/// A tile shape of the forward kernels: each thread computes <see cref="RowsPerThread"/> output rows × 4 columns; a block
/// is <see cref="ThreadsX"/> × <see cref="ThreadsY"/> threads per plane over <see cref="Planes"/> planes.
/// <see cref="SmallMap"/> selects <c>dwconv_fwd_small.cu</c> (one tile spans the width; slides over image columns, so
/// padded columns cost nothing) instead of <c>dwconv_fwd.cu</c> (slides over filter columns).
/// </summary>
/// <param name="RowsPerThread">RY: output rows per thread.</param>
/// <param name="ThreadsX">BX: threads along x (tile width 4·BX).</param>
/// <param name="ThreadsY">BY: threads along y (tile height RY·BY).</param>
/// <param name="Planes">PL: (n, c) planes per block (at most 64, the block's z limit).</param>
/// <param name="SmallMap">Use the small-map kernel (needs 4·BX ≥ W).</param>
public sealed record DepthwiseTile(int RowsPerThread, int ThreadsX, int ThreadsY, int Planes, bool SmallMap = false)
{
    /// <summary>Output tile width.</summary>
    public int TileWidth => 4 * ThreadsX;

    /// <summary>Output tile height.</summary>
    public int TileHeight => RowsPerThread * ThreadsY;

    /// <summary>Threads per block.</summary>
    public int Threads => ThreadsX * ThreadsY * Planes;

    /// <summary>Input rows one block stages for an H-row map (image rows only: padded rows are never stored).</summary>
    public int RowsStored(int height, int k) => Math.Min(height, TileHeight + k - 1);

    /// <summary>Dynamic shared memory in bytes for a K×K filter over an H×W map (mirrors the kernels' layouts).</summary>
    public int SharedBytes(int height, int width, int k)
    {
        if (SmallMap)
        {
            int pad = k / 2, ml0 = Math.Max(0, TileWidth - 1 - pad);
            int ml = ml0 + ((((3 - pad) % 4 + 4) % 4) - ml0 % 4 + 4) % 4;
            int wr = (ml + pad + width + 3) / 4 * 4, sw = (width + 6 + 3) / 4 * 4;
            return 4 * Planes * (k * wr + RowsStored(height, k) * sw);
        }

        int kp = (k + 3) / 4 * 4;
        int inW = (TileWidth + k - 1 + 3) / 4 * 4;
        return 4 * Planes * (k * kp + RowsStored(height, k) * inW);
    }

    /// <summary>Whether this tile can run an H×W map: the small-map kernel needs the whole width in one tile.</summary>
    public bool Accepts(int width) => !SmallMap || TileWidth >= width;

    /// <summary>The compile-time specification for kernel size <paramref name="k"/> on maps <paramref name="width"/> wide.</summary>
    public CudaKernelSpec Spec(int k, int width) => SmallMap
        ? new("dwconv_fwd_small.cu", "dwconv_fwd_small", [("KS", k), ("WI", width), ("RY", RowsPerThread), ("BX", ThreadsX), ("BY", ThreadsY), ("PL", Planes)])
        : new("dwconv_fwd.cu", "dwconv_fwd", [("KS", k), ("RY", RowsPerThread), ("BX", ThreadsX), ("BY", ThreadsY), ("PL", Planes)]);

    /// <inheritdoc />
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{(SmallMap ? "small " : string.Empty)}RY={RowsPerThread} BX={ThreadsX} BY={ThreadsY} PL={Planes}");
}

/// <summary>
/// The CUDA forward kernel of the project's depthwise convolution (<c>Kernels/dwconv_fwd.cu</c>), launched through the
/// driver API on libtorch's memory and default stream. Contract: contiguous-able NCHW fp32 CUDA tensors, odd square
/// K in [3, 63], stride 1, padding K/2.
/// </summary>
public static class CudaDepthwise
{
    /// <summary>Target threads per block the default tile aims at.</summary>
    public const int DefaultThreads = 128;

    private static readonly Dictionary<int, int> SharedLimits = [];
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<IntPtr, int> SharedAllowed = new();

    /// <summary>Whether CUDA kernels can run here: the driver loads and NVRTC is present.</summary>
    public static bool IsAvailable => CudaDriver.IsAvailable && Nvrtc.IsAvailable;

    /// <summary>Why they cannot, or null.</summary>
    public static string? UnavailableReason => CudaDriver.UnavailableReason ?? Nvrtc.UnavailableReason;

    /// <summary>
    /// The tile for an N·C-plane map of H×W with a K×K filter. The small-map kernel when W ≤ 32 and K &gt; W (padded
    /// columns dominate); else the direct kernel. Tile width: the narrowest that covers W (up to 64). Rows per thread
    /// RY: 7 when H is a multiple of 7 but not of 8 (RepLKNet's 56/28/14/7 maps), 4 for maps up to 8 rows, else 8; as many
    /// thread rows as cover H (at most 256 threads per plane) and enough planes per block for about
    /// <paramref name="threads"/> threads (at most 64), within <paramref name="maxSharedBytes"/>.
    /// </summary>
    public static DepthwiseTile SelectTile(long planes, int height, int width, int k, int maxSharedBytes, int? rowsPerThread = null,
        int threads = DefaultThreads, bool? smallMap = null)
    {
        bool small = smallMap ?? (width <= 32 && k > width);
        if (small && width > 32)
        {
            throw new CudaException($"the small-map kernel takes maps up to 32 wide, not {width}");
        }

        int bx = width <= 8 ? 2 : width <= 16 ? 4 : width <= 32 ? 8 : 16;
        int ry = rowsPerThread ?? (height % 7 == 0 && height % 8 != 0 ? 7 : height <= 8 ? 4 : 8);
        int by = Math.Clamp((height + ry - 1) / ry, 1, Math.Max(1, 256 / bx));
        int pl = (int)Math.Clamp(threads / (bx * by), 1, Math.Min(64, Math.Max(1, planes)));
        var tile = new DepthwiseTile(ry, bx, by, pl, small);
        while (tile.SharedBytes(height, width, k) > maxSharedBytes && tile.Planes > 1)
        {
            tile = tile with { Planes = tile.Planes / 2 };
        }

        while (tile.SharedBytes(height, width, k) > maxSharedBytes && tile.ThreadsY > 1)
        {
            tile = tile with { ThreadsY = tile.ThreadsY / 2 };
        }

        return tile.SharedBytes(height, width, k) <= maxSharedBytes
            ? tile
            : throw new CudaException($"depthwise K={k} on {height}×{width}: no tile fits {maxSharedBytes} bytes of shared memory");
    }

    /// <summary>Map sizes the project meets (RepLKNet stages at 224 and 1024, the paper's table, ERF inputs).</summary>
    public static readonly int[] CommonSizes = [7, 14, 16, 28, 32, 56, 64, 112, 256];

    /// <summary>The tiles <see cref="SelectTile"/> returns for K on <see cref="CommonSizes"/> (the compile check's list).</summary>
    public static IEnumerable<(DepthwiseTile Tile, int Width)> CommonTiles(int k) =>
        CommonSizes.Select(size => (SelectTile(64 * 384, size, size, k, 227 * 1024), size))
            .DistinctBy(t => t.Item1.Spec(k, t.size).Label);

    /// <summary>The kernels as the dispatcher uses them.</summary>
    internal static IDepthwiseKernels Kernels { get; } = new Adapter();

    /// <summary>Whether our CUDA kernel takes this call.</summary>
    public static bool Fits(Tensor input, Tensor weight, Tensor? bias) =>
        DepthwiseConv2d.FitsOn(input, weight, bias, DeviceType.CUDA) && IsAvailable;

    /// <summary>y = depthwise_conv(x, w) + b on our CUDA kernel (no autograd).</summary>
    public static Tensor Forward(Tensor x, Tensor w, Tensor? b, DepthwiseTile? tile = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        var y = empty(TensorSizes.Of(x), dtype: float32, device: x.device);
        ForwardInto(x, w, b, y, tile);
        return y;
    }

    /// <summary>Writes depthwise_conv(x, w) + b into the contiguous tensor <paramref name="y"/> (which the checks poison first).</summary>
    public static void ForwardInto(Tensor x, Tensor w, Tensor? b, Tensor y, DepthwiseTile? tile = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(y);
        if (!y.is_contiguous() || y.device_type != DeviceType.CUDA || !TensorSizes.Of(y).SequenceEqual(TensorSizes.Of(x)) || y.dtype != ScalarType.Float32)
        {
            throw new ArgumentException("the output must be a contiguous float32 CUDA tensor of the input's shape", nameof(y));
        }

        using var xc = x.contiguous();
        using var wc = w.contiguous();
        using var bc = b?.contiguous();
        int device = x.device_index < 0 ? 0 : x.device_index;
        Launch(device, DevicePtr(xc), DevicePtr(wc), bc is null ? IntPtr.Zero : DevicePtr(bc), DevicePtr(y),
            (int)x.size(0), (int)x.size(1), (int)x.size(2), (int)x.size(3), (int)w.size(2), tile);
    }

    /// <summary>Launches the forward kernel on raw device pointers (NCHW, contiguous) on the legacy default stream.</summary>
    public static unsafe DepthwiseTile Launch(int device, IntPtr x, IntPtr w, IntPtr bias, IntPtr y, int n, int c, int h, int width, int k, DepthwiseTile? tile = null)
    {
        if (k % 2 == 0 || k < DepthwiseConv2d.MinKernel || k > DepthwiseConv2d.MaxKernel)
        {
            throw new ArgumentOutOfRangeException(nameof(k), k, "the kernel size must be odd and within [3, 63]");
        }

        CudaDriver.UsePrimaryContext(device);
        int maxShared = SharedLimit(device);
        int planes = checked(n * c);
        tile ??= DepthwiseTuning.Lookup(CudaDriver.Device(device).Name, h, width, k) ?? SelectTile(planes, h, width, k, maxShared);
        if (!tile.Accepts(width))
        {
            throw new ArgumentException($"tile {tile} cannot run a map {width} wide", nameof(tile));
        }

        int shared = tile.SharedBytes(h, width, k);
        if (shared > maxShared)
        {
            throw new CudaException($"tile {tile} needs {shared} bytes of shared memory for K={k} on {h}×{width}; the device allows {maxShared}");
        }

        var spec = tile.Spec(k, width);
        var kernel = CudaModules.Get(spec, device);
        AllowSharedMemory(kernel.Function, shared);

        int tilesX = tile.SmallMap ? 1 : (width + tile.TileWidth - 1) / tile.TileWidth;
        int tilesY = (h + tile.TileHeight - 1) / tile.TileHeight;
        int rowsStored = tile.RowsStored(h, k);
        int vectorStore = width % 4 == 0 && (y.ToInt64() & 15) == 0 ? 1 : 0;
        IntPtr px = x, pw = w, pb = bias, py = y;
        var args = stackalloc IntPtr[11];
        args[0] = (IntPtr)(&px);
        args[1] = (IntPtr)(&pw);
        args[2] = (IntPtr)(&pb);
        args[3] = (IntPtr)(&py);
        args[4] = (IntPtr)(&planes);
        args[5] = (IntPtr)(&c);
        args[6] = (IntPtr)(&h);
        args[7] = (IntPtr)(&width);
        args[8] = (IntPtr)(&tilesX);
        args[9] = (IntPtr)(&rowsStored);
        args[10] = (IntPtr)(&vectorStore);
        int planeBlocks = (planes + tile.Planes - 1) / tile.Planes;
        int blocksY = Math.Min(planeBlocks, 65535), blocksZ = (planeBlocks + blocksY - 1) / blocksY;
        CudaDriver.Launch(kernel.Function, ((uint)(tilesX * tilesY), (uint)blocksY, (uint)blocksZ), ((uint)tile.ThreadsX, (uint)tile.ThreadsY, (uint)tile.Planes),
            (uint)shared, args, spec.Label);
        return tile;
    }

    // Raises a kernel's dynamic shared-memory limit once to what the launch needs (the default cap is 48 KB and the
    // driver rejects a launch at the cap on some parts, so every kernel that uses shared memory gets it set explicitly).
    private static void AllowSharedMemory(IntPtr function, int bytes)
    {
        if (bytes > 0 && SharedAllowed.GetValueOrDefault(function) < bytes)
        {
            CudaDriver.SetMaxDynamicSharedMemory(function, bytes);
            SharedAllowed.AddOrUpdate(function, bytes, (_, old) => Math.Max(old, bytes));
        }
    }

    /// <summary>Threads per block of the weight-gradient kernel.</summary>
    public const int WeightGradThreads = 256;

    /// <summary>Environment variable: <c>1</c> lets tracked CUDA calls use our backward kernels (opt-in until they are measured on a GPU).</summary>
    public const string BackwardEnvironmentVariable = "REPLKNET_CUDA_BACKWARD";

    /// <summary>Whether tracked CUDA calls run our kernels forward and backward (<c>REPLKNET_CUDA_BACKWARD=1</c>).</summary>
    public static bool BackwardEnabled { get; set; } = Environment.GetEnvironmentVariable(BackwardEnvironmentVariable) == "1";

    /// <summary>Rows per work item of the weight-gradient kernel for this shape (≤ 32, within the shared memory), or 0 when none fits.</summary>
    public static int WeightGradRows(int height, int width, int k, int maxSharedBytes)
    {
        int wp = (width + 3) / 4 * 4, kp = (k + 3) / 4 * 4;
        for (int th = Math.Min(height, 32); th >= 1; th--)
        {
            if (4L * (th * wp + (th + k - 1) * (wp + kp)) <= maxSharedBytes)
            {
                return th;
            }
        }

        return 0;
    }

    /// <summary>Whether the weight-gradient kernel has a tile for this input's map.</summary>
    public static bool WeightGradFits(Tensor input, int k)
    {
        ArgumentNullException.ThrowIfNull(input);
        return WeightGradRows((int)input.size(2), (int)input.size(3), k, SharedLimit(input.device_index < 0 ? 0 : input.device_index)) > 0;
    }

    /// <summary>The weight-gradient kernel's specification.</summary>
    public static CudaKernelSpec WeightGradSpec(int k, int rows) =>
        new("dwconv_wgrad.cu", "dwconv_wgrad", [("KS", k), ("TH", rows), ("THREADS", WeightGradThreads)]);

    /// <summary>Splits of the deterministic reduction: about 8 blocks per SM over all channels, at most one per work item.</summary>
    public static int WeightGradSplits(int n, int c, int h, int rows, int multiprocessors) =>
        Math.Clamp((8 * multiprocessors + c - 1) / c, 1, n * ((h + rows - 1) / rows));

    /// <summary>Input gradient on CUDA: the forward kernel with the filter rotated by 180°.</summary>
    public static Tensor InputGrad(Tensor gradOutput, Tensor w)
    {
        ArgumentNullException.ThrowIfNull(w);
        using var flipped = w.flip(2, 3);
        return Forward(gradOutput, flipped, null);
    }

    /// <summary>Weight gradient [C, 1, K, K] on CUDA (deterministic split reduction), or null when no tile fits the shape.</summary>
    public static unsafe Tensor? WeightGrad(Tensor x, Tensor gradOutput, int k)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(gradOutput);
        int device = x.device_index < 0 ? 0 : x.device_index;
        CudaDriver.UsePrimaryContext(device);
        int n = (int)x.size(0), c = (int)x.size(1), h = (int)x.size(2), width = (int)x.size(3);
        int maxShared = SharedLimit(device);
        int rows = WeightGradRows(h, width, k, maxShared);
        if (rows == 0)
        {
            return null;
        }

        using var xc = x.contiguous();
        using var gc = gradOutput.contiguous();
        int splits = WeightGradSplits(n, c, h, rows, CudaDriver.Device(device).Multiprocessors);
        int wp = (width + 3) / 4 * 4, kp = (k + 3) / 4 * 4;
        int shared = 4 * (rows * wp + (rows + k - 1) * (wp + kp));
        var spec = WeightGradSpec(k, rows);
        var kernel = CudaModules.Get(spec, device);
        AllowSharedMemory(kernel.Function, shared);
        IntPtr reduce = CudaModules.Function(kernel, "dwconv_wgrad_reduce");
        using var partial = empty([splits, c, k, k], dtype: float32, device: x.device);
        var dw = empty([c, 1, k, k], dtype: float32, device: x.device);
        IntPtr px = DevicePtr(xc), pg = DevicePtr(gc), pp = DevicePtr(partial), pw = DevicePtr(dw);
        var args = stackalloc IntPtr[9];
        args[0] = (IntPtr)(&px);
        args[1] = (IntPtr)(&pg);
        args[2] = (IntPtr)(&pp);
        args[3] = (IntPtr)(&n);
        args[4] = (IntPtr)(&c);
        args[5] = (IntPtr)(&h);
        args[6] = (IntPtr)(&width);
        args[7] = (IntPtr)(&wp);
        args[8] = (IntPtr)(&splits);
        CudaDriver.Launch(kernel.Function, ((uint)c, (uint)splits, 1), (WeightGradThreads, 1, 1), (uint)shared, args, spec.Label);
        int count = c * k * k;
        var reduceArgs = stackalloc IntPtr[4];
        reduceArgs[0] = (IntPtr)(&pp);
        reduceArgs[1] = (IntPtr)(&pw);
        reduceArgs[2] = (IntPtr)(&count);
        reduceArgs[3] = (IntPtr)(&splits);
        CudaDriver.Launch(reduce, ((uint)((count + 127) / 128), 1, 1), (128, 1, 1), 0, reduceArgs, "dwconv_wgrad_reduce");
        return dw;
    }

    /// <summary>
    /// What the dispatcher runs on CUDA: the forward kernel for every call that fits; a tracked call only when the
    /// backward kernels are opted in (<see cref="BackwardEnabled"/>: they are verified by compile checks and CPU emulation,
    /// not yet on a GPU) and the weight gradient has a tile for the map; else libtorch runs the call.
    /// </summary>
    private sealed class Adapter : IDepthwiseKernels
    {
        public bool Takes(Tensor input, Tensor weight, Tensor? bias, bool tracked) =>
            Fits(input, weight, bias) && (!tracked || BackwardEnabled && WeightGradFits(input, (int)weight.size(2)));

        public Tensor Forward(Tensor input, Tensor weight, Tensor? bias) => CudaDepthwise.Forward(input, weight, bias);

        public Tensor InputGrad(Tensor gradOutput, Tensor weight) => CudaDepthwise.InputGrad(gradOutput, weight);

        public Tensor WeightGrad(Tensor input, Tensor gradOutput, int k) =>
            CudaDepthwise.WeightGrad(input, gradOutput, k)
            ?? throw new InvalidOperationException($"no weight-gradient tile fits a {input.size(2)}×{input.size(3)} map with K={k}");
    }

    /// <summary>The device address of a contiguous tensor's first element.</summary>
    public static IntPtr DevicePtr(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        using var storage = t.storage<float>();
        return storage.data_ptr() + checked((nint)(t.storage_offset() * sizeof(float)));
    }

    /// <summary>The dynamic shared memory a block may use on <paramref name="device"/>.</summary>
    public static int SharedLimit(int device)
    {
        lock (SharedLimits)
        {
            if (!SharedLimits.TryGetValue(device, out int bytes))
            {
                bytes = CudaDriver.MaxSharedMemoryPerBlockOptin(device);
                SharedLimits[device] = bytes;
            }

            return bytes;
        }
    }
}
