using System.Buffers.Binary;
using System.IO.Compression;
using System.IO.Hashing;
using System.Text;
using RepLKNet.Data;

namespace RepLKNet.Segmentation;

/// <summary>
/// Reads and writes class-index masks as PNG files, keeping the stored sample values: a greyscale PNG's grey values and
/// a palette PNG's palette indices (what PIL's <c>Image.open(mask)</c> in mode 'L' or 'P' and MMSeg's
/// <c>LoadAnnotations</c> with the 'pillow' backend give). SkiaSharp (4.x) has no indexed colour type and would expand a
/// palette PNG into its colours, so the file is decoded here: the chunks are parsed, the IDAT stream inflated with
/// <see cref="ZLibStream"/>, and the five PNG row filters undone (PNG specification, sections 9 and 11).
/// </summary>
public static class IndexPng
{
    private static readonly byte[] Signature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>
    /// Reads the class indices of the mask <paramref name="path"/>: a (1, height, width) image whose bytes are the stored
    /// values. Accepts greyscale (colour type 0) PNGs of bit depth 1 or 8 and palette (colour type 3) PNGs of bit depth 1, 2, 4 or 8, interlaced or not (2- and 4-bit greyscale is refused: PIL scales it to grey levels).
    /// </summary>
    /// <param name="path">A PNG file.</param>
    /// <returns>A one-channel (1, H, W) image of raw indices (0–255).</returns>
    /// <exception cref="DatasetException">
    /// The file is missing, not a PNG, damaged (bad CRC, truncated data, unknown filter), or not an index mask (RGB, grey +
    /// alpha, RGBA, or 16-bit samples); the message names the file.
    /// </exception>
    public static ImageU8 Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new DatasetException($"mask '{path}': no such file");
        }

        byte[] file;
        try
        {
            file = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException($"mask '{path}' could not be read: {e.Message}", e);
        }

        try
        {
            return Decode(file, path);
        }
        catch (Exception e) when (e is InvalidDataException or ArgumentOutOfRangeException or IndexOutOfRangeException or OverflowException)
        {
            throw new DatasetException($"mask '{path}' is a damaged PNG: {e.Message}", e);
        }
    }

    /// <summary>
    /// Writes <paramref name="mask"/> (one channel, bytes = class indices) to <paramref name="path"/> as an
    /// 8-bit PNG: greyscale (colour type 0) when <paramref name="palette"/> is null, otherwise a palette PNG (colour type 3)
    /// whose palette entry i is <paramref name="palette"/>[i] (missing entries black), so viewers show the class colours while
    /// the stored values stay the indices.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="mask"/> has more than one channel, or the palette more than 256 entries.</exception>
    public static void Write(string path, ImageU8 mask, IReadOnlyList<(byte R, byte G, byte B)>? palette = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(mask);
        if (mask.Channels != 1)
        {
            throw new ArgumentException($"mask must have one channel, got {mask.Channels}", nameof(mask));
        }

        if (palette is { Count: > 256 })
        {
            throw new ArgumentException($"palette has {palette.Count} entries; a PNG palette holds at most 256", nameof(palette));
        }

        using var stream = new MemoryStream();
        stream.Write(Signature);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, mask.Width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), mask.Height);
        header[8] = 8;
        header[9] = (byte)(palette is null ? 0 : 3);
        WriteChunk(stream, "IHDR", header);
        if (palette is not null)
        {
            // Every index a mask can hold (0–255) gets an entry, so decoders never meet an index outside the palette.
            var plte = new byte[256 * 3];
            for (int i = 0; i < palette.Count; i++)
            {
                (plte[3 * i], plte[3 * i + 1], plte[3 * i + 2]) = palette[i];
            }

            WriteChunk(stream, "PLTE", plte);
        }

        using (var raw = new MemoryStream())
        {
            using (var z = new ZLibStream(raw, CompressionLevel.Fastest, leaveOpen: true))
            {
                for (int y = 0; y < mask.Height; y++)
                {
                    z.WriteByte(0);
                    z.Write(mask.Pixels, y * mask.Width, mask.Width);
                }
            }

            WriteChunk(stream, "IDAT", raw.ToArray());
        }

        WriteChunk(stream, "IEND", []);
        File.WriteAllBytes(path, stream.ToArray());
    }

    private static ImageU8 Decode(byte[] file, string path)
    {
        if (file.Length < Signature.Length + 12 || !file.AsSpan(0, Signature.Length).SequenceEqual(Signature))
        {
            throw new DatasetException($"mask '{path}' is not a PNG file (class-index masks must be greyscale or palette PNGs)");
        }

        int width = 0, height = 0, depth = 0, colourType = -1, interlace = 0;
        using var idat = new MemoryStream();
        int pos = Signature.Length;
        bool end = false;
        while (!end)
        {
            if (pos + 12 > file.Length)
            {
                throw new InvalidDataException("the file ends before its IEND chunk");
            }

            int length = BinaryPrimitives.ReadInt32BigEndian(file.AsSpan(pos));
            if (length < 0 || pos + 12L + length > file.Length)
            {
                throw new InvalidDataException("a chunk runs past the end of the file");
            }

            string type = Encoding.ASCII.GetString(file, pos + 4, 4);
            var data = file.AsSpan(pos + 8, length);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(pos + 8 + length));
            if (Crc32.HashToUInt32(file.AsSpan(pos + 4, length + 4)) != crc)
            {
                throw new InvalidDataException($"the CRC of its {type} chunk does not match");
            }

            switch (type)
            {
                case "IHDR":
                    width = BinaryPrimitives.ReadInt32BigEndian(data);
                    height = BinaryPrimitives.ReadInt32BigEndian(data[4..]);
                    depth = data[8];
                    colourType = data[9];
                    interlace = data[12];
                    break;
                case "IDAT":
                    idat.Write(data);
                    break;
                case "IEND":
                    end = true;
                    break;
            }

            pos += 12 + length;
        }

        if (width <= 0 || height <= 0 || colourType < 0)
        {
            throw new InvalidDataException("it has no valid IHDR chunk");
        }

        if (colourType is not (0 or 3))
        {
            string kind = colourType switch { 2 => "an RGB", 4 => "a grey + alpha", 6 => "an RGBA", _ => $"a colour type {colourType}" };
            throw new DatasetException($"mask '{path}' is {kind} PNG; class-index masks must be 8-bit greyscale or palette PNGs whose values are the class indices");
        }

        if (depth is not (1 or 2 or 4 or 8))
        {
            throw new DatasetException($"mask '{path}' has {depth}-bit samples; class-index masks must have 8 bits (or 1, 2, 4) per sample");
        }

        if (colourType == 0 && depth is 2 or 4)
        {
            // PIL (MMSeg's loader) scales 2- and 4-bit grey samples to 0–255 (×85, ×17), so their values are grey levels,
            // not class indices; refused rather than read differently from MMSeg.
            throw new DatasetException($"mask '{path}' is a {depth}-bit greyscale PNG, which PIL/MMSeg read as scaled grey levels, not class indices; save it as an 8-bit greyscale or a palette PNG");
        }

        idat.Position = 0;
        byte[] raw;
        using (var z = new ZLibStream(idat, CompressionMode.Decompress))
        using (var inflated = new MemoryStream())
        {
            z.CopyTo(inflated);
            raw = inflated.ToArray();
        }

        var mask = new ImageU8(1, height, width);
        if (interlace == 0)
        {
            int used = Unfilter(raw, 0, width, height, depth, mask, 0, 0, 1, 1);
            if (used > raw.Length)
            {
                throw new InvalidDataException("its image data is truncated");
            }
        }
        else
        {
            // Adam7: seven passes, each a reduced image written at (y0 + dy·row, x0 + dx·column).
            ReadOnlySpan<(int X0, int Y0, int Dx, int Dy)> passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)];
            int offset = 0;
            foreach (var (x0, y0, dx, dy) in passes)
            {
                int pw = (width - x0 + dx - 1) / dx, ph = (height - y0 + dy - 1) / dy;
                if (pw <= 0 || ph <= 0)
                {
                    continue;
                }

                offset = Unfilter(raw, offset, pw, ph, depth, mask, x0, y0, dx, dy);
                if (offset > raw.Length)
                {
                    throw new InvalidDataException("its image data is truncated");
                }
            }
        }

        return mask;
    }

    /// <summary>Undoes the row filters of a (width × height) image at <paramref name="offset"/> and scatters its samples; returns the end offset.</summary>
    private static int Unfilter(byte[] raw, int offset, int width, int height, int depth, ImageU8 mask, int x0, int y0, int dx, int dy)
    {
        int stride = (width * depth + 7) / 8;
        int bpp = Math.Max(1, depth / 8); // bytes per complete pixel (1 for every depth here)
        if (offset + (long)(stride + 1) * height > raw.Length)
        {
            throw new InvalidDataException("its image data is truncated");
        }

        var previous = new byte[stride];
        var row = new byte[stride];
        var pixels = mask.Pixels;
        for (int y = 0; y < height; y++)
        {
            int filter = raw[offset];
            Array.Copy(raw, offset + 1, row, 0, stride);
            offset += stride + 1;
            for (int i = 0; i < stride; i++)
            {
                int a = i >= bpp ? row[i - bpp] : 0, b = previous[i], c = i >= bpp ? previous[i - bpp] : 0;
                row[i] = filter switch
                {
                    0 => row[i],
                    1 => (byte)(row[i] + a),
                    2 => (byte)(row[i] + b),
                    3 => (byte)(row[i] + ((a + b) >> 1)),
                    4 => (byte)(row[i] + Paeth(a, b, c)),
                    _ => throw new InvalidDataException($"row filter {filter} is not a PNG filter"),
                };
            }

            int target = (y0 + y * dy) * mask.Width;
            for (int x = 0; x < width; x++)
            {
                int value = depth == 8 ? row[x] : (row[x * depth / 8] >> (8 - depth - x * depth % 8)) & ((1 << depth) - 1);
                pixels[target + x0 + x * dx] = (byte)value;
            }

            (previous, row) = (row, previous);
        }

        return offset;
    }

    private static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    private static void WriteChunk(Stream stream, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        stream.Write(word);
        var typed = new byte[4 + data.Length];
        Encoding.ASCII.GetBytes(type, typed);
        data.CopyTo(typed, 4);
        stream.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32.HashToUInt32(typed));
        stream.Write(word);
    }
}
