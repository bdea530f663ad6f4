using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using RepLKNet.IO;
using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Checkpoints;

/// <summary>
/// The safetensors format: an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape, data offsets;
/// plus an optional string-to-string <c>__metadata__</c>), then the raw little-endian tensor bytes. Tensor order in the
/// file follows the given state dict. Every inconsistency is reported as a <see cref="CheckpointException"/>.
/// </summary>
public static class SafetensorsFile
{
    private const long MaxHeaderBytes = 100L << 20;

    // Duplicate keys are rejected while parsing (JsonObject would otherwise throw ArgumentException on first access).
    private static readonly JsonDocumentOptions HeaderOptions = new() { AllowDuplicateProperties = false };

    private static readonly (string Name, ScalarType Type, int Size)[] DTypes =
    [
        ("F64", ScalarType.Float64, 8), ("F32", ScalarType.Float32, 4), ("F16", ScalarType.Float16, 2),
        ("BF16", ScalarType.BFloat16, 2), ("I64", ScalarType.Int64, 8), ("I32", ScalarType.Int32, 4),
        ("I16", ScalarType.Int16, 2), ("I8", ScalarType.Int8, 1), ("U8", ScalarType.Byte, 1), ("BOOL", ScalarType.Bool, 1),
    ];

    /// <summary>Whether the file starts like a safetensors file (a plausible header length followed by '{').</summary>
    public static bool LooksLikeSafetensors(ReadOnlySpan<byte> head, long fileLength)
    {
        if (head.Length < 9)
        {
            return false;
        }

        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(head);
        return n >= 2 && n <= (ulong)Math.Max(fileLength - 8, 0) + 1 && head[8] == (byte)'{';
    }

    /// <summary>Writes <paramref name="state"/> with <paramref name="metadata"/> atomically to <paramref name="path"/>.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> state, IReadOnlyDictionary<string, string>? metadata)
    {
        ArgumentNullException.ThrowIfNull(state);
        var entries = state.ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata)
            {
                meta[k] = v;
            }

            header["__metadata__"] = meta;
        }

        long offset = 0;
        foreach (var (key, tensor) in entries)
        {
            var dtype = DTypes.FirstOrDefault(d => d.Type == tensor.dtype);
            if (dtype.Name is null)
            {
                throw new CheckpointException($"'{path}': tensor '{key}' has dtype {tensor.dtype}, which safetensors cannot store");
            }

            long bytes = tensor.numel() * dtype.Size;
            header[key] = new JsonObject
            {
                ["dtype"] = dtype.Name,
                ["shape"] = new JsonArray([.. TensorSizes.Of(tensor).Select(s => (JsonNode)s)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }

        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padding = (8 - json.Length % 8) % 8;
        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)(json.Length + padding));
            stream.Write(length);
            stream.Write(json);
            for (int i = 0; i < padding; i++)
            {
                stream.WriteByte((byte)' ');
            }

            foreach (var (_, tensor) in entries)
            {
                using var cpu = tensor.detach().cpu().contiguous();
                stream.Write(cpu.bytes);
            }
        });
    }

    /// <summary>Reads only the tensor names of the header, in header order (no tensor data).</summary>
    /// <exception cref="CheckpointException">The file is truncated or its header is not a safetensors header.</exception>
    public static List<string> ReadKeys(string path) => [.. ReadHeader(path).Select(kv => kv.Key).Where(k => k != "__metadata__")];

    /// <summary>Reads only the <c>__metadata__</c> entries of the header (no tensor data).</summary>
    /// <exception cref="CheckpointException">The file is truncated or its header is not a safetensors header.</exception>
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        var metadata = new Dictionary<string, string>();
        if (ReadHeader(path)["__metadata__"] is JsonObject meta)
        {
            foreach (var (mk, mv) in meta)
            {
                metadata[mk] = mv is JsonValue v && v.TryGetValue(out string? s) ? s : mv?.ToJsonString() ?? string.Empty;
            }
        }

        return metadata;
    }

    private static JsonObject ReadHeader(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = stream.Length;
        Span<byte> prefix = stackalloc byte[8];
        if (length < 8)
        {
            throw new CheckpointException($"'{path}' is truncated: {length} bytes, shorter than a safetensors header");
        }

        stream.ReadExactly(prefix);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > (ulong)(length - 8) || headerLength > MaxHeaderBytes)
        {
            throw new CheckpointException($"'{path}' is truncated or not a safetensors file: its header claims {headerLength} bytes");
        }

        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        try
        {
            return JsonNode.Parse(headerBytes, documentOptions: HeaderOptions) as JsonObject
                ?? throw new CheckpointException($"'{path}': the safetensors header is not a JSON object");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new CheckpointException($"'{path}' is corrupt: its safetensors header is not valid JSON ({e.Message})", e);
        }
    }

    /// <summary>Reads every tensor (CPU) in file order, and the metadata.</summary>
    public static (Dictionary<string, Tensor> State, Dictionary<string, string> Metadata) Read(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        long length = stream.Length;
        if (length < 8)
        {
            throw new CheckpointException($"'{path}' is truncated: {length} bytes, shorter than a safetensors header");
        }

        Span<byte> prefix = stackalloc byte[8];
        stream.ReadExactly(prefix);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > (ulong)(length - 8) || headerLength > MaxHeaderBytes)
        {
            throw new CheckpointException($"'{path}' is truncated or not a safetensors file: its header claims {headerLength} bytes " +
                $"but the file has {length - 8} after the length field");
        }

        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        if (!System.Text.Unicode.Utf8.IsValid(headerBytes))
        {
            // JsonNode transcodes strings lazily: invalid UTF-8 would surface later as an InvalidOperationException.
            throw new CheckpointException($"'{path}' is corrupt: its safetensors header is not valid UTF-8");
        }

        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes, documentOptions: HeaderOptions) as JsonObject ?? throw new CheckpointException($"'{path}': the safetensors header is not a JSON object");
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"'{path}' is corrupt: its safetensors header is not valid JSON ({e.Message})", e);
        }

        long dataStart = 8 + (long)headerLength;
        long dataLength = length - dataStart;
        var metadata = new Dictionary<string, string>();
        var layout = new List<(string Key, ScalarType Type, long[] Shape, long Begin, long End)>();
        foreach (var (key, node) in header)
        {
            if (key == "__metadata__")
            {
                if (node is JsonObject meta)
                {
                    foreach (var (mk, mv) in meta)
                    {
                        metadata[mk] = mv is JsonValue v && v.TryGetValue(out string? s) ? s : mv?.ToJsonString() ?? string.Empty;
                    }
                }

                continue;
            }

            layout.Add(ParseEntry(path, key, node));
        }

        // Offsets must tile the data buffer without gaps or overlaps and cover it exactly, as the safetensors library requires.
        long expected = 0;
        foreach (var entry in layout.OrderBy(e => e.Begin))
        {
            if (entry.Begin != expected)
            {
                throw new CheckpointException($"'{path}' is corrupt: tensor '{entry.Key}' starts at byte {entry.Begin} of the data, expected {expected}");
            }

            expected = entry.End;
        }

        if (expected > dataLength)
        {
            throw new CheckpointException($"'{path}' is truncated: its tensors need {expected} bytes of data but only {dataLength} are present");
        }

        if (expected < dataLength)
        {
            throw new CheckpointException($"'{path}' is corrupt: its tensors cover {expected} bytes of data but {dataLength} follow the header");
        }

        var state = new Dictionary<string, Tensor>();
        try
        {
            foreach (var (key, type, shape, begin, end) in layout)
            {
                var tensor = empty(shape, dtype: type);
                stream.Position = dataStart + begin;
                stream.ReadExactly(tensor.bytes);
                state[key] = tensor;
            }
        }
        catch (EndOfStreamException e)
        {
            foreach (var t in state.Values)
            {
                t.Dispose();
            }

            throw new CheckpointException($"'{path}' is truncated: the data ends early", e);
        }

        return (state, metadata);
    }

    private static (string Key, ScalarType Type, long[] Shape, long Begin, long End) ParseEntry(string path, string key, JsonNode? node)
    {
        string Bad(string what) => $"'{path}' is corrupt: tensor '{key}' {what}";
        if (node is not JsonObject o || o["dtype"] is not JsonValue dtypeNode || !dtypeNode.TryGetValue(out string? dtypeName) ||
            o["shape"] is not JsonArray shapeNode || o["data_offsets"] is not JsonArray offsets || offsets.Count != 2)
        {
            throw new CheckpointException(Bad("lacks dtype, shape or data_offsets"));
        }

        var dtype = DTypes.FirstOrDefault(d => d.Name == dtypeName);
        if (dtype.Name is null)
        {
            throw new CheckpointException(Bad($"has unsupported dtype '{dtypeName}'"));
        }

        var shape = new long[shapeNode.Count];
        long numel = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shapeNode[i] is not JsonValue v || !v.TryGetValue(out long dim) || dim < 0)
            {
                throw new CheckpointException(Bad("has an invalid shape"));
            }

            shape[i] = dim;
        }

        long bytes;
        try
        {
            // Checked: an unchecked product can wrap to a small byte count that matches the offsets (e.g. [2^62] of F32 → 0).
            foreach (long dim in shape)
            {
                numel = checked(numel * dim);
            }

            bytes = checked(numel * dtype.Size);
        }
        catch (OverflowException)
        {
            throw new CheckpointException(Bad($"has shape [{string.Join(", ", shape)}], whose size in bytes overflows"));
        }

        if (offsets[0] is not JsonValue b || !b.TryGetValue(out long begin) || offsets[1] is not JsonValue e ||
            !e.TryGetValue(out long end) || begin < 0 || end < begin)
        {
            throw new CheckpointException(Bad("has invalid data_offsets"));
        }

        if (end - begin != bytes)
        {
            throw new CheckpointException(Bad($"covers {end - begin} bytes, but shape [{string.Join(", ", shape)}] of {dtype.Name} needs {bytes}"));
        }

        return (key, dtype.Type, shape, begin, end);
    }
}
