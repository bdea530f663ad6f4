using RepLKNet.Data;
using RepLKNet.Segmentation;

namespace RepLKNet.Tests.Segmentation;

/// <summary>Writes small segmentation datasets in each layout for the tests.</summary>
internal static class SegFiles
{
    /// <summary>An RGB image whose red channel is <paramref name="tag"/> and green the column, and its mask (value = (x + y) % modulo).</summary>
    public static void Pair(string imagePath, string maskPath, int width, int height, byte tag, int modulo, int offset = 0, int? maskWidth = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(imagePath)!);
        Directory.CreateDirectory(Path.GetDirectoryName(maskPath)!);
        var image = new ImageU8(3, height, width);
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                image.Pixels[y * width + x] = tag;
                image.Pixels[image.Plane + y * width + x] = (byte)(x * 8);
                image.Pixels[2 * image.Plane + y * width + x] = (byte)(y * 8);
            }
        }

        RgbImageFile.Write(imagePath, image);
        int mw = maskWidth ?? width;
        var mask = new ImageU8(1, height, mw);
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < mw; x++)
            {
                mask.Pixels[y * mw + x] = (byte)((x + y) % modulo + offset);
            }
        }

        IndexPng.Write(maskPath, mask);
    }

    public static void Ade(string root, string split, string name, int width = 12, int height = 10, byte tag = 1, int? maskWidth = null) =>
        Pair(Path.Combine(root, "images", split, name + ".jpg"), Path.Combine(root, "annotations", split, name + ".png"), width, height, tag, 5, 0, maskWidth);

    public static void City(string root, string split, string city, string name, int width = 12, int height = 10) =>
        Pair(Path.Combine(root, "leftImg8bit", split, city, name + "_leftImg8bit.png"), Path.Combine(root, "gtFine", split, city, name + "_gtFine_labelTrainIds.png"), width, height, 2, 19);

    public static void Folder(string root, string split, string name, int classes = 3, int width = 12, int height = 10)
    {
        string sub = split.Length == 0 ? "" : split;
        Pair(Path.Combine(root, "images", sub, name + ".png"), Path.Combine(root, "masks", sub, name + ".png"), width, height, 3, classes);
    }

    public static void Classes(string root, params string[] names) => File.WriteAllLines(Path.Combine(root, "classes.txt"), names);
}
