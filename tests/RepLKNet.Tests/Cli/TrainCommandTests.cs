using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class TrainCommandTests
{
    /// <summary>A tiny Fashion-MNIST-shaped dataset: class k is a bright horizontal bar at row 2k+3, plus noise.</summary>
    private static void WriteFakeFashionMnist(string dir, int train, int test)
    {
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

    [Fact]
    public void Train_runs_end_to_end_and_writes_train_and_verified_deploy_checkpoints()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        Directory.CreateDirectory(data);
        WriteFakeFashionMnist(data, train: 320, test: 80);
        string run = dir.File("run");

        var result = CliRunner.Run("train", "--data", data, "--epochs", "2", "--batch-size", "32", "--out", run, "--device", "cpu");

        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        Assert.Matches(@"epoch\s+2/2: loss \d\.\d{4}", result.StdOut);
        Assert.Contains("deploy form verified", result.StdOut, StringComparison.Ordinal);
        using var deploy = CheckpointFile.Read(Path.Combine(run, "best-deploy.safetensors"));
        Assert.Equal(ModelForm.Deploy, deploy.Form);
        Assert.Equal("RepLKNet-FMNIST", deploy.Metadata!.Arch);
        Assert.Equal("Ankle boot", deploy.Metadata.ClassNames![9]);
        Assert.True(new FileInfo(Path.Combine(run, "curves.png")).Length > 1000);
        Assert.Equal(3, File.ReadAllLines(Path.Combine(run, "metrics.csv")).Length);

        // eval of the deploy checkpoint reproduces the best top-1 the training reported (re-param is exact on real data).
        string best = System.Text.RegularExpressions.Regex.Match(result.StdOut, @"best test top-1 (\d+\.\d+) %").Groups[1].Value;
        string png = dir.File("confusion.png");
        var eval = CliRunner.Run("eval", "--weights", Path.Combine(run, "best-deploy.safetensors"), "--data", data, "--plot", png);
        Assert.True(eval.ExitCode == 0, eval.StdErr);
        Assert.Contains($"top-1 {best} %", eval.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"9 Ankle boot\s+│", eval.StdOut);
        Assert.True(new FileInfo(png).Length > 1000);

        // predict on a PNG written here; its top-1 must be what the same checkpoint computes in-process on the same pixels.
        string image = dir.File("bar.png");
        using (var bitmap = new SkiaSharp.SKBitmap(28, 28, SkiaSharp.SKColorType.Gray8, SkiaSharp.SKAlphaType.Opaque))
        {
            for (int y = 0; y < 28; y++)
            {
                for (int x = 0; x < 28; x++)
                {
                    byte v = y == 17 && x is >= 4 and < 24 ? (byte)250 : (byte)30;
                    bitmap.SetPixel(x, y, new SkiaSharp.SKColor(v, v, v));
                }
            }

            using var encoded = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
            File.WriteAllBytes(image, encoded.ToArray());
        }

        var predict = CliRunner.Run("predict", "--weights", Path.Combine(run, "best-deploy.safetensors"), image);
        Assert.True(predict.ExitCode == 0, predict.StdErr);
        var lines = predict.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(image, lines[0].Trim());
        Assert.Equal(6, lines.Length);
        using var loaded = ModelLoader.Load(Path.Combine(run, "best-deploy.safetensors"), new ModelLoadOptions()).Model;
        using var pixels = ImageDecoder.Load(image, 1, 28, 28);
        Assert.Equal(30, pixels[0, 0, 0].item<byte>());
        Assert.Equal(250, pixels[0, 17, 10].item<byte>());
        var (mean, std) = FashionMnist.Normalization.At(0, 1);
        using var noGrad = TorchSharp.torch.no_grad();
        long expected = loaded.call(((pixels.to(TorchSharp.torch.float32) / 255.0 - mean) / std).unsqueeze(0)).argmax(1).item<long>();
        Assert.Matches($@"^\s+1\. {System.Text.RegularExpressions.Regex.Escape(FashionMnist.ClassNames[(int)expected])}\s+\d+\.\d+ %", lines[1]);
        var missing = CliRunner.Run("predict", "--weights", Path.Combine(run, "best-deploy.safetensors"), dir.File("nope.png"));
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("no such image", missing.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_without_data_says_where_it_looked()
    {
        using var dir = new TempDirectory();
        var result = CliRunner.Run(new Dictionary<string, string?> { ["REPLKNET_DATA"] = null }, "train", "--dataset", "cifar10", "--data", dir.Path, "--out", dir.File("run"));
        Assert.Equal(1, result.ExitCode);
        Assert.Contains($"'{dir.Path}'", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("cifar-10-binary", result.StdErr, StringComparison.Ordinal);
    }
}
