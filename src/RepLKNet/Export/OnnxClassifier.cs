using Microsoft.ML.OnnxRuntime;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Inference;

namespace RepLKNet.Export;

/// <summary>
/// A classifier exported by <see cref="OnnxExport"/>, run with ONNX Runtime: reads the file's metadata (input size,
/// channels, normalization, crop fraction, class names), prepares images exactly as training's eval transform
/// (<see cref="SamplePipeline.Eval"/>), and runs batches through one reused input buffer and <see cref="OrtValue"/>s.
/// Graphs with a fixed batch size run in batches of that size (the last one padded); dynamic ones in any size.
/// </summary>
public sealed class OnnxClassifier : IDisposable
{
    private readonly InferenceSession session;
    private readonly SamplePipeline pipeline;
    private readonly RunOptions runOptions = new();
    private float[] inputBuffer = [];
    private float[] outputBuffer = [];
    private OrtValue? inputValue;
    private OrtValue? outputValue;

    /// <summary>Opens <paramref name="path"/>; <paramref name="threads"/> = 0 lets ONNX Runtime choose.</summary>
    /// <exception cref="OnnxExportException">
    /// The file cannot be loaded, has no replknet metadata, is not a classifier, or takes a fixed non-square size.
    /// </exception>
    public OnnxClassifier(string path, int threads = 0)
    {
        session = OnnxSession.Create(path, threads);
        try
        {
            Info = OnnxModelInfo.FromMetadata(session.ModelMetadata.CustomMetadataMap, path)
                ?? throw new OnnxExportException($"'{path}' has no replknet metadata (input size, normalization): write it with OnnxExport");
            if (Info.Task != OnnxModelInfo.ClassificationTask)
            {
                throw new OnnxExportException($"'{path}' is a {Info.Task} export, not a classifier (its logits are per pixel)");
            }

            if (!session.InputMetadata.ContainsKey(OnnxExporter.InputName) || !session.OutputMetadata.ContainsKey(OnnxExporter.LogitsName))
            {
                throw new OnnxExportException($"'{path}' is not a classifier export (inputs [{string.Join(", ", session.InputNames)}], outputs [{string.Join(", ", session.OutputNames)}]; features exports have no logits)");
            }

            var dims = session.InputMetadata[OnnxExporter.InputName].Dimensions;
            FixedBatch = dims[0] > 0 ? dims[0] : null;
            Classes = session.OutputMetadata[OnnxExporter.LogitsName].Dimensions[^1];
            // A fixed-size graph takes its own (square) size; a dynamic-size one the eval transform's crop size.
            if (dims[2] > 0 && dims[3] > 0 && dims[2] != dims[3])
            {
                throw new OnnxExportException(
                    $"'{path}' takes {dims[2]}×{dims[3]} inputs, but OnnxClassifier prepares square centre crops: export the classifier square or with a dynamic size");
            }

            InputSize = dims[2] > 0 ? dims[2] : Info.InputSize;
            pipeline = new SamplePipeline(new AugmentOptions { CropPct = Info.CropPct }, new Normalization(Info.Mean, Info.Std), Info.Channels, InputSize);
        }
        catch
        {
            session.Dispose();
            runOptions.Dispose();
            throw;
        }
    }

    /// <summary>The file's metadata.</summary>
    public OnnxModelInfo Info { get; }

    /// <summary>Side of the square images the classifier runs, in pixels: the graph's size, or with a dynamic size the eval crop size.</summary>
    public int InputSize { get; }

    /// <summary>The graph's batch size, or null when it is dynamic.</summary>
    public int? FixedBatch { get; }

    /// <summary>Number of classes.</summary>
    public int Classes { get; }

    /// <summary>Logits for <paramref name="batch"/> prepared samples (N·C·S·S floats), written into <paramref name="logits"/> (N·classes).</summary>
    public void Run(ReadOnlySpan<float> samples, int batch, Span<float> logits)
    {
        int length = Info.Channels * InputSize * InputSize;
        int runBatch = FixedBatch ?? batch;
        if (batch <= 0 || batch > runBatch || samples.Length < batch * length || logits.Length < batch * Classes)
        {
            throw new ArgumentException($"batch {batch} does not fit (graph batch {runBatch}, {samples.Length} input floats, {logits.Length} logit floats)");
        }

        if (inputBuffer.Length != runBatch * length)
        {
            // The OrtValues wrap (and pin) these arrays; they are reused until the batch size changes.
            inputValue?.Dispose();
            outputValue?.Dispose();
            inputBuffer = new float[runBatch * length];
            outputBuffer = new float[runBatch * Classes];
            inputValue = OrtValue.CreateTensorValueFromMemory(inputBuffer, [runBatch, Info.Channels, InputSize, InputSize]);
            outputValue = OrtValue.CreateTensorValueFromMemory(outputBuffer, [runBatch, Classes]);
        }

        samples[..(batch * length)].CopyTo(inputBuffer);
        inputBuffer.AsSpan(batch * length).Clear();
        session.Run(runOptions, [OnnxExporter.InputName], [inputValue!], [OnnxExporter.LogitsName], [outputValue!]);
        outputBuffer.AsSpan(0, batch * Classes).CopyTo(logits);
    }

    /// <summary>Top-<paramref name="k"/> classes of each image file, <paramref name="batchSize"/> images per run.</summary>
    public List<ImagePrediction> Predict(IReadOnlyList<string> files, int k = 5, int batchSize = 8)
    {
        ArgumentNullException.ThrowIfNull(files);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        int batch = FixedBatch ?? batchSize;
        int length = pipeline.SampleLength;
        var samples = new float[batch * length];
        var logits = new float[batch * Classes];
        var predictions = new List<ImagePrediction>(files.Count);
        for (int start = 0; start < files.Count; start += batch)
        {
            int n = Math.Min(batch, files.Count - start);
            for (int i = 0; i < n; i++)
            {
                pipeline.Eval(ImageDecoder.Decode(files[start + i], Info.Channels), samples.AsSpan(i * length, length));
            }

            Run(samples, n, logits);
            for (int i = 0; i < n; i++)
            {
                predictions.Add(new ImagePrediction(files[start + i], TopK(logits.AsSpan(i * Classes, Classes), k)));
            }
        }

        return predictions;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        inputValue?.Dispose();
        outputValue?.Dispose();
        session.Dispose();
        runOptions.Dispose();
    }

    private List<ClassScore> TopK(ReadOnlySpan<float> logits, int k)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits)
        {
            max = Math.Max(max, v);
        }

        double sum = 0;
        foreach (float v in logits)
        {
            sum += Math.Exp(v - max);
        }

        var order = Enumerable.Range(0, logits.Length).ToArray();
        var values = logits.ToArray();
        Array.Sort(order, (a, b) => values[b].CompareTo(values[a]));
        return [.. order.Take(Math.Min(k, order.Length)).Select(i =>
            new ClassScore(i, ClassScore.LabelOf(Info.ClassNames, i), (float)(Math.Exp(values[i] - max) / sum)))];
    }
}
