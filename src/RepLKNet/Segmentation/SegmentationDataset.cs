using System.Globalization;
using RepLKNet.Data;

namespace RepLKNet.Segmentation;

/// <summary>One segmentation sample as stored: the RGB image and its class-index label map at the same size.</summary>
/// <param name="Image">Planar (3, H, W) 8-bit RGB.</param>
/// <param name="Label">(1, H, W) class indices: 0 … classes − 1, or <see cref="SegmentationDataset.Ignore"/> (255).</param>
public sealed record SegmentationSample(ImageU8 Image, ImageU8 Label);

/// <summary>A segmentation set read by index (files on disk, or anything else that gives samples).</summary>
public interface ISegmentationDataset
{
    /// <summary>Number of samples.</summary>
    long Count { get; }

    /// <summary>Class names in label order.</summary>
    IReadOnlyList<string> ClassNames { get; }

    /// <summary>One RGB colour per class, in label order.</summary>
    IReadOnlyList<(byte R, byte G, byte B)> Palette { get; }

    /// <summary>Where sample <paramref name="index"/> comes from (its image file).</summary>
    string Describe(long index);

    /// <summary>Reads sample <paramref name="index"/>; safe to call from several threads.</summary>
    /// <exception cref="DatasetException">The image or its mask cannot be read, their sizes differ, or a label is out of range.</exception>
    SegmentationSample Read(long index);
}

/// <summary>
/// Semantic-segmentation datasets on disk, in the layouts MMSegmentation 0.x reads (<c>mmseg/datasets/ade.py</c>,
/// <c>cityscapes.py</c>, <c>custom.py</c>); images and masks are paired by their path relative to the split folder with the
/// layout's suffixes removed:
/// <list type="bullet">
/// <item><c>ade20k</c>: <c>images/{training,validation}/**/*.jpg</c> + <c>annotations/{training,validation}/**/*.png</c>;
/// 150 classes (<see cref="SegmentationClasses.Ade20k"/>); <c>reduce_zero_label</c>: stored 0 (and 255) become the ignore
/// value 255, every other value v becomes v − 1.</item>
/// <item><c>cityscapes</c>: <c>leftImg8bit/{train,val}/&lt;city&gt;/*_leftImg8bit.png</c> +
/// <c>gtFine/{train,val}/&lt;city&gt;/*_gtFine_labelTrainIds.png</c>; 19 classes (<see cref="SegmentationClasses.Cityscapes"/>),
/// labels as stored (255 = ignore).</item>
/// <item><c>folder</c>: <c>images/{train,val}/**/*.{png,jpg,…}</c> + <c>masks/{train,val}/**/*.png</c> (MMSeg's custom
/// <c>img_dir</c>/<c>ann_dir</c>; a flat <c>images/</c> + <c>masks/</c> without split folders serves every split),
/// <c>classes.txt</c> (one name per line), optional <c>palette.txt</c> (<c>r g b</c> per line, one per class); labels as
/// stored (255 = ignore).</item>
/// </list>
/// Masks are class-index PNGs (greyscale or palette; the stored values are the labels, read by <see cref="IndexPng"/>).
/// </summary>
public sealed class SegmentationDataset : ISegmentationDataset
{
    /// <summary>The label value that marks pixels left out of the loss and the metric (MMSeg's <c>ignore_index</c>).</summary>
    public const byte Ignore = 255;

    private readonly List<(string Image, string Mask)> _items;

    private SegmentationDataset(string kind, string root, string split, IReadOnlyList<string> classes, IReadOnlyList<(byte, byte, byte)> palette, bool reduceZeroLabel, List<(string, string)> items)
    {
        Kind = kind;
        Root = root;
        Split = split;
        ClassNames = classes;
        Palette = palette;
        ReduceZeroLabel = reduceZeroLabel;
        _items = items;
    }

    /// <summary>Layouts accepted by <see cref="Open"/>.</summary>
    public static IReadOnlyList<string> Kinds { get; } = ["ade20k", "cityscapes", "folder"];

    /// <summary>Split names accepted by <see cref="Open"/>.</summary>
    public static IReadOnlyList<string> Splits { get; } = ["train", "val"];

    /// <summary>The layout: ade20k, cityscapes or folder.</summary>
    public string Kind { get; }

    /// <summary>The dataset folder.</summary>
    public string Root { get; }

    /// <summary>The split: train or val.</summary>
    public string Split { get; }

    /// <inheritdoc />
    public IReadOnlyList<string> ClassNames { get; }

    /// <inheritdoc />
    public IReadOnlyList<(byte R, byte G, byte B)> Palette { get; }

    /// <summary>Whether stored labels are shifted down by one with 0 → ignore (ADE20K).</summary>
    public bool ReduceZeroLabel { get; }

    /// <summary>Image and mask files, in ordinal order of their pairing key.</summary>
    public IReadOnlyList<(string Image, string Mask)> Items => _items;

    /// <inheritdoc />
    public long Count => _items.Count;

    /// <summary>The canonical layout name of <paramref name="kind"/> (case-insensitive; ade, ade20k, cityscapes, folder, custom), or null.</summary>
    public static string? Canonical(string kind)
    {
        ArgumentNullException.ThrowIfNull(kind);
        return kind.ToLowerInvariant() switch
        {
            "ade20k" or "ade" => "ade20k",
            "cityscapes" => "cityscapes",
            "folder" or "custom" => "folder",
            _ => null,
        };
    }

    /// <summary>Opens the train and val splits of <paramref name="dataset"/> under <paramref name="data"/> (see <see cref="Open"/>).</summary>
    /// <exception cref="DatasetException">As <see cref="Open"/>.</exception>
    public static (SegmentationDataset Train, SegmentationDataset Val) OpenSplits(string dataset, string data) =>
        (Open(dataset, data, "train"), Open(dataset, data, "val"));

    /// <summary>
    /// Opens split <paramref name="split"/> (train or val; ADE20K's folders are training/validation) of the
    /// <paramref name="dataset"/> layout under <paramref name="data"/>, pairing every image with its mask. Files are only
    /// listed here; a sample's image and mask are decoded and checked when it is read.
    /// </summary>
    /// <param name="dataset">ade20k, cityscapes or folder.</param>
    /// <param name="data">The dataset folder.</param>
    /// <param name="split">train or val.</param>
    /// <exception cref="DatasetException">
    /// One line naming the path: <paramref name="dataset"/> is unknown (<see cref="DatasetException.ParamName"/> <c>dataset</c>),
    /// <paramref name="split"/> is not train/val (<c>split</c>), a folder of the layout is missing or holds no images, some
    /// images have no mask or some masks no image (a few names and the count), or <c>classes.txt</c>/<c>palette.txt</c> is
    /// missing or malformed (<c>data</c>).
    /// </exception>
    public static SegmentationDataset Open(string dataset, string data, string split)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentNullException.ThrowIfNull(split);
        string kind = Canonical(dataset) ?? throw new DatasetException($"dataset '{dataset}': use {string.Join(", ", Kinds)}", nameof(dataset));
        if (!Splits.Contains(split))
        {
            throw new DatasetException($"split '{split}': use train or val", nameof(split));
        }

        if (string.IsNullOrWhiteSpace(data))
        {
            throw new DatasetException($"data is required for dataset '{kind}' ({Layout(kind)})", nameof(data));
        }

        if (!Directory.Exists(data))
        {
            throw new DatasetException($"data '{data}': no such folder ({Layout(kind)})", nameof(data));
        }

        switch (kind)
        {
            case "ade20k":
            {
                string folder = split == "train" ? "training" : "validation";
                var items = Pair(kind, Path.Combine(data, "images", folder), Path.Combine(data, "annotations", folder), [".jpg"], "", "");
                return new SegmentationDataset(kind, data, split, SegmentationClasses.Ade20k, SegmentationClasses.Ade20kPalette, true, items);
            }

            case "cityscapes":
            {
                var items = Pair(kind, Path.Combine(data, "leftImg8bit", split), Path.Combine(data, "gtFine", split), [".png"], "_leftImg8bit", "_gtFine_labelTrainIds");
                return new SegmentationDataset(kind, data, split, SegmentationClasses.Cityscapes, SegmentationClasses.CityscapesPalette, false, items);
            }

            default:
            {
                var classes = ReadClasses(Path.Combine(data, "classes.txt"));
                var palette = ReadPalette(Path.Combine(data, "palette.txt"), classes.Count);
                string images = Path.Combine(data, "images"), masks = Path.Combine(data, "masks");
                // Split folders, when any split has one; a flat images/ + masks/ (no split folder at all) serves every split.
                bool splitLayout = Splits.Any(sp => Directory.Exists(Path.Combine(images, sp)) || Directory.Exists(Path.Combine(masks, sp)));
                if (splitLayout)
                {
                    images = Path.Combine(images, split);
                    masks = Path.Combine(masks, split);
                    if (!Directory.Exists(images))
                    {
                        throw new DatasetException($"data '{data}': the '{split}' split has no folder '{images}' ({Layout(kind)})", nameof(data));
                    }
                }

                var items = Pair(kind, images, masks, ImageDecoder.Extensions, "", "");
                return new SegmentationDataset(kind, data, split, classes, palette, false, items);
            }
        }
    }

    /// <inheritdoc />
    public string Describe(long index) => _items[checked((int)index)].Image;

    /// <summary>
    /// Reads sample <paramref name="index"/>: the image decoded as RGB (<see cref="ImageDecoder.Decode"/>), the mask's raw
    /// indices (<see cref="IndexPng.Read"/>) with <c>reduce_zero_label</c> applied for ADE20K (mmseg 0.x
    /// <c>LoadAnnotations</c>: 0 → 255, v → v − 1, 255 stays 255), then checked.
    /// </summary>
    /// <returns>The image (3, H, W) and label map (1, H, W).</returns>
    /// <exception cref="DatasetException">
    /// The image or mask is missing or cannot be decoded, the mask's size differs from the image's, or a label is neither a
    /// class (0 … classes − 1) nor 255; the message names the file.
    /// </exception>
    public SegmentationSample Read(long index)
    {
        var (imagePath, maskPath) = _items[checked((int)index)];
        var image = ImageDecoder.Decode(imagePath, 3);
        var label = IndexPng.Read(maskPath);
        if (label.Height != image.Height || label.Width != image.Width)
        {
            throw new DatasetException($"mask '{maskPath}' is {label.Width}×{label.Height} but its image '{imagePath}' is {image.Width}×{image.Height}");
        }

        var values = label.Pixels;
        if (ReduceZeroLabel)
        {
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = values[i] is 0 or Ignore ? Ignore : (byte)(values[i] - 1);
            }
        }

        int classes = ClassNames.Count;
        for (int i = 0; i < values.Length; i++)
        {
            if (values[i] >= classes && values[i] != Ignore)
            {
                string stored = ReduceZeroLabel ? string.Create(CultureInfo.InvariantCulture, $" (stored {values[i] + 1}; ADE20K masks store class + 1, 0 = ignore)") : "";
                throw new DatasetException($"mask '{maskPath}': label {values[i]}{stored} at row {i / label.Width}, column {i % label.Width} is out of range for {classes} classes (0–{classes - 1}, 255 = ignore)");
            }
        }

        return new SegmentationSample(image, label);
    }

    private static string Layout(string kind) => kind switch
    {
        "ade20k" => "ADE20K layout: images/{training,validation}/*.jpg and annotations/{training,validation}/*.png",
        "cityscapes" => "Cityscapes layout: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png",
        _ => "folder layout: images/{train,val}/ and masks/{train,val}/ (class-index PNGs) matched by file stem, and classes.txt",
    };

    /// <summary>Lists the images and masks of one split and pairs them by relative path without the suffixes.</summary>
    private static List<(string, string)> Pair(string kind, string imageDir, string maskDir, IReadOnlyList<string> imageExtensions, string imageSuffix, string maskSuffix)
    {
        foreach (var dir in new[] { imageDir, maskDir })
        {
            if (!Directory.Exists(dir))
            {
                throw new DatasetException($"data: no folder '{dir}' ({Layout(kind)})", "data");
            }
        }

        var images = Keyed(imageDir, imageExtensions, imageSuffix);
        var masks = Keyed(maskDir, [".png"], maskSuffix);
        if (images.Count == 0)
        {
            throw new DatasetException($"data: '{imageDir}' holds no images ({Layout(kind)})", "data");
        }

        var lonelyImages = images.Keys.Where(k => !masks.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
        var lonelyMasks = masks.Keys.Where(k => !images.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
        if (lonelyImages.Count > 0 || lonelyMasks.Count > 0)
        {
            static string Few(List<string> keys) => string.Join(", ", keys.Take(3)) + (keys.Count > 3 ? ", …" : "");
            var parts = new List<string>();
            if (lonelyImages.Count > 0)
            {
                parts.Add($"{lonelyImages.Count} image(s) in '{imageDir}' have no mask (<stem>{maskSuffix}.png) in '{maskDir}' ({Few(lonelyImages)})");
            }

            if (lonelyMasks.Count > 0)
            {
                parts.Add($"{lonelyMasks.Count} mask(s) in '{maskDir}' have no image in '{imageDir}' ({Few(lonelyMasks)})");
            }

            throw new DatasetException($"data: {string.Join("; ", parts)}", "data");
        }

        return [.. images.Keys.Order(StringComparer.Ordinal).Select(k => (images[k], masks[k]))];
    }

    private static Dictionary<string, string> Keyed(string dir, IReadOnlyList<string> extensions, string suffix)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
        {
            string ext = Path.GetExtension(file).ToLowerInvariant();
            if (!extensions.Contains(ext) || Path.GetFileName(file).StartsWith('.'))
            {
                continue;
            }

            string relative = Path.GetRelativePath(dir, file);
            string key = relative[..^ext.Length];
            if (suffix.Length > 0)
            {
                if (!key.EndsWith(suffix, StringComparison.Ordinal))
                {
                    continue;
                }

                key = key[..^suffix.Length];
            }

            key = key.Replace('\\', '/');
            if (!result.TryAdd(key, file))
            {
                throw new DatasetException($"data: '{file}' and '{result[key]}' have the same name; images and masks are paired by name, so it must be unique", "data");
            }
        }

        return result;
    }

    private static List<string> ReadClasses(string path)
    {
        if (!File.Exists(path))
        {
            throw new DatasetException($"data: no '{path}' (the folder layout needs classes.txt, one class name per line in label order)", "data");
        }

        var lines = File.ReadAllLines(path).Select(l => l.Trim()).ToList();
        while (lines.Count > 0 && lines[^1].Length == 0)
        {
            lines.RemoveAt(lines.Count - 1);
        }

        int blank = lines.FindIndex(l => l.Length == 0);
        if (blank >= 0)
        {
            throw new DatasetException($"data: '{path}' line {blank + 1} is empty (one class name per line)", "data");
        }

        return lines.Count is >= 1 and <= 255
            ? lines
            : throw new DatasetException($"data: '{path}' lists {lines.Count} classes; 1–255 are possible (label 255 means ignore)", "data");
    }

    private static IReadOnlyList<(byte, byte, byte)> ReadPalette(string path, int classes)
    {
        if (!File.Exists(path))
        {
            return SegmentationClasses.DefaultPalette(classes);
        }

        var lines = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToList();
        if (lines.Count != classes)
        {
            throw new DatasetException($"data: '{path}' has {lines.Count} colours for {classes} classes (one \"r g b\" line per class)", "data");
        }

        var palette = new (byte, byte, byte)[classes];
        for (int i = 0; i < classes; i++)
        {
            var parts = lines[i].Split([' ', '\t', ','], StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 3 || !byte.TryParse(parts[0], CultureInfo.InvariantCulture, out byte r) || !byte.TryParse(parts[1], CultureInfo.InvariantCulture, out byte g)
                || !byte.TryParse(parts[2], CultureInfo.InvariantCulture, out byte b))
            {
                throw new DatasetException($"data: '{path}' colour {i + 1} ('{lines[i]}') is not \"r g b\" with values 0–255", "data");
            }

            palette[i] = (r, g, b);
        }

        return palette;
    }
}
