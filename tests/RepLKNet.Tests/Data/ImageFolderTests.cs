using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Tests.Support;
using SkiaSharp;

namespace RepLKNet.Tests.Data;

public sealed class ImageFolderTests
{
    public ImageFolderTests() => Torch.EnsureLoaded();

    /// <summary>Writes a PNG (or JPEG) whose colour encodes (class, index), and returns its path.</summary>
    private static string WriteImage(string folder, string name, int width, int height, byte r, byte g, byte b, SKEncodedImageFormat format = SKEncodedImageFormat.Png)
    {
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, name);
        using var bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        bitmap.Erase(new SKColor(r, g, b));
        using var data = bitmap.Encode(format, 95);
        File.WriteAllBytes(path, data.ToArray());
        return path;
    }

    private static void MakeClasses(string root, int perClass)
    {
        foreach (var (cls, colour) in new[] { ("cat", (byte)200), ("dog", (byte)40), ("owl", (byte)120) })
        {
            for (int i = 0; i < perClass; i++)
            {
                WriteImage(Path.Combine(root, cls), $"{i:D2}.png", 20 + i, 16 + 2 * i, colour, (byte)(10 * i), 0);
            }
        }
    }

    [Fact]
    public void A_flat_folder_is_split_per_class_reproducibly_and_images_decode_at_their_size()
    {
        using var dir = new TempDirectory();
        MakeClasses(dir.Path, perClass: 10);
        var (train, val) = ImageFolderDataset.Open(dir.Path, channels: 3, valFraction: 0.2, seed: 4);
        Assert.Equal(["cat", "dog", "owl"], train.ClassNames);
        Assert.Equal((24, 6), (train.Count, val.Count));
        Assert.Equal([2, 2, 2], Enumerable.Range(0, 3).Select(c => val.Items.Count(i => i.Label == c)));
        Assert.Empty(train.Items.Select(i => i.Path).Intersect(val.Items.Select(i => i.Path)));
        var (_, again) = ImageFolderDataset.Open(dir.Path, channels: 3, valFraction: 0.2, seed: 4);
        Assert.Equal(val.Items, again.Items);
        var (_, other) = ImageFolderDataset.Open(dir.Path, channels: 3, valFraction: 0.2, seed: 5);
        Assert.NotEqual(val.Items, other.Items);

        int k = train.Items.ToList().FindIndex(i => i.Path.EndsWith(Path.Combine("owl", "03.png"), StringComparison.Ordinal));
        var image = train.Read(k);
        Assert.Equal((3, 22, 23), (image.Channels, image.Height, image.Width));
        Assert.Equal((120, 30, 0), (image.Pixels[0], image.Pixels[image.Plane], image.Pixels[2 * image.Plane]));
        Assert.Equal(2, train.Label(k));
        var grey = ImageDecoder.Decode(train.Items[k].Path, 1);
        Assert.Equal((120 * 299 + 30 * 587 + 500) / 1000, grey.Pixels[0]);
    }

    [Fact]
    public void Train_and_val_folders_are_used_as_given_with_the_training_class_order()
    {
        using var dir = new TempDirectory();
        MakeClasses(Path.Combine(dir.Path, "train"), perClass: 3);
        WriteImage(Path.Combine(dir.Path, "val", "owl"), "a.png", 8, 8, 1, 2, 3);
        WriteImage(Path.Combine(dir.Path, "val", "cat"), "b.jpg", 8, 8, 1, 2, 3, SKEncodedImageFormat.Jpeg);
        var (train, val) = ImageFolderDataset.Open(dir.Path);
        Assert.Equal(9, train.Count);
        Assert.Equal(2, val.Count);
        Assert.Equal(["cat", "dog", "owl"], val.ClassNames);
        Assert.Equal([0L, 2L], Enumerable.Range(0, 2).Select(i => val.Label(i)).Order());

        Directory.CreateDirectory(Path.Combine(dir.Path, "val", "yak"));
        WriteImage(Path.Combine(dir.Path, "val", "yak"), "c.png", 8, 8, 1, 2, 3);
        Assert.Contains("yak", Assert.Throws<DatasetException>(() => ImageFolderDataset.Open(dir.Path)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Empty_classes_missing_folders_and_folders_without_classes_are_clear_errors()
    {
        using var dir = new TempDirectory();
        Assert.Contains("no such folder", Assert.Throws<DatasetException>(() => ImageFolderDataset.Open(dir.File("nope"))).Message, StringComparison.Ordinal);
        Assert.Contains("no class folders", Assert.Throws<DatasetException>(() => ImageFolderDataset.Open(dir.Path)).Message, StringComparison.Ordinal);
        MakeClasses(dir.Path, perClass: 2);
        Directory.CreateDirectory(dir.File("empty"));
        File.WriteAllText(Path.Combine(dir.File("empty"), "notes.txt"), "not an image");
        var e = Assert.Throws<DatasetException>(() => ImageFolderDataset.Open(dir.Path));
        Assert.Contains($"class folder '{dir.File("empty")}' holds no images", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unreadable_images_are_skipped_counted_and_named_and_batches_do_not_depend_on_worker_count()
    {
        using var dir = new TempDirectory();
        MakeClasses(dir.Path, perClass: 6);
        string garbage = Path.Combine(dir.Path, "dog", "zz-garbage.jpg");
        File.WriteAllBytes(garbage, [0xFF, 0xD8, 0xFF, 1, 2, 3, 4, 5]);
        string good = WriteImage(Path.Combine(dir.Path, "cat"), "zz-truncated.png", 64, 64, 9, 9, 9);
        var bytes = File.ReadAllBytes(good);
        File.WriteAllBytes(good, bytes[..(bytes.Length / 2)]);
        string empty = Path.Combine(dir.Path, "owl", "zz-empty.png");
        File.WriteAllBytes(empty, []);
        var (train, _) = ImageFolderDataset.Open(dir.Path, valFraction: 0.1, seed: 1);
        var options = RepLKNet.Training.Recipes.OfficialAugment(16);
        var pipeline = new SamplePipeline(options, Normalization.ImageNet, 3, 16);
        var plan = new LoaderPlan
        {
            Order = [.. Enumerable.Range(0, (int)train.Count).Select(i => (long)i)], BatchSize = 6, Train = true, Key = (3, 0), Workers = 1,
        };
        var oneWorker = Load(train, pipeline, options, plan);
        var fourWorkers = Load(train, pipeline, options, plan with { Workers = 4, Prefetch = 1 });

        var skipped = oneWorker.SelectMany(b => b.Skipped).ToList();
        var bad = new[] { garbage, good, empty }.Where(p => train.Items.Any(i => i.Path == p)).Order().ToList();
        Assert.Equal(bad, skipped.Select(s => s.Source).Order());
        Assert.True(bad.Count >= 2, "the split kept at least two of the broken files in training");
        Assert.Equal(train.Count - bad.Count, oneWorker.Sum(b => b.Count));
        Assert.All(oneWorker, b => Assert.Equal(b.Count * 3L, b.Targets!.Length));
        Assert.Equal(oneWorker.Select(b => b.Images), fourWorkers.Select(b => b.Images));
        Assert.Equal(oneWorker.Select(b => b.Targets), fourWorkers.Select(b => b.Targets));

        // Starting at batch 2 (a resumed epoch) yields exactly batches 2.. of the full pass.
        var resumed = Load(train, pipeline, options, plan with { FirstBatch = 2, Workers = 2 });
        Assert.Equal(oneWorker.Skip(2).Select(b => b.Images), resumed.Select(b => b.Images));
    }

    private static List<LoadedBatch> Load(IImageDataset data, SamplePipeline pipeline, AugmentOptions options, LoaderPlan plan)
    {
        using var loader = new BatchLoader(data, pipeline, options, plan);
        return [.. loader.Batches()];
    }
}
