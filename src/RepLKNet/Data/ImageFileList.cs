namespace RepLKNet.Data;

/// <summary>
/// An unlabelled, ordered list of image files as an <see cref="IImageDataset"/> (one class, "image", label 0): the images
/// of a folder searched recursively in ordinal path order, for tools that need pictures but no labels (effective
/// receptive fields, calibration).
/// </summary>
public sealed class ImageFileList : IImageDataset
{
    private readonly IReadOnlyList<string> _files;

    /// <summary>The list of <paramref name="files"/>, decoded with <paramref name="channels"/> channels (1 grey, 3 RGB).</summary>
    /// <exception cref="ArgumentException"><paramref name="channels"/> is not 1 or 3.</exception>
    public ImageFileList(IReadOnlyList<string> files, int channels = 3)
    {
        ArgumentNullException.ThrowIfNull(files);
        if (channels is not (1 or 3))
        {
            throw new ArgumentException($"channels must be 1 or 3, got {channels}", nameof(channels));
        }

        _files = files;
        Channels = channels;
    }

    /// <inheritdoc />
    public long Count => _files.Count;

    /// <inheritdoc />
    public IReadOnlyList<string> ClassNames { get; } = ["image"];

    /// <inheritdoc />
    public int Channels { get; }

    /// <inheritdoc />
    public (int Height, int Width)? FixedSize => null;

    /// <summary>
    /// The images under <paramref name="data"/> (searched recursively, sorted ordinally: ImageFolder's order; the
    /// extensions of <see cref="ImageDecoder.Extensions"/>).
    /// </summary>
    /// <exception cref="DatasetException">
    /// <paramref name="data"/> is not a folder or holds no images (<see cref="DatasetException.ParamName"/> <c>data</c>).
    /// </exception>
    public static ImageFileList Open(string data, int channels = 3)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (!Directory.Exists(data))
        {
            throw new DatasetException($"data '{data}': no such folder", nameof(data));
        }

        var files = ImageDecoder.Expand([data]);
        return files.Count > 0
            ? new ImageFileList(files, channels)
            : throw new DatasetException($"data '{data}' holds no images ({string.Join(", ", ImageDecoder.Extensions)})", nameof(data));
    }

    /// <inheritdoc />
    public long Label(long index) => 0;

    /// <inheritdoc />
    public string Describe(long index) => _files[checked((int)index)];

    /// <inheritdoc />
    public ImageU8 Read(long index) => ImageDecoder.Decode(_files[checked((int)index)], Channels);
}
