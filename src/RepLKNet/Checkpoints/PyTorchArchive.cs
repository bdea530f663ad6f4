using System.Collections;
using System.Globalization;
using System.IO.Compression;
using Razorvine.Pickle;
using Razorvine.Pickle.Objects;
using static TorchSharp.torch;

namespace RepLKNet.Checkpoints;

/// <summary>
/// A <c>torch.save</c> zip archive (PyTorch 1.6+): the pickled object tree of <c>data.pkl</c> with every tensor left as a
/// <see cref="PickledTensor"/> until <see cref="Materialize"/> reads it. Unpickling builds only dicts, lists, tuples,
/// numbers, strings and these records (Razorvine's unpickler never runs code; unknown classes become inert
/// <see cref="ClassDict"/> objects).
/// </summary>
/// <remarks>
/// Tensors follow <c>torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, …)</c> exactly as
/// <c>torch.load</c> does: a view with as_strided semantics on its storage (<c>data/&lt;key&gt;</c> in the archive), so
/// channels_last weights, transposed weights and several views of one storage load with their recorded values.
/// Memory is bounded by the archive: a storage is allocated only when its entry holds at least its bytes, a stored
/// entry is no larger than the file, and a deflated one claims at most deflate's maximal ratio (1032:1).
/// </remarks>
internal sealed class PyTorchArchive : IDisposable
{
    private const int MaxDeflateRatio = 1032;
    private const long MaxPickleBytes = 256L << 20;
    private static readonly Lock ConstructorGate = new();
    private readonly ZipArchive _zip;
    private readonly string _path;
    private readonly long _fileLength;
    private readonly string _prefix;
    private readonly Dictionary<string, PickledStorage> _storages = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _loadedStorages = new(StringComparer.Ordinal);

    private PyTorchArchive(string path, ZipArchive zip, long fileLength, string prefix)
    {
        _path = path;
        _zip = zip;
        _fileLength = fileLength;
        _prefix = prefix;
    }

    /// <summary>The unpickled <c>data.pkl</c> (a dict for state dicts and checkpoint containers).</summary>
    public object? Root { get; private set; }

    /// <summary>Opens <paramref name="path"/> and unpickles its <c>data.pkl</c>; tensor data is read later, on demand.</summary>
    /// <exception cref="InvalidDataException">The archive or its pickle is damaged.</exception>
    public static PyTorchArchive Open(string path)
    {
        var stream = File.OpenRead(path);
        ZipArchive zip;
        try
        {
            zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }

        try
        {
            var pickle = zip.Entries.Where(e => e.FullName.EndsWith("data.pkl", StringComparison.Ordinal))
                .OrderBy(e => e.FullName.Length).FirstOrDefault()
                ?? throw new InvalidDataException("the zip archive has no data.pkl");
            string prefix = pickle.FullName[..^"data.pkl".Length];
            if (zip.GetEntry(prefix + "version") is null && zip.GetEntry(prefix + ".data/version") is null)
            {
                // torch.load refuses an archive without its format version record: the archive is incomplete.
                throw new InvalidDataException($"the zip archive has no '{prefix}version' record");
            }

            var archive = new PyTorchArchive(path, zip, stream.Length, prefix);
            byte[] pickleBytes = archive.ReadPickle(pickle);
            PickleScan.Validate(pickleBytes);
            lock (ConstructorGate)
            {
                // Razorvine keeps constructors in one process-wide table (TorchSharp.PyBridge registers its own, eager
                // ones for the same names): ours are put back before every load and held for its duration.
                Unpickler.registerConstructor("torch._utils", "_rebuild_tensor", new RebuildTensor());
                Unpickler.registerConstructor("torch._utils", "_rebuild_tensor_v2", new RebuildTensor());
                Unpickler.registerConstructor("torch._utils", "_rebuild_parameter", new RebuildParameter());
                Unpickler.registerConstructor("collections", "OrderedDict", new OrderedDictConstructor());
                using var unpickler = new StorageUnpickler(archive);
                archive.Root = unpickler.loads(pickleBytes);
            }

            return archive;
        }
        catch
        {
            zip.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The dense values of <paramref name="tensor"/> (named <paramref name="key"/> in errors): its storage viewed with the
    /// recorded offset, size and stride. The result keeps that layout when it is a plain contiguous view, else it is a
    /// contiguous copy (a channels_last or transposed weight loads with the same values, in PyTorch's default layout).
    /// </summary>
    /// <exception cref="CheckpointException">The view reads outside its storage, or the storage is missing or short.</exception>
    public Tensor Materialize(PickledTensor tensor, string key)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        string shape = $"size [{string.Join(", ", tensor.Size)}], stride [{string.Join(", ", tensor.Stride)}], storage offset {tensor.Offset}";
        if (tensor.Size.Length != tensor.Stride.Length || tensor.Size.Any(s => s < 0) || tensor.Stride.Any(s => s < 0) || tensor.Offset < 0)
        {
            throw new CheckpointException($"'{_path}': tensor '{key}' has an invalid layout ({shape})");
        }

        long required;
        try
        {
            // Elements the view touches: offset + Σ (size_i − 1)·stride_i + 1, or just the offset for an empty view.
            required = tensor.Size.Contains(0) ? tensor.Offset
                : checked(tensor.Offset + tensor.Size.Zip(tensor.Stride, (n, s) => checked((n - 1) * s)).Sum() + 1);
        }
        catch (OverflowException)
        {
            required = long.MaxValue;
        }

        if (required > tensor.Storage.Numel)
        {
            throw new CheckpointException($"'{_path}': tensor '{key}' ({shape}) reads outside its storage 'data/{tensor.Storage.Key}' " +
                $"of {tensor.Storage.Numel} elements");
        }

        var storage = LoadStorage(tensor.Storage, key);
        var view = storage.as_strided(tensor.Size, tensor.Stride, tensor.Offset);
        if (view.is_contiguous())
        {
            return view;
        }

        using (view)
        {
            return view.contiguous();
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var storage in _loadedStorages.Values)
        {
            storage.Dispose();
        }

        _zip.Dispose();
    }

    private Tensor LoadStorage(PickledStorage storage, string key)
    {
        if (_loadedStorages.TryGetValue(storage.Key, out var loaded))
        {
            return loaded;
        }

        string name = $"{_prefix}data/{storage.Key}";
        var entry = _zip.GetEntry(name)
            ?? throw new CheckpointException($"'{_path}': tensor '{key}' refers to storage '{name}', which the archive does not contain");
        long elementSize = ElementSize(storage.DType);
        long bytes = storage.Numel > long.MaxValue / elementSize ? long.MaxValue : storage.Numel * elementSize;
        bool stored = entry.CompressedLength >= entry.Length;
        if (bytes > entry.Length || entry.CompressedLength > _fileLength ||
            entry.Length > (stored ? _fileLength : entry.CompressedLength * MaxDeflateRatio))
        {
            throw new CheckpointException($"'{_path}': storage '{name}' of tensor '{key}' should hold {bytes} bytes but the archive " +
                $"entry has {entry.Length} (truncated or corrupt?)");
        }

        var tensor = empty(storage.Numel, dtype: storage.DType);
        try
        {
            using var data = new CrcStream(entry.Open());
            tensor.ReadBytesFromStream(data, 1 << 20);
            data.CheckToEnd(entry.Crc32);
        }
        catch (Exception e) when (e is IOException or InvalidDataException)
        {
            tensor.Dispose();
            throw new CheckpointException($"'{_path}': storage '{name}' of tensor '{key}' cannot be read (truncated or corrupt?): {e.Message}", e);
        }

        _loadedStorages[storage.Key] = tensor;
        return tensor;
    }

    /// <summary>
    /// The bytes of <c>data.pkl</c>, CRC-checked. It holds the object tree only (tensor data lives in the storages), so it
    /// is small; an entry claiming more than <see cref="MaxPickleBytes"/> or more than its compressed size allows is refused
    /// before anything is allocated.
    /// </summary>
    private byte[] ReadPickle(ZipArchiveEntry entry)
    {
        bool stored = entry.CompressedLength >= entry.Length;
        if (entry.Length > MaxPickleBytes || entry.CompressedLength > _fileLength ||
            entry.Length > (stored ? _fileLength : entry.CompressedLength * MaxDeflateRatio))
        {
            throw new InvalidDataException($"data.pkl claims {entry.Length} bytes (at most {MaxPickleBytes} and what its {entry.CompressedLength} compressed bytes can hold)");
        }

        var bytes = new byte[entry.Length];
        using var data = new CrcStream(entry.Open());
        data.ReadExactly(bytes);
        data.CheckToEnd(entry.Crc32);
        return bytes;
    }

    private static long ElementSize(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 or ScalarType.Int64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.ComplexFloat64 => 16,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    private static ScalarType StorageType(string name) => name switch
    {
        "DoubleStorage" => ScalarType.Float64,
        "FloatStorage" => ScalarType.Float32,
        "HalfStorage" => ScalarType.Float16,
        "BFloat16Storage" => ScalarType.BFloat16,
        "LongStorage" => ScalarType.Int64,
        "IntStorage" => ScalarType.Int32,
        "ShortStorage" => ScalarType.Int16,
        "CharStorage" => ScalarType.Int8,
        "ByteStorage" => ScalarType.Byte,
        "BoolStorage" => ScalarType.Bool,
        "ComplexFloatStorage" => ScalarType.ComplexFloat32,
        "ComplexDoubleStorage" => ScalarType.ComplexFloat64,
        _ => throw new InvalidDataException($"unsupported tensor storage type '{name}'"),
    };

    private static long[] Longs(object value, string what) => value is object[] items
        ? items.Select(i => Convert.ToInt64(i, CultureInfo.InvariantCulture)).ToArray()
        : throw new InvalidDataException($"tensor {what} is not a tuple");

    /// <summary>Resolves <c>('storage', type, key, location, numel)</c> persistent ids to one record per key.</summary>
    private sealed class StorageUnpickler(PyTorchArchive archive) : Unpickler
    {
        protected override object persistentLoad(object pid)
        {
            if (pid is not object[] { Length: >= 5 } id || id[0] as string != "storage" || id[1] is not ClassDictConstructor type)
            {
                throw new InvalidDataException("unknown persistent id in data.pkl (not a tensor storage)");
            }

            string key = Convert.ToString(id[2], CultureInfo.InvariantCulture) ?? string.Empty;
            if (!archive._storages.TryGetValue(key, out var storage))
            {
                storage = new PickledStorage(key, StorageType(type.name), Convert.ToInt64(id[4], CultureInfo.InvariantCulture));
                archive._storages[key] = storage;
            }

            return storage;
        }
    }

    private sealed class RebuildTensor : IObjectConstructor
    {
        public object construct(object[] args)
        {
            if (args.Length < 4 || args[0] is not PickledStorage storage)
            {
                throw new InvalidDataException("malformed torch._utils._rebuild_tensor call in data.pkl");
            }

            return new PickledTensor(storage, Convert.ToInt64(args[1], CultureInfo.InvariantCulture), Longs(args[2], "size"), Longs(args[3], "stride"));
        }
    }

    private sealed class RebuildParameter : IObjectConstructor
    {
        public object construct(object[] args) => throw new InvalidDataException(
            "it holds nn.Parameter objects (a pickled model or parameter list), not a state dict; save model.state_dict() instead");
    }

    private sealed class OrderedDictConstructor : IObjectConstructor
    {
        public object construct(object[] args) => new PickledOrderedDict();
    }

    /// <summary><c>collections.OrderedDict</c>: items arrive through SETITEMS; the BUILD state (<c>_metadata</c>) is kept apart.</summary>
    private sealed class PickledOrderedDict : Hashtable
    {
        public Hashtable? State { get; private set; }

        [System.Diagnostics.CodeAnalysis.SuppressMessage("Style", "IDE1006:Naming Styles", Justification = "Python's name, called by the unpickler.")]
        [System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1707:Identifiers should not contain underscores", Justification = "Python's name, called by the unpickler.")]
        public void __setstate__(Hashtable state) => State = state;
    }
}

/// <summary>
/// A read-only view of a zip entry that computes the zip CRC-32 of what is read. .NET's <see cref="ZipArchive"/> does not
/// check entry CRCs, so without it a flipped bit in a storage or in <c>data.pkl</c> loads silently as other values.
/// </summary>
internal sealed class CrcStream(Stream inner) : Stream
{
    // The zip format's CRC-32 (IEEE 802.3), from System.IO.Hashing: vectorized, maintained by the .NET team.
    private readonly System.IO.Hashing.Crc32 _crc = new();

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>
    /// Reads what is left and compares the CRC of the whole entry with <paramref name="recorded"/>. A recorded 0 is not
    /// checked: <c>torch.save</c> writes 0 when CRCs are switched off (<c>torch.serialization.set_crc32_options(False)</c>),
    /// and <c>torch.load</c> reads such files.
    /// </summary>
    /// <exception cref="InvalidDataException">The CRC differs.</exception>
    public void CheckToEnd(uint recorded)
    {
        Span<byte> rest = stackalloc byte[4096];
        while (Read(rest) > 0)
        {
        }

        uint computed = _crc.GetCurrentHashAsUInt32();
        if (recorded != 0 && computed != recorded)
        {
            throw new InvalidDataException($"CRC-32 mismatch (recorded {recorded:x8}, computed {computed:x8}): the entry is corrupt");
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        _crc.Append(buffer[..n]);
        return n;
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}

/// <summary>One storage of a <c>torch.save</c> archive: <c>data/&lt;Key&gt;</c>, <paramref name="Numel"/> elements of <paramref name="DType"/>.</summary>
internal sealed record PickledStorage(string Key, ScalarType DType, long Numel);

/// <summary>A tensor as recorded in the pickle: a view of <paramref name="Storage"/> (offset, size, stride in elements).</summary>
internal sealed record PickledTensor(PickledStorage Storage, long Offset, long[] Size, long[] Stride);
