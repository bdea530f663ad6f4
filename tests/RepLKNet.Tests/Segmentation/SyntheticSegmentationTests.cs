using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Segmentation;

public sealed class SyntheticSegmentationTests
{
    [Theory]
    [InlineData("ade20k", 150)]
    [InlineData("cityscapes", 19)]
    [InlineData("folder", 5)]
    public void Each_layout_is_read_by_its_dataset_reader_with_the_labels_it_claims(string layout, int classes)
    {
        using var dir = new TempDirectory();
        var set = SyntheticSegmentation.Write(dir.Path, layout, trainCount: 6, valCount: 2, size: 40, seed: 7);
        var (train, val) = SegmentationDataset.OpenSplits(layout, dir.Path);
        Assert.Equal((6, 2), ((int)train.Count, (int)val.Count));
        Assert.Equal(classes, train.ClassNames.Count);
        Assert.Equal(classes, set.ClassCount);
        long ignore = 0, total = 0;
        var seen = new HashSet<int>();
        for (int i = 0; i < train.Count; i++)
        {
            var sample = train.Read(i);
            Assert.Equal(40, sample.Image.Height);
            Assert.InRange(sample.Image.Width, 40, 50);
            foreach (byte v in sample.Label.Pixels)
            {
                if (v == 255)
                {
                    ignore++;
                }
                else
                {
                    seen.Add(v);
                }

                total++;
            }
        }

        Assert.Subset(set.Labels.ToHashSet(), seen);
        Assert.Contains(set.Labels[0], seen);
        Assert.True(seen.Count >= 3, $"labels seen: {string.Join(", ", seen)}");
        Assert.InRange((double)ignore / total, 0.001, 0.08); // a sparing ignore outline
        if (layout == "ade20k")
        {
            // Stored as class + 1 with 0 for ignore.
            var stored = IndexPng.Read(train.Items[0].Mask).Pixels;
            var read = train.Read(0).Label.Pixels;
            Assert.Equal(read.Select(v => v == 255 ? 0 : v + 1), stored.Select(v => (int)v));
        }
    }

    [Fact]
    public void The_same_seed_writes_the_same_files_and_shapes_follow_their_class_colours()
    {
        using var a = new TempDirectory();
        using var b = new TempDirectory();
        SyntheticSegmentation.Write(a.Path, "folder", 3, 1, 32, seed: 4);
        SyntheticSegmentation.Write(b.Path, "folder", 3, 1, 32, seed: 4);
        foreach (var file in Directory.GetFiles(a.Path, "*", SearchOption.AllDirectories))
        {
            Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(b.Path, Path.GetRelativePath(a.Path, file))));
        }

        // Class colour tendency: class 1 (disc) pixels are on average redder than green and blue.
        var data = SegmentationDataset.Open("folder", a.Path, "train");
        double red = 0, green = 0;
        int n = 0;
        for (int i = 0; i < data.Count; i++)
        {
            var s = data.Read(i);
            for (int p = 0; p < s.Label.Plane; p++)
            {
                if (s.Label.Pixels[p] == 1)
                {
                    red += s.Image.Pixels[p];
                    green += s.Image.Pixels[s.Image.Plane + p];
                    n++;
                }
            }
        }

        Assert.True(n == 0 || red > green, $"{n} disc pixels: red {red / Math.Max(n, 1):0} green {green / Math.Max(n, 1):0}");
    }

    [Fact]
    public void Bad_arguments_name_themselves()
    {
        using var dir = new TempDirectory();
        Assert.Equal("layout", Assert.Throws<ArgumentException>(() => SyntheticSegmentation.Write(dir.Path, "voc", 1, 1, 32, 0)).ParamName);
        Assert.Equal("size", Assert.Throws<ArgumentException>(() => SyntheticSegmentation.Write(dir.Path, "folder", 1, 1, 8, 0)).ParamName);
        Assert.Equal("classes", Assert.Throws<ArgumentException>(() => SyntheticSegmentation.Write(dir.Path, "ade20k", 1, 1, 32, 0, classes: 4)).ParamName);
        Assert.Equal("trainCount", Assert.Throws<ArgumentException>(() => SyntheticSegmentation.Write(dir.Path, "folder", 0, 1, 32, 0)).ParamName);
    }
}
