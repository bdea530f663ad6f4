using System.IO.Compression;
using System.Text;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Support;

/// <summary>
/// Writes <c>torch.save</c> zip archives byte by byte (pickle protocol 2, as PyTorch does), with full control over each
/// tensor's storage, storage offset, size and stride — the layouts PyTorch itself writes for channels_last, transposed
/// and shared-storage tensors.
/// </summary>
internal sealed class PthFile
{
    private readonly List<float[]> _storages = [];
    private readonly List<(string Key, int Storage, long Offset, long[] Size, long[] Stride)> _tensors = [];

    /// <summary>Adds a float32 storage and returns its key.</summary>
    public int AddStorage(float[] values)
    {
        _storages.Add(values);
        return _storages.Count - 1;
    }

    /// <summary>Adds a view of <paramref name="storage"/> under <paramref name="key"/> (offset, size, stride in elements).</summary>
    public PthFile AddView(string key, int storage, long offset, long[] size, long[] stride)
    {
        _tensors.Add((key, storage, offset, size, stride));
        return this;
    }

    /// <summary>Adds <paramref name="tensor"/> (float32) with its own storage, as PyTorch saves it after <c>.to(memory_format=…)</c>.</summary>
    public PthFile AddTensor(string key, Tensor tensor, bool channelsLast = false)
    {
        if (channelsLast && tensor.dim() == 4)
        {
            long n = tensor.shape[0], c = tensor.shape[1], h = tensor.shape[2], w = tensor.shape[3];
            using var nhwc = tensor.permute(0, 2, 3, 1).contiguous();
            return AddView(key, AddStorage(nhwc.data<float>().ToArray()), 0, [n, c, h, w], [h * w * c, 1, w * c, c]);
        }

        using var dense = tensor.contiguous();
        long[] stride = new long[tensor.dim()];
        for (int i = stride.Length - 1, s = 1; i >= 0; s *= (int)tensor.shape[i], i--)
        {
            stride[i] = s;
        }

        return AddView(key, AddStorage(dense.data<float>().ToArray()), 0, tensor.shape, stride);
    }

    /// <summary>Writes the archive; <paramref name="container"/> nests the state dict under that key (e.g. "model").</summary>
    public void Write(string path, string? container = null)
    {
        using var zip = new ZipArchive(File.Create(path), ZipArchiveMode.Create);
        using (var pkl = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open())
        {
            var p = new MemoryStream();
            p.Write([0x80, 0x02]); // PROTO 2
            if (container is not null)
            {
                p.WriteByte((byte)'}');
                Unicode(p, container);
            }

            p.WriteByte((byte)'}'); // EMPTY_DICT
            p.WriteByte((byte)'(');
            foreach (var (key, storage, offset, size, stride) in _tensors)
            {
                Unicode(p, key);
                Global(p, "torch._utils", "_rebuild_tensor_v2");
                p.WriteByte((byte)'(');
                p.WriteByte((byte)'(');
                Unicode(p, "storage");
                Global(p, "torch", "FloatStorage");
                Unicode(p, storage.ToString(System.Globalization.CultureInfo.InvariantCulture));
                Unicode(p, "cpu");
                Int(p, _storages[storage].Length);
                p.WriteByte((byte)'t');
                p.WriteByte((byte)'Q'); // BINPERSID
                Int(p, offset);
                Tuple(p, size);
                Tuple(p, stride);
                p.WriteByte(0x89); // NEWFALSE: requires_grad
                Global(p, "collections", "OrderedDict");
                p.WriteByte((byte)')');
                p.WriteByte((byte)'R');
                p.WriteByte((byte)'t');
                p.WriteByte((byte)'R');
            }

            p.WriteByte((byte)'u'); // SETITEMS
            if (container is not null)
            {
                p.WriteByte((byte)'s'); // SETITEM
            }

            p.WriteByte((byte)'.');
            pkl.Write(p.ToArray());
        }

        for (int i = 0; i < _storages.Count; i++)
        {
            using var data = zip.CreateEntry($"archive/data/{i}", CompressionLevel.NoCompression).Open();
            foreach (float v in _storages[i])
            {
                data.Write(BitConverter.GetBytes(v));
            }
        }

        using var version = zip.CreateEntry("archive/version", CompressionLevel.NoCompression).Open();
        version.Write("3\n"u8);
    }

    private static void Unicode(Stream s, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        s.WriteByte((byte)'X');
        s.Write(BitConverter.GetBytes(bytes.Length));
        s.Write(bytes);
    }

    private static void Global(Stream s, string module, string name)
    {
        s.WriteByte((byte)'c');
        s.Write(Encoding.ASCII.GetBytes($"{module}\n{name}\n"));
    }

    private static void Int(Stream s, long value)
    {
        s.WriteByte((byte)'J'); // BININT (signed 32-bit)
        s.Write(BitConverter.GetBytes(checked((int)value)));
    }

    private static void Tuple(Stream s, long[] values)
    {
        s.WriteByte((byte)'(');
        foreach (long v in values)
        {
            Int(s, v);
        }

        s.WriteByte((byte)'t');
    }
}
