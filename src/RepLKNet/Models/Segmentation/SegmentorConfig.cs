using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace RepLKNet.Models.Segmentation;

/// <summary>
/// A decode head as MMSegmentation 0.x configures it (<c>decode_head=dict(type='UPerHead', …)</c> or
/// <c>auxiliary_head=dict(type='FCNHead', …)</c>); names are MMSeg's.
/// </summary>
public sealed record DecodeHeadConfig
{
    /// <summary>MMSeg's head names this library builds.</summary>
    public const string UPerHead = "UPerHead", FCNHead = "FCNHead";

    /// <summary><c>type</c>: <see cref="UPerHead"/> or <see cref="FCNHead"/>.</summary>
    public required string Type { get; init; }

    /// <summary><c>in_channels</c>: channels of each selected backbone level (UPerHead: one per level; FCNHead: one entry).</summary>
    public required IReadOnlyList<int> InChannels { get; init; }

    /// <summary><c>in_index</c>: which backbone outputs the head takes (UPerHead [0, 1, 2, 3]; FCNHead [2]).</summary>
    public required IReadOnlyList<int> InIndex { get; init; }

    /// <summary><c>channels</c>: the head's inner width (512 for UPerHead, 256 for the auxiliary FCNHead officially).</summary>
    public required int Channels { get; init; }

    /// <summary><c>num_classes</c>: output channels of <c>conv_seg</c>.</summary>
    public required int NumClasses { get; init; }

    /// <summary><c>pool_scales</c> of UPerHead's pyramid pooling module (default 1, 2, 3, 6).</summary>
    public IReadOnlyList<int> PoolScales { get; init; } = [1, 2, 3, 6];

    /// <summary><c>align_corners</c> of every bilinear resize in the head and of the final resize to the input.</summary>
    public bool AlignCorners { get; init; }

    /// <summary><c>dropout_ratio</c>: Dropout2d before <c>conv_seg</c> (0 = none).</summary>
    public double DropoutRatio { get; init; } = 0.1;

    /// <summary>FCNHead's <c>num_convs</c> (ConvModules before <c>conv_seg</c>).</summary>
    public int NumConvs { get; init; } = 1;

    /// <summary>FCNHead's <c>kernel_size</c> of its convs (padding k/2).</summary>
    public int KernelSize { get; init; } = 3;

    /// <summary>FCNHead's <c>concat_input</c> (only false is built: the official configs use false).</summary>
    public bool ConcatInput { get; init; }

    /// <summary><c>loss_decode.loss_weight</c> (1.0 for the decode head, 0.4 for the auxiliary head officially).</summary>
    public double LossWeight { get; init; } = 1.0;

    /// <summary>Checks the head against MMSeg's constructor rules; throws <see cref="ConfigException"/> naming the field.</summary>
    /// <param name="source">Where the configuration came from (for messages), e.g. "decode_head".</param>
    /// <param name="backboneChannels">The backbone's output channels per stage, to check <see cref="InChannels"/> against.</param>
    public DecodeHeadConfig Validate(string source, IReadOnlyList<int> backboneChannels)
    {
        ArgumentNullException.ThrowIfNull(backboneChannels);
        void Fail(string problem) => throw new ConfigException($"{source}: {problem}");
        if (Type is not (UPerHead or FCNHead))
        {
            Fail($"type '{Type}' is not supported (use {UPerHead} or {FCNHead})");
        }

        if (InChannels is null || InIndex is null || InChannels.Count == 0 || InChannels.Count != InIndex.Count)
        {
            Fail("in_channels and in_index must list the same number of backbone levels");
        }

        if (Type == FCNHead && InIndex!.Count != 1)
        {
            Fail("an FCNHead takes one backbone level: give in_channels and in_index as single numbers");
        }

        for (int i = 0; i < InIndex!.Count; i++)
        {
            int index = InIndex[i];
            if (index < 0 || index >= backboneChannels.Count)
            {
                Fail($"in_index {index} is not a backbone output (the backbone has {backboneChannels.Count} stages)");
            }

            if (InChannels![i] != backboneChannels[index])
            {
                Fail($"in_channels {InChannels[i]} for in_index {index} does not match the backbone's {backboneChannels[index]} channels there");
            }
        }

        if (Channels <= 0)
        {
            Fail($"channels = {Channels} must be positive");
        }

        if (NumClasses <= 0)
        {
            Fail($"num_classes = {NumClasses} must be positive");
        }

        if (Type == UPerHead && (PoolScales is null || PoolScales.Count == 0 || PoolScales.Any(s => s <= 0)))
        {
            Fail("pool_scales must list positive sizes");
        }

        if (DropoutRatio is < 0 or >= 1 || double.IsNaN(DropoutRatio))
        {
            Fail($"dropout_ratio = {DropoutRatio} must be in [0, 1)");
        }

        if (Type == FCNHead && (NumConvs < 0 || KernelSize <= 0 || KernelSize % 2 == 0))
        {
            Fail($"num_convs = {NumConvs} must be ≥ 0 and kernel_size = {KernelSize} a positive odd number");
        }

        if (ConcatInput)
        {
            Fail("concat_input = true is not supported (the official configs use false)");
        }

        if (LossWeight < 0 || double.IsNaN(LossWeight))
        {
            Fail($"loss_decode.loss_weight = {LossWeight} must be ≥ 0");
        }

        return this;
    }

    /// <summary>The MMSeg dict of this head (snake_case, as in the official configs).</summary>
    public JsonObject ToJsonObject()
    {
        var o = new JsonObject
        {
            ["type"] = Type,
            ["in_channels"] = Type == FCNHead ? InChannels[0] : new JsonArray([.. InChannels.Select(c => (JsonNode)c)]),
            ["in_index"] = Type == FCNHead ? InIndex[0] : new JsonArray([.. InIndex.Select(c => (JsonNode)c)]),
            ["channels"] = Channels,
        };
        if (Type == UPerHead)
        {
            o["pool_scales"] = new JsonArray([.. PoolScales.Select(c => (JsonNode)c)]);
        }
        else
        {
            o["num_convs"] = NumConvs;
            o["kernel_size"] = KernelSize;
            o["concat_input"] = ConcatInput;
        }

        o["dropout_ratio"] = DropoutRatio;
        o["num_classes"] = NumClasses;
        o["align_corners"] = AlignCorners;
        o["loss_decode"] = new JsonObject { ["type"] = "CrossEntropyLoss", ["use_sigmoid"] = false, ["loss_weight"] = LossWeight };
        return o;
    }

    internal static DecodeHeadConfig FromJsonObject(JsonObject o, string source, bool auxiliary)
    {
        string[] known =
        [
            "type", "in_channels", "in_index", "channels", "pool_scales", "num_classes", "align_corners", "dropout_ratio",
            "num_convs", "kernel_size", "concat_input", "dilation", "loss_decode", "norm_cfg", "act_cfg", "conv_cfg",
            "input_transform", "ignore_index", "sampler", "init_cfg",
        ];
        JsonFields.RejectUnknown(o, known, source);
        string type = JsonFields.String(o, "type", source) ?? throw new ConfigException($"{source}: 'type' is required ({UPerHead} or {FCNHead})");
        var inChannels = JsonFields.IntOrList(o, "in_channels", source) ?? throw new ConfigException($"{source}: 'in_channels' is required");
        var inIndex = JsonFields.IntOrList(o, "in_index", source) ?? (type == UPerHead ? [.. Enumerable.Range(0, inChannels.Length)] : [-1]);
        if (JsonFields.Int(o, "dilation", source) is int dilation && dilation != 1)
        {
            throw new ConfigException($"{source}: dilation = {dilation} is not supported (the official configs use 1)");
        }

        if (JsonFields.Int(o, "ignore_index", source) is int ignore && ignore != 255)
        {
            throw new ConfigException($"{source}: ignore_index = {ignore} is not supported (the official configs use 255)");
        }

        if (o["input_transform"] is JsonNode transform && transform.ToJsonString() is var t &&
            t != (type == UPerHead ? "\"multiple_select\"" : "null"))
        {
            throw new ConfigException($"{source}: input_transform {t} is not supported (UPerHead uses \"multiple_select\", FCNHead none)");
        }

        CheckNorm(o, source);
        if (o["sampler"] is JsonNode sampler && sampler.ToJsonString() != "null")
        {
            throw new ConfigException($"{source}: a pixel sampler ({sampler.ToJsonString()}) is not supported (the official configs use none)");
        }

        // Without loss_decode: the official configs' weights (decode 1.0, auxiliary 0.4), which the issue's abbreviated
        // model JSON leaves out; MMSeg itself would default both to 1.0.
        double lossWeight = auxiliary ? 0.4 : 1.0;
        if (o["loss_decode"] is JsonNode loss)
        {
            if (loss is not JsonObject lossObject)
            {
                throw new ConfigException($"{source}: 'loss_decode' must be one dict (CrossEntropyLoss), not {loss.ToJsonString()}");
            }

            JsonFields.RejectUnknown(lossObject, ["type", "use_sigmoid", "loss_weight", "avg_non_ignore", "class_weight", "loss_name", "reduction"], $"{source}.loss_decode");
            if (JsonFields.String(lossObject, "type", source) is string lossType && lossType != "CrossEntropyLoss")
            {
                throw new ConfigException($"{source}: loss_decode type '{lossType}' is not supported (CrossEntropyLoss)");
            }

            if (JsonFields.Bool(lossObject, "use_sigmoid", source) == true || JsonFields.Bool(lossObject, "avg_non_ignore", source) == true
                || lossObject["class_weight"] is JsonNode { } || JsonFields.String(lossObject, "reduction", source) is string r && r != "mean")
            {
                throw new ConfigException($"{source}: loss_decode supports softmax cross entropy with mean reduction over all pixels only");
            }

            lossWeight = JsonFields.Number(lossObject, "loss_weight", source) ?? 1.0;
        }

        return new DecodeHeadConfig
        {
            Type = type,
            InChannels = inChannels,
            InIndex = inIndex,
            Channels = JsonFields.Int(o, "channels", source) ?? throw new ConfigException($"{source}: 'channels' is required"),
            NumClasses = JsonFields.Int(o, "num_classes", source) ?? throw new ConfigException($"{source}: 'num_classes' is required"),
            PoolScales = JsonFields.IntOrList(o, "pool_scales", source) ?? [1, 2, 3, 6],
            AlignCorners = JsonFields.Bool(o, "align_corners", source) ?? false,
            DropoutRatio = JsonFields.Number(o, "dropout_ratio", source) ?? 0.1,
            NumConvs = JsonFields.Int(o, "num_convs", source) ?? 2,
            KernelSize = JsonFields.Int(o, "kernel_size", source) ?? 3,
            ConcatInput = JsonFields.Bool(o, "concat_input", source) ?? (type == FCNHead),
            LossWeight = lossWeight,
        };
    }

    private static void CheckNorm(JsonObject o, string source)
    {
        if (o["norm_cfg"] is JsonObject norm && JsonFields.String(norm, "type", source) is string n && n is not ("BN" or "SyncBN"))
        {
            throw new ConfigException($"{source}: norm_cfg type '{n}' is not supported (BN or SyncBN; both are BatchNorm2d in one process)");
        }

        if (o["act_cfg"] is JsonObject act && JsonFields.String(act, "type", source) is string a && a != "ReLU")
        {
            throw new ConfigException($"{source}: act_cfg type '{a}' is not supported (ReLU)");
        }

        if (o["conv_cfg"] is JsonNode conv && conv.ToJsonString() != "null")
        {
            throw new ConfigException($"{source}: conv_cfg {conv.ToJsonString()} is not supported (plain Conv2d)");
        }
    }
}

/// <summary>How a segmenter runs at test time (MMSeg's <c>test_cfg</c>).</summary>
/// <param name="Mode"><c>whole</c> (the image at once) or <c>slide</c> (overlapping crops).</param>
/// <param name="CropSize">Slide window (height, width) in pixels; null for whole mode.</param>
/// <param name="Stride">Slide stride (height, width) in pixels; null for whole mode.</param>
public sealed record SegmentationTestConfig(string Mode, (int H, int W)? CropSize = null, (int H, int W)? Stride = null)
{
    /// <summary>Whole-image inference.</summary>
    public static SegmentationTestConfig Whole { get; } = new("whole");
}

/// <summary>
/// MMSegmentation's <c>EncoderDecoder</c> model dict: the official RepLKNet backbone (as a feature extractor:
/// <c>num_classes</c> null, <c>out_indices</c> 0..3), a <c>UPerHead</c> decode head and an optional <c>FCNHead</c>
/// auxiliary head. Source: DingXiaoH/RepLKNet-pytorch <c>segmentation/configs/RepLKNet_upernet.py</c> and MMSeg 0.x.
/// </summary>
public sealed record SegmentorConfig
{
    /// <summary>The backbone (its <see cref="RepLKNetConfig.NumClasses"/> is null and <see cref="RepLKNetConfig.OutIndices"/> set).</summary>
    public required RepLKNetConfig Backbone { get; init; }

    /// <summary>The decode head (UPerHead).</summary>
    public required DecodeHeadConfig DecodeHead { get; init; }

    /// <summary>The auxiliary head (FCNHead), used for the training loss only; null for none.</summary>
    public DecodeHeadConfig? AuxiliaryHead { get; init; }

    /// <summary>Test-time inference mode.</summary>
    public SegmentationTestConfig Test { get; init; } = SegmentationTestConfig.Whole;

    /// <summary>Classes the segmenter predicts (the decode head's).</summary>
    public int NumClasses => DecodeHead.NumClasses;

    /// <summary>The decode head's align_corners, used for the final resize to the input (as MMSeg's EncoderDecoder).</summary>
    public bool AlignCorners => DecodeHead.AlignCorners;

    /// <summary>Checks the whole model; throws <see cref="ConfigException"/> naming the field and <paramref name="source"/>.</summary>
    public SegmentorConfig Validate(string source = "segmentor configuration")
    {
        if (Backbone is null || DecodeHead is null)
        {
            throw new ConfigException($"{source}: backbone and decode_head are required");
        }

        Backbone.Validate($"{source} backbone");
        if (Backbone.NumClasses is not null || Backbone.OutIndices is null)
        {
            throw new ConfigException($"{source}: backbone.num_classes must be null and out_indices set (a segmentation backbone returns its stage features)");
        }

        var outChannels = Backbone.OutIndices.Select(i => Backbone.Channels[i]).ToArray();
        if (DecodeHead.Type != DecodeHeadConfig.UPerHead)
        {
            throw new ConfigException($"{source}: decode_head type '{DecodeHead.Type}' is not supported (UPerHead)");
        }

        DecodeHead.Validate($"{source} decode_head", outChannels);
        if (AuxiliaryHead is not null)
        {
            if (AuxiliaryHead.Type != DecodeHeadConfig.FCNHead)
            {
                throw new ConfigException($"{source}: auxiliary_head type '{AuxiliaryHead.Type}' is not supported (FCNHead)");
            }

            AuxiliaryHead.Validate($"{source} auxiliary_head", outChannels);
            if (AuxiliaryHead.NumClasses != DecodeHead.NumClasses)
            {
                throw new ConfigException($"{source}: auxiliary_head num_classes {AuxiliaryHead.NumClasses} differs from decode_head's {DecodeHead.NumClasses}");
            }
        }

        if (Test.Mode is not ("whole" or "slide"))
        {
            throw new ConfigException($"{source}: test_cfg mode '{Test.Mode}' is not supported (whole or slide)");
        }

        if (Test.Mode == "slide" && (Test.CropSize is not { H: > 0, W: > 0 } || Test.Stride is not { H: > 0, W: > 0 }))
        {
            throw new ConfigException($"{source}: test_cfg mode 'slide' needs positive crop_size and stride");
        }

        return this;
    }

    /// <summary>The same segmenter predicting <paramref name="numClasses"/> classes (both heads' <c>conv_seg</c> resized).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numClasses"/> ≤ 0.</exception>
    public SegmentorConfig WithNumClasses(int numClasses)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numClasses);
        return this with
        {
            DecodeHead = DecodeHead with { NumClasses = numClasses },
            AuxiliaryHead = AuxiliaryHead is null ? null : AuxiliaryHead with { NumClasses = numClasses },
        };
    }

    /// <summary>Serializes to the MMSeg model dict (<c>{"type": "EncoderDecoder", "backbone": …, "decode_head": …, "auxiliary_head": …, "test_cfg": …}</c>).</summary>
    public string ToJson()
    {
        var backbone = JsonNode.Parse(Backbone.ToJson())!.AsObject();
        var root = new JsonObject { ["type"] = "EncoderDecoder" };
        backbone.Insert(0, "type", "RepLKNet");
        root["backbone"] = backbone;
        root["decode_head"] = DecodeHead.ToJsonObject();
        root["auxiliary_head"] = AuxiliaryHead?.ToJsonObject();
        var test = new JsonObject { ["mode"] = Test.Mode };
        if (Test.CropSize is { } crop && Test.Stride is { } stride)
        {
            test["crop_size"] = new JsonArray(crop.H, crop.W);
            test["stride"] = new JsonArray(stride.H, stride.W);
        }

        root["test_cfg"] = test;
        return root.ToJsonString();
    }

    /// <summary>Whether <paramref name="json"/> is a segmenter's model dict (it has a <c>decode_head</c> or a <c>backbone</c>).</summary>
    public static bool LooksLikeSegmentor(string json)
    {
        try
        {
            return JsonNode.Parse(json) is JsonObject o && (o.ContainsKey("decode_head") || o.ContainsKey("backbone"));
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Parses an MMSeg-style model dict: <c>{"backbone": {official RepLKNet arguments, optional "type": "RepLKNet"},
    /// "decode_head": {"type": "UPerHead", …}, "auxiliary_head": {"type": "FCNHead", …} | null, "test_cfg": {…}}</c>.
    /// The backbone's <c>num_classes</c> must be null or absent; <c>out_indices</c> defaults to every stage. Fields MMSeg
    /// has but which change nothing here (<c>norm_cfg</c> BN/SyncBN, <c>train_cfg</c>, <c>pretrained</c>,
    /// <c>use_checkpoint</c>) are accepted; anything else unknown is an error.
    /// </summary>
    /// <exception cref="ConfigException">The JSON is invalid or describes an unsupported model; the message names <paramref name="source"/> and the field.</exception>
    public static SegmentorConfig FromJson(string json, string source = "segmentor JSON")
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new ConfigException($"{source}: expected a JSON object");
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{source}: not valid JSON: {e.Message}", e);
        }

        JsonFields.RejectUnknown(root, ["type", "backbone", "decode_head", "auxiliary_head", "test_cfg", "train_cfg", "pretrained", "neck", "init_cfg"], source);
        if (JsonFields.String(root, "type", source) is string type && type != "EncoderDecoder")
        {
            throw new ConfigException($"{source}: type '{type}' is not supported (EncoderDecoder)");
        }

        if (root["neck"] is JsonNode neck && neck.ToJsonString() != "null")
        {
            throw new ConfigException($"{source}: a neck is not supported (the official configs have none)");
        }

        if (root["backbone"] is not JsonObject backboneObject)
        {
            throw new ConfigException($"{source}: 'backbone' must be a dict of the official RepLKNet arguments");
        }

        var backboneCopy = backboneObject.DeepClone().AsObject();
        if (JsonFields.String(backboneCopy, "type", source) is string backboneType && backboneType != "RepLKNet")
        {
            throw new ConfigException($"{source}: backbone type '{backboneType}' is not supported (RepLKNet)");
        }

        backboneCopy.Remove("type");
        backboneCopy.Remove("pretrained");
        backboneCopy.Remove("init_cfg");
        if (backboneCopy["num_classes"] is JsonNode classes && classes.ToJsonString() != "null")
        {
            throw new ConfigException($"{source}: backbone.num_classes must be null (a segmentation backbone has no classifier)");
        }

        backboneCopy["num_classes"] = null;
        if (backboneCopy["out_indices"] is null)
        {
            var channels = backboneCopy["channels"] as JsonArray;
            backboneCopy["out_indices"] = new JsonArray([.. Enumerable.Range(0, channels?.Count ?? 4).Select(i => (JsonNode)i)]);
        }

        var backbone = RepLKNetConfig.FromJson(backboneCopy.ToJsonString(), $"{source} backbone");
        if (root["decode_head"] is not JsonObject decode)
        {
            throw new ConfigException($"{source}: 'decode_head' must be a dict (type UPerHead)");
        }

        DecodeHeadConfig? auxiliary = root["auxiliary_head"] switch
        {
            null => null,
            JsonObject aux => DecodeHeadConfig.FromJsonObject(aux, $"{source} auxiliary_head", auxiliary: true),
            var other => throw new ConfigException($"{source}: 'auxiliary_head' must be one dict (FCNHead) or null, not {other.ToJsonString()}"),
        };

        var test = SegmentationTestConfig.Whole;
        if (root["test_cfg"] is JsonObject testObject)
        {
            JsonFields.RejectUnknown(testObject, ["mode", "crop_size", "stride"], $"{source} test_cfg");
            string mode = JsonFields.String(testObject, "mode", source) ?? "whole";
            test = mode == "slide"
                ? new SegmentationTestConfig(mode, JsonFields.Pair(testObject, "crop_size", source), JsonFields.Pair(testObject, "stride", source))
                : new SegmentationTestConfig(mode);
        }

        // MMSeg indexes the backbone's outputs like a Python list: -1 is the last.
        int levels = backbone.OutIndices!.Count;
        DecodeHeadConfig Resolve(DecodeHeadConfig head) =>
            head with { InIndex = [.. head.InIndex.Select(i => i < 0 && i >= -levels ? i + levels : i)] };
        return new SegmentorConfig
        {
            Backbone = backbone,
            DecodeHead = Resolve(DecodeHeadConfig.FromJsonObject(decode, $"{source} decode_head", auxiliary: false)),
            AuxiliaryHead = auxiliary is null ? null : Resolve(auxiliary),
            Test = test,
        }.Validate(source);
    }
}

/// <summary>Typed reads of MMSeg-style JSON fields with errors that name the source and the field.</summary>
internal static class JsonFields
{
    public static void RejectUnknown(JsonObject o, string[] known, string source)
    {
        foreach (var (key, _) in o)
        {
            if (!known.Contains(key))
            {
                throw new ConfigException($"{source}: unknown field '{key}' (known: {string.Join(", ", known)})");
            }
        }
    }

    public static string? String(JsonObject o, string name, string source) => o[name] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        var node => throw new ConfigException($"{source}: '{name}' must be a string, not {node.ToJsonString()}"),
    };

    public static bool? Bool(JsonObject o, string name, string source) => o[name] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        var node => throw new ConfigException($"{source}: '{name}' must be true or false, not {node.ToJsonString()}"),
    };

    public static double? Number(JsonObject o, string name, string source) => o[name] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out double d) => d,
        var node => throw new ConfigException($"{source}: '{name}' must be a number, not {node.ToJsonString()}"),
    };

    public static int? Int(JsonObject o, string name, string source) => o[name] switch
    {
        null => null,
        var node => AsInt(node, name, source),
    };

    /// <summary>A single integer (as a one-element list) or a list of integers (MMSeg writes both, and tuples as lists).</summary>
    public static int[]? IntOrList(JsonObject o, string name, string source) => o[name] switch
    {
        null => null,
        JsonArray array => [.. array.Select((n, i) => AsInt(n, $"{name}[{i}]", source))],
        var node => [AsInt(node, name, source)],
    };

    /// <summary>A (height, width) pair from <c>[h, w]</c> or a single number.</summary>
    public static (int H, int W)? Pair(JsonObject o, string name, string source)
    {
        var values = IntOrList(o, name, source);
        return values switch
        {
            null => null,
            [int s] => (s, s),
            [int h, int w] => (h, w),
            _ => throw new ConfigException($"{source}: '{name}' must be [height, width]"),
        };
    }

    private static int AsInt(JsonNode? node, string name, string source) =>
        node is JsonValue v && v.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue
            ? (int)d
            : throw new ConfigException(string.Create(CultureInfo.InvariantCulture, $"{source}: '{name}' must be an integer, not {node?.ToJsonString() ?? "null"}"));
}
