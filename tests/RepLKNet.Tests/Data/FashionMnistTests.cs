using RepLKNet.Data;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Data;

public sealed class FashionMnistTests
{
    public FashionMnistTests() => Torch.EnsureLoaded();

    [Fact]
    public void Loads_a_split_from_an_explicit_folder_with_gzip_files()
    {
        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        var pixels = new byte[4 * 28 * 28];
        rng.NextBytes(pixels);
        byte[] labels = [9, 0, 3, 7];
        IdxFile.WriteBytes(dir.File("t10k-images-idx3-ubyte.gz"), [4, 28, 28], pixels, gzip: true);
        IdxFile.WriteBytes(dir.File("t10k-labels-idx1-ubyte.gz"), [4], labels, gzip: true);

        using var test = FashionMnist.Load(dir.Path, "test");

        Assert.Equal(4, test.Count);
        Assert.Equal([4L, 1, 28, 28], test.Images.shape);
        Assert.Equal(labels.Select(l => (long)l), test.Labels.data<long>().ToArray());
        Assert.Equal(pixels[28 * 28 + 5], test.Images[1, 0, 0, 5].item<byte>());
        Assert.Equal("Ankle boot", test.ClassNames[9]);
    }

    [Fact]
    public void Missing_data_says_where_it_looked_and_how_to_get_it()
    {
        using var dir = new TempDirectory();
        string empty = dir.File("nothing-here");
        Directory.CreateDirectory(empty);
        // A folder the user names is the only place looked at (never a silent fall-back to the system's copy).
        Assert.Equal([empty], FashionMnist.SearchPath(empty));
        Assert.Equal(FashionMnist.DebianFolder, FashionMnist.SearchPath(null)[^1]);
        var e = Assert.Throws<DatasetException>(() => FashionMnist.Load(empty, "train"));
        Assert.Contains($"'{empty}'", e.Message, StringComparison.Ordinal);
        Assert.Contains("apt-get install dataset-fashion-mnist", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Mismatched_image_and_label_counts_are_rejected()
    {
        using var dir = new TempDirectory();
        IdxFile.WriteBytes(dir.File("train-images-idx3-ubyte"), [3, 28, 28], new byte[3 * 784], gzip: false);
        IdxFile.WriteBytes(dir.File("train-labels-idx1-ubyte"), [2], [1, 2], gzip: false);
        var e = Assert.Throws<DatasetException>(() => FashionMnist.Load(dir.Path, "train"));
        Assert.Contains("do not describe the same images", e.Message, StringComparison.Ordinal);
    }
}
