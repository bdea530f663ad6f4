using RepLKNet.Data;
using RepLKNet.Tests.Support;
using SkiaSharp;

namespace RepLKNet.Tests.Data;

public sealed class ImageFileListTests
{
    private static void WritePng(string path, int width, int height, byte grey)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        bitmap.Erase(new SKColor(grey, grey, grey));
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(path, data.ToArray());
    }

    [Fact]
    public void A_folder_is_listed_recursively_in_ordinal_order_as_one_unlabelled_class()
    {
        using var dir = new TempDirectory();
        WritePng(dir.File("b/z.png"), 5, 4, 10);
        WritePng(dir.File("a.png"), 3, 2, 200);
        File.WriteAllText(dir.File("notes.txt"), "not an image");

        var list = ImageFileList.Open(dir.Path, channels: 1);

        Assert.Equal(2, list.Count);
        Assert.Equal(["image"], list.ClassNames);
        Assert.Equal([dir.File("a.png"), dir.File("b/z.png")], [list.Describe(0), list.Describe(1)]);
        Assert.Equal(0, list.Label(1));
        Assert.Null(list.FixedSize);
        var image = list.Read(1);
        Assert.Equal((1, 4, 5), (image.Channels, image.Height, image.Width));
        Assert.All(image.Pixels, p => Assert.Equal(10, p));
    }

    [Fact]
    public void A_missing_or_empty_folder_is_named_as_the_data_argument()
    {
        using var dir = new TempDirectory();
        var missing = Assert.Throws<DatasetException>(() => ImageFileList.Open(dir.File("nope")));
        Assert.Equal("data", missing.ParamName);
        Assert.StartsWith($"data '{dir.File("nope")}': no such folder", missing.Message, StringComparison.Ordinal);

        var empty = Assert.Throws<DatasetException>(() => ImageFileList.Open(dir.Path));
        Assert.Equal("data", empty.ParamName);
        Assert.Contains("holds no images", empty.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => new ImageFileList([], channels: 2));
    }
}
