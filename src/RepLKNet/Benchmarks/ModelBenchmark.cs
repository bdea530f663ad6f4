using System.Diagnostics;
using RepLKNet.Models;
using RepLKNet.Data;
using RepLKNet.Ops;
using RepLKNet.Runtime;
using RepLKNet.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Benchmarks;

/// <summary>Whole-model timing of one implementation.</summary>
/// <param name="Implementation">"ours" or "torch".</param>
/// <param name="Mode">"infer" (eval, no grad) or "train" (one <see cref="TrainStep"/>: forward, cross-entropy, backward, AdamW update).</param>
/// <param name="Batch">Batch size.</param>
/// <param name="Resolution">Input resolution.</param>
/// <param name="Ms">Median milliseconds per batch.</param>
/// <param name="ImagesPerSecond">Throughput.</param>
/// <param name="PeakMemory">
/// Peak resident memory of the whole process during the timed runs, after the warm-up (<see cref="Runtime.PeakMemory"/>:
/// bytes, Linux <c>VmHWM</c> reset before this implementation's runs); null on CUDA (host memory says little there) or
/// where the system reports none.
/// </param>
/// <param name="Reps">Timed repetitions.</param>
/// <param name="Warmup">Untimed runs of this implementation before the timed ones.</param>
/// <param name="MinorFaultsPerRep">
/// The median count of minor page faults (first touches of fresh memory, <see cref="PageFaults"/>) of the whole process
/// per timed run; null where the system reports none. Far above zero means the heap was still growing while timed.
/// </param>
public sealed record ModelBenchResult(string Implementation, string Mode, int Batch, int Resolution, double Ms, double ImagesPerSecond, PeakResidentMemory? PeakMemory, int Reps,
    int Warmup, long? MinorFaultsPerRep);

/// <summary>Times a whole RepLKNet with each depthwise implementation in the same process.</summary>
public static class ModelBenchmark
{
    /// <summary>
    /// Times <paramref name="config"/> for each implementation on a random batch [<paramref name="batch"/>, C,
    /// <paramref name="resolution"/>, <paramref name="resolution"/>]: the median of up to <paramref name="reps"/> runs
    /// (stopping after <paramref name="maxSeconds"/>) after <paramref name="warmup"/> untimed ones (by default the mode's
    /// <see cref="DefaultWarmup"/>, then more until the JIT has settled), in milliseconds per batch.
    /// </summary>
    /// <remarks>
    /// Training needs more than one warm-up step (<see cref="DefaultWarmup"/>): the first steps also create the gradients
    /// and AdamW's state, and the process heap keeps growing for a few steps as persistent and per-step tensors settle
    /// into it; every page of that growth is a first-touch fault (RepLKNet-31B, batch 8, 2 threads, minor faults per
    /// step: ~1.2 M, ~0.55 M, ~18 k, then 10⁴ or fewer, docs/perf-notes.md, 2026-12-01). Timing those steps times the
    /// kernel's page clearing (~6 µs a fault on the project's VMs), not the model. timm's <c>benchmark.py</c> also warms
    /// up before it times.
    /// </remarks>
    /// <param name="config">The architecture (drop path off while timing).</param>
    /// <param name="batch">Images per batch.</param>
    /// <param name="resolution">Input side in pixels.</param>
    /// <param name="mode"><c>infer</c> (eval mode, no gradients) or <c>train</c> (one <see cref="TrainStep"/>).</param>
    /// <param name="impls">The depthwise implementations to time, in order.</param>
    /// <param name="device">Where the model runs (CUDA timings synchronize the device around each run).</param>
    /// <param name="reps">Timed runs at most.</param>
    /// <param name="maxSeconds">Stop repeating after this many seconds of timed runs.</param>
    /// <param name="onResult">Called with each implementation's result as it is ready.</param>
    /// <param name="deploy">Re-parameterize first (inference only).</param>
    /// <param name="warmup">Untimed runs per implementation, exactly; null: <see cref="DefaultWarmup"/> of <paramref name="mode"/>, then
    /// more until the JIT has settled (<see cref="JitWarmup.UntilSettled"/>).</param>
    /// <exception cref="ArgumentException"><paramref name="mode"/> is neither, <paramref name="deploy"/> is asked for training, or <paramref name="warmup"/> is negative.</exception>
    public static List<ModelBenchResult> Run(RepLKNetConfig config, int batch, int resolution, string mode, IReadOnlyList<DepthwiseBackend> impls,
        Device device, int reps, double maxSeconds, Action<ModelBenchResult>? onResult = null, bool deploy = false, int? warmup = null)
    {
        ArgumentNullException.ThrowIfNull(impls);
        if (warmup < 0)
        {
            throw new ArgumentException($"warmup {warmup}: must be 0 or more", nameof(warmup));
        }

        if (mode is not ("infer" or "train"))
        {
            throw new ArgumentException($"mode '{mode}': use infer or train", nameof(mode));
        }

        if (deploy && mode != "infer")
        {
            throw new ArgumentException("the deploy form is for inference only", nameof(deploy));
        }

        var results = new List<ModelBenchResult>();
        using var model = new RepLKNetModel(config with { DropPathRate = 0 });
        if (deploy)
        {
            model.eval();
            Reparam.Reparameterizer.Reparameterize(model);
        }

        model.to(device);
        using var runScope = NewDisposeScope(); // the batch, labels and step temporaries
        using var generator = new Generator(0);
        var x = randn([batch, config.InChannels, resolution, resolution], generator: generator).to(device);
        var labels = randint(0, config.NumClasses ?? 1, [batch], generator: generator).to(device);
        // The training loop's own step (official AdamW groups, the same loss), on one fixed synthetic batch.
        var (optimizer, scales) = TrainStep.CreateOptimizer(model, 1e-6, TrainOptions.DefaultWeightDecay);
        using var disposeOptimizer = optimizer;
        var step = new TrainStep(model, optimizer, scales, device);
        using var synthetic = new SyntheticBatch(x, labels);
        foreach (var impl in impls)
        {
            using var use = DepthwiseConv2d.Use(impl);
            double Once()
            {
                using var scope = NewDisposeScope();
                if (device.type == DeviceType.CUDA)
                {
                    torch.cuda.synchronize();
                }

                var sw = Stopwatch.StartNew();
                if (mode == "infer")
                {
                    model.eval();
                    using var noGrad = no_grad();
                    model.call(x);
                }
                else
                {
                    model.train();
                    step.Run(synthetic, 1e-6, 1);
                }

                if (device.type == DeviceType.CUDA)
                {
                    torch.cuda.synchronize();
                }

                return sw.Elapsed.TotalMilliseconds;
            }

            // By default until the JIT has settled too (the optimized code is what a long run spends its time in).
            int untimed = JitWarmup.Run(Distributed.ProcessGroup.Single, () => Once(), warmup, DefaultWarmup(mode));

            var memory = PeakMemory.Start();
            var times = new List<double>();
            var faults = new List<long>();
            var budget = Stopwatch.StartNew();
            for (int rep = 0; rep < reps; rep++)
            {
                long? before = PageFaults.Minor();
                times.Add(Once());
                if (before is long b && PageFaults.Minor() is long a)
                {
                    faults.Add(a - b);
                }

                if (budget.Elapsed.TotalSeconds > maxSeconds)
                {
                    break;
                }
            }

            times.Sort();
            faults.Sort();
            double ms = times[times.Count / 2];
            var result = new ModelBenchResult(impl == DepthwiseBackend.Ours ? "ours" : "torch", mode, batch, resolution, ms, batch / (ms / 1e3),
                device.type == DeviceType.CPU ? memory.Read() : null, times.Count, untimed, faults.Count > 0 ? faults[faults.Count / 2] : null);
            results.Add(result);
            onResult?.Invoke(result);
        }

        return results;
    }

    /// <summary>The fixed part of the untimed runs when none are asked for, before the JIT's settling (see the remarks of <see cref="Run"/>).</summary>
    /// <param name="mode"><c>train</c> or <c>infer</c>.</param>
    /// <returns>3 for <c>train</c>, 1 for <c>infer</c>.</returns>
    /// <exception cref="ArgumentException"><paramref name="mode"/> is neither.</exception>
    public static int DefaultWarmup(string mode) => mode switch
    {
        "train" => 3,
        "infer" => 1,
        _ => throw new ArgumentException($"mode '{mode}': use infer or train", nameof(mode)),
    };
}

/// <summary>The same batch again and again, as the training step's data (<see cref="ModelBenchmark"/>, <see cref="ScaleBenchmark"/>).</summary>
internal sealed class SyntheticBatch(Tensor x, Tensor labels) : ISplittableEpoch
{
    public int Count => (int)x.size(0);

    public IReadOnlyList<SkippedImage> Skipped => [];

    public TimeSpan WaitTime => TimeSpan.Zero;

    public bool MoveNext() => true;

    public Tensor Loss(nn.Module<Tensor, Tensor> model, Device device) => ClassificationTask.Loss(model.call(x), labels, null, 0);

    public Tensor Input(nn.Module<Tensor, Tensor> model, Device device) => x.alias();

    public Tensor PartLoss(Tensor output, long start, long count) => ClassificationTask.PartLoss(output, labels, null, 0, start, count, x.size(0));

    public void Dispose()
    {
    }
}
