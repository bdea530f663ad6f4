namespace RepLKNet.Data;

/// <summary>A dataset's training and held-out splits (the recipes' augmentation per dataset: Training/Recipes.cs).</summary>
/// <param name="Name">Dataset name (fashion-mnist, cifar10, folder).</param>
/// <param name="Train">Training split.</param>
/// <param name="Test">Evaluation split (the test set, or the folder's validation part).</param>
/// <param name="Normalization">Per-channel normalization.</param>
public sealed record DatasetSplits(string Name, IImageDataset Train, IImageDataset Test, Normalization Normalization) : IDisposable
{
    /// <inheritdoc />
    public void Dispose()
    {
        (Train as IDisposable)?.Dispose();
        (Test as IDisposable)?.Dispose();
    }
}

/// <summary>Opens the supported datasets by name.</summary>
public static class Datasets
{
    /// <summary>Names accepted by <see cref="Open"/>.</summary>
    public static IReadOnlyList<string> Names { get; } = ["fashion-mnist", "cifar10", "folder"];

    /// <summary>The canonical name of <paramref name="name"/> (case-insensitive; fmnist, cifar-10 and imagefolder are aliases), or null.</summary>
    public static string? Canonical(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.ToLowerInvariant() switch
        {
            "fashion-mnist" or "fmnist" => "fashion-mnist",
            "cifar10" or "cifar-10" => "cifar10",
            "folder" or "imagefolder" => "folder",
            _ => null,
        };
    }

    /// <summary>
    /// Opens <paramref name="dataset"/>: Fashion-MNIST and CIFAR-10 from their files (see their loaders for the search path,
    /// which starts at <paramref name="data"/>), or an image folder at <paramref name="data"/> (see <see cref="ImageFolderDataset"/>).
    /// Normalization: the dataset's statistics (Fashion-MNIST, CIFAR-10), ImageNet's for a folder of RGB images.
    /// </summary>
    /// <exception cref="DatasetException">
    /// The data is missing or unusable (the message says where it looked and what to do), or an argument is out of range
    /// (the message starts with its name, which <see cref="DatasetException.ParamName"/> holds: <c>dataset</c>, <c>data</c>,
    /// <c>channels</c>, or <see cref="ImageFolderDataset.Open"/>'s <c>valFraction</c>, which <paramref name="valSplit"/> is).
    /// </exception>
    public static DatasetSplits Open(string dataset, string? data, double valSplit = 0.1, int channels = 3, long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        switch (Canonical(dataset))
        {
            case "fashion-mnist":
            {
                var train = FashionMnist.Load(data, "train");
                return new DatasetSplits("fashion-mnist", train, FashionMnist.Load(data, "test"), FashionMnist.Normalization);
            }

            case "cifar10":
            {
                var (train, test) = Cifar10.Load(data);
                return new DatasetSplits("cifar10", train, test, Cifar10.Normalization);
            }

            case "folder":
            {
                if (string.IsNullOrWhiteSpace(data))
                {
                    throw new DatasetException("data is required for dataset 'folder': a folder with one sub-folder of images per class (or train/ and val/ folders holding them)", nameof(data));
                }

                if (channels is not (1 or 3))
                {
                    throw new DatasetException($"channels must be 1 or 3, got {channels}", nameof(channels));
                }

                var (train, val) = ImageFolderDataset.Open(data, channels, valSplit, seed);
                var normalization = channels == 3 ? Normalization.ImageNet : new Normalization([0.449], [0.226]);
                return new DatasetSplits("folder", train, val, normalization);
            }

            default:
                throw new DatasetException($"dataset '{dataset}': use {string.Join(", ", Names)}", nameof(dataset));
        }
    }
}
