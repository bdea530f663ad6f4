using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using RepLKNet.Export;
using RepLKNet.Models;
using RepLKNet.Ops;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Benchmarks;

/// <summary>
/// What <see cref="OnnxBenchmark.Run"/> measured: median milliseconds per batch and peak resident memory of each engine.
/// The peaks are the whole process's (<see cref="PeakMemory"/>: Linux <c>VmHWM</c>, reset after each engine's warm-up),
/// so each includes what is resident throughout: the runtime, the ONNX session and the TorchSharp model.
/// </summary>
/// <param name="Model">The export's recorded architecture, form and input size.</param>
/// <param name="Batch">Images per run.</param>
/// <param name="Threads">CPU threads of both engines.</param>
/// <param name="OrtVersion">ONNX Runtime's version.</param>
/// <param name="OrtMs">ONNX Runtime, ms per batch.</param>
/// <param name="TorchSharpMs">The TorchSharp deploy model with our depthwise convolution, ms per batch.</param>
/// <param name="LibTorchDepthwiseMs">The same model with libtorch's depthwise convolution, ms per batch.</param>
/// <param name="OrtPeakMemory">Peak resident memory during ONNX Runtime's timed runs; null where the system reports none.</param>
/// <param name="TorchSharpPeakMemory">Peak resident memory during the timed runs with our depthwise convolution; null likewise.</param>
/// <param name="LibTorchDepthwisePeakMemory">Peak resident memory during the timed runs with libtorch's depthwise convolution; null likewise.</param>
/// <param name="Frozen">The frozen model's settings and figures (<see cref="FrozenRepLKNet"/>, our depthwise convolution); null where not measured.</param>
/// <param name="WarmupRuns">Untimed runs before each engine's timed ones, in row order: ONNX Runtime, ours, libtorch's depthwise conv, then the frozen model where measured; null where not recorded.</param>
public sealed record OnnxBenchResult(OnnxModelInfo Model, int Batch, int Threads, string OrtVersion, double OrtMs, double TorchSharpMs, double LibTorchDepthwiseMs,
    PeakResidentMemory? OrtPeakMemory = null, PeakResidentMemory? TorchSharpPeakMemory = null, PeakResidentMemory? LibTorchDepthwisePeakMemory = null,
    FrozenBenchFigures? Frozen = null, IReadOnlyList<int>? WarmupRuns = null)
{
    /// <summary>ONNX Runtime's images per second.</summary>
    public double OrtImagesPerSecond => Batch / (OrtMs / 1e3);

    /// <summary>TorchSharp's images per second (our depthwise convolution).</summary>
    public double TorchSharpImagesPerSecond => Batch / (TorchSharpMs / 1e3);

    /// <summary>TorchSharp's images per second with libtorch's depthwise convolution.</summary>
    public double LibTorchDepthwiseImagesPerSecond => Batch / (LibTorchDepthwiseMs / 1e3);
}

/// <summary>What <see cref="OnnxBenchmark.Run"/> measured for the frozen model (<see cref="FrozenRepLKNet.Freeze"/> of the same deploy model).</summary>
/// <param name="ChannelsLast">Whether its activations ran as channels_last.</param>
/// <param name="BatchParallel">Whether the batch was cut into one slice per thread (<see cref="FrozenRepLKNet.SlicesBatch"/>: the setting, a batch of 2 or more, 2 or more threads).</param>
/// <param name="Ms">Median milliseconds per batch.</param>
/// <param name="PeakMemory">Peak resident memory during its timed runs; null where the system reports none.</param>
/// <param name="MaxLogitDifference">Largest |Δ| between its outputs and the TorchSharp deploy model's on the benchmark's batch (same weights, random BatchNorm statistics).</param>
public sealed record FrozenBenchFigures(bool ChannelsLast, bool BatchParallel, double Ms, PeakResidentMemory? PeakMemory, double MaxLogitDifference);

/// <summary>
/// Images/s of an ONNX export (<see cref="OnnxExport"/>) on ONNX Runtime against the TorchSharp deploy model of the same
/// architecture and form (random weights: speed does not depend on them), on the CPU, both engines on libtorch's current
/// thread count (<see cref="Runtime.TorchRuntime.SetThreads"/>), on the same random batch. libtorch must be initialized.
/// </summary>
public sealed class OnnxBenchmark : IDisposable
{
    private readonly InferenceSession _session;

    private OnnxBenchmark(InferenceSession session, OnnxModelInfo model, int batch, int threads)
    {
        _session = session;
        Model = model;
        Batch = batch;
        Threads = threads;
    }

    /// <summary>The export's recorded architecture, form and input size.</summary>
    public OnnxModelInfo Model { get; }

    /// <summary>Images per run.</summary>
    public int Batch { get; }

    /// <summary>CPU threads of both engines.</summary>
    public int Threads { get; }

    /// <summary>Opens <paramref name="onnx"/> for batches of <paramref name="batch"/> images.</summary>
    /// <exception cref="ArgumentException">
    /// The file has no replknet metadata or is a segmenter export (<c>onnx</c>), or its graph has a fixed batch other than <paramref name="batch"/>
    /// (<c>batch</c>); the message starts with that name.
    /// </exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="OnnxExportException">ONNX Runtime cannot load it.</exception>
    public static OnnxBenchmark Open(string onnx, int batch)
    {
        ArgumentNullException.ThrowIfNull(onnx);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        int threads = torch.get_num_threads();
        var session = OnnxSession.Create(onnx, threads);
        try
        {
            var info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, onnx)
                ?? throw new ArgumentException($"{nameof(onnx)} '{onnx}' has no replknet metadata (write it with OnnxExport)", nameof(onnx));
            if (info.Task != OnnxModelInfo.ClassificationTask)
            {
                throw new ArgumentException($"{nameof(onnx)} '{onnx}' is a {info.Task} export: the benchmark times classifier and backbone exports", nameof(onnx));
            }

            int fixedBatch = session.InputMetadata[OnnxExporter.InputName].Dimensions[0];
            if (fixedBatch > 0 && fixedBatch != batch)
            {
                throw new ArgumentException($"{nameof(batch)} {batch}: the graph has a fixed batch of {fixedBatch} (export it with a dynamic batch for others)", nameof(batch));
            }

            return new OnnxBenchmark(session, info, batch, threads);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Times each engine: <paramref name="warmup"/> untimed runs (null: two, then more until .NET's JIT has settled,
    /// <see cref="JitWarmup.UntilSettled"/>: the frozen model's managed 1×1 products and the deploy model's glue would
    /// otherwise be timed as unoptimized tier-0 code for their first 30 calls), then the median of <paramref name="reps"/>
    /// timed runs, with the process's peak resident memory over the timed runs (the counter reset after each engine's
    /// warm-up where the system allows it).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="reps"/> is not positive, or <paramref name="warmup"/> is negative.</exception>
    public OnnxBenchResult Run(int reps, int? warmup = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(reps);
        if (warmup is int w)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(w, nameof(warmup));
        }

        var warmups = new List<int>();
        (double Ms, PeakResidentMemory? Peak) Median(Func<double> once)
        {
            warmups.Add(JitWarmup.Run(Distributed.ProcessGroup.Single, () => once(), warmup, DefaultWarmup));
            var memory = PeakMemory.Start();
            var times = Enumerable.Range(0, reps).Select(_ => once()).Order().ToList();
            return (times[times.Count / 2], memory.Read());
        }

        long[] shape = [Batch, Model.Channels, Model.InputHeight, Model.InputWidth];
        var input = new float[shape.Aggregate(1L, (a, b) => a * b)];
        var random = new Random(0);
        for (int i = 0; i < input.Length; i++)
        {
            input[i] = (float)(random.NextDouble() * 2 - 1);
        }

        // ONNX Runtime: one input OrtValue over a reused array; outputs allocated by the runtime.
        using var inputValue = OrtValue.CreateTensorValueFromMemory(input, shape);
        using var runOptions = new RunOptions();
        double OrtOnce()
        {
            var sw = Stopwatch.StartNew();
            using var outputs = _session.Run(runOptions, [OnnxExporter.InputName], [inputValue], _session.OutputNames);
            return sw.Elapsed.TotalMilliseconds;
        }

        var config = RepLKNetConfig.FromJson(Model.Config, "the ONNX metadata");
        using var model = new RepLKNetModel(config with { DropPathRate = 0 }, deploy: true);
        model.eval();
        // BatchNorm statistics as a trained model has them (not the identity of a fresh one), so that the frozen copy's
        // difference below tests its folds; speed does not depend on the values.
        using (no_grad())
        {
            var generator = new Generator(0);
            foreach (var bn in model.modules().OfType<TorchSharp.Modules.BatchNorm>())
            {
                long c = bn.running_mean!.size(0);
                bn.weight?.copy_(Scalars.Add(rand(c, generator: generator), 0.5));
                bn.bias?.copy_(Scalars.Mul(randn(c, generator: generator), 0.2));
                bn.running_mean.copy_(Scalars.Mul(randn(c, generator: generator), 0.5));
                bn.running_var!.copy_(Scalars.Add(rand(c, generator: generator), 0.5));
            }
        }

        if (Model.Form == "fused")
        {
            Reparameterizer.Reparameterize(model, fuseBn: true);
        }

        using var x = tensor(input, shape);
        bool features = !_session.OutputNames.Contains(OnnxExporter.LogitsName);
        // One timed forward of either TorchSharp model, its outputs freed at once.
        double TimeForward(Func<Tensor, IReadOnlyList<Tensor>> intermediates, Func<Tensor, Tensor> logits)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var sw = Stopwatch.StartNew();
            if (features)
            {
                _ = intermediates(x);
            }
            else
            {
                _ = logits(x);
            }

            return sw.Elapsed.TotalMilliseconds;
        }

        double TorchOnce() => TimeForward(t => model.forward_intermediates(t), t => model.call(t));

        var ort = Median(OrtOnce);
        (double Ms, PeakResidentMemory? Peak) ours, theirs;
        using (DepthwiseConv2d.Use(DepthwiseBackend.Ours))
        {
            ours = Median(TorchOnce);
        }

        using (DepthwiseConv2d.Use(DepthwiseBackend.Torch))
        {
            theirs = Median(TorchOnce);
        }

        // Then the frozen model of the same (random) weights, made only now so that the rows above do not carry its copy,
        // and how far its outputs are from the deploy model's on this batch.
        FrozenRepLKNet frozen;
        using (DepthwiseConv2d.Use(DepthwiseBackend.Ours))
        {
            frozen = FrozenRepLKNet.Freeze(model, inputSize: Math.Max(Model.InputHeight, Model.InputWidth));
        }

        using var frozenScope = frozen;
        double frozenDiff;
        using (NewDisposeScope())
        using (no_grad())
        {
            var reference = features ? model.forward_intermediates(x)[^1] : model.call(x);
            var frozenOut = features ? frozen.forward_intermediates(x)[^1] : frozen.call(x);
            frozenDiff = (reference - frozenOut).abs().max().item<float>();
        }

        double FrozenOnce() => TimeForward(t => frozen.forward_intermediates(t), t => frozen.call(t));

        (double Ms, PeakResidentMemory? Peak) frozenTime;
        using (DepthwiseConv2d.Use(DepthwiseBackend.Ours))
        {
            frozenTime = Median(FrozenOnce);
        }

        var frozenFigures = new FrozenBenchFigures(frozen.ChannelsLast, frozen.SlicesBatch(Batch), frozenTime.Ms, frozenTime.Peak, frozenDiff);
        return new OnnxBenchResult(Model, Batch, Threads, OrtEnv.Instance().GetVersionString(), ort.Ms, ours.Ms, theirs.Ms, ort.Peak, ours.Peak, theirs.Peak, frozenFigures, warmups);
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();

    /// <summary>Untimed runs per engine before the JIT watch (<see cref="Run"/> without an exact warm-up).</summary>
    public const int DefaultWarmup = 2;
}
