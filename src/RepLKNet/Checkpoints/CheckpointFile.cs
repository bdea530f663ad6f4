using System.Collections;
using System.Collections.Specialized;
using System.Globalization;
using System.Text.Json;
using RepLKNet.IO;
using RepLKNet.Models;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace RepLKNet.Checkpoints;

/// <summary>On-disk checkpoint formats.</summary>
public enum CheckpointFormat
{
    /// <summary>PyTorch <c>torch.save</c> zip archive (raw state dict, training container or MMSeg/MMDet checkpoint).</summary>
    PyTorch,

    /// <summary>Plain safetensors.</summary>
    Safetensors,

    /// <summary>The project's format: safetensors with RepLKNet metadata (architecture, form, classes, training state).</summary>
    RepLKNet,
}

/// <summary>What the project's format records beside the tensors.</summary>
/// <param name="Arch">Variant name or configuration name.</param>
/// <param name="Config">The architecture.</param>
/// <param name="Form">Train, deploy or fused.</param>
/// <param name="ClassNames">Names of the classifier's classes, if known.</param>
/// <param name="TrainingState">Path of the training-state file (optimizer, schedule, epoch) this checkpoint belongs to, if any.</param>
/// <param name="Preprocessing">How inputs were prepared in training (what predict/eval must do), if known.</param>
public sealed record CheckpointMetadata(string Arch, RepLKNetConfig Config, ModelForm Form, IReadOnlyList<string>? ClassNames = null,
    string? TrainingState = null, Preprocessing? Preprocessing = null)
{
    /// <summary>The value of the <c>format</c> metadata key that marks the project's files.</summary>
    public const string FormatTag = "replknet";

    /// <summary>The safetensors <c>__metadata__</c> entries (all strings, as the format requires).</summary>
    public Dictionary<string, string> ToDictionary()
    {
        var d = new Dictionary<string, string>
        {
            ["format"] = FormatTag,
            ["format_version"] = "1",
            ["arch"] = Arch,
            ["config"] = Config.ToJson(),
            ["form"] = Form.Name(),
        };
        if (ClassNames is not null)
        {
            d["class_names"] = JsonSerializer.Serialize(ClassNames);
        }

        if (TrainingState is not null)
        {
            d["training_state"] = TrainingState;
        }

        if (Preprocessing is not null)
        {
            d["preprocessing"] = JsonSerializer.Serialize(Preprocessing, Preprocessing.JsonOptions);
        }

        return d;
    }

    /// <summary>Reads the project's metadata, or null when the entries are not the project's.</summary>
    public static CheckpointMetadata? FromDictionary(IReadOnlyDictionary<string, string> metadata, string path)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        if (!metadata.TryGetValue("format", out var tag) || tag != FormatTag)
        {
            return null;
        }

        try
        {
            var config = RepLKNetConfig.FromJson(metadata["config"], $"'{path}' (metadata 'config')");
            var form = ModelForms.Parse(metadata["form"]);
            var classes = metadata.TryGetValue("class_names", out var c) ? JsonSerializer.Deserialize<string[]>(c) : null;
            var preprocessing = metadata.TryGetValue("preprocessing", out var pre) ? JsonSerializer.Deserialize<Preprocessing>(pre, Preprocessing.JsonOptions) : null;
            return new CheckpointMetadata(metadata.GetValueOrDefault("arch", "custom"), config, form, classes,
                metadata.GetValueOrDefault("training_state"), preprocessing);
        }
        catch (Exception e) when (e is KeyNotFoundException or JsonException or FormatException or ConfigException)
        {
            throw new CheckpointException($"'{path}' has damaged RepLKNet metadata: {e.Message}", e);
        }
    }
}

/// <summary>The eval-time input preparation a checkpoint was trained with.</summary>
/// <param name="InputSize">Square input side.</param>
/// <param name="Mean">Per-channel mean on [0, 1].</param>
/// <param name="Std">Per-channel std on [0, 1].</param>
/// <param name="CropPct">Centre-crop fraction of the eval transform.</param>
public sealed record Preprocessing(int InputSize, double[] Mean, double[] Std, double CropPct)
{
    internal static readonly JsonSerializerOptions JsonOptions = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The recorded mean and std as a normalization.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public Data.Normalization Normalization => new(Mean, Std);
}

/// <summary>A state dict read from a file, with where it came from.</summary>
/// <param name="Path">The file.</param>
/// <param name="Format">Its format.</param>
/// <param name="State">Tensors by key (CPU), in file order where the format has one.</param>
/// <param name="Metadata">The project's metadata, when present.</param>
/// <param name="Source">Which part of the file the state came from ("state dict", "'model'", "'model_ema'", "'state_dict' (backbone.)").</param>
public sealed record Checkpoint(string Path, CheckpointFormat Format, Dictionary<string, Tensor> State, CheckpointMetadata? Metadata, string Source)
    : IDisposable
{
    /// <summary>The form the keys belong to.</summary>
    public ModelForm Form => Metadata?.Form ?? ModelForms.Detect(State.Keys);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var tensor in State.Values)
        {
            tensor.Dispose();
        }
    }
}

/// <summary>Reads and writes checkpoints in every supported format; all writes are atomic.</summary>
public static class CheckpointFile
{
    /// <summary>
    /// Reads the state dict in <paramref name="path"/>: PyTorch zip files (raw, <c>{'model', 'model_ema', …}</c> training
    /// containers — <paramref name="ema"/> picks <c>model_ema</c> — or MMSeg/MMDet <c>{'state_dict'}</c> with the
    /// <c>backbone.</c> prefix removed), safetensors, and the project's format. Keys of every format go through
    /// <see cref="StateDictKeys.Normalize{T}"/> (a data-parallel <c>module.</c> prefix is removed). PyTorch tensors are
    /// rebuilt as <c>torch.load</c> does, from their storage with the recorded offset, size and stride (channels_last,
    /// transposed and shared-storage views included); the tensors returned are CPU tensors.
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing, empty, truncated, corrupt or not a checkpoint, or a
    /// tensor's recorded layout reads outside its storage (the message names the file and the key); or <paramref name="ema"/>
    /// asks for EMA weights the file does not hold (<see cref="CheckpointException.ParamName"/> <c>ema</c>).</exception>
    public static Checkpoint Read(string path, bool ema = false) => Read(path, ema, wholeModel: false);

    /// <summary>
    /// As <see cref="Read(string, bool)"/>; with <paramref name="wholeModel"/> an MMSeg/MMDet <c>{'state_dict'}</c> keeps
    /// every key (<c>backbone.*</c>, <c>decode_head.*</c>, <c>auxiliary_head.*</c>) instead of only the backbone's.
    /// </summary>
    /// <exception cref="CheckpointException">As <see cref="Read(string, bool)"/>.</exception>
    public static Checkpoint Read(string path, bool ema, bool wholeModel)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new CheckpointException($"'{path}': no such checkpoint file");
        }

        long length = new FileInfo(path).Length;
        if (length == 0)
        {
            throw new CheckpointException($"'{path}' is empty (0 bytes): not a checkpoint");
        }

        var head = new byte[16];
        using (var probe = File.OpenRead(path))
        {
            _ = probe.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }

        if (head[0] == (byte)'P' && head[1] == (byte)'K')
        {
            return ReadPyTorch(path, ema, wholeModel);
        }

        if (SafetensorsFile.LooksLikeSafetensors(head, length))
        {
            if (ema)
            {
                throw new CheckpointException($"ema applies to PyTorch training checkpoints; '{path}' is a safetensors file, which holds one state dict", nameof(ema));
            }

            var (raw, metadata) = SafetensorsFile.Read(path);
            var ours = CheckpointMetadata.FromDictionary(metadata, path);
            var state = StateDictKeys.Normalize(raw, keepPrefix: null).ToDictionary(kv => kv.Key.Normalized, kv => kv.Value);
            return new Checkpoint(path, ours is null ? CheckpointFormat.Safetensors : CheckpointFormat.RepLKNet, state, ours, "state dict");
        }

        if (head[0] == 0x80 && head[1] is >= 2 and <= 5)
        {
            throw new CheckpointException($"'{path}' is a legacy (pre-1.6, non-zip) torch.save file; re-save it with a current PyTorch " +
                "(torch.save(torch.load(f), g)) or convert it to safetensors");
        }

        throw new CheckpointException($"'{path}' is not a checkpoint: it is neither a PyTorch zip archive nor a safetensors file " +
            $"(first bytes {Convert.ToHexString(head, 0, (int)Math.Min(8, length))})");
    }

    /// <summary>Writes the project's format (safetensors + metadata) atomically.</summary>
    public static void WriteRepLKNet(string path, IEnumerable<KeyValuePair<string, Tensor>> state, CheckpointMetadata metadata)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        SafetensorsFile.Write(path, state, metadata.ToDictionary());
    }

    /// <summary>Writes a PyTorch <c>.pth</c> state dict (loadable with <c>torch.load</c>) atomically.</summary>
    public static void WritePyTorch(string path, IEnumerable<KeyValuePair<string, Tensor>> state) => WritePyTorch(path, state, stateDict => stateDict);

    /// <summary>
    /// Writes a <c>torch.save</c> archive atomically whose pickled root is <paramref name="wrap"/> of the state dict (an
    /// ordered dict of contiguous CPU copies, in <paramref name="state"/>'s order): e.g. MMSeg's
    /// <c>{'meta': …, 'state_dict': …}</c>. The root may hold dicts, lists, strings and numbers besides.
    /// </summary>
    internal static void WritePyTorch(string path, IEnumerable<KeyValuePair<string, Tensor>> state, Func<OrderedDictionary, IDictionary> wrap)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(wrap);
        var ordered = new OrderedDictionary();
        var copies = new List<Tensor>();
        try
        {
            foreach (var (key, tensor) in state)
            {
                var cpu = tensor.detach().cpu().contiguous();
                copies.Add(cpu);
                ordered[key] = cpu;
            }

            var root = wrap(ordered);
            AtomicFile.Write(path, stream => PyTorchPickler.PickleStateDict(stream, root, leaveOpen: true));
        }
        finally
        {
            foreach (var t in copies)
            {
                t.Dispose();
            }
        }
    }

    /// <summary>Writes by extension: <c>.pth</c>/<c>.pt</c>/<c>.bin</c> as PyTorch, anything else in the project's format.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> state, CheckpointMetadata metadata)
    {
        ArgumentNullException.ThrowIfNull(path);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is ".pth" or ".pt" or ".bin")
        {
            WritePyTorch(path, state);
        }
        else
        {
            WriteRepLKNet(path, state, metadata);
        }
    }

    /// <summary>
    /// The state-dict keys of <paramref name="path"/> as <see cref="Read(string, bool, bool)"/> with <c>wholeModel</c> would
    /// return them, read without loading any tensor data (the pickle or the safetensors header only).
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing, damaged or not a checkpoint.</exception>
    public static IReadOnlyList<string> ReadKeys(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new CheckpointException($"'{path}': no such checkpoint file");
        }

        var head = new byte[16];
        long length = new FileInfo(path).Length;
        using (var probe = File.OpenRead(path))
        {
            _ = probe.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }

        if (head[0] == (byte)'P' && head[1] == (byte)'K')
        {
            PyTorchArchive archive;
            try
            {
                archive = PyTorchArchive.Open(path);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new CheckpointException($"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt?): {e.Message}", e);
            }

            using (archive)
            {
                if (archive.Root is not Hashtable root)
                {
                    throw new CheckpointException($"'{path}' is a PyTorch file but holds a {archive.Root?.GetType().Name ?? "None"}, not a state dict or checkpoint dict");
                }

                var (table, _) = Unwrap(root, path, ema: false);
                var keys = table.Cast<DictionaryEntry>().Where(e => e.Value is PickledTensor)
                    .Select(e => KeyValuePair.Create(Convert.ToString(e.Key, CultureInfo.InvariantCulture) ?? string.Empty, 0));
                return [.. StateDictKeys.Normalize(keys, keepPrefix: null).Select(k => k.Key.Normalized)];
            }
        }

        if (SafetensorsFile.LooksLikeSafetensors(head, length))
        {
            return [.. StateDictKeys.Normalize(SafetensorsFile.ReadKeys(path).Select(k => KeyValuePair.Create(k, 0)), keepPrefix: null).Select(k => k.Key.Normalized)];
        }

        // Anything else: Read gives the precise error.
        using var checkpoint = Read(path, ema: false, wholeModel: true);
        return [.. checkpoint.State.Keys];
    }

    private static Checkpoint ReadPyTorch(string path, bool ema, bool wholeModel)
    {
        PyTorchArchive archive;
        try
        {
            archive = PyTorchArchive.Open(path);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new CheckpointException($"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt?): {e.Message}", e);
        }

        using (archive)
        {
            if (archive.Root is not Hashtable root)
            {
                throw new CheckpointException($"'{path}' is a PyTorch file but holds a {archive.Root?.GetType().Name ?? "None"}, not a state dict or checkpoint dict");
            }

            var (table, source) = Unwrap(root, path, ema);
            string? keep = !wholeModel && source.Contains("backbone.", StringComparison.Ordinal) ? "backbone." : null;
            var entries = new List<KeyValuePair<string, PickledTensor>>();
            foreach (DictionaryEntry entry in table)
            {
                if (entry.Value is PickledTensor tensor)
                {
                    entries.Add(new(Convert.ToString(entry.Key, CultureInfo.InvariantCulture) ?? string.Empty, tensor));
                }
            }

            var state = new Dictionary<string, Tensor>();
            try
            {
                foreach (var (key, tensor) in StateDictKeys.Normalize(entries, keep))
                {
                    state[key.Normalized] = archive.Materialize(tensor, key.Original);
                }
            }
            catch
            {
                foreach (var t in state.Values)
                {
                    t.Dispose();
                }

                throw;
            }

            if (state.Count == 0)
            {
                throw new CheckpointException($"'{path}' holds no tensors in {source}");
            }

            return new Checkpoint(path, CheckpointFormat.PyTorch, state, null, source);
        }
    }

    private static (Hashtable Table, string Source) Unwrap(Hashtable root, string path, bool ema)
    {
        bool isStateDict = root.Count > 0 && root.Values.Cast<object?>().All(v => v is PickledTensor);
        string keys = string.Join(", ", root.Keys.Cast<object>().Select(k => $"'{k}'").Take(12));
        if (ema)
        {
            return root["model_ema"] is Hashtable emaTable
                ? (emaTable, "'model_ema'")
                : throw new CheckpointException($"ema: '{path}' has no 'model_ema' entry (top-level keys: {keys})", nameof(ema));
        }

        if (isStateDict)
        {
            return (root, "state dict");
        }

        foreach (var name in new[] { "model", "module" })
        {
            if (root[name] is Hashtable table)
            {
                return (table, $"'{name}'");
            }
        }

        if (root["state_dict"] is Hashtable mm)
        {
            bool backbone = mm.Keys.Cast<object>().Any(k => k.ToString()!.StartsWith("backbone.", StringComparison.Ordinal));
            return (mm, backbone ? "'state_dict' (backbone.)" : "'state_dict'");
        }

        throw new CheckpointException($"'{path}' is a PyTorch file but not a state dict or a known checkpoint container " +
            $"(no 'model', 'module' or 'state_dict' entry; top-level keys: {keys})");
    }
}
