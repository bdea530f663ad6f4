using RepLKNet.Data;
using SkiaSharp;

namespace RepLKNet.Segmentation;

/// <summary>Writes planar 8-bit RGB images (<see cref="ImageU8"/>) as PNG or JPEG files (SkiaSharp).</summary>
public static class RgbImageFile
{
    /// <summary>
    /// Encodes <paramref name="image"/> (3, H, W) into <paramref name="path"/>: JPEG for <c>.jpg</c>/<c>.jpeg</c> (at
    /// <paramref name="quality"/>), PNG otherwise (lossless, opaque).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="image"/> does not have 3 channels, or <paramref name="quality"/> is outside 1–100.</exception>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public static void Write(string path, ImageU8 image, int quality = 95)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(image);
        if (image.Channels != 3)
        {
            throw new ArgumentException($"image must have 3 channels (RGB), got {image.Channels}", nameof(image));
        }

        if (quality is < 1 or > 100)
        {
            throw new ArgumentException($"quality must be in 1–100, got {quality}", nameof(quality));
        }

        string ext = Path.GetExtension(path).ToLowerInvariant();
        var format = ext is ".jpg" or ".jpeg" ? SKEncodedImageFormat.Jpeg : SKEncodedImageFormat.Png;
        using var bitmap = new SKBitmap(new SKImageInfo(image.Width, image.Height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        var span = bitmap.GetPixelSpan();
        int plane = image.Plane;
        var p = image.Pixels;
        for (int i = 0; i < plane; i++)
        {
            span[4 * i] = p[i];
            span[4 * i + 1] = p[plane + i];
            span[4 * i + 2] = p[2 * plane + i];
            span[4 * i + 3] = 255;
        }

        using var data = bitmap.Encode(format, quality) ?? throw new IOException($"'{path}': SkiaSharp could not encode the image");
        File.WriteAllBytes(path, data.ToArray());
    }
}
