using RepLKNet.Data;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Segmentation;

public sealed class SegmentationDatasetTests
{
    [Theory]
    [InlineData("Palette8")]
    [InlineData("Palette4")]
    [InlineData("Grey")]
    public void Masks_written_by_PIL_read_as_the_indices_PIL_reads(string which)
    {
        var (base64, height, width, values) = which switch
        {
            "Palette8" => PilMasks.Palette8,
            "Palette4" => PilMasks.Palette4,
            _ => PilMasks.Grey,
        };
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("m.png"), Convert.FromBase64String(base64));
        var mask = IndexPng.Read(dir.File("m.png"));
        Assert.Equal((1, height, width), (mask.Channels, mask.Height, mask.Width));
        Assert.Equal(values, mask.Pixels);
    }

    [Fact]
    public void A_written_palette_mask_keeps_its_indices_and_an_Adam7_interlaced_one_reads_the_same()
    {
        using var dir = new TempDirectory();
        var mask = new ImageU8(1, 11, 13);
        for (int i = 0; i < mask.Pixels.Length; i++)
        {
            mask.Pixels[i] = (byte)(i * 37 % 256);
        }

        IndexPng.Write(dir.File("p.png"), mask, SegmentationClasses.Ade20kPalette);
        Assert.Equal(mask.Pixels, IndexPng.Read(dir.File("p.png")).Pixels);
        IndexPng.Write(dir.File("g.png"), mask);
        Assert.Equal(mask.Pixels, IndexPng.Read(dir.File("g.png")).Pixels);

        // SkiaSharp sees the palette PNG's colours, not its indices (why IndexPng exists).
        var colours = ImageDecoder.Decode(dir.File("p.png"), 3);
        var (r, g, b) = SegmentationClasses.Ade20kPalette[mask.Pixels[1]];
        Assert.Equal((r, g, b), (colours.Pixels[1], colours.Pixels[colours.Plane + 1], colours.Pixels[2 * colours.Plane + 1]));

        File.WriteAllBytes(dir.File("i.png"), Adam7Png(mask));
        Assert.Equal(mask.Pixels, IndexPng.Read(dir.File("i.png")).Pixels);
    }

    [Fact]
    public void Non_index_PNGs_and_damaged_files_are_dataset_errors_naming_the_file()
    {
        using var dir = new TempDirectory();
        RgbImageFile.Write(dir.File("rgb.png"), new ImageU8(3, 4, 4));
        var e = Assert.Throws<DatasetException>(() => IndexPng.Read(dir.File("rgb.png")));
        Assert.Contains("rgb.png' is an RGB PNG", e.Message, StringComparison.Ordinal);
        File.WriteAllBytes(dir.File("junk.png"), [1, 2, 3]);
        Assert.Contains("junk.png' is not a PNG", Assert.Throws<DatasetException>(() => IndexPng.Read(dir.File("junk.png"))).Message, StringComparison.Ordinal);
        IndexPng.Write(dir.File("cut.png"), new ImageU8(1, 8, 8));
        var bytes = File.ReadAllBytes(dir.File("cut.png"));
        bytes[40] ^= 0xFF; // inside IDAT: its CRC no longer matches
        File.WriteAllBytes(dir.File("cut.png"), bytes);
        Assert.Contains("cut.png' is a damaged PNG", Assert.Throws<DatasetException>(() => IndexPng.Read(dir.File("cut.png"))).Message, StringComparison.Ordinal);
        Assert.Contains("no such", Assert.Throws<DatasetException>(() => IndexPng.Read(dir.File("none.png"))).Message, StringComparison.Ordinal);

        // A 16-bit greyscale PNG: the IHDR of a valid grey mask with bit depth 16 (CRC recomputed).
        IndexPng.Write(dir.File("deep.png"), new ImageU8(1, 2, 2));
        var deep = File.ReadAllBytes(dir.File("deep.png"));
        deep[24] = 16;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(deep.AsSpan(29), System.IO.Hashing.Crc32.HashToUInt32(deep.AsSpan(12, 17)));
        File.WriteAllBytes(dir.File("deep.png"), deep);
        Assert.Contains("deep.png' has 16-bit samples", Assert.Throws<DatasetException>(() => IndexPng.Read(dir.File("deep.png"))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ADE20K_pairs_by_stem_maps_splits_and_reduces_the_zero_label()
    {
        using var dir = new TempDirectory();
        SegFiles.Ade(dir.Path, "training", "ADE_train_b");
        SegFiles.Ade(dir.Path, "training", "ADE_train_a", width: 9, height: 7);
        SegFiles.Ade(dir.Path, "validation", "ADE_val_a");
        var (train, val) = SegmentationDataset.OpenSplits("ADE20K", dir.Path);
        Assert.Equal(2, train.Count);
        Assert.Equal(1, val.Count);
        Assert.EndsWith("ADE_train_a.jpg", train.Describe(0), StringComparison.Ordinal);
        Assert.EndsWith(Path.Combine("annotations", "training", "ADE_train_a.png"), train.Items[0].Mask, StringComparison.Ordinal);
        Assert.Equal(150, train.ClassNames.Count);
        Assert.Equal("wall", train.ClassNames[0]);
        Assert.Equal("flag", train.ClassNames[149]);
        Assert.Equal((120, 120, 120), (train.Palette[0].R, train.Palette[0].G, train.Palette[0].B));
        Assert.Equal((92, 0, 255), (train.Palette[149].R, train.Palette[149].G, train.Palette[149].B));
        Assert.True(train.ReduceZeroLabel);

        var sample = train.Read(0);
        Assert.Equal((3, 7, 9), (sample.Image.Channels, sample.Image.Height, sample.Image.Width));
        Assert.Equal((1, 7, 9), (sample.Label.Channels, sample.Label.Height, sample.Label.Width));
        for (int y = 0; y < 7; y++)
        {
            for (int x = 0; x < 9; x++)
            {
                int stored = (x + y) % 5;
                Assert.Equal(stored == 0 ? 255 : stored - 1, sample.Label.Pixels[y * 9 + x]);
            }
        }
    }

    [Fact]
    public void ADE20K_stored_255_stays_ignore_and_a_value_above_150_is_out_of_range()
    {
        using var dir = new TempDirectory();
        SegFiles.Ade(dir.Path, "training", "a", width: 4, height: 3);
        var mask = new ImageU8(1, 3, 4);
        mask.Pixels[0] = 255;
        mask.Pixels[1] = 150;
        IndexPng.Write(Path.Combine(dir.Path, "annotations", "training", "a.png"), mask);
        var train = SegmentationDataset.Open("ade20k", dir.Path, "train");
        var label = train.Read(0).Label.Pixels;
        Assert.Equal(255, label[0]);
        Assert.Equal(149, label[1]);
        Assert.Equal(255, label[2]);

        mask.Pixels[5] = 151;
        IndexPng.Write(Path.Combine(dir.Path, "annotations", "training", "a.png"), mask);
        var e = Assert.Throws<DatasetException>(() => train.Read(0));
        Assert.Contains("a.png': label 150 (stored 151; ADE20K masks store class + 1, 0 = ignore) at row 1, column 1 is out of range for 150 classes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cityscapes_pairs_across_cities_by_name_without_the_suffixes()
    {
        using var dir = new TempDirectory();
        SegFiles.City(dir.Path, "train", "aachen", "aachen_000000_000019");
        SegFiles.City(dir.Path, "train", "bremen", "bremen_000001_000019");
        SegFiles.City(dir.Path, "val", "lindau", "lindau_000000_000019", width: 8, height: 6);
        // Other gtFine files (colour, instance ids) sit next to the train ids and are not masks of this layout.
        File.WriteAllBytes(Path.Combine(dir.Path, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_color.png"), [0]);
        var (train, val) = SegmentationDataset.OpenSplits("cityscapes", dir.Path);
        Assert.Equal(2, train.Count);
        Assert.Equal(19, train.ClassNames.Count);
        Assert.Equal(("road", "bicycle"), (train.ClassNames[0], train.ClassNames[18]));
        Assert.Equal((119, 11, 32), (train.Palette[18].R, train.Palette[18].G, train.Palette[18].B));
        Assert.False(train.ReduceZeroLabel);
        Assert.Contains("bremen", train.Describe(1), StringComparison.Ordinal);
        var sample = val.Read(0);
        Assert.Equal((6, 8), (sample.Label.Height, sample.Label.Width));
        Assert.Equal(3, sample.Label.Pixels[8 + 2]); // (x + y) % 19 as stored
    }

    [Fact]
    public void A_folder_reads_classes_palette_and_split_folders_or_a_flat_folder()
    {
        using var dir = new TempDirectory();
        SegFiles.Classes(dir.Path, "sky", "road", "car", "");
        File.WriteAllLines(dir.File("palette.txt"), ["1 2 3", "4 5 6", "7 8 9"]);
        SegFiles.Folder(dir.Path, "train", "x1");
        SegFiles.Folder(dir.Path, "val", "y1");
        var (train, val) = SegmentationDataset.OpenSplits("folder", dir.Path);
        Assert.Equal(["sky", "road", "car"], train.ClassNames);
        Assert.Equal((7, 8, 9), (train.Palette[2].R, train.Palette[2].G, train.Palette[2].B));
        Assert.Equal(1, val.Count);
        Assert.Equal(2, train.Read(0).Label.Pixels[2]);

        using var flat = new TempDirectory();
        SegFiles.Classes(flat.Path, "a", "b", "c");
        SegFiles.Folder(flat.Path, "", "one");
        SegFiles.Folder(flat.Path, "", "two");
        var set = SegmentationDataset.Open("folder", flat.Path, "val");
        Assert.Equal(2, set.Count);
        Assert.Equal(3, set.Palette.Count); // a default palette
        Assert.Equal(3, set.Palette.Distinct().Count());
    }

    [Fact]
    public void Unpaired_files_are_listed_with_their_count_in_one_line()
    {
        using var dir = new TempDirectory();
        SegFiles.Classes(dir.Path, "a", "b", "c");
        for (int i = 0; i < 5; i++)
        {
            SegFiles.Folder(dir.Path, "train", $"img{i}");
        }

        foreach (var i in new[] { 0, 1, 2, 3 })
        {
            File.Delete(Path.Combine(dir.Path, "masks", "train", $"img{i}.png"));
        }

        File.Copy(Path.Combine(dir.Path, "masks", "train", "img4.png"), Path.Combine(dir.Path, "masks", "train", "orphan.png"));
        var e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "train"));
        Assert.Equal("data", e.ParamName);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("4 image(s) in '", e.Message, StringComparison.Ordinal);
        Assert.Contains("have no mask (<stem>.png) in '", e.Message, StringComparison.Ordinal);
        Assert.Contains("(img0, img1, img2, …)", e.Message, StringComparison.Ordinal);
        Assert.Contains("1 mask(s) in '", e.Message, StringComparison.Ordinal);
        Assert.Contains("(orphan)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_folders_files_and_bad_arguments_are_one_line_errors_naming_the_path()
    {
        using var dir = new TempDirectory();
        var e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("ade20k", dir.Path, "train"));
        Assert.Equal("data", e.ParamName);
        Assert.Contains($"no folder '{Path.Combine(dir.Path, "images", "training")}'", e.Message, StringComparison.Ordinal);
        Assert.Contains("ADE20K layout", e.Message, StringComparison.Ordinal);

        SegFiles.City(dir.Path, "train", "c", "c_0");
        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("cityscapes", dir.Path, "val"));
        Assert.Contains($"no folder '{Path.Combine(dir.Path, "leftImg8bit", "val")}'", e.Message, StringComparison.Ordinal);

        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "train"));
        Assert.Contains($"no '{dir.File("classes.txt")}'", e.Message, StringComparison.Ordinal);
        SegFiles.Classes(dir.Path, "a", "b");
        File.WriteAllLines(dir.File("palette.txt"), ["1 2 3"]);
        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "train"));
        Assert.Contains("palette.txt' has 1 colours for 2 classes", e.Message, StringComparison.Ordinal);
        File.WriteAllLines(dir.File("palette.txt"), ["1 2 3", "4 5 300"]);
        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "train"));
        Assert.Contains("colour 2 ('4 5 300')", e.Message, StringComparison.Ordinal);
        File.Delete(dir.File("palette.txt"));
        Directory.CreateDirectory(Path.Combine(dir.Path, "images", "train"));
        Directory.CreateDirectory(Path.Combine(dir.Path, "masks", "train"));
        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "train"));
        Assert.Contains("holds no images", e.Message, StringComparison.Ordinal);

        Assert.Equal("dataset", Assert.Throws<DatasetException>(() => SegmentationDataset.Open("voc", dir.Path, "train")).ParamName);
        Assert.Equal("split", Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.Path, "test")).ParamName);
        e = Assert.Throws<DatasetException>(() => SegmentationDataset.Open("folder", dir.File("nowhere"), "train"));
        Assert.Equal(("data", true), (e.ParamName, e.Message.StartsWith("data '", StringComparison.Ordinal)));
    }

    [Fact]
    public void A_mask_of_another_size_or_with_a_label_out_of_range_fails_when_read()
    {
        using var dir = new TempDirectory();
        SegFiles.Classes(dir.Path, "a", "b", "c");
        SegFiles.Pair(Path.Combine(dir.Path, "images", "train", "w.png"), Path.Combine(dir.Path, "masks", "train", "w.png"), 12, 10, 1, 3, maskWidth: 11);
        SegFiles.Pair(Path.Combine(dir.Path, "images", "train", "x.png"), Path.Combine(dir.Path, "masks", "train", "x.png"), 12, 10, 1, 4);
        var set = SegmentationDataset.Open("folder", dir.Path, "train"); // listing does not decode
        var e = Assert.Throws<DatasetException>(() => set.Read(0));
        Assert.Contains("w.png' is 11×10 but its image '", e.Message, StringComparison.Ordinal);
        Assert.Contains("is 12×10", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<DatasetException>(() => set.Read(1));
        Assert.Contains("x.png': label 3 at row 0, column 3 is out of range for 3 classes (0–2, 255 = ignore)", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void A_2_or_4_bit_greyscale_mask_is_refused_as_pil_reads_it_as_grey_levels(int depth)
    {
        using var dir = new TempDirectory();
        using var file = new MemoryStream();
        file.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(header, 2);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), 1);
        header[8] = (byte)depth;
        Chunk(file, "IHDR", header);
        using (var z = new MemoryStream())
        {
            using (var zs = new System.IO.Compression.ZLibStream(z, System.IO.Compression.CompressionLevel.Optimal, leaveOpen: true))
            {
                zs.Write([0, 0x12]);
            }

            Chunk(file, "IDAT", z.ToArray());
        }

        Chunk(file, "IEND", []);
        string path = dir.File("m.png");
        File.WriteAllBytes(path, file.ToArray());
        var e = Assert.Throws<DatasetException>(() => IndexPng.Read(path));
        Assert.Contains($"m.png' is a {depth}-bit greyscale PNG", e.Message, StringComparison.Ordinal);
    }

    /// <summary>An Adam7-interlaced 8-bit greyscale PNG (filter 0), written here independently of IndexPng.</summary>
    private static byte[] Adam7Png(ImageU8 mask)
    {
        (int X0, int Y0, int Dx, int Dy)[] passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)];
        var raw = new List<byte>();
        foreach (var (x0, y0, dx, dy) in passes)
        {
            for (int y = y0; y < mask.Height; y += dy)
            {
                if (x0 >= mask.Width)
                {
                    break;
                }

                raw.Add(0);
                for (int x = x0; x < mask.Width; x += dx)
                {
                    raw.Add(mask.Pixels[y * mask.Width + x]);
                }
            }
        }

        using var file = new MemoryStream();
        file.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(header, mask.Width);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), mask.Height);
        header[8] = 8;
        header[12] = 1;
        Chunk(file, "IHDR", header);
        using (var z = new MemoryStream())
        {
            using (var zs = new System.IO.Compression.ZLibStream(z, System.IO.Compression.CompressionLevel.Optimal, leaveOpen: true))
            {
                zs.Write(raw.ToArray());
            }

            Chunk(file, "IDAT", z.ToArray());
        }

        Chunk(file, "IEND", []);
        return file.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var length = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(length, data.Length);
        s.Write(length);
        byte[] typed = [.. System.Text.Encoding.ASCII.GetBytes(type), .. data];
        s.Write(typed);
        var crc = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(crc, System.IO.Hashing.Crc32.HashToUInt32(typed));
        s.Write(crc);
    }
}
