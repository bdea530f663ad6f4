using static TorchSharp.torch;

namespace RepLKNet.IO;

/// <summary>Raw little-endian float32 C-contiguous tensors (the format of the official fixtures), for cross-framework checks.</summary>
public static class RawTensorFile
{
    /// <summary>Reads <paramref name="path"/> as float32 of <paramref name="shape"/>; the byte count must match exactly.</summary>
    /// <exception cref="InvalidDataException">Missing file or wrong size; the message names the file.</exception>
    public static Tensor Read(string path, long[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"'{path}': no such input file");
        }

        long expected = shape.Aggregate(4L, (a, b) => a * b);
        long actual = new FileInfo(path).Length;
        if (actual != expected)
        {
            throw new InvalidDataException($"'{path}' has {actual} bytes, but float32 of shape [{string.Join(", ", shape)}] needs {expected}");
        }

        var tensor = empty(shape, dtype: float32);
        using var stream = File.OpenRead(path);
        stream.ReadExactly(tensor.bytes);
        return tensor;
    }

    /// <summary>Writes <paramref name="tensor"/> as raw float32 (converted and made contiguous on the CPU), atomically.</summary>
    public static void Write(string path, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        using var cpu = tensor.detach().to(float32).cpu().contiguous();
        AtomicFile.Write(path, s => s.Write(cpu.bytes));
    }
}
