using static TorchSharp.torch;

namespace RepLKNet.Data;

/// <summary>CIFAR-10 from its binary batches (<c>data_batch_1..5.bin</c>, <c>test_batch.bin</c>), as the official site ships them.</summary>
public static class Cifar10
{
    /// <summary>Per-channel mean and std of the training images on [0, 1].</summary>
    public static Normalization Normalization { get; } = new([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]);

    /// <summary>Loads both splits from the folder <paramref name="data"/> (or <c>$REPLKNET_DATA/cifar-10-batches-bin</c>).</summary>
    /// <exception cref="DatasetException">
    /// No folder holds the files (<see cref="DatasetException.ParamName"/> <c>data</c>; the message lists where it looked and
    /// how to get them), or they are incomplete or damaged.
    /// </exception>
    public static (ImageTensorDataset Train, ImageTensorDataset Test) Load(string? data)
    {
        var searched = new List<string>();
        if (!string.IsNullOrWhiteSpace(data))
        {
            searched.Add(data);
        }

        if (Environment.GetEnvironmentVariable(FashionMnist.DataEnvironmentVariable) is { Length: > 0 } root)
        {
            searched.Add(Path.Combine(root, "cifar-10-batches-bin"));
            searched.Add(root);
        }

        foreach (var dir in searched)
        {
            string testPath = Path.Combine(dir, "test_batch.bin");
            if (!File.Exists(testPath))
            {
                continue;
            }

            var trainParts = Enumerable.Range(1, 5).Select(i => Path.Combine(dir, $"data_batch_{i}.bin")).ToList();
            var missing = trainParts.Where(p => !File.Exists(p)).ToList();
            if (missing.Count > 0)
            {
                throw new DatasetException($"CIFAR-10 in '{dir}' is incomplete: missing {string.Join(", ", missing.Select(Path.GetFileName))}");
            }

            return (ToDataset(trainParts), ToDataset([testPath]));
        }

        throw new DatasetException("data: CIFAR-10 (data_batch_1..5.bin, test_batch.bin) was not found; looked in " +
            (searched.Count == 0 ? "nothing (no folder given and no $REPLKNET_DATA)" : string.Join(", ", searched.Select(s => $"'{s}'"))) +
            ". Download the binary version from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, extract it and give that folder.", nameof(data));
    }

    private static ImageTensorDataset ToDataset(IReadOnlyList<string> files)
    {
        var labels = new List<byte>();
        var pixels = new List<byte>();
        foreach (var file in files)
        {
            var (l, p) = Cifar10File.Read(file);
            labels.AddRange(l);
            pixels.AddRange(p);
        }

        return new ImageTensorDataset(
            tensor(pixels.ToArray(), [labels.Count, 3, 32, 32], dtype: ScalarType.Byte),
            tensor(labels.Select(b => (long)b).ToArray(), [labels.Count], dtype: int64),
            Cifar10File.ClassNames,
            "cifar10");
    }
}
