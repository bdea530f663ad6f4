namespace RepLKNet.Data.Transforms;

/// <summary>
/// Pixel operations on <see cref="ImageU8"/> that follow PIL's definitions (what timm's transforms call): antialiased
/// bicubic resampling, affine warps, and the point/enhance operations RandAugment draws from.
/// </summary>
public static class ImageOps
{
    /// <summary>
    /// Resamples the box (<paramref name="x0"/>, <paramref name="y0"/>, <paramref name="boxWidth"/>, <paramref name="boxHeight"/>)
    /// of <paramref name="source"/> to <paramref name="outWidth"/>×<paramref name="outHeight"/> with PIL's bicubic filter
    /// (a = −0.5), widened by the scale factor when shrinking (antialiasing), separable.
    /// </summary>
    public static ImageU8 ResizeBicubic(ImageU8 source, double x0, double y0, double boxWidth, double boxHeight, int outHeight, int outWidth)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outHeight);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outWidth);
        var (xStart, xWeights, xTaps) = Coefficients(source.Width, x0, boxWidth, outWidth);
        var (yStart, yWeights, yTaps) = Coefficients(source.Height, y0, boxHeight, outHeight);
        var result = new ImageU8(source.Channels, outHeight, outWidth);
        var rows = new float[source.Height * outWidth];
        for (int c = 0; c < source.Channels; c++)
        {
            ReadOnlySpan<byte> src = source.Channel(c);
            for (int y = 0; y < source.Height; y++)
            {
                var line = src.Slice(y * source.Width, source.Width);
                for (int x = 0; x < outWidth; x++)
                {
                    double sum = 0;
                    int s = xStart[x];
                    for (int t = 0; t < xTaps[x]; t++)
                    {
                        sum += xWeights[x][t] * line[s + t];
                    }

                    rows[y * outWidth + x] = (float)sum;
                }
            }

            var dst = result.Channel(c);
            for (int y = 0; y < outHeight; y++)
            {
                int s = yStart[y];
                for (int x = 0; x < outWidth; x++)
                {
                    double sum = 0;
                    for (int t = 0; t < yTaps[y]; t++)
                    {
                        sum += yWeights[y][t] * rows[(s + t) * outWidth + x];
                    }

                    dst[y * outWidth + x] = ToByte(sum);
                }
            }
        }

        return result;
    }

    /// <summary>Resizes the whole image (bicubic, antialiased).</summary>
    public static ImageU8 Resize(ImageU8 source, int outHeight, int outWidth) =>
        source is { Height: var h, Width: var w } && h == outHeight && w == outWidth
            ? source
            : ResizeBicubic(source, 0, 0, source.Width, source.Height, outHeight, outWidth);

    /// <summary>Mirrors the image left to right.</summary>
    public static ImageU8 FlipHorizontal(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var result = new ImageU8(image.Channels, image.Height, image.Width);
        for (int c = 0; c < image.Channels; c++)
        {
            var src = image.Channel(c);
            var dst = result.Channel(c);
            for (int y = 0; y < image.Height; y++)
            {
                var a = src.Slice(y * image.Width, image.Width);
                var b = dst.Slice(y * image.Width, image.Width);
                for (int x = 0; x < image.Width; x++)
                {
                    b[x] = a[image.Width - 1 - x];
                }
            }
        }

        return result;
    }

    /// <summary>
    /// PIL's <c>Image.transform(AFFINE, (a, b, c, d, e, f))</c>: output pixel (x, y) samples the input at
    /// (a·x + b·y + c, d·x + e·y + f) (pixel centres), bilinearly; points outside the input take <paramref name="fill"/>.
    /// </summary>
    public static ImageU8 Affine(ImageU8 image, double a, double b, double c, double d, double e, double f, ReadOnlySpan<byte> fill)
    {
        ArgumentNullException.ThrowIfNull(image);
        int h = image.Height, w = image.Width;
        var result = new ImageU8(image.Channels, h, w);
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                double u = a * (x + 0.5) + b * (y + 0.5) + c, v = d * (x + 0.5) + e * (y + 0.5) + f;
                bool outside = u < 0 || u >= w || v < 0 || v >= h;
                double fx = u - 0.5, fy = v - 0.5;
                int x0 = (int)Math.Floor(fx), y0 = (int)Math.Floor(fy);
                double wx = fx - x0, wy = fy - y0;
                int xa = Math.Clamp(x0, 0, w - 1), xb = Math.Clamp(x0 + 1, 0, w - 1);
                int ya = Math.Clamp(y0, 0, h - 1), yb = Math.Clamp(y0 + 1, 0, h - 1);
                for (int ch = 0; ch < image.Channels; ch++)
                {
                    var src = image.Channel(ch);
                    if (outside)
                    {
                        result.Channel(ch)[y * w + x] = fill[ch];
                        continue;
                    }

                    double top = src[ya * w + xa] * (1 - wx) + src[ya * w + xb] * wx;
                    double bottom = src[yb * w + xa] * (1 - wx) + src[yb * w + xb] * wx;
                    result.Channel(ch)[y * w + x] = ToByte(top * (1 - wy) + bottom * wy);
                }
            }
        }

        return result;
    }

    /// <summary>Rotates counter-clockwise by <paramref name="degrees"/> about the centre (PIL's <c>rotate</c>, size kept).</summary>
    public static ImageU8 Rotate(ImageU8 image, double degrees, ReadOnlySpan<byte> fill)
    {
        ArgumentNullException.ThrowIfNull(image);
        double t = degrees * Math.PI / 180, cos = Math.Cos(t), sin = Math.Sin(t);
        double cx = image.Width / 2.0, cy = image.Height / 2.0;
        // Inverse map (y down): input = centre + (cos·dx − sin·dy, sin·dx + cos·dy), which turns the picture counter-clockwise.
        return Affine(image, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, fill);
    }

    /// <summary>Applies a 256-entry table to every channel.</summary>
    public static ImageU8 Lookup(ImageU8 image, Func<int, int, int> table)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(table);
        var result = new ImageU8(image.Channels, image.Height, image.Width);
        Span<byte> lut = stackalloc byte[256];
        for (int c = 0; c < image.Channels; c++)
        {
            for (int i = 0; i < 256; i++)
            {
                lut[i] = (byte)Math.Clamp(table(c, i), 0, 255);
            }

            var src = image.Channel(c);
            var dst = result.Channel(c);
            for (int i = 0; i < src.Length; i++)
            {
                dst[i] = lut[src[i]];
            }
        }

        return result;
    }

    /// <summary>PIL's <c>ImageOps.autocontrast</c> (no cutoff): each channel stretched to 0–255.</summary>
    public static ImageU8 AutoContrast(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var (lo, hi) = (new int[image.Channels], new int[image.Channels]);
        for (int c = 0; c < image.Channels; c++)
        {
            var hist = Histogram(image.Channel(c));
            lo[c] = Array.FindIndex(hist, v => v > 0);
            hi[c] = Array.FindLastIndex(hist, v => v > 0);
        }

        return Lookup(image, (c, i) =>
        {
            if (hi[c] <= lo[c])
            {
                return i;
            }

            return (i - lo[c]) * 255 / (hi[c] - lo[c]);
        });
    }

    /// <summary>PIL's <c>ImageOps.equalize</c>: per-channel histogram equalization.</summary>
    public static ImageU8 Equalize(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var luts = new int[image.Channels][];
        for (int c = 0; c < image.Channels; c++)
        {
            var hist = Histogram(image.Channel(c));
            var nonzero = hist.Where(v => v > 0).ToList();
            var lut = Enumerable.Range(0, 256).ToArray();
            if (nonzero.Count > 1)
            {
                int step = (nonzero.Sum() - nonzero[^1]) / 255;
                if (step > 0)
                {
                    int n = step / 2;
                    for (int i = 0; i < 256; i++)
                    {
                        lut[i] = n / step;
                        n += hist[i];
                    }
                }
            }

            luts[c] = lut;
        }

        return Lookup(image, (c, i) => luts[c][i]);
    }

    /// <summary>PIL's <c>ImageEnhance</c> blend: degenerate + factor·(image − degenerate).</summary>
    public static ImageU8 Blend(ImageU8 degenerate, ImageU8 image, double factor)
    {
        ArgumentNullException.ThrowIfNull(degenerate);
        ArgumentNullException.ThrowIfNull(image);
        var result = new ImageU8(image.Channels, image.Height, image.Width);
        for (int i = 0; i < image.Pixels.Length; i++)
        {
            result.Pixels[i] = ToByte(degenerate.Pixels[i] + factor * (image.Pixels[i] - degenerate.Pixels[i]));
        }

        return result;
    }

    /// <summary>Luminance (PIL "L": (299 R + 587 G + 114 B)/1000) repeated over the image's channels.</summary>
    public static ImageU8 Grey(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image.Channels == 1)
        {
            return new ImageU8((byte[])image.Pixels.Clone(), 1, image.Height, image.Width);
        }

        var result = new ImageU8(image.Channels, image.Height, image.Width);
        int plane = image.Plane;
        for (int i = 0; i < plane; i++)
        {
            byte l = (byte)((image.Pixels[i] * 299 + image.Pixels[plane + i] * 587 + image.Pixels[2 * plane + i] * 114 + 500) / 1000);
            for (int c = 0; c < image.Channels; c++)
            {
                result.Pixels[c * plane + i] = l;
            }
        }

        return result;
    }

    /// <summary>PIL's <c>ImageFilter.SMOOTH</c> (3×3, centre 5, others 1, /13), border pixels kept.</summary>
    public static ImageU8 Smooth(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var result = new ImageU8((byte[])image.Pixels.Clone(), image.Channels, image.Height, image.Width);
        int h = image.Height, w = image.Width;
        for (int c = 0; c < image.Channels; c++)
        {
            var src = image.Channel(c);
            var dst = result.Channel(c);
            for (int y = 1; y < h - 1; y++)
            {
                for (int x = 1; x < w - 1; x++)
                {
                    int sum = 4 * src[y * w + x];
                    for (int dy = -1; dy <= 1; dy++)
                    {
                        for (int dx = -1; dx <= 1; dx++)
                        {
                            sum += src[(y + dy) * w + x + dx];
                        }
                    }

                    dst[y * w + x] = ToByte(sum / 13.0);
                }
            }
        }

        return result;
    }

    /// <summary>Mean luminance rounded (PIL's Contrast enhancer's grey level).</summary>
    public static int MeanLuminance(ImageU8 image)
    {
        var grey = Grey(image);
        long sum = 0;
        foreach (byte b in grey.Channel(0))
        {
            sum += b;
        }

        return (int)(sum / (double)grey.Plane + 0.5);
    }

    /// <summary>Rounds and clamps to 0–255.</summary>
    public static byte ToByte(double v) => v <= 0 ? (byte)0 : v >= 255 ? (byte)255 : (byte)(v + 0.5);

    private static int[] Histogram(ReadOnlySpan<byte> plane)
    {
        var hist = new int[256];
        foreach (byte b in plane)
        {
            hist[b]++;
        }

        return hist;
    }

    private static (int[] Start, double[][] Weights, int[] Taps) Coefficients(int inSize, double offset, double boxSize, int outSize)
    {
        double scale = boxSize / outSize;
        double filterScale = Math.Max(scale, 1.0);
        double support = 2.0 * filterScale;
        var start = new int[outSize];
        var taps = new int[outSize];
        var weights = new double[outSize][];
        for (int o = 0; o < outSize; o++)
        {
            double centre = offset + (o + 0.5) * scale;
            int min = Math.Max((int)Math.Floor(centre - support + 0.5), 0);
            int max = Math.Min((int)Math.Floor(centre + support + 0.5), inSize);
            if (max <= min)
            {
                // The box lies outside the image (cannot happen for valid crops): take the nearest edge pixel.
                min = Math.Clamp((int)centre, 0, inSize - 1);
                max = min + 1;
            }

            var w = new double[max - min];
            double total = 0;
            for (int i = 0; i < w.Length; i++)
            {
                w[i] = Cubic((i + min - centre + 0.5) / filterScale);
                total += w[i];
            }

            for (int i = 0; i < w.Length; i++)
            {
                w[i] = total != 0 ? w[i] / total : 1.0 / w.Length;
            }

            start[o] = min;
            taps[o] = w.Length;
            weights[o] = w;
        }

        return (start, weights, taps);
    }

    private static double Cubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        return x < 1 ? ((a + 2) * x - (a + 3)) * x * x + 1 : x < 2 ? (((x - 5) * x + 8) * x - 4) * a : 0;
    }
}
