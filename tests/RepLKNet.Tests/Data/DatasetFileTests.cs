using RepLKNet.Data;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Data;

public sealed class DatasetFileTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Idx_images_and_labels_round_trip(bool gzip)
    {
        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        var images = new byte[5 * 28 * 28];
        var labels = new byte[5];
        rng.NextBytes(images);
        rng.NextBytes(labels);
        string imagePath = dir.File(gzip ? "images-idx3-ubyte.gz" : "images-idx3-ubyte");
        string labelPath = dir.File("labels-idx1-ubyte");
        IdxFile.WriteBytes(imagePath, [5, 28, 28], images, gzip);
        IdxFile.WriteBytes(labelPath, [5], labels, gzip: false);

        var (dims, data) = IdxFile.ReadBytes(imagePath);
        var (labelDims, labelData) = IdxFile.ReadBytes(labelPath);

        Assert.Equal([5, 28, 28], dims);
        Assert.Equal(images, data);
        Assert.Equal([5], labelDims);
        Assert.Equal(labels, labelData);
        if (gzip)
        {
            Assert.Equal([0x1f, 0x8b], File.ReadAllBytes(imagePath)[..2]);
        }
    }

    [Theory]
    [InlineData("truncated", "truncated or corrupt")]
    [InlineData("float-type", "only unsigned bytes")]
    [InlineData("not-idx", "is not an IDX file")]
    [InlineData("bad-gzip", "damaged gzip")]
    [InlineData("missing", "no such IDX file")]
    public void Idx_rejects_bad_files_naming_them(string kind, string expected)
    {
        using var dir = new TempDirectory();
        string good = dir.File("good");
        IdxFile.WriteBytes(good, [3, 4], new byte[12], gzip: false);
        byte[] bytes = File.ReadAllBytes(good);
        string path = dir.File(kind);
        switch (kind)
        {
            case "truncated":
                File.WriteAllBytes(path, bytes[..^3]);
                break;
            case "float-type":
                bytes[2] = 0x0D;
                File.WriteAllBytes(path, bytes);
                break;
            case "not-idx":
                File.WriteAllText(path, "hello world");
                break;
            case "bad-gzip":
                File.WriteAllBytes(path, [0x1f, 0x8b, 0x08, 0x00, 1, 2, 3]);
                break;
        }

        var e = Assert.Throws<DatasetException>(() => IdxFile.ReadBytes(path));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cifar10_batches_give_labels_and_channel_planes()
    {
        using var dir = new TempDirectory();
        var rng = new Random(Environment.TickCount);
        var raw = new byte[3 * Cifar10File.RecordBytes];
        rng.NextBytes(raw);
        for (int i = 0; i < 3; i++)
        {
            raw[i * Cifar10File.RecordBytes] = (byte)(i * 4);
        }

        string path = dir.File("data_batch_1.bin");
        File.WriteAllBytes(path, raw);
        var (labels, pixels) = Cifar10File.Read(path);

        Assert.Equal([0, 4, 8], labels);
        Assert.Equal(3 * 3072, pixels.Length);
        Assert.Equal(raw[Cifar10File.RecordBytes + 1 + 1024], pixels[3072 + 1024]); // image 1, green plane, pixel 0

        File.WriteAllBytes(path, raw[..^1]);
        Assert.Contains("not a multiple of 3073", Assert.Throws<DatasetException>(() => Cifar10File.Read(path)).Message, StringComparison.Ordinal);
        raw[0] = 10;
        File.WriteAllBytes(path, raw);
        Assert.Contains("label 10", Assert.Throws<DatasetException>(() => Cifar10File.Read(path)).Message, StringComparison.Ordinal);
    }
}
