using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;

namespace RepLKNet.Tests.Support;

/// <summary>
/// An in-memory segmentation set for the training tests: grey noise (class 0) with a reddish disc (class 1) and a bluish
/// square (class 2) at random places, a one-pixel ignore (255) ring around the disc; the same in every process for a given seed.
/// </summary>
internal sealed class SegShapes(int count, int height, int width, int seed) : ISegmentationDataset
{
    public long Count => count;

    public IReadOnlyList<string> ClassNames { get; } = ["background", "disc", "square"];

    public IReadOnlyList<(byte R, byte G, byte B)> Palette { get; } = [(0, 0, 0), (220, 20, 60), (0, 0, 142)];

    public string Describe(long index) => $"shapes#{index}";

    public SegmentationSample Read(long index)
    {
        // Not HashCode.Combine: it is seeded per process, so the set (and every test on it) would differ from run to run.
        var rng = new Random(unchecked((seed * 1_000_003) + (int)index));
        var image = new ImageU8(3, height, width);
        var label = new ImageU8(1, height, width);
        int plane = height * width;
        for (int i = 0; i < plane; i++)
        {
            byte g = (byte)rng.Next(70, 180);
            image.Pixels[i] = image.Pixels[plane + i] = image.Pixels[2 * plane + i] = g;
        }

        int r = rng.Next(height / 6, height / 3);
        int cy = rng.Next(r, height - r), cx = rng.Next(r, width - r);
        int s = rng.Next(height / 4, height / 2);
        int sy = rng.Next(0, height - s), sx = rng.Next(0, width - s);
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                int i = y * width + x;
                double d = Math.Sqrt((y - cy) * (y - cy) + (x - cx) * (x - cx));
                if (y >= sy && y < sy + s && x >= sx && x < sx + s)
                {
                    Paint(i, 2, rng.Next(0, 60), rng.Next(0, 60), rng.Next(150, 255));
                }
                else if (d < r)
                {
                    Paint(i, 1, rng.Next(160, 255), rng.Next(0, 70), rng.Next(20, 90));
                }
                else if (d < r + 1)
                {
                    label.Pixels[i] = 255;
                }
            }
        }

        return new SegmentationSample(image, label);

        void Paint(int i, byte cls, int red, int green, int blue)
        {
            label.Pixels[i] = cls;
            image.Pixels[i] = (byte)red;
            image.Pixels[plane + i] = (byte)green;
            image.Pixels[2 * plane + i] = (byte)blue;
        }
    }

    /// <summary>A small UperNet (4 tiny stages, 16-channel heads) for 3 classes.</summary>
    public static SegmentorConfig TinyConfig(bool alignCorners = false, int classes = 3)
    {
        var backbone = new RepLKNetConfig
        {
            LargeKernelSizes = [7, 5, 5, 3], Layers = [1, 1, 1, 1], Channels = [8, 16, 24, 32], SmallKernel = 3, DwRatio = 1, FfnRatio = 2,
            DropPathRate = 0.1, NumClasses = null, OutIndices = [0, 1, 2, 3],
        };
        return new SegmentorConfig
        {
            Backbone = backbone,
            DecodeHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.UPerHead, InChannels = [8, 16, 24, 32], InIndex = [0, 1, 2, 3], Channels = 16, NumClasses = classes, AlignCorners = alignCorners,
            },
            AuxiliaryHead = new DecodeHeadConfig
            {
                Type = DecodeHeadConfig.FCNHead, InChannels = [24], InIndex = [2], Channels = 8, NumConvs = 1, NumClasses = classes, AlignCorners = alignCorners, LossWeight = 0.4,
            },
        }.Validate();
    }
}
