using RepLKNet.Data;

namespace RepLKNet.Tests.Support;

/// <summary>Writes Fashion-MNIST-shaped IDX files for CLI tests.</summary>
internal static class FakeFashionMnist
{
    /// <summary>A tiny Fashion-MNIST-shaped dataset: class k is a bright horizontal bar at row 2k+3, plus noise; <paramref name="dir"/> is created when missing.</summary>
    public static void Write(string dir, int train, int test)
    {
        Directory.CreateDirectory(dir);
        var rng = new Random(11);
        foreach (var (prefix, count) in new[] { ("train", train), ("t10k", test) })
        {
            var images = new byte[count * 28 * 28];
            var labels = new byte[count];
            for (int i = 0; i < count; i++)
            {
                labels[i] = (byte)(i % 10);
                for (int p = 0; p < 784; p++)
                {
                    images[i * 784 + p] = (byte)rng.Next(0, 60);
                }

                int row = 2 * labels[i] + 3;
                for (int x = 4; x < 24; x++)
                {
                    images[i * 784 + row * 28 + x] = 250;
                }
            }

            IdxFile.WriteBytes(Path.Combine(dir, $"{prefix}-images-idx3-ubyte.gz"), [count, 28, 28], images, gzip: true);
            IdxFile.WriteBytes(Path.Combine(dir, $"{prefix}-labels-idx1-ubyte.gz"), [count], labels, gzip: true);
        }
    }
}
