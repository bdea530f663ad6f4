using System.Globalization;
using System.Text.Json;
using Google.Protobuf;
using Onnx;
using RepLKNet.Layers;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;
using static TorchSharp.torch.nn;
using RepLKNet.Runtime;

namespace RepLKNet.Export;

/// <summary>The model cannot be written as ONNX (an unsupported module, a bad option); the message says what and where.</summary>
public sealed class OnnxExportException : Exception
{
    /// <summary>Creates the exception.</summary>
    public OnnxExportException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public OnnxExportException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public OnnxExportException()
    {
    }

    /// <summary>
    /// Creates the exception for one argument: <paramref name="paramName"/> is the library's name for it (a method parameter
    /// or an options property, e.g. <c>Features</c>), and the message starts with that name, so a front end can put its own
    /// name for the argument (a CLI flag) in its place.
    /// </summary>
    public OnnxExportException(string message, string? paramName)
        : base(message)
    {
        ParamName = paramName;
    }

    /// <summary>The library's name of the argument the error is about (as in <see cref="ArgumentException.ParamName"/>), or null.</summary>
    public string? ParamName { get; }
}

/// <summary>What the exported file records for inference (ONNX <c>metadata_props</c>, keys prefixed <c>replknet.</c>).</summary>
/// <param name="Arch">Variant name or "custom".</param>
/// <param name="Config">The architecture as the official constructor's JSON (a segmenter: its MMSeg-style model JSON).</param>
/// <param name="InputSize">
/// The eval transform's square crop size in pixels (the checkpoint's preprocessing). The graph's own input size is
/// <see cref="InputHeight"/> × <see cref="InputWidth"/>, which default to it (files written before non-square exports
/// record only this size, and were square).
/// </param>
/// <param name="Channels">Input channels.</param>
/// <param name="Mean">Per-channel normalization mean (0–1 scale).</param>
/// <param name="Std">Per-channel normalization std.</param>
/// <param name="CropPct">Eval transform: resize the short side to size / crop_pct, centre crop.</param>
/// <param name="ClassNames">Class names, when known.</param>
/// <param name="Form">"deploy" (re-parameterized) or "fused" (and every conv+BN folded).</param>
public sealed record OnnxModelInfo(string Arch, string Config, int InputSize, int Channels, IReadOnlyList<double> Mean, IReadOnlyList<double> Std,
    double CropPct, IReadOnlyList<string>? ClassNames, string Form)
{
    /// <summary>The metadata key prefix.</summary>
    public const string Prefix = "replknet.";

    /// <summary>
    /// Height of the graph's input in pixels (with <see cref="DynamicSize"/>: the size it was exported and first checked at).
    /// <see cref="OnnxExporter.Build"/> records the one it wrote; default <see cref="InputSize"/>.
    /// </summary>
    public int InputHeight { get; init; } = InputSize;

    /// <summary>Width of the graph's input in pixels (see <see cref="InputHeight"/>); default <see cref="InputSize"/>.</summary>
    public int InputWidth { get; init; } = InputSize;

    /// <summary>Whether the graph's height and width are symbolic ("height", "width"): any size runs.</summary>
    public bool DynamicSize { get; init; }

    /// <summary>
    /// What the graph computes: <see cref="ClassificationTask"/> (logits [N, classes] or backbone features) or
    /// <see cref="SegmentationTask"/> (<c>logits</c> [N, classes, H, W] at the input size). Files without the entry are
    /// classification.
    /// </summary>
    public string Task { get; init; } = ClassificationTask;

    /// <summary>The <see cref="Task"/> of classifiers and backbones.</summary>
    public const string ClassificationTask = "classification";

    /// <summary>The <see cref="Task"/> of segmenters.</summary>
    public const string SegmentationTask = "segmentation";

    /// <summary>The entries for <c>metadata_props</c>.</summary>
    public IEnumerable<KeyValuePair<string, string>> ToMetadata()
    {
        yield return new(Prefix + "arch", Arch);
        yield return new(Prefix + "config", Config);
        yield return new(Prefix + "form", Form);
        yield return new(Prefix + "task", Task);
        yield return new(Prefix + "input_size", InputSize.ToString(CultureInfo.InvariantCulture));
        yield return new(Prefix + "input_height", InputHeight.ToString(CultureInfo.InvariantCulture));
        yield return new(Prefix + "input_width", InputWidth.ToString(CultureInfo.InvariantCulture));
        yield return new(Prefix + "dynamic_size", DynamicSize ? "true" : "false");
        yield return new(Prefix + "channels", Channels.ToString(CultureInfo.InvariantCulture));
        yield return new(Prefix + "mean", JsonSerializer.Serialize(Mean));
        yield return new(Prefix + "std", JsonSerializer.Serialize(Std));
        yield return new(Prefix + "crop_pct", CropPct.ToString("R", CultureInfo.InvariantCulture));
        if (ClassNames is not null)
        {
            yield return new(Prefix + "class_names", JsonSerializer.Serialize(ClassNames));
        }
    }

    /// <summary>
    /// Reads the entries back (from ONNX Runtime's custom metadata map); null when the file has none of ours. A file that
    /// records only <c>input_size</c> (written before non-square exports) reads as a fixed square graph of that size.
    /// </summary>
    /// <exception cref="FormatException">An entry is missing or unreadable; the message starts with <paramref name="source"/>.</exception>
    public static OnnxModelInfo? FromMetadata(IReadOnlyDictionary<string, string> map, string source)
    {
        ArgumentNullException.ThrowIfNull(map);
        if (!map.ContainsKey(Prefix + "input_size"))
        {
            return null;
        }

        string Get(string key) => map.TryGetValue(Prefix + key, out var v) ? v : throw new FormatException($"{source}: metadata '{Prefix}{key}' is missing");
        try
        {
            int size = int.Parse(Get("input_size"), CultureInfo.InvariantCulture);
            int Optional(string key) => map.ContainsKey(Prefix + key) ? int.Parse(Get(key), CultureInfo.InvariantCulture) : size;
            return new OnnxModelInfo(Get("arch"), Get("config"), size,
                int.Parse(Get("channels"), CultureInfo.InvariantCulture), JsonSerializer.Deserialize<double[]>(Get("mean"))!,
                JsonSerializer.Deserialize<double[]>(Get("std"))!, double.Parse(Get("crop_pct"), CultureInfo.InvariantCulture),
                map.TryGetValue(Prefix + "class_names", out var names) ? JsonSerializer.Deserialize<string[]>(names) : null, Get("form"))
            {
                InputHeight = Optional("input_height"),
                InputWidth = Optional("input_width"),
                DynamicSize = map.TryGetValue(Prefix + "dynamic_size", out var dynamic) && bool.Parse(dynamic),
                Task = map.TryGetValue(Prefix + "task", out var task) ? task : ClassificationTask,
            };
        }
        catch (Exception e) when (e is JsonException or OverflowException or FormatException && e.Message.IndexOf(source, StringComparison.Ordinal) < 0)
        {
            throw new FormatException($"{source}: unreadable replknet metadata: {e.Message}", e);
        }
    }
}

/// <summary>How to export.</summary>
public sealed record OnnxExportOptions
{
    /// <summary>ONNX opset (13–21). Exact GELU is the Gelu operator from opset 20, else Erf-based.</summary>
    public int Opset { get; init; } = 17;

    /// <summary>Leave the batch dimension symbolic ("batch").</summary>
    public bool DynamicBatch { get; init; }

    /// <summary>Batch size of the graph when it is not dynamic.</summary>
    public int Batch { get; init; } = 1;

    /// <summary>
    /// Input height in pixels (null: the info's square <see cref="OnnxModelInfo.InputSize"/>). With <see cref="DynamicSize"/>
    /// the size the export is first checked at and that the metadata records.
    /// </summary>
    public int? InputHeight { get; init; }

    /// <summary>Input width in pixels (null: the info's <see cref="OnnxModelInfo.InputSize"/>); see <see cref="InputHeight"/>.</summary>
    public int? InputWidth { get; init; }

    /// <summary>
    /// Leave the input's height and width symbolic ("height", "width"; combinable with <see cref="DynamicBatch"/>):
    /// <see cref="OnnxExport"/>.Run then checks the file at the export size and at <see cref="OnnxExport.SecondCheckSize"/>.
    /// </summary>
    public bool DynamicSize { get; init; }

    /// <summary>Export the backbone's out_indices features instead of logits.</summary>
    public bool Features { get; init; }

    /// <summary>Initializers above this many bytes in all go to an external data file (protobuf's 2 GB limit).</summary>
    public long ExternalDataThreshold { get; init; } = 2_000_000_000;

    /// <summary>The graph's input (height, width) in pixels for <paramref name="info"/>.</summary>
    /// <exception cref="OnnxExportException">
    /// <see cref="Batch"/>, the height or the width is not positive; <see cref="OnnxExportException.ParamName"/> names the
    /// property (<c>Batch</c>, <c>InputHeight</c>, <c>InputWidth</c>) and the message starts with it.
    /// </exception>
    public (int Height, int Width) InputSizeFor(OnnxModelInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (Batch <= 0)
        {
            throw new OnnxExportException($"{nameof(Batch)} must be positive, got {Batch}", nameof(Batch));
        }

        int h = InputHeight ?? info.InputSize, w = InputWidth ?? info.InputSize;
        if (h <= 0)
        {
            throw new OnnxExportException($"{nameof(InputHeight)} must be positive, got {h}{(InputHeight is null ? " (the info's InputSize)" : string.Empty)}", nameof(InputHeight));
        }

        if (w <= 0)
        {
            throw new OnnxExportException($"{nameof(InputWidth)} must be positive, got {w}{(InputWidth is null ? " (the info's InputSize)" : string.Empty)}", nameof(InputWidth));
        }

        return (h, w);
    }
}

/// <summary>
/// Writes a deploy-form RepLKNet (already re-parameterized; optionally with every conv+BN folded) as an ONNX graph:
/// Conv (group = channels for depthwise), BatchNormalization where not fused, Relu, exact GELU, Add, and for classifiers
/// BatchNormalization → GlobalAveragePool → Flatten → Gemm; UperNet segmenters through <see cref="BuildSegmentor"/>.
/// Weights are raw float32 initializers named like the state_dict keys.
/// </summary>
public static partial class OnnxExporter
{
    /// <summary>The input's name.</summary>
    public const string InputName = "input";

    /// <summary>The classifier output's name.</summary>
    public const string LogitsName = "logits";

    /// <summary>Names of the feature outputs for the given stage indices.</summary>
    public static IReadOnlyList<string> FeatureNames(IEnumerable<int> indices) => [.. indices.Select(i => $"features.{i}")];

    /// <summary>
    /// Builds the ONNX model of <paramref name="model"/> (eval, deploy form): input <c>input</c> [N, C, H, W] (N =
    /// <see cref="OnnxExportOptions.Batch"/> or symbolic "batch"; H × W = <see cref="OnnxExportOptions.InputSizeFor"/> or
    /// symbolic "height" × "width"), output <c>logits</c> [N, classes] or one <c>features.i</c> [N, C_i, H_i, W_i] per
    /// out_index. The metadata records <paramref name="info"/> with the graph's height, width and dynamic flag.
    /// </summary>
    /// <remarks>An <see cref="EncoderDecoder"/> is written by <see cref="BuildSegmentor"/>.</remarks>
    /// <exception cref="OnnxExportException">
    /// The model is not a RepLKNet (or segmenter) or not in its deploy form, the opset is outside 13–21, a size or the batch is not
    /// positive (<see cref="OnnxExportOptions.InputSizeFor"/>), or the model is a backbone and
    /// <see cref="OnnxExportOptions.Features"/> is not set (<see cref="OnnxExportException.ParamName"/> <c>Features</c>).
    /// </exception>
    public static ModelProto Build(Module model, OnnxModelInfo info, OnnxExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(options);
        if (model is EncoderDecoder segmentor)
        {
            return BuildSegmentor(segmentor, info, options);
        }

        if (model is not RepLKNetModel replknet)
        {
            throw new OnnxExportException($"ONNX export supports RepLKNet models and their UperNet segmenters; {model.GetType().Name} is not supported");
        }

        var (height, width) = CheckOptions(options, info);
        CheckDeploy(replknet);
        var g = new GraphWriter(options.Opset);
        var config = replknet.Config;
        using var noGrad = no_grad();
        int stageCount = Children(Child<Module>(Children(replknet, "model"), "stages", "model"), "stages").Count;
        if (!options.Features && config.NumClasses is null)
        {
            throw new OnnxExportException($"{nameof(OnnxExportOptions.Features)} is required: this RepLKNet is a backbone (num_classes is null), which has no logits", nameof(OnnxExportOptions.Features));
        }

        var wanted = options.Features ? (config.OutIndices ?? [.. Enumerable.Range(0, stageCount)]) : [];
        var (x, features) = Backbone(g, replknet, InputName, wanted, !options.Features, string.Empty);
        var outputs = new List<(string Name, long[] Shape)>();
        // Output shapes from one forward pass of the model itself (any input size the convolutions accept).
        var shapes = OutputShapes(replknet, info.Channels, height, width, options.Features);
        if (options.Features)
        {
            for (int i = 0; i < features.Count; i++)
            {
                string feature = FeatureNames([features[i].Stage])[0];
                g.Rename(features[i].Value, feature, features[i].AlsoUsedInside);
                // With a dynamic size the spatial sizes of the maps are left unnamed (they follow from the input's).
                outputs.Add((feature, options.DynamicSize ? [shapes[i][0], UnknownDim, UnknownDim] : shapes[i]));
            }
        }
        else
        {
            var children = Children(replknet, "model");
            x = g.BatchNorm(Child<BatchNorm2d>(children, "norm", "model"), x, "norm");
            _ = Child<AdaptiveAvgPool2d>(children, "avgpool", "model");
            x = g.Node("GlobalAveragePool", [x], "avgpool");
            x = g.Node("Flatten", [x], "flatten", ("axis", 1L));
            var head = Child<Linear>(children, "head", "model");
            string w = g.Initializer("head.weight", head.weight!);
            string b = g.Initializer("head.bias", head.bias!);
            x = g.Node("Gemm", [x, w, b], "head", ("transB", 1L));
            g.Rename(x, LogitsName, false);
            outputs.Add((LogitsName, shapes[0]));
        }

        return Finish(g, info with { InputHeight = height, InputWidth = width, DynamicSize = options.DynamicSize }, options, outputs,
            $"RepLKNet ({info.Arch}, {info.Form})", "RepLKNet (Ding et al., CVPR 2022), deploy form, written by the .NET RepLKNet toolkit");
    }

    // The option checks every export shares; returns the graph's (height, width).
    private static (int Height, int Width) CheckOptions(OnnxExportOptions options, OnnxModelInfo info)
    {
        if (options.Opset is < 13 or > 21)
        {
            throw new OnnxExportException($"opset {options.Opset} is not supported: use 13 to 21");
        }

        return options.InputSizeFor(info);
    }

    private static void CheckDeploy(RepLKNetModel replknet)
    {
        if (!replknet.IsDeploy)
        {
            throw new OnnxExportException("the model is in its training form: re-parameterize it first (the exporter writes the deploy graph)");
        }
    }

    // In output shapes (without the batch): an unnamed dimension, the input's symbolic height, the input's symbolic width.
    private const long UnknownDim = -1, SymbolicHeight = -2, SymbolicWidth = -3;

    // Input, outputs, metadata and the model proto around a finished graph.
    private static ModelProto Finish(GraphWriter g, OnnxModelInfo info, OnnxExportOptions options, List<(string Name, long[] Shape)> outputs, string name, string doc)
    {
        var batch = options.DynamicBatch ? Dim("batch") : Dim(options.Batch);
        g.Graph.Input.Add(Value(InputName, [batch, Dim(info.Channels),
            options.DynamicSize ? Dim("height") : Dim(info.InputHeight), options.DynamicSize ? Dim("width") : Dim(info.InputWidth)]));
        foreach (var (output, shape) in outputs)
        {
            g.Graph.Output.Add(Value(output, [batch, .. shape.Select(d => d switch { >= 0 => Dim(d), SymbolicHeight => Dim("height"), SymbolicWidth => Dim("width"), _ => Unknown() })]));
        }

        g.Graph.Name = name;
        var modelProto = new ModelProto
        {
            IrVersion = 8,
            ProducerName = "replknet-dotnet",
            ProducerVersion = typeof(OnnxExporter).Assembly.GetName().Version?.ToString() ?? "0",
            DocString = doc,
            Graph = g.Graph,
        };
        modelProto.OpsetImport.Add(new OperatorSetIdProto { Domain = string.Empty, Version = options.Opset });
        foreach (var (key, value) in info.ToMetadata())
        {
            modelProto.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        }

        return modelProto;
    }

    // Emits stem, stages and transitions up to the last wanted stage (all stages when allStages) under the key prefix
    // (e.g. "backbone."): returns the last stage's output and, per wanted stage in stage order, its feature value (after the
    // stage norm) and whether that value is also the stage's output (then an Identity names the graph output).
    private static (string Last, List<(int Stage, string Value, bool AlsoUsedInside)> Features) Backbone(GraphWriter g, RepLKNetModel model, string input,
        IReadOnlyList<int> wanted, bool allStages, string prefix)
    {
        var children = Children(model, "model");
        string x = input;
        foreach (var (name, layer) in Children(Child<Module>(children, "stem", "model"), "stem"))
        {
            x = g.ConvBn(As<ConvBn>(layer, $"stem.{name}"), x, $"{prefix}stem.{name}");
        }

        var stages = Children(Child<Module>(children, "stages", "model"), "stages");
        var transitions = Children(Child<Module>(children, "transitions", "model"), "transitions");
        int last = allStages ? stages.Count - 1 : wanted.Max();
        var features = new List<(int, string, bool)>();
        for (int i = 0; i <= last; i++)
        {
            string stage = $"stages.{i}";
            var stageChildren = Children(stages[i].Module, stage);
            foreach (var (name, block) in Children(Child<Module>(stageChildren, "blocks", stage), $"{stage}.blocks"))
            {
                string path = $"{prefix}{stage}.blocks.{name}";
                x = block switch
                {
                    RepLKBlock b => g.RepLKBlock(b, x, path),
                    ConvFFN f => g.ConvFfn(f, x, path),
                    _ => throw Unsupported(block, path),
                };
            }

            if (wanted.Contains(i))
            {
                var norm = Child<Module>(stageChildren, "norm", stage);
                string y = norm switch
                {
                    BatchNorm2d bn => g.BatchNorm(bn, x, $"{prefix}{stage}.norm"),
                    TorchSharp.Modules.Identity => x,
                    _ => throw Unsupported(norm, $"{stage}.norm"),
                };
                features.Add((i, y, x == y));
            }

            if (i < transitions.Count && i < last)
            {
                foreach (var (name, layer) in Children(transitions[i].Module, $"transitions.{i}"))
                {
                    x = g.ConvBn(As<ConvBn>(layer, $"transitions.{i}.{name}"), x, $"{prefix}transitions.{i}.{name}");
                }
            }
        }

        return (x, features);
    }

    private static List<long[]> OutputShapes(RepLKNetModel model, int channels, int height, int width, bool features)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = zeros([1, channels, height, width]);
        var outputs = features ? model.forward_intermediates(x).ToList() : [model.call(x)];
        return [.. outputs.Select(o => TensorSizes.Of(o)[1..])];
    }

    /// <summary>Bytes of all initializers.</summary>
    public static long InitializerBytes(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.Graph.Initializer.Sum(t => (long)t.RawData.Length);
    }

    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/> (initializers to <c>PATH.data</c> when they exceed the
    /// threshold). Returns the data file's path, or null.
    /// </summary>
    public static string? Write(ModelProto model, string path, long externalDataThreshold)
    {
        ArgumentNullException.ThrowIfNull(model);
        string? dataPath = null;
        if (InitializerBytes(model) > externalDataThreshold)
        {
            dataPath = path + ".data";
            string location = Path.GetFileName(dataPath);
            using var data = File.Create(dataPath);
            foreach (var t in model.Graph.Initializer)
            {
                long offset = data.Position;
                t.RawData.WriteTo(data);
                long length = data.Position - offset;
                t.RawData = ByteString.Empty;
                t.DataLocation = TensorProto.Types.DataLocation.External;
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
                // Keep each tensor 64-byte aligned in the file, as ONNX's own writer may.
                long pad = (64 - data.Position % 64) % 64;
                data.Write(new byte[pad]);
            }
        }

        using (var stream = File.Create(path))
        {
            model.WriteTo(stream);
        }

        return dataPath;
    }

    private static TensorShapeProto.Types.Dimension Dim(long value) => new() { DimValue = value };

    private static TensorShapeProto.Types.Dimension Dim(string name) => new() { DimParam = name };

    private static TensorShapeProto.Types.Dimension Unknown() => new();

    private static ValueInfoProto Value(string name, IEnumerable<TensorShapeProto.Types.Dimension> dims)
    {
        var shape = new TensorShapeProto();
        shape.Dim.AddRange(dims);
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape } },
        };
    }

    internal static List<(string Name, Module Module)> Children(Module module, string path)
    {
        ArgumentNullException.ThrowIfNull(module);
        return [.. module.named_children().Select(c => (c.name, (Module)c.module))];
    }

    private static T Child<T>(List<(string Name, Module Module)> children, string name, string path)
        where T : Module
    {
        var match = children.FirstOrDefault(c => c.Name == name);
        return match.Module is null
            ? throw new OnnxExportException($"{path}: expected a child module '{name}', found [{string.Join(", ", children.Select(c => c.Name))}]")
            : As<T>(match.Module, $"{path}.{name}");
    }

    internal static T As<T>(Module module, string path)
        where T : Module => module as T ?? throw Unsupported(module, path, typeof(T).Name);

    internal static OnnxExportException Unsupported(Module module, string path, string? expected = null) =>
        new($"{path}: module {module.GetType().Name} is not supported by the ONNX exporter{(expected is null ? string.Empty : $" (expected {expected})")}");

    /// <summary>
    /// A standalone graph around some emitters (for tests of one operation against libtorch): float inputs of rank 4 with
    /// unnamed dimensions, one float output <c>y</c> whatever <paramref name="emit"/> returns.
    /// </summary>
    internal static ModelProto Fragment(int opset, IReadOnlyList<string> inputs, Func<GraphWriter, IReadOnlyList<string>, string> emit)
    {
        var g = new GraphWriter(opset);
        foreach (var input in inputs)
        {
            g.Graph.Input.Add(Value(input, [Unknown(), Unknown(), Unknown(), Unknown()]));
        }

        g.Rename(emit(g, inputs), "y", false);
        g.Graph.Output.Add(Value("y", [Unknown(), Unknown(), Unknown(), Unknown()]));
        g.Graph.Name = "fragment";
        var model = new ModelProto { IrVersion = 8, ProducerName = "replknet-dotnet", Graph = g.Graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = string.Empty, Version = opset });
        return model;
    }

    /// <summary>Accumulates nodes and initializers with unique names.</summary>
    internal sealed class GraphWriter(int opset)
    {
        // Per value: its spatial size [H, W] as a 1-D int64 value (one Shape → Slice per value, shared by every resize to it).
        private readonly Dictionary<string, string> spatialSizes = [];
        private static readonly long[] UnitDilations = [1, 1];
        private int counter;

        public GraphProto Graph { get; } = new();

        public string Initializer(string name, Tensor value)
        {
            using var contiguous = value.detach().to(float32).cpu().contiguous();
            var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(contiguous.bytes) };
            t.Dims.AddRange(TensorSizes.Of(contiguous));
            Graph.Initializer.Add(t);
            return name;
        }

        public string Scalar(string name, float value)
        {
            if (Graph.Initializer.All(t => t.Name != name))
            {
                var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(BitConverter.GetBytes(value)) };
                Graph.Initializer.Add(t);
            }

            return name;
        }

        public string Node(string op, IReadOnlyList<string> inputs, string name, params (string Name, object Value)[] attributes)
        {
            string output = $"{name}:{op}:{counter++}";
            var node = new NodeProto { OpType = op, Name = output };
            node.Input.AddRange(inputs);
            node.Output.Add(output);
            foreach (var (key, value) in attributes)
            {
                var a = new AttributeProto { Name = key };
                switch (value)
                {
                    case long l:
                        a.Type = AttributeProto.Types.AttributeType.Int;
                        a.I = l;
                        break;
                    case float f:
                        a.Type = AttributeProto.Types.AttributeType.Float;
                        a.F = f;
                        break;
                    case string s:
                        a.Type = AttributeProto.Types.AttributeType.String;
                        a.S = ByteString.CopyFromUtf8(s);
                        break;
                    case long[] ls:
                        a.Type = AttributeProto.Types.AttributeType.Ints;
                        a.Ints.AddRange(ls);
                        break;
                    default:
                        throw new ArgumentException($"attribute {key}: unsupported value {value}", nameof(attributes));
                }

                node.Attribute.Add(a);
            }

            Graph.Node.Add(node);
            return output;
        }

        // Renames the producer's output (or inserts an Identity when the value is also an internal edge or the input).
        public void Rename(string value, string name, bool alsoUsedInside)
        {
            var producer = Graph.Node.LastOrDefault(n => n.Output.Contains(value));
            if (alsoUsedInside || producer is null)
            {
                var node = new NodeProto { OpType = "Identity", Name = $"{name}/Identity" };
                node.Input.Add(value);
                node.Output.Add(name);
                Graph.Node.Add(node);
                return;
            }

            producer.Output[producer.Output.IndexOf(value)] = name;
            foreach (var n in Graph.Node)
            {
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i] == value)
                    {
                        n.Input[i] = name;
                    }
                }
            }
        }

        /// <summary>An int64 initializer of <paramref name="shape"/> (empty: a scalar), shared by name.</summary>
        public string Int64s(string name, long[] values, params long[] shape)
        {
            if (Graph.Initializer.All(t => t.Name != name))
            {
                var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Int64, RawData = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan())) };
                t.Dims.AddRange(shape);
                Graph.Initializer.Add(t);
            }

            return name;
        }

        /// <summary>ReLU (<c>torch.nn.functional.relu</c>).</summary>
        public string Relu(string x, string path) => Node("Relu", [x], path);

        /// <summary>Concatenation along the channels (<c>torch.cat(xs, dim=1)</c>), as MMSeg's heads concatenate maps.</summary>
        public string ConcatChannels(IReadOnlyList<string> xs, string path) => Node("Concat", xs, path, ("axis", 1L));

        /// <summary>
        /// [N, C, H, W] <paramref name="x"/> resized bilinearly to the spatial size of <paramref name="like"/> (any value of
        /// rank 4; sizes read at run time, so symbolic sizes work): MMSeg's <c>resize(x, size=like.shape[2:],
        /// mode='bilinear', align_corners)</c> = <c>F.interpolate</c> with a size. ONNX Resize, mode linear, with
        /// coordinate_transformation_mode <c>align_corners</c> (src = dst·(in − 1)/(out − 1), 0 for out = 1, as libtorch) or
        /// <c>half_pixel</c> (src = (dst + 0.5)·in/out − 0.5, as libtorch's align_corners=False; <c>pytorch_half_pixel</c>
        /// would differ where an output size is 1, which libtorch maps to in/2 − 0.5, not 0). Both engines clamp the
        /// source index into [0, in − 1].
        /// </summary>
        public string ResizeLike(string x, string like, bool alignCorners, string path)
        {
            if (!spatialSizes.TryGetValue(like, out var spatial))
            {
                spatial = Node("Slice", [Node("Shape", [like], $"{path}.size"), Int64s("const.i2", [2], 1), Int64s("const.i4", [4], 1)], $"{path}.size");
                spatialSizes[like] = spatial;
            }

            var leading = Node("Slice", [Node("Shape", [x], $"{path}.nc"), Int64s("const.i0", [0], 1), Int64s("const.i2", [2], 1)], $"{path}.nc");
            var sizes = Node("Concat", [leading, spatial], $"{path}.sizes", ("axis", 0L));
            return Node("Resize", [x, string.Empty, string.Empty, sizes], path, ("mode", "linear"),
                ("coordinate_transformation_mode", alignCorners ? "align_corners" : "half_pixel"));
        }

        /// <summary>
        /// <c>torch.nn.functional.adaptive_avg_pool2d(x, s)</c> of a [N, C, H, W] value with any (symbolic) H, W: output bin
        /// i of a side of length L averages [⌊i·L/s⌋, ⌈(i + 1)·L/s⌉) (libtorch's start_index/end_index), so bins overlap
        /// or repeat where L is not a multiple of s (or L &lt; s). As the bins are products of one range per axis, the pool is
        /// P_H · x · P_Wᵀ with P[i, l] = 1/|bin i| inside bin i, else 0 ([s, L], built from the value's Shape at run time):
        /// two MatMuls. s = 1 is GlobalAveragePool.
        /// </summary>
        public string AdaptiveAvgPool(string x, int s, string path)
        {
            if (s == 1)
            {
                return Node("GlobalAveragePool", [x], path);
            }

            var shape = Node("Shape", [x], $"{path}.shape");
            string Pooling(long axis)
            {
                var length = Node("Gather", [shape, Int64s($"const.scalar{axis}", [axis])], $"{path}.length", ("axis", 0L));
                var index = Int64s($"const.bins{s}", [.. Enumerable.Range(0, s).Select(i => (long)i)], s, 1);
                var next = Int64s($"const.bins{s}.next", [.. Enumerable.Range(1, s).Select(i => (long)i)], s, 1);
                var count = Int64s($"const.s{s}", [s]);
                var start = Node("Div", [Node("Mul", [index, length], $"{path}.start"), count], $"{path}.start");
                var end = Node("Div", [Node("Add", [Node("Mul", [next, length], $"{path}.end"), Int64s($"const.s{s}m1", [s - 1])], $"{path}.end"), count], $"{path}.end");
                var positions = Node("Range", [Int64s("const.zero", [0]), length, Int64s("const.one", [1])], $"{path}.positions");
                var inside = Node("And", [Node("GreaterOrEqual", [positions, start], $"{path}.ge"), Node("Less", [positions, end], $"{path}.lt")], $"{path}.inside");
                var widths = Node("Cast", [Node("Sub", [end, start], $"{path}.widths")], $"{path}.widths", ("to", (long)TensorProto.Types.DataType.Float));
                return Node("Div", [Node("Cast", [inside], $"{path}.mask", ("to", (long)TensorProto.Types.DataType.Float)), widths], $"{path}.matrix");
            }

            var rows = Pooling(2);
            var columns = Node("Transpose", [Pooling(3)], $"{path}.columns", ("perm", new long[] { 1, 0 }));
            return Node("MatMul", [rows, Node("MatMul", [x, columns], $"{path}.w")], path);
        }

        public string Conv(Conv2d conv, string x, string path)
        {
            long k = conv.kernel_size[0], s = conv.stride[0], p = conv.padding![0];
            if (conv.kernel_size[1] != k || conv.stride[1] != s || conv.padding[1] != p || conv.dilation[0] != 1 || conv.dilation[1] != 1)
            {
                throw new OnnxExportException($"{path}: only square kernels, strides and paddings without dilation are exported");
            }

            var inputs = new List<string> { x, Initializer($"{path}.weight", conv.weight!) };
            if (conv.bias is { } bias)
            {
                inputs.Add(Initializer($"{path}.bias", bias));
            }

            return Node("Conv", inputs, path, ("kernel_shape", new[] { k, k }), ("strides", new[] { s, s }), ("pads", new[] { p, p, p, p }),
                ("dilations", UnitDilations), ("group", conv.groups));
        }

        public string BatchNorm(BatchNorm2d bn, string x, string path) =>
            Node("BatchNormalization", [x, Initializer($"{path}.weight", bn.weight!), Initializer($"{path}.bias", bn.bias!),
                Initializer($"{path}.running_mean", bn.running_mean!), Initializer($"{path}.running_var", bn.running_var!)], path, ("epsilon", (float)bn.eps));

        public string ConvBn(ConvBn layer, string x, string path)
        {
            var y = Conv(layer.Conv, x, $"{path}.conv");
            if (layer.Bn is { } bn)
            {
                y = BatchNorm(bn, y, $"{path}.bn");
            }

            return layer.HasRelu ? Node("Relu", [y], $"{path}.nonlinear") : y;
        }

        public string RepLKBlock(RepLKBlock block, string x, string path)
        {
            var c = Children(block, path);
            var y = BatchNorm(Child<BatchNorm2d>(c, "prelkb_bn", path), x, $"{path}.prelkb_bn");
            y = ConvBn(Child<ConvBn>(c, "pw1", path), y, $"{path}.pw1");
            var lk = Child<ReparamLargeKernelConv>(c, "large_kernel", path);
            var reparam = Children(lk, $"{path}.large_kernel").FirstOrDefault(m => m.Name == "lkb_reparam").Module as Conv2d
                ?? throw new OnnxExportException($"{path}.large_kernel: not re-parameterized (no lkb_reparam)");
            y = Conv(reparam, y, $"{path}.large_kernel.lkb_reparam");
            _ = Child<ReLU>(c, "lk_nonlinear", path);
            y = Node("Relu", [y], $"{path}.lk_nonlinear");
            y = ConvBn(Child<ConvBn>(c, "pw2", path), y, $"{path}.pw2");
            CheckIdentity(c, path);
            return Node("Add", [x, y], path);
        }

        public string ConvFfn(ConvFFN ffn, string x, string path)
        {
            var c = Children(ffn, path);
            var y = BatchNorm(Child<BatchNorm2d>(c, "preffn_bn", path), x, $"{path}.preffn_bn");
            y = ConvBn(Child<ConvBn>(c, "pw1", path), y, $"{path}.pw1");
            _ = Child<GELU>(c, "nonlinear", path);
            y = Gelu(y, $"{path}.nonlinear");
            y = ConvBn(Child<ConvBn>(c, "pw2", path), y, $"{path}.pw2");
            CheckIdentity(c, path);
            return Node("Add", [x, y], path);
        }

        // Exact GELU: the Gelu operator from opset 20; below, 0.5·x·(1 + erf(x/√2)) as PyTorch's exporter writes it.
        private string Gelu(string x, string path)
        {
            if (opset >= 20)
            {
                return Node("Gelu", [x], path, ("approximate", "none"));
            }

            var scaled = Node("Div", [x, Scalar("gelu.sqrt2", MathF.Sqrt(2f))], path);
            var erf = Node("Erf", [scaled], path);
            var onePlus = Node("Add", [erf, Scalar("gelu.one", 1f)], path);
            var product = Node("Mul", [x, onePlus], path);
            return Node("Mul", [product, Scalar("gelu.half", 0.5f)], path);
        }

        // Drop path is the identity in eval mode (what an exported model runs).
        private static void CheckIdentity(List<(string Name, Module Module)> children, string path)
        {
            var dropPath = children.FirstOrDefault(m => m.Name == "drop_path").Module;
            if (dropPath is not null and not TorchSharp.Modules.Identity and not DropPath)
            {
                throw Unsupported(dropPath, $"{path}.drop_path");
            }
        }
    }
}
