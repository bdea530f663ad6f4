namespace RepLKNet.Data;

/// <summary>
/// Images in one sub-folder per class (torchvision's ImageFolder layout), decoded with SkiaSharp when read. Either the
/// root holds <c>train/</c> and <c>val/</c> (or <c>validation/</c>, <c>test/</c>) folders with the class folders inside, or it
/// holds the class folders directly and a seeded, per-class (stratified) split makes the validation set.
/// </summary>
public sealed class ImageFolderDataset : IImageDataset
{
    private static readonly string[] ValidationNames = ["val", "validation", "test"];
    private readonly List<(string Path, int Label)> _items;

    private ImageFolderDataset(string root, IReadOnlyList<string> classes, List<(string, int)> items, int channels)
    {
        Root = root;
        ClassNames = classes;
        _items = items;
        Channels = channels;
    }

    /// <summary>The folder the images came from.</summary>
    public string Root { get; }

    /// <inheritdoc />
    public long Count => _items.Count;

    /// <inheritdoc />
    public IReadOnlyList<string> ClassNames { get; }

    /// <inheritdoc />
    public int Channels { get; }

    /// <inheritdoc />
    public (int Height, int Width)? FixedSize => null;

    /// <summary>Image files with their labels.</summary>
    public IReadOnlyList<(string Path, int Label)> Items => _items;

    /// <inheritdoc />
    public long Label(long index) => _items[(int)index].Label;

    /// <inheritdoc />
    public string Describe(long index) => _items[(int)index].Path;

    /// <inheritdoc />
    public ImageU8 Read(long index) => ImageDecoder.Decode(_items[(int)index].Path, Channels);

    /// <summary>
    /// Opens the training and validation sets under <paramref name="data"/>. Without train/val folders the class folders'
    /// images are split: a fraction <paramref name="valFraction"/> of each class (at least one image) goes to validation,
    /// chosen by <paramref name="seed"/>.
    /// </summary>
    /// <exception cref="DatasetException">
    /// The folder is missing (<see cref="DatasetException.ParamName"/> <c>data</c>), <paramref name="valFraction"/> is outside
    /// (0, 1) for a folder that has to be split (<c>valFraction</c>), a class folder is empty, or there are no images.
    /// </exception>
    public static (ImageFolderDataset Train, ImageFolderDataset Val) Open(string data, int channels = 3, double valFraction = 0.1, long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (!Directory.Exists(data))
        {
            throw new DatasetException($"data '{data}': no such folder (expected one sub-folder of images per class, or train/ and val/ folders holding them)", nameof(data));
        }

        string train = Path.Combine(data, "train");
        string? val = ValidationNames.Select(n => Path.Combine(data, n)).FirstOrDefault(Directory.Exists);
        if (Directory.Exists(train) && val is not null)
        {
            var (classes, trainItems) = Scan(train);
            var (valClasses, valItems) = Scan(val);
            var unknown = valClasses.Except(classes, StringComparer.Ordinal).ToList();
            if (unknown.Count > 0)
            {
                throw new DatasetException($"'{val}' has class folders that '{train}' lacks: {string.Join(", ", unknown.Take(5))}");
            }

            // Validation labels follow the training classes' order.
            var remap = valItems.Select(i => (i.Path, classes.IndexOf(valClasses[i.Label]))).ToList();
            return (new ImageFolderDataset(train, classes, trainItems, channels), new ImageFolderDataset(val, classes, remap, channels));
        }

        if (!(valFraction is > 0 and < 1))
        {
            throw new DatasetException($"valFraction must be in (0, 1), got {valFraction}: '{data}' has no train/ and val/ folders, so part of each class is held out", nameof(valFraction));
        }

        var (names, items) = Scan(data);
        var trainList = new List<(string, int)>();
        var valList = new List<(string, int)>();
        foreach (var group in items.GroupBy(i => i.Label).OrderBy(g => g.Key))
        {
            var files = group.ToList();
            if (files.Count < 2)
            {
                throw new DatasetException($"class folder '{Path.Combine(data, names[group.Key])}' has {files.Count} image; a split needs at least 2 per class");
            }

            var rng = new SampleRandom((ulong)seed, 0x5EED, (ulong)group.Key);
            for (int i = files.Count - 1; i > 0; i--)
            {
                int j = rng.NextInt(i + 1);
                (files[i], files[j]) = (files[j], files[i]);
            }

            int held = Math.Clamp((int)Math.Round(files.Count * valFraction), 1, files.Count - 1);
            valList.AddRange(files.Take(held));
            trainList.AddRange(files.Skip(held));
        }

        // Keep a stable, readable order (by path) inside each split.
        trainList.Sort((a, b) => string.CompareOrdinal(a.Item1, b.Item1));
        valList.Sort((a, b) => string.CompareOrdinal(a.Item1, b.Item1));
        return (new ImageFolderDataset(data, names, trainList, channels), new ImageFolderDataset(data, names, valList, channels));
    }

    private static (List<string> Classes, List<(string Path, int Label)> Items) Scan(string dir)
    {
        var classes = Directory.EnumerateDirectories(dir).Select(Path.GetFileName).OfType<string>()
            .Where(n => !n.StartsWith('.')).Order(StringComparer.Ordinal).ToList();
        if (classes.Count == 0)
        {
            throw new DatasetException($"'{dir}' has no class folders (expected one sub-folder of images per class)");
        }

        var items = new List<(string, int)>();
        for (int c = 0; c < classes.Count; c++)
        {
            string folder = Path.Combine(dir, classes[c]);
            var files = Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
                .Where(f => ImageDecoder.Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .Order(StringComparer.Ordinal).ToList();
            if (files.Count == 0)
            {
                throw new DatasetException($"class folder '{folder}' holds no images ({string.Join(", ", ImageDecoder.Extensions)})");
            }

            items.AddRange(files.Select(f => (f, c)));
        }

        return (classes, items);
    }
}
