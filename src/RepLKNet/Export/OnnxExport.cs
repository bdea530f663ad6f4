using Microsoft.ML.OnnxRuntime;
using Onnx;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Reparam;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

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
/// <param name="Checks">The inputs the check ran (batch, height, width), in order.</param>
public sealed record OnnxExportReport(string Path, string? DataPath, long Bytes, int Nodes, int Initializers, int Switched, double MaxAbsDiff, double Relative,
    IReadOnlyList<OnnxCheck> Checks)
{
    /// <summary>Batch sizes the check ran.</summary>
    public IReadOnlyList<int> CheckBatches => [.. Checks.Select(c => c.Batch)];
}

/// <summary>One input shape an export is checked at: [Batch, C, Height, Width].</summary>
/// <param name="Batch">Images.</param>
/// <param name="Height">Height in pixels.</param>
/// <param name="Width">Width in pixels.</param>
public sealed record OnnxCheck(int Batch, int Height, int Width)
{
    /// <inheritdoc />
    public override string ToString() => $"{Batch}×{Height}×{Width}";
}

/// <summary>
/// The whole export: re-parameterize (train checkpoints accepted; <c>fuseBn</c> folds every conv+BN), build the graph,
/// write it into a temporary folder beside the target, run it with ONNX Runtime on random input and compare with the
/// TorchSharp model, and only then move it into place. Nothing is left behind on failure. The check runs every dynamic
/// dimension at two values (<see cref="Checks"/>): batches 1 and 3, the export size and <see cref="SecondCheckSize"/>.
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
    public static OnnxExportReport Run(RepLKNetModel model, OnnxModelInfo info, OnnxExportOptions options, bool fuseBn, string outputPath, long seed = 0) =>
        RunCore(model, info, options, fuseBn, outputPath, seed);

    /// <summary>
    /// Exports a segmenter (converted in place to its deploy form; <paramref name="fuseBn"/> folds every conv+BN, the heads'
    /// ConvModules included) to <paramref name="outputPath"/> as <see cref="OnnxExporter.BuildSegmentor"/> writes it, checked
    /// like a classifier: ONNX Runtime's <c>logits</c> [N, classes, H, W] against <see cref="EncoderDecoder.EncodeDecode"/> at
    /// every shape of <see cref="Checks"/>.
    /// </summary>
    /// <exception cref="OnnxExportException">As for the RepLKNet overload, and <see cref="OnnxExporter.BuildSegmentor"/>'s.</exception>
    public static OnnxExportReport Run(EncoderDecoder model, OnnxModelInfo info, OnnxExportOptions options, bool fuseBn, string outputPath, long seed = 0) =>
        RunCore(model, info, options, fuseBn, outputPath, seed);

    private static OnnxExportReport RunCore(nn.Module<Tensor, Tensor> model, OnnxModelInfo info, OnnxExportOptions options, bool fuseBn, string outputPath, long seed)
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
            var checks = Checks(options, info);
            var (maxAbs, relative) = Compare(model, stagedModel, info.Channels, options.Features, checks, seed);
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
            return new OnnxExportReport(full, finalData, bytes, nodes, initializers, switched, maxAbs, relative, checks);
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>
    /// The inputs an export with <paramref name="options"/> is checked at: one per value of each dynamic dimension, paired in
    /// order — batch 1 then 3 with a dynamic batch (else <see cref="OnnxExportOptions.Batch"/>), the export size then
    /// <see cref="SecondCheckSize"/> with a dynamic size (else the export size).
    /// </summary>
    /// <exception cref="OnnxExportException">A size or the batch is not positive (<see cref="OnnxExportOptions.InputSizeFor"/>).</exception>
    public static IReadOnlyList<OnnxCheck> Checks(OnnxExportOptions options, OnnxModelInfo info)
    {
        ArgumentNullException.ThrowIfNull(options);
        var (h, w) = options.InputSizeFor(info);
        int[] batches = options.DynamicBatch ? [1, 3] : [options.Batch];
        (int H, int W)[] sizes = options.DynamicSize ? [(h, w), SecondCheckSize(h, w)] : [(h, w)];
        int n = Math.Max(batches.Length, sizes.Length);
        return [.. Enumerable.Range(0, n).Select(i => new OnnxCheck(batches[Math.Min(i, batches.Length - 1)], sizes[Math.Min(i, sizes.Length - 1)].H, sizes[Math.Min(i, sizes.Length - 1)].W))];
    }

    /// <summary>
    /// The second size a dynamic-size export is checked at: about ¾ of the height and ⅞ of the width, both made odd and
    /// the two made unequal, so an odd, non-square size that differs from the export size (e.g. 64×64 → 49×57,
    /// 72×56 → 55×49, 1×1 → 1×3).
    /// </summary>
    public static (int Height, int Width) SecondCheckSize(int height, int width)
    {
        int h = (height - height / 4) | 1, w = (width - width / 8) | 1;
        while (h == w || (h, w) == (height, width))
        {
            if (h == w)
            {
                w += 2;
            }
            else
            {
                h += 2;
            }
        }

        return (h, w);
    }

    /// <summary>
    /// Runs the written file with ONNX Runtime and the TorchSharp model on the same random input of each shape in
    /// <paramref name="checks"/> ([batch, <paramref name="channels"/>, height, width], standard normal from
    /// <paramref name="seed"/>) and returns max |ORT − TorchSharp| over every output element, and that relative to the
    /// largest |TorchSharp output|. <paramref name="model"/> is a <see cref="RepLKNetModel"/> (its logits, or with
    /// <paramref name="features"/> its <c>forward_intermediates</c>) or any other single-output module.
    /// </summary>
    /// <exception cref="OnnxExportException">ONNX Runtime cannot load the file, or an output's count or shape differs.</exception>
    public static (double MaxAbs, double Relative) Compare(torch.nn.Module<Tensor, Tensor> model, string onnxPath, int channels, bool features, IReadOnlyList<OnnxCheck> checks, long seed)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(checks);
        using var session = OnnxSession.Create(onnxPath, threads: 0);
        double maxAbs = 0, maxRef = 0;
        var generator = new Generator((ulong)seed);
        foreach (var check in checks)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            long[] shape = [check.Batch, channels, check.Height, check.Width];
            var x = randn(shape, generator: generator);
            var expected = features && model is RepLKNetModel replknet
                ? replknet.forward_intermediates(x).ToList()
                : [model.call(x)];
            var values = x.data<float>().ToArray();
            using var input = OrtValue.CreateTensorValueFromMemory(values, shape);
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
                var outShape = outputs[i].GetTensorTypeAndShape().Shape;
                if (actual.Length != reference.Length || !outShape.SequenceEqual(TensorSizes.Of(expected[i])))
                {
                    throw new OnnxExportException($"{onnxPath}: at input {check}, output {session.OutputNames[i]} has shape [{string.Join(',', outShape)}], the model [{string.Join(',', TensorSizes.Of(expected[i]))}]");
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
