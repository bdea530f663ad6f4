using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

public sealed class TrainCommandTests
{
    [Fact]
    public void Train_runs_end_to_end_and_writes_train_and_verified_deploy_checkpoints()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 320, test: 80);
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
        // The run's peak RSS: on each epoch line, in the done line and in metrics.csv (bytes).
        Assert.Matches(@"epoch\s+2/2: .* images/s  peak RSS \d+ MiB", result.StdOut);
        Assert.Matches(@"deploy form verified \(max rel\. diff [^)]*\); peak RSS \d+ MiB", System.Text.RegularExpressions.Regex.Replace(result.StdOut, @"\s+", " ")); // the console wraps long lines
        Assert.All(File.ReadAllLines(Path.Combine(run, "metrics.csv")).Skip(1),
            l => Assert.InRange(long.Parse(l.Split(',')[^1], System.Globalization.CultureInfo.InvariantCulture), BenchCommandsTests.MinProcessBytes, BenchCommandsTests.MaxProcessBytes));

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
        var decoded = ImageDecoder.Decode(image, 1);
        Assert.Equal((28, 28), (decoded.Height, decoded.Width));
        using var pixels = TorchSharp.torch.tensor(decoded.Pixels, [1, 28, 28], dtype: TorchSharp.torch.ScalarType.Byte);
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
    public void A_run_stopped_by_max_steps_says_so_and_its_resume_command_goes_on_past_the_limit()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 96, test: 16);
        string run = dir.File("run");

        var first = CliRunner.Run("train", "--data", data, "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--out", run, "--device", "cpu");

        Assert.True(first.ExitCode == 0, first.StdErr + first.StdOut);
        string text = System.Text.RegularExpressions.Regex.Replace(first.StdOut, @"\s+", " "); // the console wraps long lines
        Assert.Contains("1 epoch × 3 steps (stopping at step 2 of 3, --max-steps)", text, StringComparison.Ordinal);
        Assert.Contains("stopped by --max-steps 2 inside the first epoch", text, StringComparison.Ordinal);
        var resume = System.Text.RegularExpressions.Regex.Match(text, @"Continue with: \./replknet (.*)$").Groups[1].Value.Trim().Split(' ');
        Assert.Equal(["train", "--data", data, "--epochs", "1", "--batch-size", "32", "--out", run, "--device", "cpu", "--resume"], resume);

        // The printed command finishes the run instead of stopping at the same limit again.
        var second = CliRunner.Run(resume);
        Assert.True(second.ExitCode == 0, second.StdErr + second.StdOut);
        Assert.Matches(@"epoch\s+1/1: loss", second.StdOut);
        Assert.DoesNotContain("stopped", second.StdOut, StringComparison.Ordinal);

        // Stopped after an evaluation: the run finishes its checkpoints and still says how to go on (the ':' form too).
        string later = dir.File("later");
        var cut = CliRunner.Run("train", "--data", data, "--epochs", "2", "--batch-size", "32", "--max-steps:4", "--out", later, "--device", "cpu");
        Assert.True(cut.ExitCode == 0, cut.StdErr + cut.StdOut);
        string cutText = System.Text.RegularExpressions.Regex.Replace(cut.StdOut, @"\s+", " ");
        Assert.Contains("deploy form verified", cutText, StringComparison.Ordinal);
        // The summary says how it ended (not "done"), its checkpoints follow, and the command that goes on comes last.
        Assert.Matches(@"stopped by --max-steps 4 at step 4 of 6 in [0-9.]+ min: best test top-1", cutText);
        Assert.DoesNotContain("done in", cutText, StringComparison.Ordinal);
        Assert.True(cutText.IndexOf("deploy form verified", StringComparison.Ordinal) < cutText.IndexOf("Continue with: ./replknet train --data", StringComparison.Ordinal), cutText);
        Assert.EndsWith($"--out {later} --device cpu --resume", cutText.Trim(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--max-steps", "3")]
    [InlineData("--max-steps=3")]
    [InlineData("--max-steps:3")]
    public void The_resume_command_without_the_step_limit_drops_every_form_of_it(params string[] limit) =>
        Assert.Equal("./replknet train --epochs 2 --out 'a b' --resume",
            RepLKNet.Cli.Commands.TrainCommand.ResumeCommand(["train", "--epochs", "2", .. limit, "--out", "a b"], withoutMaxSteps: true));

    [Fact]
    public void Train_without_data_says_where_it_looked()
    {
        using var dir = new TempDirectory();
        var result = CliRunner.Run(new Dictionary<string, string?> { ["REPLKNET_DATA"] = null }, "train", "--dataset", "cifar10", "--data", dir.Path, "--out", dir.File("run"));
        Assert.Equal(1, result.ExitCode);
        Assert.Contains($"'{dir.Path}'", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("cifar-10-binary", result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_run_killed_with_SIGKILL_mid_epoch_and_resumed_ends_bit_identical_to_an_uninterrupted_run()
    {
        using var dir = new TempDirectory();
        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 1600, test: 100);
        string arch = dir.File("tiny.json");
        File.WriteAllText(arch, """{"large_kernel_sizes": [7, 5], "layers": [1, 1], "channels": [8, 16], "small_kernel": 3, "ffn_ratio": 2, "drop_path_rate": 0.1}""");
        // Every random part of the recipe is on: crops, flips, RandAugment, erasing, Mixup/CutMix, drop path, EMA.
        string[] common =
        [
            "train", "--data", data, "--arch", arch, "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--workers", "2",
            "--crop-scale", "0.5,1", "--hflip", "0.5", "--randaug", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
            "--save-every", "7",
        ];
        string straight = dir.File("straight");
        var full = CliRunner.Run([.. common, "--out", straight]);
        Assert.True(full.ExitCode == 0, full.StdErr + full.StdOut);

        string killed = dir.File("killed");
        string state = Path.Combine(killed, "state.json");
        long stepsPerEpoch = 100, killedAt;
        using (var process = CliRunner.Start([.. common, "--out", killed]))
        {
            // Kill as soon as a mid-epoch save of the first epoch exists: the process is somewhere inside step 8..14.
            var deadline = DateTime.UtcNow.AddMinutes(2);
            while (true)
            {
                Assert.True(DateTime.UtcNow < deadline, "the run never saved a mid-epoch checkpoint");
                Assert.False(process.HasExited, "the run finished before it could be killed");
                if (File.Exists(state) && System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(state))!["step"]!.GetValue<long>() is > 0 and var s)
                {
                    killedAt = s;
                    break;
                }

                Thread.Sleep(5);
            }

            process.Kill(); // SIGKILL: no handler runs, whatever was being written stays half-written
            process.WaitForExit();
        }

        Assert.InRange(killedAt, 1, stepsPerEpoch - 1);
        var resumed = CliRunner.Run([.. common, "--out", killed, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
        Assert.Contains("resumed from", resumed.StdOut, StringComparison.Ordinal);

        foreach (var file in new[] { "last.safetensors", "last-ema.safetensors" })
        {
            using var a = CheckpointFile.Read(Path.Combine(straight, file));
            using var b = CheckpointFile.Read(Path.Combine(killed, file));
            Assert.Equal(a.State.Keys, b.State.Keys);
            foreach (var (key, tensor) in a.State)
            {
                Assert.True(tensor.equal(b.State[key]).all().item<bool>(), $"{file}: {key} differs after kill and resume");
            }
        }

        Assert.Equal(File.ReadAllLines(Path.Combine(straight, "metrics.csv")).Select(l => string.Join(',', l.Split(',')[..6])),
            File.ReadAllLines(Path.Combine(killed, "metrics.csv")).Select(l => string.Join(',', l.Split(',')[..6])));
    }

    [Fact]
    public void Train_on_an_image_folder_reports_unreadable_files_and_eval_and_predict_use_the_recorded_preprocessing()
    {
        using var dir = new TempDirectory();
        string data = dir.File("shapes");
        var rng = new Random(3);
        foreach (var (cls, colour) in new[] { ("red", new SkiaSharp.SKColor(220, 30, 30)), ("blue", new SkiaSharp.SKColor(30, 30, 220)) })
        {
            Directory.CreateDirectory(Path.Combine(data, cls));
            for (int i = 0; i < (cls == "red" ? 23 : 24); i++)
            {
                using var bitmap = new SkiaSharp.SKBitmap(30 + rng.Next(20), 30 + rng.Next(20));
                bitmap.Erase(new SkiaSharp.SKColor((byte)rng.Next(256), (byte)rng.Next(256), (byte)rng.Next(256)));
                using (var canvas = new SkiaSharp.SKCanvas(bitmap))
                using (var paint = new SkiaSharp.SKPaint { Color = colour })
                {
                    canvas.DrawCircle(bitmap.Width / 2f, bitmap.Height / 2f, 12, paint);
                }

                using var png = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
                File.WriteAllBytes(Path.Combine(data, cls, $"{i:D2}.png"), png.ToArray());
            }
        }

        File.WriteAllText(Path.Combine(data, "red", "broken.png"), "this is not a PNG");
        string run = dir.File("run");
        var result = CliRunner.Run("train", "--dataset", "folder", "--data", data, "--val-split", "0.25", "--input-size", "24", "--epochs", "1",
            "--batch-size", "6", "--out", run, "--device", "cpu");
        Assert.True(result.ExitCode == 0, result.StdErr + result.StdOut);
        Assert.Contains("random-resized-crop 0.08–1 bicubic, hflip 0.5, rand-m9-mstd0.5-inc1, random-erasing 0.25, mixup 0.8 / cutmix 1", result.StdOut, StringComparison.Ordinal);
        // 36 training images in batches of 6 (none dropped): the broken file is reported by training or by evaluation.
        Assert.Matches(@"skipped 1 unreadable image\(s\), e\.g\. .*broken\.png", result.StdOut);
        using (var best = CheckpointFile.Read(Path.Combine(run, "best-deploy.safetensors")))
        {
            Assert.Equal(24, best.Metadata!.Preprocessing!.InputSize);
            Assert.Equal([0.485, 0.456, 0.406], best.Metadata.Preprocessing.Mean);
            Assert.Equal(["blue", "red"], best.Metadata.ClassNames);
        }

        var eval = CliRunner.Run("eval", "--weights", Path.Combine(run, "best-deploy.safetensors"), "--dataset", "folder", "--data", data, "--val-split", "0.25");
        Assert.True(eval.ExitCode == 0, eval.StdErr);
        Assert.Contains("on 12 folder validation images", eval.StdOut, StringComparison.Ordinal);

        var predict = CliRunner.Run("predict", "--weights", Path.Combine(run, "best-deploy.safetensors"), Path.Combine(data, "blue"));
        Assert.True(predict.ExitCode == 0, predict.StdErr);
        Assert.Equal(24 * 3, predict.StdOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // 24 images: a name + 2 classes each

        var empty = dir.File("empty");
        Directory.CreateDirectory(Path.Combine(empty, "a"));
        var failed = CliRunner.Run("train", "--dataset", "folder", "--data", empty, "--out", dir.File("run2"));
        Assert.Equal(1, failed.ExitCode);
        Assert.Contains("holds no images", failed.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_refuses_a_file_as_out_a_missing_data_folder_and_resume_without_a_run_in_one_line()
    {
        using var dir = new TempDirectory();
        string file = dir.File("afile");
        File.WriteAllText(file, "x");
        var r = CliRunner.Run("train", "--out", file, "--max-steps", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal([$"replknet: usage: --out '{file}' is a file; give a folder for the run"], r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Take(1));

        string missing = dir.File("no-such-data");
        r = CliRunner.Run("train", "--data", missing, "--out", dir.File("run1"), "--max-steps", "1");
        Assert.Equal(1, r.ExitCode);
        Assert.Single(r.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(missing, r.StdErr, StringComparison.Ordinal);

        string data = dir.File("data");
        FakeFashionMnist.Write(data, train: 64, test: 16);
        string empty = dir.File("empty-run");
        r = CliRunner.Run("train", "--data", data, "--out", empty, "--resume", "--max-steps", "1");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("state.json' does not exist", r.StdErr, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(empty));
    }
}
