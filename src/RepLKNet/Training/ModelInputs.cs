using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>The dtype a model's inputs take: its first floating-point parameter's (float32 unless trained in float64).</summary>
public static class ModelInputs
{
    /// <summary>
    /// The floating-point dtype of <paramref name="model"/>'s parameters (<see cref="ScalarType.Float32"/> when it has none):
    /// batches, made in float32 by the loaders, are cast to it (<c>model.double()</c> in PyTorch needs the same of its inputs).
    /// </summary>
    public static ScalarType FloatType(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        foreach (var (_, p) in model.named_parameters())
        {
            if (p.is_floating_point())
            {
                return p.dtype;
            }
        }

        return ScalarType.Float32;
    }

    /// <summary>
    /// A batch of <paramref name="count"/> loader images (N·C·S·S floats, as <c>LoadedBatch.Images</c>) as an (N, C, S, S)
    /// tensor of <paramref name="dtype"/> on <paramref name="device"/>. The floats are copied once into memory libtorch
    /// allocates: TorchSharp's <c>tensor(float[], dims)</c> clones the array on the managed heap (a large-object allocation
    /// per batch) and pins the clone for the tensor's life.
    /// </summary>
    /// <param name="images">At least N·C·S·S floats, image after image.</param>
    /// <param name="count">N.</param>
    /// <param name="channels">C.</param>
    /// <param name="size">S.</param>
    /// <param name="dtype">The model's input type (<see cref="FloatType"/>).</param>
    /// <param name="device">Where the model runs.</param>
    /// <exception cref="ArgumentNullException"><paramref name="images"/> or <paramref name="device"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A size is negative, or <paramref name="images"/> is shorter than N·C·S·S.</exception>
    public static Tensor Batch(float[] images, int count, int channels, int size, ScalarType dtype, Device device) =>
        Batch(images, count, channels, size, dtype, device, CopyChunk);

    /// <summary>Floats copied per span: TorchSharp's <c>Tensor.bytes</c> is a span, so at most <see cref="int.MaxValue"/> bytes.</summary>
    internal const long CopyChunk = 1L << 28;

    /// <summary><see cref="Batch(float[], int, int, int, ScalarType, Device)"/> copying <paramref name="chunk"/> floats at a time (tests pass small ones).</summary>
    internal static Tensor Batch(float[] images, int count, int channels, int size, ScalarType dtype, Device device, long chunk)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfNegative(channels);
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        long length = (long)count * channels * size * size;
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, images.LongLength, nameof(images));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunk);
        var x = empty([count, channels, size, size], ScalarType.Float32);
        if (length <= chunk)
        {
            images.AsSpan(0, (int)length).CopyTo(MemoryMarshal.Cast<byte, float>(x.bytes));
        }
        else
        {
            using var flat = x.view(-1);
            for (long start = 0; start < length; start += chunk)
            {
                long n = Math.Min(chunk, length - start);
                using var piece = flat.narrow(0, start, n);
                images.AsSpan((int)start, (int)n).CopyTo(MemoryMarshal.Cast<byte, float>(piece.bytes));
            }
        }

        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU)
        {
            return x;
        }

        using (x)
        {
            return x.to(dtype, device);
        }
    }
}
