using System.Diagnostics;
using RepLKNet.Distributed;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Benchmarks;

/// <summary>Data-parallel training speed of one process group (one row of <c>bench scale</c>).</summary>
/// <param name="Ranks">Processes in the group.</param>
/// <param name="Batch">Images per process and step.</param>
/// <param name="Resolution">Input side in pixels.</param>
/// <param name="ImagesPerSecond">Images per second of the whole group in each repeat: global batch × steps / Σ over steps of the slowest rank's step time.</param>
/// <param name="StepMs">Median over the timed steps of the slowest rank's step time (forward, backward, allreduce, AdamW), in milliseconds.</param>
/// <param name="AllReduceMs">Median over the timed steps of the slowest rank's gradient averaging (<see cref="GradientReducer.LastReduceTime"/>), in milliseconds; 0 for one process.</param>
/// <param name="AllReduceBytes">Bytes each process sent through allreduce per step (<see cref="GradientReducer.LastReduceBytes"/>); 0 for one process.</param>
/// <param name="Steps">Timed steps per repeat.</param>
/// <param name="Warmup">Untimed steps before the first repeat (the same on every process).</param>
/// <param name="Threads">libtorch threads of each process.</param>
/// <param name="Backend">The process group's engine (<see cref="ProcessGroup.Backend"/>).</param>
/// <param name="PeakMemory">
/// The largest peak resident memory of one process over the timed steps (<see cref="Runtime.PeakMemory"/>: each rank's
/// Linux <c>VmHWM</c>, reset after the warm-up; the maximum over the ranks); null on CUDA (host memory says little there)
/// or where the system reports none.
/// </param>
public sealed record ScaleBenchResult(int Ranks, int Batch, int Resolution, IReadOnlyList<double> ImagesPerSecond, double StepMs, double AllReduceMs,
    long AllReduceBytes, int Steps, int Warmup, int Threads, string Backend, PeakResidentMemory? PeakMemory = null)
{
    /// <summary>Images per step over all processes.</summary>
    public int GlobalBatch => Batch * Ranks;

    /// <summary>The median of <see cref="ImagesPerSecond"/> over the repeats.</summary>
    public double MedianImagesPerSecond => ScaleBenchmark.Median(ImagesPerSecond);
}

/// <summary>A paper estimate of the data-parallel step time of one setting (<see cref="ScaleBenchmark.Estimate"/>).</summary>
/// <param name="Gpus">GPUs (processes) N.</param>
/// <param name="Link">The link the ring runs over, e.g. "NVLink 4".</param>
/// <param name="BytesPerSecond">Per-GPU unidirectional bandwidth of the link.</param>
/// <param name="GradientBytes">Bytes of the gradients averaged per step.</param>
/// <param name="GpuStepMs">One GPU's step time without communication (forward, backward, update).</param>
/// <param name="BatchPerGpu">Images per GPU and step.</param>
public sealed record ScaleEstimate(int Gpus, string Link, double BytesPerSecond, long GradientBytes, double GpuStepMs, int BatchPerGpu)
{
    /// <summary>Ring allreduce time of the gradients (bandwidth term only): 2(N−1)/N × bytes / bandwidth, in milliseconds.</summary>
    public double AllReduceMs => ScaleBenchmark.RingAllReduceSeconds(GradientBytes, Gpus, BytesPerSecond) * 1e3;

    /// <summary>Step time when the allreduce starts after backward (no overlap): step + allreduce.</summary>
    public double NoOverlapMs => GpuStepMs + AllReduceMs;

    /// <summary>Step time when the allreduce runs during backward as DDP's buckets do (perfect overlap): max(step, allreduce).</summary>
    public double OverlapMs => Math.Max(GpuStepMs, AllReduceMs);

    /// <summary>Images per second of the N GPUs without overlap.</summary>
    public double NoOverlapImagesPerSecond => Gpus * BatchPerGpu / (NoOverlapMs / 1e3);

    /// <summary>Images per second of the N GPUs with overlap.</summary>
    public double OverlapImagesPerSecond => Gpus * BatchPerGpu / (OverlapMs / 1e3);
}

/// <summary>
/// <c>bench scale</c>'s measurement and estimate: real data-parallel training steps (<see cref="TrainStep"/> with a
/// <see cref="GradientReducer"/>) of one process group on random batches, and the ring-allreduce estimate of larger jobs.
/// </summary>
public static class ScaleBenchmark
{
    /// <summary>
    /// NVLink 4 (H100/H200 SXM), per GPU and direction: 18 links × 25 GB/s = 450 GB/s (NVIDIA's "900 GB/s" is both
    /// directions; H100 and H200 datasheets). docs/distributed.md.
    /// </summary>
    public const double NvLink4BytesPerSecond = 450e9;

    /// <summary>InfiniBand NDR, one 400 Gb/s adapter per GPU (as in a DGX H100/H200): 50 GB/s per direction.</summary>
    public const double InfiniBandNdrBytesPerSecond = 400e9 / 8;

    /// <summary>
    /// The measured per-GPU training step used when none is given: the official PyTorch RepLKNet-31B, fp32, batch 64 at
    /// 224, one H200 (docs/engineering.md "Whole model": 592.3 ms = 108 images/s).
    /// </summary>
    public const double DefaultGpuStepMs = 592.3;

    /// <summary>The batch of <see cref="DefaultGpuStepMs"/> (and the official ImageNet recipe's per-GPU batch).</summary>
    public const int DefaultGpuBatch = 64;

    /// <summary>
    /// Bandwidth term of a ring allreduce of <paramref name="bytes"/> over <paramref name="ranks"/> processes: each sends and
    /// receives 2(N−1)/N × bytes (reduce-scatter, then all-gather) at <paramref name="bytesPerSecond"/>; latency terms are
    /// left out (a 79 M-parameter model's buckets are tens of MB). Seconds; 0 for one process.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative size, fewer than one rank, or a bandwidth that is not positive.</exception>
    public static double RingAllReduceSeconds(long bytes, int ranks, double bytesPerSecond)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        if (!(bytesPerSecond > 0 && double.IsFinite(bytesPerSecond)))
        {
            throw new ArgumentOutOfRangeException(nameof(bytesPerSecond), bytesPerSecond, $"{nameof(bytesPerSecond)} must be a positive number");
        }

        return 2.0 * (ranks - 1) / ranks * bytes / bytesPerSecond;
    }

    /// <summary>
    /// The two settings of the paper's training: 8 GPUs of one node over NVLink 4, and 64 GPUs on 8 nodes over InfiniBand
    /// NDR (the ring crosses the nodes, so the slower link sets its pace), for fp32 gradients of <paramref name="parameters"/>
    /// elements and a measured <paramref name="gpuStepMs"/> per GPU at <paramref name="batchPerGpu"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A value that is not positive.</exception>
    public static IReadOnlyList<ScaleEstimate> Estimate(long parameters, double gpuStepMs, int batchPerGpu)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parameters);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchPerGpu);
        if (!(gpuStepMs > 0 && double.IsFinite(gpuStepMs)))
        {
            throw new ArgumentOutOfRangeException(nameof(gpuStepMs), gpuStepMs, $"{nameof(gpuStepMs)} must be a positive number of milliseconds");
        }

        long bytes = parameters * sizeof(float);
        return
        [
            new ScaleEstimate(8, "NVLink 4 (1 node)", NvLink4BytesPerSecond, bytes, gpuStepMs, batchPerGpu),
            new ScaleEstimate(64, "InfiniBand NDR 400 Gb/s (8 nodes)", InfiniBandNdrBytesPerSecond, bytes, gpuStepMs, batchPerGpu),
        ];
    }

    /// <summary>
    /// Times data-parallel training steps of <paramref name="config"/> on <paramref name="group"/>: every process builds the
    /// model, takes rank 0's weights (<see cref="GradientReducer.BroadcastState"/>), and trains on its own random batch
    /// [<paramref name="batch"/>, C, <paramref name="resolution"/>, <paramref name="resolution"/>] (seeded by its rank) with
    /// the training loop's step and gradient averaging: <paramref name="warmup"/> untimed steps (null: <see cref="DefaultWarmup"/>,
    /// then at least one more and more until every process's JIT has settled or 30 s have passed,
    /// <see cref="JitWarmup.UntilAllSettled"/>, so that all run the same count), then <paramref name="repeats"/> × <paramref name="steps"/> timed ones. The time of a step is the slowest process's
    /// (agreed with one max-allreduce after each repeat, outside the timed steps). Every process returns the same result.
    /// </summary>
    /// <exception cref="ArgumentException">A count that is not positive (warm-up: negative).</exception>
    /// <exception cref="CollectiveException">A collective failed or timed out.</exception>
    public static ScaleBenchResult Run(RepLKNetConfig config, int batch, int resolution, ProcessGroup group, Device device, int? warmup, int steps, int repeats)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(group);
        OptionCheck.That(batch > 0, nameof(batch), $"must be positive, got {batch}");
        OptionCheck.That(resolution > 0, nameof(resolution), $"must be positive, got {resolution}");
        OptionCheck.That(warmup is null or >= 0, nameof(warmup), $"must be ≥ 0, got {warmup}");
        OptionCheck.That(steps > 0, nameof(steps), $"must be positive, got {steps}");
        OptionCheck.That(repeats > 0, nameof(repeats), $"must be positive, got {repeats}");

        using var model = new RepLKNetModel(config with { DropPathRate = 0 });
        model.to(device);
        model.train();
        GradientReducer.BroadcastState(group, model);
        using var runScope = NewDisposeScope(); // the batch, labels and step temporaries
        using var generator = new Generator((ulong)(1 + group.Rank));
        var x = randn([batch, config.InChannels, resolution, resolution], generator: generator).to(device);
        var labels = randint(0, config.NumClasses ?? 1, [batch], generator: generator).to(device);
        var (optimizer, scales) = TrainStep.CreateOptimizer(model, 1e-6, TrainOptions.DefaultWeightDecay);
        using var disposeOptimizer = optimizer;
        var reducer = group.IsDistributed ? new GradientReducer(group, model.parameters()) : null;
        var step = new TrainStep(model, optimizer, scales, device) { Reducer = reducer, Group = group };
        using var synthetic = new SyntheticBatch(x, labels);

        (double StepMs, double ReduceMs) Once(long number)
        {
            using var scope = NewDisposeScope();
            Synchronize(device);
            var clock = Stopwatch.StartNew();
            step.Run(synthetic, 1e-6, number);
            Synchronize(device);
            return (clock.Elapsed.TotalMilliseconds, reducer?.LastReduceTime.TotalMilliseconds ?? 0);
        }

        long n = 0;
        // By default until the JIT has settled on every process (each runs the same count).
        int warmedUp = JitWarmup.Run(group, () => Once(++n), warmup, DefaultWarmup);

        var memory = PeakMemory.Start();
        var imagesPerSecond = new List<double>();
        var stepTimes = new List<double>();
        var reduceTimes = new List<double>();
        for (int r = 0; r < repeats; r++)
        {
            var times = new double[2 * steps]; // step ms, then allreduce ms, of each step
            for (int s = 0; s < steps; s++)
            {
                (times[s], times[steps + s]) = Once(++n);
            }

            group.AllReduce(times, ReduceOp.Max);
            double total = times.Take(steps).Sum();
            imagesPerSecond.Add((double)batch * group.WorldSize * steps / (total / 1e3));
            stepTimes.AddRange(times.Take(steps));
            reduceTimes.AddRange(times.Skip(steps));
        }

        PeakResidentMemory? peak = null;
        if (device.type == DeviceType.CPU)
        {
            // The largest rank's peak; "since reset" only when every rank could reset its counter.
            var own = memory.Read();
            double[] agreed = [own?.Bytes ?? -1, own is { SinceReset: true } ? 0 : 1];
            group.AllReduce(agreed, ReduceOp.Max);
            peak = agreed[0] < 0 ? null : new PeakResidentMemory((long)agreed[0], agreed[1] == 0);
        }

        return new ScaleBenchResult(group.WorldSize, batch, resolution, imagesPerSecond, Median(stepTimes), Median(reduceTimes),
            reducer?.LastReduceBytes ?? 0, steps, warmedUp, get_num_threads(), group.Backend, peak);
    }

    /// <summary>The fixed untimed steps when none are asked for, before the JIT's settling.</summary>
    public const int DefaultWarmup = 3;

    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count).</summary>
    /// <exception cref="ArgumentException">No values.</exception>
    public static double Median(IEnumerable<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var sorted = values.Order().ToArray();
        OptionCheck.That(sorted.Length > 0, nameof(values), "must not be empty");
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize();
        }
    }
}
