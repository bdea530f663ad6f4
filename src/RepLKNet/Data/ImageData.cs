using System.Globalization;

namespace RepLKNet.Data;

/// <summary>An 8-bit image, planar (channel, row, column), as the transforms work on it.</summary>
public sealed class ImageU8
{
    /// <summary>Creates an image over <paramref name="pixels"/> (length channels × height × width).</summary>
    public ImageU8(byte[] pixels, int channels, int height, int width)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        if (channels <= 0 || height <= 0 || width <= 0 || pixels.Length != channels * height * width)
        {
            throw new ArgumentException($"an image of {channels}×{height}×{width} needs {channels * height * width} bytes, got {pixels.Length}", nameof(pixels));
        }

        Pixels = pixels;
        Channels = channels;
        Height = height;
        Width = width;
    }

    /// <summary>Creates a blank image.</summary>
    public ImageU8(int channels, int height, int width)
        : this(new byte[channels * height * width], channels, height, width)
    {
    }

    /// <summary>Pixels, planar CHW.</summary>
    public byte[] Pixels { get; }

    /// <summary>Channels (1 grey, 3 RGB).</summary>
    public int Channels { get; }

    /// <summary>Rows.</summary>
    public int Height { get; }

    /// <summary>Columns.</summary>
    public int Width { get; }

    /// <summary>Pixels in one channel plane.</summary>
    public int Plane => Height * Width;

    /// <summary>A plane of channel <paramref name="c"/>.</summary>
    public Span<byte> Channel(int c) => Pixels.AsSpan(c * Plane, Plane);
}

/// <summary>Per-channel mean and standard deviation of images on [0, 1]: x ↦ (x/255 − mean)/std.</summary>
public sealed record Normalization
{
    /// <summary>Creates a normalization (one value per channel).</summary>
    public Normalization(IReadOnlyList<double> mean, IReadOnlyList<double> std)
    {
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(std);
        if (mean.Count == 0 || mean.Count != std.Count || std.Any(s => !(s > 0)))
        {
            throw new ArgumentException("mean and std need the same number (≥ 1) of values and a positive std");
        }

        Mean = [.. mean];
        Std = [.. std];
    }

    /// <summary>ImageNet's (timm's IMAGENET_DEFAULT_MEAN/STD): the official recipe's.</summary>
    public static Normalization ImageNet { get; } = new([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

    /// <summary>Means.</summary>
    public IReadOnlyList<double> Mean { get; }

    /// <summary>Standard deviations.</summary>
    public IReadOnlyList<double> Std { get; }

    /// <summary>The values for an image of <paramref name="channels"/> channels (a single value serves every channel).</summary>
    public (double Mean, double Std) At(int channel, int channels)
    {
        if (Mean.Count == 1)
        {
            return (Mean[0], Std[0]);
        }

        if (Mean.Count != channels)
        {
            throw new ArgumentException($"a normalization of {Mean.Count} channels cannot serve {channels}-channel images");
        }

        return (Mean[channel], Std[channel]);
    }

    /// <summary>The mean as an 8-bit fill colour per channel (what geometric augmentations fill with).</summary>
    public byte[] FillColour(int channels) =>
        [.. Enumerable.Range(0, channels).Select(c => (byte)Math.Clamp(Math.Round(255 * At(c, channels).Mean), 0, 255))];

    /// <inheritdoc />
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"mean ({string.Join(", ", Mean.Select(m => m.ToString("0.####", CultureInfo.InvariantCulture)))}) std ({string.Join(", ", Std.Select(m => m.ToString("0.####", CultureInfo.InvariantCulture)))})");
}

/// <summary>A labelled image collection read by index (in memory or from files).</summary>
public interface IImageDataset
{
    /// <summary>Number of images.</summary>
    long Count { get; }

    /// <summary>Class names in label order.</summary>
    IReadOnlyList<string> ClassNames { get; }

    /// <summary>Channels of every image (1 or 3).</summary>
    int Channels { get; }

    /// <summary>The native size when every image has the same one (in-memory sets), otherwise null.</summary>
    (int Height, int Width)? FixedSize { get; }

    /// <summary>The label of image <paramref name="index"/>.</summary>
    long Label(long index);

    /// <summary>Where image <paramref name="index"/> comes from (a file path, or "name[index]").</summary>
    string Describe(long index);

    /// <summary>Reads image <paramref name="index"/>; safe to call from several threads.</summary>
    /// <exception cref="DatasetException">The image cannot be read or decoded.</exception>
    ImageU8 Read(long index);
}
