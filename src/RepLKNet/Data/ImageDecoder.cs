using SkiaSharp;

namespace RepLKNet.Data;

/// <summary>Decodes PNG/JPEG/WebP/BMP/GIF files (SkiaSharp) into planar 8-bit images of a given channel count.</summary>
public static class ImageDecoder
{
    /// <summary>File extensions treated as images when a folder is given.</summary>
    public static IReadOnlyList<string> Extensions { get; } = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"];

    /// <summary>
    /// Decodes <paramref name="path"/> at its own size into a planar image of <paramref name="channels"/> channels
    /// (3: RGB; 1: luminance (299 R + 587 G + 114 B) / 1000, rounded), as the official pipeline's PIL
    /// <c>Image.convert('RGB')</c> does: alpha is dropped and the stored colours are kept unchanged, whatever the alpha
    /// (RGBA: R, G, B as stored; grey + alpha ('LA'): the grey replicated; palette with transparency ('P' + tRNS): the palette
    /// colours). The pixels are decoded unpremultiplied (<see cref="SKAlphaType.Unpremul"/>), so SkiaSharp does not scale
    /// the colours of semi-transparent pixels by their alpha. (A GIF's transparent pixels are the exception: SkiaSharp's GIF
    /// decoder gives them no colour, so they come out black, where PIL would give the palette colour.)
    /// </summary>
    /// <param name="path">A PNG, JPEG, WebP, BMP or GIF file.</param>
    /// <param name="channels">1 or 3.</param>
    /// <returns>A planar (channels, height, width) 8-bit image.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="channels"/> is not 1 or 3.</exception>
    /// <exception cref="DatasetException">The file is missing, empty, truncated or not a decodable image.</exception>
    public static ImageU8 Decode(string path, int channels)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (channels is not (1 or 3))
        {
            throw new ArgumentOutOfRangeException(nameof(channels), channels, "1 or 3 channels");
        }

        if (!File.Exists(path))
        {
            throw new DatasetException($"'{path}': no such image");
        }

        SKBitmap? decoded;
        try
        {
            using var codec = SKCodec.Create(path) ?? throw new DatasetException($"'{path}' is not a readable image (PNG, JPEG, WebP, BMP or GIF)");
            var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
            if (info.Width <= 0 || info.Height <= 0)
            {
                throw new DatasetException($"'{path}' has no pixels");
            }

            decoded = new SKBitmap(info);
            var result = codec.GetPixels(info, decoded.GetPixels());
            if (result is not SKCodecResult.Success)
            {
                // A truncated JPEG/PNG decodes partly (IncompleteInput): that is a damaged file, not an image to train on.
                decoded.Dispose();
                throw new DatasetException($"'{path}' could not be decoded ({result})");
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException($"'{path}' could not be read: {e.Message}", e);
        }

        using (decoded)
        {
            int h = decoded.Height, w = decoded.Width, plane = h * w;
            var bytes = decoded.GetPixelSpan();
            var image = new ImageU8(channels, h, w);
            var p = image.Pixels;
            for (int i = 0; i < plane; i++)
            {
                // Alpha (bytes[4 * i + 3]) is dropped, not composited: PIL's convert('RGB') keeps the stored colours.
                int r = bytes[4 * i], g = bytes[4 * i + 1], b = bytes[4 * i + 2];
                if (channels == 1)
                {
                    // PIL's "L" conversion: (R·299 + G·587 + B·114) / 1000, rounded.
                    p[i] = (byte)((r * 299 + g * 587 + b * 114 + 500) / 1000);
                }
                else
                {
                    p[i] = (byte)r;
                    p[plane + i] = (byte)g;
                    p[2 * plane + i] = (byte)b;
                }
            }

            return image;
        }
    }

    /// <summary>Expands folders into their image files (sorted); files are kept as given.</summary>
    public static List<string> Expand(IEnumerable<string> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var files = new List<string>();
        foreach (var path in paths)
        {
            if (Directory.Exists(path))
            {
                files.AddRange(Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
                    .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal));
            }
            else
            {
                files.Add(path);
            }
        }

        return files;
    }
}
