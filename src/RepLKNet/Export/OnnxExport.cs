using Microsoft.ML.OnnxRuntime;
using Onnx;
using RepLKNet.Models;
using RepLKNet.Reparam;
using static TorchSharp.torch;

namespace RepLKNet.Export;

/// <summary>What an export did and how well ONNX Runtime reproduced the TorchSharp model.</summary>
/// <param name="Path">The written model.</param>
/// <param name="DataPath">The external data file, when the initializers went there.</param>
/// <param name="Bytes">Size of the model file plus data.</param>
/// <param name="Nodes">Graph nodes.</param>
/// <param name="Initializers">Initializer tensors.</param>
/// <param name="Switched">Modules re-parameterized by the export (0 when the checkpoint was already deploy).</param>
/// <param name="MaxAbsDiff">Max |ORT − TorchSharp| over every output element of the check.</param>
/// <param name="Relative">That divided by the largest |TorchSharp output|.</param>
/// <param name="CheckBatches">Batch sizes the check ran.</param>
public sealed record OnnxExportReport(string Path, string? DataPath, long Bytes, int Nodes, int Initializers, int Switched, double MaxAbsDiff, double Relative,
    IReadOnlyList<int> CheckBatches);

/// <summary>
/// The whole export: re-parameterize (train checkpoints accepted; <c>fuseBn</c> folds every conv+BN), build the graph,
/// write it into a temporary folder beside the target, run it with ONNX Runtime on random input and compare with the
/// TorchSharp model, and only then move it into place. Nothing is left behind on failure.
/// </summary>
public static class OnnxExport
{
    /// <summary>Largest accepted max |ORT − TorchSharp| relative to the largest output.</summary>
    public const double Tolerance = 1e-4;

    /// <summary>Exports <paramref name="model"/> (converted in place to its deploy form) to <paramref name="outputPath"/>.</summary>
    /// <exception cref="OnnxExportException">
    /// The folder of <paramref name="outputPath"/> does not exist (<see cref="OnnxExportException.ParamName"/>
    /// <c>outputPath</c>), the model or an option cannot be exported (<see cref="OnnxExporter.Build"/>), or ONNX Runtime does
    /// not reproduce the model within <see cref="Tolerance"/> (then nothing is written).
    /// </exception>
    public static OnnxExportReport Run(RepLKNetModel model, OnnxModelInfo info, OnnxExportOptions options, bool fuseBn, string outputPath, long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(outputPath);
        string full = System.IO.Path.GetFullPath(outputPath);
        string directory = System.IO.Path.GetDirectoryName(full)!;
        if (!Directory.Exists(directory))
        {
            throw new OnnxExportException($"outputPath {outputPath}: the folder {directory} does not exist", nameof(outputPath));
        }

        model.eval();
        int switched = Reparameterizer.Reparameterize(model, fuseBn);
        var proto = OnnxExporter.Build(model, info, options);
        int nodes = proto.Graph.Node.Count, initializers = proto.Graph.Initializer.Count;
        string staging = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(staging);
        try
        {
            string stagedModel = System.IO.Path.Combine(staging, System.IO.Path.GetFileName(full));
            string? stagedData = OnnxExporter.Write(proto, stagedModel, options.ExternalDataThreshold);
            int[] batches = options.DynamicBatch ? [1, 3] : [options.Batch];
            var (maxAbs, relative) = Compare(model, stagedModel, info, options, batches, seed);
            if (!(relative <= Tolerance))
            {
                throw new OnnxExportException(
                    $"ONNX Runtime's output differs from the TorchSharp model by {maxAbs:0.00e+00} ({relative:0.00e+00} of the largest output; limit {Tolerance:0e+00}): nothing was written");
            }

            long bytes = new FileInfo(stagedModel).Length + (stagedData is null ? 0 : new FileInfo(stagedData).Length);
            string? finalData = null;
            if (stagedData is not null)
            {
                finalData = full + ".data";
                File.Move(stagedData, finalData, overwrite: true);
            }

            File.Move(stagedModel, full, overwrite: true);
            return new OnnxExportReport(full, finalData, bytes, nodes, initializers, switched, maxAbs, relative, batches);
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>Runs the written file with ONNX Runtime and the TorchSharp model on the same random input(s).</summary>
    public static (double MaxAbs, double Relative) Compare(RepLKNetModel model, string onnxPath, OnnxModelInfo info, OnnxExportOptions options, IReadOnlyList<int> batches, long seed)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(batches);
        using var session = OnnxSession.Create(onnxPath, threads: 0);
        double maxAbs = 0, maxRef = 0;
        var generator = new Generator((ulong)seed);
        foreach (int batch in batches)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var x = randn([batch, info.Channels, info.InputSize, info.InputSize], generator: generator);
            var expected = options.Features
                ? model.forward_intermediates(x).ToList()
                : [model.call(x)];
            var values = x.data<float>().ToArray();
            using var input = OrtValue.CreateTensorValueFromMemory(values, [batch, info.Channels, info.InputSize, info.InputSize]);
            using var runOptions = new RunOptions();
            using var outputs = session.Run(runOptions, [OnnxExporter.InputName], [input], session.OutputNames);
            if (outputs.Count != expected.Count)
            {
                throw new OnnxExportException($"{onnxPath}: ONNX Runtime returned {outputs.Count} outputs, the model {expected.Count}");
            }

            for (int i = 0; i < expected.Count; i++)
            {
                var reference = expected[i].contiguous().data<float>().ToArray();
                var actual = outputs[i].GetTensorDataAsSpan<float>();
                var shape = outputs[i].GetTensorTypeAndShape().Shape;
                if (actual.Length != reference.Length || !shape.SequenceEqual(expected[i].shape))
                {
                    throw new OnnxExportException($"{onnxPath}: output {session.OutputNames[i]} has shape [{string.Join(',', shape)}], the model [{string.Join(',', expected[i].shape)}]");
                }

                for (int j = 0; j < actual.Length; j++)
                {
                    maxAbs = Math.Max(maxAbs, Math.Abs((double)actual[j] - reference[j]));
                    maxRef = Math.Max(maxRef, Math.Abs((double)reference[j]));
                }
            }
        }

        return (maxAbs, maxAbs / Math.Max(maxRef, 1e-30));
    }
}

/// <summary>ONNX Runtime sessions with the project's defaults (CPU, all graph optimizations).</summary>
public static class OnnxSession
{
    /// <summary>
    /// Opens <paramref name="path"/> (ONNX Runtime checks the graph's structural rules on load: types, shapes,
    /// topological order, known operators). <paramref name="threads"/> = 0 lets ONNX Runtime choose.
    /// </summary>
    public static InferenceSession Create(string path, int threads)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"ONNX model '{path}' does not exist", path);
        }

        var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        if (threads > 0)
        {
            options.IntraOpNumThreads = threads;
        }

        try
        {
            return new InferenceSession(path, options);
        }
        catch (OnnxRuntimeException e)
        {
            throw new OnnxExportException($"ONNX Runtime cannot load '{path}': {e.Message}", e);
        }
        finally
        {
            options.Dispose();
        }
    }
}
