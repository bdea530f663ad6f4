namespace RepLKNet.Data;

/// <summary>
/// CIFAR-10's binary batches (<c>data_batch_1.bin</c> … <c>test_batch.bin</c>): records of one label byte followed by
/// 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32×32 row-major).
/// </summary>
public static class Cifar10File
{
    /// <summary>Bytes per record.</summary>
    public const int RecordBytes = 1 + 3 * 32 * 32;

    /// <summary>The ten class names, in label order.</summary>
    public static IReadOnlyList<string> ClassNames { get; } =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

    /// <summary>Reads one batch file: labels and CHW pixel bytes (3×32×32 per image).</summary>
    /// <exception cref="DatasetException">Missing file, a size that is not a whole number of records, or a label above 9.</exception>
    public static (byte[] Labels, byte[] Pixels) Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new DatasetException($"'{path}': no such CIFAR-10 batch file");
        }

        byte[] raw = File.ReadAllBytes(path);
        if (raw.Length == 0 || raw.Length % RecordBytes != 0)
        {
            throw new DatasetException($"'{path}' is not a CIFAR-10 binary batch: {raw.Length} bytes is not a multiple of {RecordBytes}");
        }

        int n = raw.Length / RecordBytes;
        var labels = new byte[n];
        var pixels = new byte[n * (RecordBytes - 1)];
        for (int i = 0; i < n; i++)
        {
            labels[i] = raw[i * RecordBytes];
            if (labels[i] > 9)
            {
                throw new DatasetException($"'{path}' is corrupt: record {i} has label {labels[i]} (CIFAR-10 labels are 0–9)");
            }

            Buffer.BlockCopy(raw, i * RecordBytes + 1, pixels, i * (RecordBytes - 1), RecordBytes - 1);
        }

        return (labels, pixels);
    }
}
