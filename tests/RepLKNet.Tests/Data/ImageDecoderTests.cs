using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using RepLKNet.Data;
using RepLKNet.Tests.Support;
using SkiaSharp;

namespace RepLKNet.Tests.Data;

/// <summary>
/// Decoding follows PIL's <c>Image.convert('RGB')</c>, which the official pipeline applies to every image: alpha is dropped and
/// the stored colours are kept. The PNGs are written here byte by byte (no encoder in between), so the stored colours are known.
/// </summary>
public sealed class ImageDecoderTests
{
    /// <summary>A minimal PNG writer: 8-bit samples, filter 0 (none) on every row, one IDAT, no gamma or colour chunks.</summary>
    private static void WritePng(string path, int width, int height, byte colourType, byte[] samples, byte[]? palette = null, byte[]? transparency = null)
    {
        int perPixel = colourType switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, 6 => 4, _ => throw new ArgumentOutOfRangeException(nameof(colourType)) };
        Assert.Equal(width * height * perPixel, samples.Length);
        using var file = new MemoryStream();
        file.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        header[8] = 8;
        header[9] = colourType;
        Chunk(file, "IHDR", header);
        if (palette is not null)
        {
            Chunk(file, "PLTE", palette);
        }

        if (transparency is not null)
        {
            Chunk(file, "tRNS", transparency);
        }

        using (var raw = new MemoryStream())
        {
            using (var z = new ZLibStream(raw, CompressionLevel.Optimal, leaveOpen: true))
            {
                for (int y = 0; y < height; y++)
                {
                    z.WriteByte(0);
                    z.Write(samples, y * width * perPixel, width * perPixel);
                }
            }

            Chunk(file, "IDAT", raw.ToArray());
        }

        Chunk(file, "IEND", []);
        File.WriteAllBytes(path, file.ToArray());
    }

    private static void Chunk(Stream stream, string type, byte[] data)
    {
        var length = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(length, data.Length);
        stream.Write(length);
        byte[] typeAndData = [.. Encoding.ASCII.GetBytes(type), .. data];
        stream.Write(typeAndData);
        var crc = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(typeAndData));
        stream.Write(crc);
    }

    /// <summary>The PNG/zlib CRC-32 (polynomial 0xEDB88320), bit by bit.</summary>
    private static uint Crc32(byte[] bytes)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in bytes)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
            }
        }

        return ~crc;
    }

    private static (byte R, byte G, byte B) Rgb(ImageU8 image, int i) => (image.Pixels[i], image.Pixels[image.Plane + i], image.Pixels[2 * image.Plane + i]);

    [Fact]
    public void RGBA_pixels_keep_their_stored_colours_whatever_the_alpha()
    {
        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        byte[] alphas = [0, 1, 128, 200, 255];
        int width = alphas.Length * 4, height = 3;
        var samples = new byte[width * height * 4];
        rng.NextBytes(samples);
        for (int i = 0; i < width * height; i++)
        {
            samples[4 * i + 3] = alphas[i % alphas.Length]; // every alpha in every row, with fresh random colours
        }

        string path = dir.File("rgba.png");
        WritePng(path, width, height, 6, samples);
        var rgb = ImageDecoder.Decode(path, 3);
        var grey = ImageDecoder.Decode(path, 1);
        Assert.Equal((3, height, width), (rgb.Channels, rgb.Height, rgb.Width));
        for (int i = 0; i < width * height; i++)
        {
            byte r = samples[4 * i], g = samples[4 * i + 1], b = samples[4 * i + 2];
            Assert.True((r, g, b) == Rgb(rgb, i), $"pixel {i} (alpha {samples[4 * i + 3]}): stored ({r}, {g}, {b}), decoded {Rgb(rgb, i)}");
            Assert.Equal((byte)((r * 299 + g * 587 + b * 114 + 500) / 1000), grey.Pixels[i]);
        }
    }

    [Fact]
    public void Grey_plus_alpha_replicates_the_grey_and_palette_transparency_keeps_the_palette_colours()
    {
        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        // 'LA': grey and alpha; the alphas 0, 128 and 255 in turn.
        int width = 9, height = 2;
        var la = new byte[width * height * 2];
        rng.NextBytes(la);
        for (int i = 0; i < width * height; i++)
        {
            la[2 * i + 1] = (byte)(i % 3 == 0 ? 0 : i % 3 == 1 ? 128 : 255);
        }

        string laPath = dir.File("la.png");
        WritePng(laPath, width, height, 4, la);
        var rgb = ImageDecoder.Decode(laPath, 3);
        var grey = ImageDecoder.Decode(laPath, 1);
        for (int i = 0; i < width * height; i++)
        {
            byte l = la[2 * i];
            Assert.True((l, l, l) == Rgb(rgb, i), $"LA pixel {i} (alpha {la[2 * i + 1]}): stored grey {l}, decoded {Rgb(rgb, i)}");
            Assert.Equal(l, grey.Pixels[i]);
        }

        // 'P' with a tRNS chunk: four random palette colours with alphas 0, 128, 255 and (no entry) 255.
        var palette = new byte[12];
        rng.NextBytes(palette);
        var indexes = Enumerable.Range(0, 12).Select(i => (byte)(i % 4)).ToArray();
        string pPath = dir.File("p.png");
        WritePng(pPath, 6, 2, 3, indexes, palette, [0, 128, 255]);
        var fromPalette = ImageDecoder.Decode(pPath, 3);
        for (int i = 0; i < indexes.Length; i++)
        {
            int k = indexes[i];
            Assert.Equal((palette[3 * k], palette[3 * k + 1], palette[3 * k + 2]), Rgb(fromPalette, i));
        }
    }

    [Fact]
    public void JPEG_WebP_BMP_and_GIF_still_decode()
    {
        using var dir = new TempDirectory();
        using var bitmap = new SKBitmap(12, 10, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        bitmap.Erase(new SKColor(200, 100, 50));
        foreach (var (format, name, tolerance) in new[] { (SKEncodedImageFormat.Jpeg, "a.jpg", 6), (SKEncodedImageFormat.Webp, "a.webp", 6), (SKEncodedImageFormat.Png, "a.png", 0) })
        {
            using var data = bitmap.Encode(format, 100);
            Assert.True(data is not null, $"SkiaSharp cannot encode {format}");
            File.WriteAllBytes(dir.File(name), data.ToArray());
            var image = ImageDecoder.Decode(dir.File(name), 3);
            Assert.Equal((3, 10, 12), (image.Channels, image.Height, image.Width));
            var (r, g, b) = Rgb(image, 57);
            Assert.True(Math.Abs(r - 200) <= tolerance && Math.Abs(g - 100) <= tolerance && Math.Abs(b - 50) <= tolerance, $"{name}: ({r}, {g}, {b})");
        }

        // A 2×1 24-bit BMP (bottom-up rows padded to 4 bytes, BGR): pixels (10, 20, 30) and (40, 50, 60).
        byte[] bmp =
        [
            (byte)'B', (byte)'M', 62, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0,
            40, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            30, 20, 10, 60, 50, 40, 0, 0,
        ];
        File.WriteAllBytes(dir.File("a.bmp"), bmp);
        var fromBmp = ImageDecoder.Decode(dir.File("a.bmp"), 3);
        Assert.Equal(((byte)10, (byte)20, (byte)30), Rgb(fromBmp, 0));
        Assert.Equal(((byte)40, (byte)50, (byte)60), Rgb(fromBmp, 1));

        // A 4×1 GIF89a written by Pillow 9.4 (Image 'P', palette (200, 10, 20), (30, 220, 40), (50, 60, 230), (10, 20, 30),
        // pixels 0 1 2 3, transparency=3); Pillow's convert('RGB') gives the four palette colours.
        File.WriteAllBytes(dir.File("a.gif"), Convert.FromBase64String("R0lGODlhBAABAIEAAMgKFB7cKDI85goUHiH5BAEAAAMALAAAAAAEAAEAAAgHAAEEEDAgIAA7"));
        var fromGif = ImageDecoder.Decode(dir.File("a.gif"), 3);
        Assert.Equal(((byte)200, (byte)10, (byte)20), Rgb(fromGif, 0));
        Assert.Equal(((byte)30, (byte)220, (byte)40), Rgb(fromGif, 1));
        Assert.Equal(((byte)50, (byte)60, (byte)230), Rgb(fromGif, 2));
        // The known exception (ImageDecoder's documentation): SkiaSharp's GIF decoder gives the transparent index no colour.
        Assert.Equal(((byte)0, (byte)0, (byte)0), Rgb(fromGif, 3));
    }
}
