using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Data;

/// <summary>
/// One split of an in-memory image classification dataset: uint8 images (N, C, H, W) and int64 labels. Reads copy from a
/// managed mirror of the tensors (made on first use), so worker threads never touch libtorch.
/// </summary>
public sealed class ImageTensorDataset : IImageDataset, IDisposable
{
    private readonly Lazy<(byte[] Pixels, long[] Labels)> _mirror;
    private readonly int _channels, _height, _width;

    /// <summary>Creates the dataset; it owns both tensors.</summary>
    public ImageTensorDataset(Tensor images, Tensor labels, IReadOnlyList<string> classNames, string name = "images")
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentNullException.ThrowIfNull(classNames);
        if (images.dim() != 4 || images.dtype != ScalarType.Byte || labels.dim() != 1 || labels.size(0) != images.size(0))
        {
            throw new ArgumentException($"expected uint8 (N, C, H, W) images and N labels, got {images.dtype} {TensorSizes.Text(images)} and {TensorSizes.Text(labels)}");
        }

        Images = images;
        Labels = labels;
        ClassNames = classNames;
        Name = name;
        (_channels, _height, _width) = ((int)images.size(1), (int)images.size(2), (int)images.size(3));
        _mirror = new Lazy<(byte[], long[])>(() =>
        {
            // Held in locals until copied: the loader may run this on a worker thread, outside any dispose scope.
            using var images = Images.contiguous();
            using var labels = Labels.to(int64);
            return (images.data<byte>().ToArray(), labels.data<long>().ToArray());
        });
    }

    /// <summary>Images as uint8, NCHW.</summary>
    public Tensor Images { get; }

    /// <summary>Labels as int64, (N).</summary>
    public Tensor Labels { get; }

    /// <summary>Name used in messages.</summary>
    public string Name { get; }

    /// <inheritdoc />
    public IReadOnlyList<string> ClassNames { get; }

    /// <inheritdoc />
    public long Count => Labels.size(0);

    /// <inheritdoc />
    public int Channels => _channels;

    /// <inheritdoc />
    public (int Height, int Width)? FixedSize => (_height, _width);

    /// <inheritdoc />
    public long Label(long index) => _mirror.Value.Labels[index];

    /// <inheritdoc />
    public string Describe(long index) => $"{Name}[{index}]";

    /// <inheritdoc />
    public ImageU8 Read(long index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Count);
        int size = _channels * _height * _width;
        var pixels = new byte[size];
        Array.Copy(_mirror.Value.Pixels, index * size, pixels, 0, size);
        return new ImageU8(pixels, _channels, _height, _width);
    }

    /// <summary>The first <paramref name="count"/> images (a copy), or this set when it is not larger.</summary>
    public ImageTensorDataset Take(long count) => count >= Count
        ? this
        : new ImageTensorDataset(Images.narrow(0, 0, count).clone(), Labels.narrow(0, 0, count).clone(), ClassNames, Name);

    /// <inheritdoc />
    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}
