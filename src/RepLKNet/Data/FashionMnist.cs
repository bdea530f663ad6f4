using static TorchSharp.torch;

namespace RepLKNet.Data;

/// <summary>
/// Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test 28×28 grey images of 10 clothing classes, in IDX
/// files (gzip or not). Looked for in an explicit folder, then <c>$REPLKNET_DATA/fashion-mnist</c> and
/// <c>$REPLKNET_DATA</c>, then the Debian package's folder.
/// </summary>
public static class FashionMnist
{
    /// <summary>Where Debian's <c>dataset-fashion-mnist</c> package installs the files.</summary>
    public const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>Environment variable naming a data root.</summary>
    public const string DataEnvironmentVariable = "REPLKNET_DATA";

    /// <summary>The ten classes, in label order.</summary>
    public static IReadOnlyList<string> ClassNames { get; } =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Per-channel mean and std of the training images on [0, 1].</summary>
    public static Normalization Normalization { get; } = new([0.2860], [0.3530]);

    /// <summary>The folders searched, in order, for an optional explicit folder <paramref name="data"/>.</summary>
    public static IReadOnlyList<string> SearchPath(string? data)
    {
        var paths = new List<string>();
        if (!string.IsNullOrWhiteSpace(data))
        {
            return [data]; // a folder the user named is the only place to look: never train on other data silently
        }

        if (Environment.GetEnvironmentVariable(DataEnvironmentVariable) is { Length: > 0 } root)
        {
            paths.Add(Path.Combine(root, "fashion-mnist"));
            paths.Add(root);
        }

        paths.Add(DebianFolder);
        return paths;
    }

    /// <summary>Loads the <paramref name="split"/> ("train" or "t10k"/"test") split from the folder <paramref name="data"/> (see <see cref="SearchPath"/>).</summary>
    /// <exception cref="DatasetException">
    /// No folder holds the files (<see cref="DatasetException.ParamName"/> <c>data</c>; the message lists where it looked and
    /// how to get them), or the files are damaged.
    /// </exception>
    public static ImageTensorDataset Load(string? data, string split)
    {
        ArgumentNullException.ThrowIfNull(split);
        string prefix = split is "train" ? "train" : split is "t10k" or "test" ? "t10k" : throw new ArgumentException($"unknown split '{split}'", nameof(split));
        var searched = SearchPath(data);
        foreach (var dir in searched)
        {
            string? images = Find(dir, $"{prefix}-images-idx3-ubyte");
            string? labels = Find(dir, $"{prefix}-labels-idx1-ubyte");
            if (images is null || labels is null)
            {
                continue;
            }

            var (imageDims, pixels) = IdxFile.ReadBytes(images);
            var (labelDims, classes) = IdxFile.ReadBytes(labels);
            if (imageDims.Length != 3 || labelDims.Length != 1 || imageDims[0] != labelDims[0])
            {
                throw new DatasetException($"'{images}' ([{string.Join(", ", imageDims)}]) and '{labels}' ([{string.Join(", ", labelDims)}]) do not describe the same images");
            }

            if (classes.Any(c => c >= ClassNames.Count))
            {
                throw new DatasetException($"'{labels}' has a label outside 0–9");
            }

            var imageTensor = tensor(pixels, [imageDims[0], 1, imageDims[1], imageDims[2]], dtype: ScalarType.Byte);
            var labelTensor = tensor(classes.Select(c => (long)c).ToArray(), [labelDims[0]], dtype: int64);
            return new ImageTensorDataset(imageTensor, labelTensor, ClassNames, $"fashion-mnist {prefix}");
        }

        throw new DatasetException(
            $"data: Fashion-MNIST ({prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]) was not found; looked in " +
            string.Join(", ", searched.Select(s => $"'{s}'")) + ". On Debian/Ubuntu: apt-get install dataset-fashion-mnist. " +
            "Elsewhere download the four files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder " +
            "and give that folder (or set " + DataEnvironmentVariable + ").", nameof(data));
    }

    private static string? Find(string dir, string name)
    {
        foreach (var candidate in new[] { name + ".gz", name })
        {
            string path = Path.Combine(dir, candidate);
            if (File.Exists(path))
            {
                return path;
            }
        }

        return null;
    }
}
