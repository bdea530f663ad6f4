using System.Buffers.Binary;
using System.IO.Compression;
using RepLKNet.IO;

namespace RepLKNet.Data;

/// <summary>
/// The IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed): a big-endian magic 0x0000TTDD (type code TT,
/// DD dimensions), DD big-endian int32 sizes, then the data. Only unsigned bytes (type 0x08) are used by these datasets.
/// </summary>
public static class IdxFile
{
    /// <summary>Reads an unsigned-byte IDX file; returns its dimensions and data.</summary>
    /// <exception cref="DatasetException">Missing, truncated, or not an unsigned-byte IDX file (the message names the file).</exception>
    public static (int[] Dimensions, byte[] Data) ReadBytes(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new DatasetException($"'{path}': no such IDX file");
        }

        byte[] raw;
        bool gzip;
        try
        {
            using var file = File.OpenRead(path);
            using var buffer = new MemoryStream();
            gzip = file.Length >= 2 && file.ReadByte() == 0x1f && file.ReadByte() == 0x8b;
            file.Position = 0;
            if (gzip)
            {
                using var inflate = new GZipStream(file, CompressionMode.Decompress);
                inflate.CopyTo(buffer);
            }
            else
            {
                file.CopyTo(buffer);
            }

            raw = buffer.ToArray();
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException)
        {
            throw new DatasetException($"'{path}' is a damaged gzip file: {e.Message}", e);
        }

        if (gzip && raw.Length < 4)
        {
            throw new DatasetException($"'{path}' is a damaged gzip file: it inflates to {raw.Length} bytes");
        }

        if (raw.Length < 4 || raw[0] != 0 || raw[1] != 0)
        {
            throw new DatasetException($"'{path}' is not an IDX file (its first two bytes must be zero)");
        }

        if (raw[2] != 0x08)
        {
            throw new DatasetException($"'{path}' holds IDX type 0x{raw[2]:X2}; only unsigned bytes (0x08) are supported");
        }

        int rank = raw[3];
        if (rank is < 1 or > 4 || raw.Length < 4 + 4 * rank)
        {
            throw new DatasetException($"'{path}' is truncated or corrupt: {rank} dimensions in a {raw.Length}-byte file");
        }

        var dims = new int[rank];
        long count = 1;
        for (int i = 0; i < rank; i++)
        {
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(raw.AsSpan(4 + 4 * i));
            if (dims[i] <= 0)
            {
                throw new DatasetException($"'{path}' is corrupt: dimension {i} is {dims[i]}");
            }

            count *= dims[i];
        }

        int offset = 4 + 4 * rank;
        if (raw.Length - offset != count)
        {
            throw new DatasetException($"'{path}' is truncated or corrupt: dimensions [{string.Join(", ", dims)}] need {count} bytes of data, the file has {raw.Length - offset}");
        }

        return (dims, raw[offset..]);
    }

    /// <summary>Writes an unsigned-byte IDX file (optionally gzip-compressed), e.g. for tests and exports.</summary>
    public static void WriteBytes(string path, int[] dimensions, byte[] data, bool gzip)
    {
        ArgumentNullException.ThrowIfNull(dimensions);
        ArgumentNullException.ThrowIfNull(data);
        var header = new byte[4 + 4 * dimensions.Length];
        header[2] = 0x08;
        header[3] = (byte)dimensions.Length;
        for (int i = 0; i < dimensions.Length; i++)
        {
            BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4 + 4 * i), dimensions[i]);
        }

        AtomicFile.Write(path, stream =>
        {
            if (!gzip)
            {
                stream.Write(header);
                stream.Write(data);
                return;
            }

            using var deflate = new GZipStream(stream, CompressionLevel.Fastest, leaveOpen: true);
            deflate.Write(header);
            deflate.Write(data);
        });
    }
}
