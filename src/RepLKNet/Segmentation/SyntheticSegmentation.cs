using RepLKNet.Data;

namespace RepLKNet.Segmentation;

/// <summary>What <see cref="SyntheticSegmentation.Write"/> wrote.</summary>
/// <param name="Root">The dataset folder (open it with <see cref="SegmentationDataset.Open"/> and <paramref name="Layout"/>).</param>
/// <param name="Layout">ade20k, cityscapes or folder.</param>
/// <param name="Labels">The labels the images use (after the layout's reading: ADE20K's reduce_zero_label applied), background first.</param>
/// <param name="ClassCount">Classes of the layout (150, 19, or the folder's).</param>
/// <param name="TrainCount">Training samples.</param>
/// <param name="ValCount">Validation samples.</param>
public sealed record SyntheticSegmentationSet(string Root, string Layout, IReadOnlyList<int> Labels, int ClassCount, int TrainCount, int ValCount);

/// <summary>
/// A small synthetic segmentation set for tests and smoke runs: coloured shapes on a noisy background, written in one of the
/// on-disk layouts <see cref="SegmentationDataset"/> reads. Each shape class has its own shape (disc, square, triangle,
/// plus, ring, diamond, cycling beyond six) and colour tendency (a base colour jittered per shape); shapes have random
/// sizes (10–25 % of the image height in radius) and positions, 1–4 per image, later ones over earlier ones; every pixel
/// carries Gaussian noise; the background is a random grey-ish texture. Some shapes get a one-pixel ignore outline (255;
/// ADE20K stores it as 0), as real annotations leave boundaries unlabelled. Images are <c>size</c> rows by 1–1.25 × size
/// columns. Deterministic in <c>seed</c>.
/// </summary>
public static class SyntheticSegmentation
{
    /// <summary>The ADE20K classes the ade20k layout uses: wall (background), sky, tree, person, car.</summary>
    public static IReadOnlyList<int> Ade20kLabels { get; } = [0, 2, 4, 12, 20];

    /// <summary>The Cityscapes classes the cityscapes layout uses: road (background), vegetation, sky, person, car.</summary>
    public static IReadOnlyList<int> CityscapesLabels { get; } = [0, 8, 10, 11, 13];

    private static readonly (int R, int G, int B)[] Colours = [(210, 50, 50), (50, 190, 60), (60, 80, 220), (230, 210, 40), (200, 60, 210), (40, 200, 210)];
    private static readonly string[] ShapeNames = ["disc", "square", "triangle", "plus", "ring", "diamond"];

    /// <summary>
    /// Writes <paramref name="trainCount"/> training and <paramref name="valCount"/> validation samples under
    /// <paramref name="dir"/> in <paramref name="layout"/>: ade20k (<c>images/{training,validation}/*.jpg</c>,
    /// <c>annotations/…/*.png</c> storing class + 1, 150 classes of which <see cref="Ade20kLabels"/> appear), cityscapes
    /// (<c>leftImg8bit/{train,val}/synth/*_leftImg8bit.png</c>, <c>gtFine/…/*_gtFine_labelTrainIds.png</c>, 19 classes of
    /// which <see cref="CityscapesLabels"/> appear) or folder (<c>images/{train,val}/*.png</c>, palette PNG masks in
    /// <c>masks/{train,val}/</c>, <c>classes.txt</c> = background + <paramref name="classes"/> − 1 shapes, <c>palette.txt</c>).
    /// </summary>
    /// <param name="dir">Destination folder (created; existing files of the same names are replaced).</param>
    /// <param name="layout">ade20k, cityscapes or folder.</param>
    /// <param name="trainCount">Training samples (≥ 1).</param>
    /// <param name="valCount">Validation samples (≥ 1).</param>
    /// <param name="size">Image height in pixels (≥ 16).</param>
    /// <param name="seed">Seed of every random choice.</param>
    /// <param name="classes">Folder layout only: classes including the background (2–7; default 5).</param>
    /// <exception cref="ArgumentException">
    /// An argument is out of range or <paramref name="layout"/> is unknown; the message starts with its name, which
    /// <see cref="ArgumentException.ParamName"/> holds.
    /// </exception>
    public static SyntheticSegmentationSet Write(string dir, string layout, int trainCount, int valCount, int size, long seed, int? classes = null)
    {
        ArgumentNullException.ThrowIfNull(dir);
        ArgumentNullException.ThrowIfNull(layout);
        string kind = SegmentationDataset.Canonical(layout) ?? throw new ArgumentException($"layout '{layout}': use ade20k, cityscapes or folder", nameof(layout));
        if (trainCount < 1)
        {
            throw new ArgumentException($"trainCount must be ≥ 1, got {trainCount}", nameof(trainCount));
        }

        if (valCount < 1)
        {
            throw new ArgumentException($"valCount must be ≥ 1, got {valCount}", nameof(valCount));
        }

        if (size < 16)
        {
            throw new ArgumentException($"size must be ≥ 16, got {size}", nameof(size));
        }

        if (classes is { } c && (c is < 2 or > 7 || kind != "folder"))
        {
            throw new ArgumentException(kind == "folder" ? $"classes must be in 2–7, got {c}" : $"classes applies to the folder layout only ({kind} has its own classes)", nameof(classes));
        }

        IReadOnlyList<int> labels = kind switch
        {
            "ade20k" => Ade20kLabels,
            "cityscapes" => CityscapesLabels,
            _ => [.. Enumerable.Range(0, classes ?? 5)],
        };
        int classCount = kind switch { "ade20k" => 150, "cityscapes" => 19, _ => labels.Count };
        IReadOnlyList<(byte, byte, byte)>? palette = null;
        if (kind == "folder")
        {
            Directory.CreateDirectory(dir);
            File.WriteAllLines(Path.Combine(dir, "classes.txt"), ["background", .. ShapeNames.Take(labels.Count - 1)]);
            palette = [(0, 0, 0), .. Colours.Take(labels.Count - 1).Select(c => ((byte)c.R, (byte)c.G, (byte)c.B))];
            File.WriteAllLines(Path.Combine(dir, "palette.txt"), palette.Select(p => $"{p.Item1} {p.Item2} {p.Item3}"));
        }

        foreach (var (split, count, stream) in new[] { ("train", trainCount, 1UL), ("val", valCount, 2UL) })
        {
            for (int i = 0; i < count; i++)
            {
                var rng = new SampleRandom((ulong)seed, 0x5E65, stream, (ulong)i);
                var (image, mask) = Draw(size, labels, ref rng);
                string name = $"synth_{split}_{i:D5}";
                var (imagePath, maskPath) = kind switch
                {
                    "ade20k" => (Path.Combine(dir, "images", split == "train" ? "training" : "validation", name + ".jpg"),
                        Path.Combine(dir, "annotations", split == "train" ? "training" : "validation", name + ".png")),
                    "cityscapes" => (Path.Combine(dir, "leftImg8bit", split, "synth", name + "_leftImg8bit.png"),
                        Path.Combine(dir, "gtFine", split, "synth", name + "_gtFine_labelTrainIds.png")),
                    _ => (Path.Combine(dir, "images", split, name + ".png"), Path.Combine(dir, "masks", split, name + ".png")),
                };
                if (kind == "ade20k")
                {
                    // reduce_zero_label undone: class c is stored as c + 1, ignore as 0.
                    var stored = mask.Pixels;
                    for (int k = 0; k < stored.Length; k++)
                    {
                        stored[k] = stored[k] == SegmentationDataset.Ignore ? (byte)0 : (byte)(stored[k] + 1);
                    }
                }

                Directory.CreateDirectory(Path.GetDirectoryName(imagePath)!);
                Directory.CreateDirectory(Path.GetDirectoryName(maskPath)!);
                RgbImageFile.Write(imagePath, image, quality: 95);
                IndexPng.Write(maskPath, mask, palette);
            }
        }

        return new SyntheticSegmentationSet(dir, kind, labels, classCount, trainCount, valCount);
    }

    /// <summary>One sample: labels[0] is the background, labels[1..] the shape classes.</summary>
    private static (ImageU8 Image, ImageU8 Mask) Draw(int size, IReadOnlyList<int> labels, ref SampleRandom rng)
    {
        int h = size, w = rng.NextInt(size, size + size / 4);
        var colour = new double[3, h * w];
        var mask = new ImageU8(1, h, w);
        mask.Pixels.AsSpan().Fill((byte)labels[0]);

        // Background: a grey-ish base with a smooth two-tone gradient.
        double baseGrey = rng.Uniform(70, 170);
        var tint = new[] { rng.Uniform(-25, 25), rng.Uniform(-25, 25), rng.Uniform(-25, 25) };
        double gx = rng.Uniform(-40, 40) / w, gy = rng.Uniform(-40, 40) / h;
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                for (int c = 0; c < 3; c++)
                {
                    colour[c, y * w + x] = baseGrey + tint[c] + gx * x + gy * y;
                }
            }
        }

        int shapes = rng.NextInt(1, 4);
        for (int s = 0; s < shapes; s++)
        {
            int cls = rng.NextInt(1, labels.Count - 1);
            var (r0, g0, b0) = Colours[(cls - 1) % Colours.Length];
            double[] fill = [r0 + rng.Uniform(-35, 35), g0 + rng.Uniform(-35, 35), b0 + rng.Uniform(-35, 35)];
            double radius = rng.Uniform(0.10, 0.25) * size;
            double cx = rng.Uniform(0, w), cy = rng.Uniform(0, h);
            bool outline = rng.Chance(0.5);
            int shape = (cls - 1) % ShapeNames.Length;
            var inside = new bool[h * w];
            for (int y = 0; y < h; y++)
            {
                for (int x = 0; x < w; x++)
                {
                    double dx = (x + 0.5 - cx) / radius, dy = (y + 0.5 - cy) / radius;
                    inside[y * w + x] = shape switch
                    {
                        0 => dx * dx + dy * dy <= 1,
                        1 => Math.Abs(dx) <= 0.85 && Math.Abs(dy) <= 0.85,
                        2 => dy >= -1 && dy <= 0.8 && Math.Abs(dx) <= (dy + 1) / 1.8,
                        3 => (Math.Abs(dx) <= 0.33 && Math.Abs(dy) <= 1) || (Math.Abs(dy) <= 0.33 && Math.Abs(dx) <= 1),
                        4 => dx * dx + dy * dy <= 1 && dx * dx + dy * dy >= 0.3,
                        _ => Math.Abs(dx) + Math.Abs(dy) <= 1,
                    };
                }
            }

            for (int y = 0; y < h; y++)
            {
                for (int x = 0; x < w; x++)
                {
                    int i = y * w + x;
                    if (inside[i])
                    {
                        mask.Pixels[i] = (byte)labels[cls];
                        for (int c = 0; c < 3; c++)
                        {
                            colour[c, i] = fill[c];
                        }
                    }
                    else if (outline && Touches(inside, w, h, x, y))
                    {
                        mask.Pixels[i] = SegmentationDataset.Ignore;
                    }
                }
            }
        }

        var image = new ImageU8(3, h, w);
        for (int c = 0; c < 3; c++)
        {
            for (int i = 0; i < h * w; i++)
            {
                image.Pixels[c * h * w + i] = (byte)Math.Clamp(Math.Round(colour[c, i] + 18 * rng.Normal()), 0, 255);
            }
        }

        return (image, mask);
    }

    private static bool Touches(bool[] inside, int w, int h, int x, int y) =>
        (x > 0 && inside[y * w + x - 1]) || (x < w - 1 && inside[y * w + x + 1]) || (y > 0 && inside[(y - 1) * w + x]) || (y < h - 1 && inside[(y + 1) * w + x]);
}
