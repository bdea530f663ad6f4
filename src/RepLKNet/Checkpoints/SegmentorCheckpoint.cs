using System.Collections;
using System.Collections.Specialized;
using System.Globalization;
using System.Text.Json;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Reparam;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Checkpoints;

/// <summary>What a segmenter checkpoint records besides its tensors.</summary>
/// <param name="Arch">Architecture name (a preset's, or a JSON file's), or null when the file does not say.</param>
/// <param name="Config">The model dict, or null (official MMSeg files record it only as Python config text).</param>
/// <param name="Form">The backbone's form, recognized from the keys.</param>
/// <param name="Classes">MMSeg's <c>meta['CLASSES']</c>, or null.</param>
/// <param name="Palette">MMSeg's <c>meta['PALETTE']</c>: one (r, g, b) per class, or null.</param>
/// <param name="Input">How training prepared the inputs (crop, test scale, normalization), when the file records it.</param>
public sealed record SegmentorCheckpointInfo(string? Arch, SegmentorConfig? Config, ModelForm Form, IReadOnlyList<string>? Classes,
    IReadOnlyList<(byte R, byte G, byte B)>? Palette, SegmentationInput? Input = null);

/// <summary>A segmenter built from a checkpoint, and what the loading found.</summary>
/// <param name="Model">The segmenter (CPU, eval mode not set).</param>
/// <param name="Arch">Its architecture name.</param>
/// <param name="Info">The checkpoint's records.</param>
/// <param name="Report">Keys loaded, missing, unexpected.</param>
public sealed record LoadedSegmentor(EncoderDecoder Model, string Arch, SegmentorCheckpointInfo Info, LoadReport Report);

/// <summary>
/// Segmenter checkpoints in MMSegmentation's layout: a <c>torch.save</c>d <c>{'meta': {'CLASSES', 'PALETTE', …},
/// 'state_dict': {backbone.*, decode_head.*, auxiliary_head.*}, 'optimizer': …}</c> (mmcv's <c>save_checkpoint</c>), a
/// raw full state dict, or safetensors with the project's metadata. Train-form files written here load into MMSeg with
/// <c>load_checkpoint(model, f, strict=True)</c> (deploy-form ones into a <c>small_kernel_merged</c> config; fused ones
/// have no MMSeg counterpart); official MMSeg files load here strictly.
/// </summary>
public static class SegmentorCheckpoint
{
    /// <summary>The safetensors <c>format</c> tag of segmenter files.</summary>
    public const string FormatTag = "replknet-segmentor";

    /// <summary>The key of the project's own entry inside MMSeg's <c>meta</c> (architecture name, model JSON, form).</summary>
    public const string MetaKey = "replknet";

    /// <summary>
    /// Reads <paramref name="weights"/>, builds the segmenter it holds (architecture from <paramref name="arch"/>, else
    /// from the file's records; form from its keys) and loads it.
    /// </summary>
    /// <param name="weights">Checkpoint path.</param>
    /// <param name="arch">Preset name or model JSON; null: the checkpoint's recorded architecture.</param>
    /// <param name="strict">Fail on any missing, unexpected or mismatched key.</param>
    /// <param name="numClasses">Build with this many classes (null: the architecture's).</param>
    /// <exception cref="CheckpointException">The file is unreadable, records no architecture and none was given
    /// (<see cref="CheckpointException.ParamName"/> <c>arch</c>), or does not fit (<c>weights</c>).</exception>
    /// <exception cref="ConfigException">The architecture is invalid.</exception>
    public static LoadedSegmentor Load(string weights, string? arch = null, bool strict = true, int? numClasses = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        using var checkpoint = CheckpointFile.Read(weights, ema: false, wholeModel: true);
        if (!checkpoint.State.Keys.Any(k => k.StartsWith("decode_head.", StringComparison.Ordinal)))
        {
            string what = checkpoint.Metadata is { } classifier ? $"is a classification checkpoint ({classifier.Arch})"
                : checkpoint.State.Keys.Any(k => k.StartsWith("head.", StringComparison.Ordinal) || k.StartsWith("fc.", StringComparison.Ordinal) || k.StartsWith("classifier.", StringComparison.Ordinal))
                    ? $"is a classification checkpoint (it has a classifier head and no decode_head.* keys; {checkpoint.Source})"
                    : $"holds no decode_head.* keys ({checkpoint.Source})";
            throw new CheckpointException($"weights '{weights}' {what}: it is not a segmenter checkpoint " +
                "(a classification or backbone checkpoint initialises a segmenter's backbone for training instead)", nameof(weights));
        }

        var info = ReadInfo(weights, checkpoint);
        string name;
        SegmentorConfig config;
        if (arch is not null)
        {
            (name, config) = SegmentorRegistry.Resolve(arch);
        }
        else if (info.Config is not null)
        {
            (name, config) = (info.Arch ?? "custom", info.Config);
        }
        else
        {
            throw new CheckpointException($"arch: '{weights}' does not record its architecture (official MMSeg files keep it as Python config text); " +
                "give it (a preset such as upernet-31B-ade20k-512, or an MMSeg-style model JSON)", nameof(arch));
        }

        if (numClasses is int n)
        {
            config = config.WithNumClasses(n);
        }

        var model = Create(config, info.Form, name);
        try
        {
            var report = StateDictLoader.Load(model, checkpoint.State, strict, skipHead: false, $"weights '{weights}'", nameof(weights));
            return new LoadedSegmentor(model, name, info, report);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Whether <paramref name="weights"/> holds a segmenter (any <c>decode_head.*</c> key).</summary>
    /// <exception cref="CheckpointException">The file cannot be read.</exception>
    public static bool IsSegmentorCheckpoint(string weights) =>
        CheckpointFile.ReadKeys(weights).Any(k => k.StartsWith("decode_head.", StringComparison.Ordinal));

    /// <summary>Builds <paramref name="config"/> in <paramref name="form"/> (the heads' ConvModules fused too for <see cref="ModelForm.Fused"/>).</summary>
    public static EncoderDecoder Create(SegmentorConfig config, ModelForm form, string? name = null, Device? device = null)
    {
        var model = new EncoderDecoder(config, deploy: form != ModelForm.Train, device, name);
        if (form == ModelForm.Fused)
        {
            Reparameterizer.Reparameterize(model, fuseBn: true);
        }

        return model;
    }

    /// <summary>
    /// Initialises <paramref name="model"/>'s backbone from a classification checkpoint (ImageNet or the project's, any
    /// format <see cref="CheckpointFile.Read(string, bool)"/> reads; an MMSeg file's <c>backbone.*</c> works too). The
    /// classifier's <c>norm.*</c> and <c>head.*</c> are skipped and reported; with norm_intermediate_features the stage norms
    /// stay at their initialisation (reported missing), as MMSeg's <c>load_checkpoint(strict=False)</c> leaves them.
    /// </summary>
    /// <param name="weights">Checkpoint path.</param>
    /// <param name="model">The segmenter whose backbone is filled.</param>
    /// <returns>What was loaded, skipped (unexpected) and left (missing).</returns>
    /// <exception cref="CheckpointException">Unreadable, a backbone key of another shape (another architecture), or no
    /// backbone key matched (<see cref="CheckpointException.ParamName"/> <c>weights</c>).</exception>
    public static LoadReport LoadBackbone(string weights, EncoderDecoder model)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(model);
        using var checkpoint = CheckpointFile.Read(weights);
        var report = StateDictLoader.Load(model.Backbone, checkpoint.State, strict: false, skipHead: false, $"weights '{weights}'", nameof(weights));
        if (report.ShapeMismatched.Count > 0)
        {
            throw new CheckpointException($"weights '{weights}' is another architecture than the segmenter's backbone: {report.Describe()}", nameof(weights));
        }

        if (report.Loaded.Count == 0)
        {
            throw new CheckpointException($"weights '{weights}': none of its keys is a backbone key of the segmenter ({checkpoint.Source}; {report.Describe()})", nameof(weights));
        }

        var unexpectedBody = report.Unexpected.Where(k => !k.StartsWith("head.", StringComparison.Ordinal) && !k.StartsWith("norm.", StringComparison.Ordinal)).ToList();
        if (unexpectedBody.Count > 0 || report.Missing.Any(k => !k.Contains(".norm.", StringComparison.Ordinal)))
        {
            throw new CheckpointException($"weights '{weights}' does not fit the segmenter's backbone: {report.Describe()}", nameof(weights));
        }

        return report;
    }

    /// <summary>
    /// Writes <paramref name="model"/> atomically: <c>.pth</c>/<c>.pt</c> as MMSeg's <c>{'meta': {'CLASSES', 'PALETTE',
    /// 'replknet': {arch, config, form}}, 'state_dict': OrderedDict}</c>; any other extension as safetensors with the
    /// same records in its metadata.
    /// </summary>
    /// <param name="path">Destination.</param>
    /// <param name="model">The segmenter (any device; tensors are copied to the CPU).</param>
    /// <param name="arch">Architecture name recorded.</param>
    /// <param name="classes">Class names (MMSeg's CLASSES), or null.</param>
    /// <param name="palette">Colours per class, or null.</param>
    /// <param name="extra">More string entries for the project's record (e.g. the training-state file), or null.</param>
    /// <param name="input">How the inputs were prepared in training (recorded for evaluation, prediction and export), or null.</param>
    public static void Save(string path, EncoderDecoder model, string arch, IReadOnlyList<string>? classes = null,
        IReadOnlyList<(byte R, byte G, byte B)>? palette = null, IReadOnlyDictionary<string, string>? extra = null, SegmentationInput? input = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(model);
        var form = model.IsDeploy ? ModelForms.Detect(StateDicts.Ordered(model).Select(kv => kv.Key[(kv.Key.IndexOf('.', StringComparison.Ordinal) + 1)..])) : ModelForm.Train;
        var record = new Dictionary<string, string>
        {
            ["arch"] = arch,
            ["config"] = model.Config.ToJson(),
            ["form"] = form.Name(),
        };
        if (input is not null)
        {
            record["input"] = input.ToJson();
        }

        foreach (var (k, v) in extra ?? new Dictionary<string, string>())
        {
            record[k] = v;
        }

        var state = StateDicts.Ordered(model);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is not (".pth" or ".pt"))
        {
            var metadata = new Dictionary<string, string>(record) { ["format"] = FormatTag, ["format_version"] = "1" };
            if (classes is not null)
            {
                metadata["classes"] = JsonSerializer.Serialize(classes);
            }

            if (palette is not null)
            {
                metadata["palette"] = JsonSerializer.Serialize(palette.Select(c => new[] { c.R, c.G, c.B }));
            }

            SafetensorsFile.Write(path, state, metadata);
            return;
        }

        var meta = new OrderedDictionary();
        if (classes is not null)
        {
            meta["CLASSES"] = classes.Cast<object>().ToArray();
        }

        if (palette is not null)
        {
            meta["PALETTE"] = new ArrayList(palette.Select(c => new ArrayList { (int)c.R, (int)c.G, (int)c.B }).ToArray());
        }

        var own = new OrderedDictionary();
        foreach (var (k, v) in record)
        {
            own[k] = v;
        }

        meta[MetaKey] = own;
        CheckpointFile.WritePyTorch(path, state, stateDict => new OrderedDictionary { ["meta"] = meta, ["state_dict"] = stateDict });
    }

    /// <summary>Reads only the records of <paramref name="weights"/> (architecture, classes, palette, form).</summary>
    /// <exception cref="CheckpointException">The file is unreadable or its records are damaged.</exception>
    public static SegmentorCheckpointInfo ReadInfo(string weights)
    {
        using var checkpoint = CheckpointFile.Read(weights, ema: false, wholeModel: true);
        return ReadInfo(weights, checkpoint);
    }

    private static SegmentorCheckpointInfo ReadInfo(string path, Checkpoint checkpoint)
    {
        var backboneKeys = checkpoint.State.Keys.Where(k => k.StartsWith("backbone.", StringComparison.Ordinal)).Select(k => k["backbone.".Length..]).ToList();
        var form = ModelForms.Detect(backboneKeys);
        if (form == ModelForm.Deploy && checkpoint.State.Keys.Any(k => k.StartsWith("decode_head.", StringComparison.Ordinal) && k.EndsWith(".conv.bias", StringComparison.Ordinal)))
        {
            form = ModelForm.Fused;
        }

        IReadOnlyDictionary<string, string>? record;
        IReadOnlyList<string>? classes = null;
        IReadOnlyList<(byte, byte, byte)>? palette = null;
        try
        {
            if (checkpoint.Format == CheckpointFormat.PyTorch)
            {
                (record, classes, palette) = ReadPyTorchMeta(path);
            }
            else
            {
                var metadata = SafetensorsFile.ReadMetadata(path);
                bool ours = metadata.TryGetValue("format", out var tag) && tag == FormatTag;
                record = ours ? metadata : null;
                if (ours && metadata.TryGetValue("classes", out var c))
                {
                    classes = JsonSerializer.Deserialize<string[]>(c);
                }

                if (ours && metadata.TryGetValue("palette", out var p))
                {
                    palette = [.. JsonSerializer.Deserialize<byte[][]>(p)!.Select(rgb => (rgb[0], rgb[1], rgb[2]))];
                }
            }

            SegmentorConfig? config = record is not null && record.TryGetValue("config", out var json)
                ? SegmentorConfig.FromJson(json, $"'{path}' (recorded config)")
                : null;
            var input = record is not null && record.TryGetValue("input", out var inputJson)
                ? SegmentationInput.FromJson(inputJson, $"'{path}' (recorded input)")
                : null;
            return new SegmentorCheckpointInfo(record?.GetValueOrDefault("arch"), config, form, classes, palette, input);
        }
        catch (Exception e) when (e is JsonException or ConfigException or InvalidCastException or IndexOutOfRangeException or FormatException or OverflowException)
        {
            throw new CheckpointException($"'{path}' has damaged segmenter records: {e.Message}", e);
        }
    }

    private static (IReadOnlyDictionary<string, string>? Record, IReadOnlyList<string>? Classes, IReadOnlyList<(byte, byte, byte)>? Palette) ReadPyTorchMeta(string path)
    {
        using var archive = PyTorchArchive.Open(path);
        if (archive.Root is not Hashtable root || root["meta"] is not Hashtable meta)
        {
            return (null, null, null);
        }

        IReadOnlyList<string>? classes = meta["CLASSES"] is IEnumerable names and not string
            ? [.. names.Cast<object?>().Select(n => Convert.ToString(n, CultureInfo.InvariantCulture) ?? string.Empty)]
            : null;
        IReadOnlyList<(byte, byte, byte)>? palette = null;
        if (meta["PALETTE"] is IEnumerable colours and not string)
        {
            palette = [.. colours.Cast<object>().Select(c =>
            {
                var rgb = ((IEnumerable)c).Cast<object>().Select(v => Convert.ToByte(v, CultureInfo.InvariantCulture)).ToArray();
                return rgb.Length == 3 ? (rgb[0], rgb[1], rgb[2]) : throw new FormatException($"a PALETTE entry has {rgb.Length} values, not 3");
            })];
        }

        Dictionary<string, string>? record = null;
        if (meta[MetaKey] is Hashtable own)
        {
            record = own.Cast<DictionaryEntry>().ToDictionary(e => Convert.ToString(e.Key, CultureInfo.InvariantCulture)!, e => Convert.ToString(e.Value, CultureInfo.InvariantCulture) ?? string.Empty);
        }

        return (record, classes, palette);
    }
}
