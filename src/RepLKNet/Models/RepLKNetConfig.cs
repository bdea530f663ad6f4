using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace RepLKNet.Models;

/// <summary>A configuration file or value is invalid; the message names the file/field and the problem.</summary>
public sealed class ConfigException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ConfigException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public ConfigException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates an empty exception (for serializers and analyzers).</summary>
    public ConfigException()
    {
    }

    /// <summary>
    /// Creates the exception for one argument: <paramref name="paramName"/> is the library's name for it (a method parameter
    /// or an options property, e.g. <c>InitialWeights</c>), and the message starts with that name, so a front end can put
    /// its own name for the argument (a CLI flag) in its place.
    /// </summary>
    public ConfigException(string message, string? paramName)
        : base(message)
    {
        ParamName = paramName;
    }

    /// <summary>The library's name of the argument the error is about (as in <see cref="ArgumentException.ParamName"/>), or null.</summary>
    public string? ParamName { get; }
}

/// <summary>
/// The arguments of the official <c>RepLKNet</c> constructor (snake_case in JSON), validated as the official code does:
/// exactly one of <see cref="NumClasses"/> (classification) and <see cref="OutIndices"/> (backbone).
/// </summary>
public sealed record RepLKNetConfig
{
    /// <summary>Large kernel size K_i of each stage (odd).</summary>
    public required IReadOnlyList<int> LargeKernelSizes { get; init; }

    /// <summary>Number of (RepLK block, ConvFFN) pairs L_i of each stage.</summary>
    public required IReadOnlyList<int> Layers { get; init; }

    /// <summary>Width C_i of each stage.</summary>
    public required IReadOnlyList<int> Channels { get; init; }

    /// <summary>Largest stochastic-depth rate (reached by the last pair; rises linearly from 0).</summary>
    public double DropPathRate { get; init; }

    /// <summary>Size of the parallel small kernel re-parameterized into the large one; null: none (as in XL).</summary>
    public int? SmallKernel { get; init; } = 5;

    /// <summary>Depthwise width ratio: D_i = int(C_i · dw_ratio).</summary>
    public double DwRatio { get; init; } = 1;

    /// <summary>ConvFFN width ratio: F_i = int(C_i · ffn_ratio).</summary>
    public double FfnRatio { get; init; } = 4;

    /// <summary>Input channels.</summary>
    public int InChannels { get; init; } = 3;

    /// <summary>Classifier size; null for a backbone (then <see cref="OutIndices"/> must be set).</summary>
    public int? NumClasses { get; init; } = 1000;

    /// <summary>Stages whose outputs are returned in backbone mode; null for a classifier.</summary>
    public IReadOnlyList<int>? OutIndices { get; init; }

    /// <summary>Adds a BN (<c>stages.i.norm</c>) applied to each returned stage output (XL downstream).</summary>
    public bool NormIntermediateFeatures { get; init; }

    /// <summary>Number of stages.</summary>
    public int NumStages => Channels.Count;

    /// <summary>Depthwise width of stage <paramref name="i"/>: int(C_i · dw_ratio), truncated like Python's int().</summary>
    public int DwChannels(int i) => (int)(Channels[i] * DwRatio);

    /// <summary>ConvFFN hidden width of stage <paramref name="i"/>.</summary>
    public int FfnChannels(int i) => (int)(Channels[i] * FfnRatio);

    /// <summary>The official linear stochastic-depth schedule: one rate per (RepLK, FFN) pair, in network order.</summary>
    public IReadOnlyList<double> DropPathSchedule()
    {
        int total = Layers.Sum();
        var rates = new double[total];
        for (int i = 0; i < total; i++)
        {
            // torch.linspace(0, rate, total): start + i * (end - start) / (total - 1).
            rates[i] = total == 1 ? 0 : DropPathRate * i / (total - 1);
        }

        return rates;
    }

    /// <summary>Checks every rule of the official constructor; throws <see cref="ConfigException"/> naming the field.</summary>
    public RepLKNetConfig Validate(string source = "configuration")
    {
        void Fail(string problem) => throw new ConfigException($"{source}: {problem}");

        if (LargeKernelSizes is null || Layers is null || Channels is null)
        {
            Fail("large_kernel_sizes, layers and channels are required");
        }

        if (Channels!.Count == 0)
        {
            Fail("channels must list at least one stage");
        }

        if (LargeKernelSizes!.Count != Channels.Count || Layers!.Count != Channels.Count)
        {
            Fail($"large_kernel_sizes ({LargeKernelSizes.Count}), layers ({Layers!.Count}) and channels ({Channels.Count}) must have one entry per stage");
        }

        for (int i = 0; i < Channels.Count; i++)
        {
            if (Channels[i] <= 0)
            {
                Fail($"channels[{i}] = {Channels[i]} must be positive");
            }

            if (Layers[i] <= 0)
            {
                Fail($"layers[{i}] = {Layers[i]} must be positive");
            }

            if (LargeKernelSizes[i] <= 0 || LargeKernelSizes[i] % 2 == 0)
            {
                Fail($"large_kernel_sizes[{i}] = {LargeKernelSizes[i]} must be a positive odd number");
            }

            if (SmallKernel is int s && s > LargeKernelSizes[i])
            {
                Fail($"small_kernel = {s} is larger than large_kernel_sizes[{i}] = {LargeKernelSizes[i]}");
            }

            if (DwChannels(i) <= 0 || FfnChannels(i) <= 0)
            {
                Fail($"dw_ratio {DwRatio} / ffn_ratio {FfnRatio} give no channels for stage {i}");
            }
        }

        if (SmallKernel is int small && (small <= 0 || small % 2 == 0))
        {
            Fail($"small_kernel = {small} must be a positive odd number or null");
        }

        if (DropPathRate is < 0 or >= 1 || double.IsNaN(DropPathRate))
        {
            Fail($"drop_path_rate = {DropPathRate} must be in [0, 1)");
        }

        if (InChannels <= 0)
        {
            Fail($"in_channels = {InChannels} must be positive");
        }

        if (NumClasses is null == OutIndices is null)
        {
            Fail("give exactly one of num_classes (classification) and out_indices (backbone)");
        }

        if (NumClasses is <= 0)
        {
            Fail($"num_classes = {NumClasses} must be positive");
        }

        if (OutIndices is not null)
        {
            if (OutIndices.Count == 0)
            {
                Fail("out_indices must not be empty");
            }

            foreach (int index in OutIndices)
            {
                if (index < 0 || index >= Channels.Count)
                {
                    Fail($"out_indices contains {index}, but there are {Channels.Count} stages");
                }
            }
        }

        if (NormIntermediateFeatures && NumClasses is not null)
        {
            Fail("norm_intermediate_features applies to backbones only: it cannot be combined with num_classes");
        }

        return this;
    }

    /// <summary>The same configuration with a classifier of <paramref name="numClasses"/> classes.</summary>
    public RepLKNetConfig WithNumClasses(int numClasses) => this with { NumClasses = numClasses, OutIndices = null, NormIntermediateFeatures = false };

    /// <summary>Serializes to the official constructor's snake_case argument names.</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["large_kernel_sizes"] = new JsonArray([.. LargeKernelSizes.Select(v => (JsonNode)v)]),
            ["layers"] = new JsonArray([.. Layers.Select(v => (JsonNode)v)]),
            ["channels"] = new JsonArray([.. Channels.Select(v => (JsonNode)v)]),
            ["drop_path_rate"] = DropPathRate,
            ["small_kernel"] = SmallKernel,
            ["dw_ratio"] = DwRatio,
            ["ffn_ratio"] = FfnRatio,
            ["in_channels"] = InChannels,
            ["num_classes"] = NumClasses,
            ["out_indices"] = OutIndices is null ? null : new JsonArray([.. OutIndices.Select(v => (JsonNode)v)]),
            ["norm_intermediate_features"] = NormIntermediateFeatures,
        };
        return o.ToJsonString();
    }

    /// <summary>Reads a configuration JSON file (the official constructor's arguments in snake_case).</summary>
    public static RepLKNetConfig FromJsonFile(string path)
    {
        if (!File.Exists(path))
        {
            throw new ConfigException($"'{path}': no such configuration file");
        }

        return FromJson(File.ReadAllText(path), $"'{path}'");
    }

    /// <summary>Parses configuration JSON; <paramref name="source"/> names it in errors.</summary>
    public static RepLKNetConfig FromJson(string json, string source = "configuration JSON")
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new ConfigException($"{source}: expected a JSON object");
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{source}: not valid JSON: {e.Message}", e);
        }

        string[] known =
        [
            "large_kernel_sizes", "layers", "channels", "drop_path_rate", "small_kernel", "dw_ratio", "ffn_ratio",
            "in_channels", "num_classes", "out_indices", "norm_intermediate_features", "use_checkpoint",
            "small_kernel_merged", "use_sync_bn",
        ];
        foreach (var (key, _) in root)
        {
            if (!known.Contains(key))
            {
                throw new ConfigException($"{source}: unknown field '{key}' (known: {string.Join(", ", known)})");
            }
        }

        var defaults = new RepLKNetConfig { LargeKernelSizes = [], Layers = [], Channels = [] };
        var config = new RepLKNetConfig
        {
            LargeKernelSizes = IntList(root, "large_kernel_sizes", source, required: true)!,
            Layers = IntList(root, "layers", source, required: true)!,
            Channels = IntList(root, "channels", source, required: true)!,
            DropPathRate = Number(root, "drop_path_rate", source) ?? defaults.DropPathRate,
            SmallKernel = root.ContainsKey("small_kernel") ? Int(root, "small_kernel", source) : defaults.SmallKernel,
            DwRatio = Number(root, "dw_ratio", source) ?? defaults.DwRatio,
            FfnRatio = Number(root, "ffn_ratio", source) ?? defaults.FfnRatio,
            InChannels = Int(root, "in_channels", source) ?? defaults.InChannels,
            NumClasses = root.ContainsKey("num_classes") ? Int(root, "num_classes", source) : defaults.NumClasses,
            OutIndices = IntList(root, "out_indices", source, required: false),
            NormIntermediateFeatures = Bool(root, "norm_intermediate_features", source) ?? false,
        };
        return config.Validate(source);
    }

    private static JsonNode? Field(JsonObject root, string name) => root.TryGetPropertyValue(name, out var node) ? node : null;

    private static int? Int(JsonObject root, string name, string source)
    {
        var node = Field(root, name);
        if (node is null)
        {
            return null;
        }

        if (node is JsonValue v && v.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue)
        {
            return (int)d;
        }

        throw new ConfigException($"{source}: '{name}' must be an integer or null, not {node.ToJsonString()}");
    }

    private static double? Number(JsonObject root, string name, string source)
    {
        var node = Field(root, name);
        if (node is null)
        {
            return null;
        }

        if (node is JsonValue v && v.TryGetValue(out double d))
        {
            return d;
        }

        throw new ConfigException($"{source}: '{name}' must be a number, not {node.ToJsonString()}");
    }

    private static bool? Bool(JsonObject root, string name, string source)
    {
        var node = Field(root, name);
        if (node is null)
        {
            return null;
        }

        if (node is JsonValue v && v.TryGetValue(out bool b))
        {
            return b;
        }

        throw new ConfigException($"{source}: '{name}' must be true or false, not {node.ToJsonString()}");
    }

    private static int[]? IntList(JsonObject root, string name, string source, bool required)
    {
        var node = Field(root, name);
        if (node is null)
        {
            return required ? throw new ConfigException($"{source}: '{name}' is required") : null;
        }

        if (node is not JsonArray array)
        {
            throw new ConfigException($"{source}: '{name}' must be a list of integers, not {node.ToJsonString()}");
        }

        var result = new int[array.Count];
        for (int i = 0; i < array.Count; i++)
        {
            if (array[i] is JsonValue v && v.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue)
            {
                result[i] = (int)d;
            }
            else
            {
                throw new ConfigException(string.Create(CultureInfo.InvariantCulture,
                    $"{source}: '{name}[{i}]' must be an integer, not {array[i]?.ToJsonString() ?? "null"}"));
            }
        }

        return result;
    }
}
