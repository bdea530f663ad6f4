using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

/// <summary><c>seg train</c> → <c>seg eval</c> (whole and slide) → <c>seg predict</c> end to end on a tiny folder-layout set.</summary>
public sealed partial class SegCommandsTests
{
    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    /// <summary>Writes <see cref="SegShapes"/> in the folder layout: images/{train,val}/*.png, masks/…/*.png, classes.txt.</summary>
    private static string WriteFolderSet(TempDirectory dir)
    {
        string root = dir.File("shapes");
        foreach (var (split, count, seed) in new[] { ("train", 6, 1), ("val", 3, 2) })
        {
            var data = new SegShapes(count, 30, 36, seed);
            Directory.CreateDirectory(Path.Combine(root, "images", split));
            Directory.CreateDirectory(Path.Combine(root, "masks", split));
            for (int i = 0; i < count; i++)
            {
                var sample = data.Read(i);
                RgbImageFile.Write(Path.Combine(root, "images", split, $"s{i}.png"), sample.Image);
                IndexPng.Write(Path.Combine(root, "masks", split, $"s{i}.png"), sample.Label);
            }
        }

        File.WriteAllLines(Path.Combine(root, "classes.txt"), ["background", "disc", "square"]);
        return root;
    }

    [Fact]
    public void Seg_train_eval_and_predict_run_end_to_end_on_a_folder_set()
    {
        using var dir = new TempDirectory();
        string data = WriteFolderSet(dir);
        string arch = dir.File("tiny.json");
        File.WriteAllText(arch, SegShapes.TinyConfig().ToJson());
        string run = dir.File("run");
        var train = CliRunner.Run("seg", "train", "--arch", arch, "--dataset", "folder", "--data", data, "--crop-size", "24", "--scale", "40,32",
            "--batch-size", "2", "--max-steps", "4", "--eval-every", "2", "--warmup-iters", "1", "--workers", "1", "--out", run, "--device", "cpu", "--threads", "1");
        Assert.True(train.ExitCode == 0, train.StdErr + train.StdOut);
        Assert.Contains("val mIoU", train.StdOut, StringComparison.Ordinal);
        Assert.Matches(@"crops/s  peak RSS \d+ MiB", train.StdOut);
        Assert.Matches(@"best val mIoU .*; peak RSS \d+ MiB", System.Text.RegularExpressions.Regex.Replace(train.StdOut, @"\s+", " ")); // the console wraps long lines
        foreach (string file in new[] { "best.pth", "last.pth", "metrics.csv", "metrics.json", "curves.png", "class-iou.png", "state.json" })
        {
            Assert.True(File.Exists(Path.Combine(run, file)), $"{file} missing; {train.StdOut}");
        }

        Assert.Equal(3, File.ReadAllLines(Path.Combine(run, "metrics.csv")).Length); // header + evaluations at 2 and 4
        Assert.Equal(["background", "disc", "square"], SegmentorCheckpoint.ReadInfo(Path.Combine(run, "best.pth")).Classes);

        string json = dir.File("scores.json");
        var eval = CliRunner.Run("seg", "eval", "--weights", Path.Combine(run, "best.pth"), "--dataset", "folder", "--data", data, "--scale", "40,32",
            "--json", json, "--plot", dir.File("bars.png"), "--device", "cpu", "--threads", "1");
        Assert.True(eval.ExitCode == 0, eval.StdErr + eval.StdOut);
        Assert.Contains("mIoU", eval.StdOut, StringComparison.Ordinal);
        var scores = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal(3, (int)scores["images"]!);
        Assert.Equal(3, scores["per_class"]!.AsArray().Count);
        Assert.True(File.Exists(dir.File("bars.png")));
        // The evaluation in the run used the same view and weights: its last mIoU is what eval finds for last.pth.
        var slide = CliRunner.Run("seg", "eval", "--weights", Path.Combine(run, "last.pth"), "--dataset", "folder", "--data", data, "--scale", "40,32",
            "--mode", "slide", "--crop-size", "16", "--stride", "8", "--device", "cpu", "--threads", "1");
        Assert.True(slide.ExitCode == 0, slide.StdErr + slide.StdOut);
        Assert.Contains("slide mode, crop 16×16, stride 8×8", slide.StdOut, StringComparison.Ordinal);
        string image = Path.Combine(data, "images", "val", "s0.png");
        string mask = dir.File("out/mask.png");
        Directory.CreateDirectory(dir.File("out"));
        var predict = CliRunner.Run("seg", "predict", "--weights", Path.Combine(run, "best.pth"), image, "--out", mask, "--device", "cpu", "--threads", "1");
        Assert.True(predict.ExitCode == 0, predict.StdErr + predict.StdOut);
        var written = IndexPng.Read(mask);
        Assert.Equal((1, 30, 36), (written.Channels, written.Height, written.Width));
        Assert.All(written.Pixels, p => Assert.InRange(p, 0, 2));
        Assert.True(File.Exists(dir.File("out/mask-overlay.png")));

        var badBatch = CliRunner.Run("seg", "train", "--arch", arch, "--data", data, "--batch-size", "1", "--out", dir.File("bad2"), "--device", "cpu", "--threads", "1");
        Assert.Equal(2, badBatch.ExitCode);
        Assert.Contains("--batch-size must be ≥ 2", badBatch.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Seg_synthetic_writes_an_ade20k_layout_that_seg_train_reads_with_its_150_classes()
    {
        using var dir = new TempDirectory();
        string data = dir.File("ade");
        var synthetic = CliRunner.Run("seg", "synthetic", "--out", data, "--layout", "ade20k", "--train", "6", "--val", "2", "--size", "32", "--seed", "3");
        Assert.True(synthetic.ExitCode == 0, synthetic.StdErr + synthetic.StdOut);
        Assert.Equal(6, Directory.GetFiles(Path.Combine(data, "images", "training")).Length);
        Assert.Equal(2, Directory.GetFiles(Path.Combine(data, "annotations", "validation")).Length);

        string arch = dir.File("tiny.json");
        File.WriteAllText(arch, SegShapes.TinyConfig().ToJson());
        string run = dir.File("run");
        var train = CliRunner.Run("seg", "train", "--arch", arch, "--dataset", "ade20k", "--data", data, "--crop-size", "32", "--batch-size", "2",
            "--max-steps", "2", "--warmup-iters", "1", "--workers", "1", "--out", run, "--device", "cpu", "--threads", "1");
        Assert.True(train.ExitCode == 0, train.StdErr + train.StdOut);
        Assert.Contains("(150 classes)", train.StdOut, StringComparison.Ordinal);
        var info = SegmentorCheckpoint.ReadInfo(Path.Combine(run, "best.pth"));
        Assert.Equal(150, info.Classes!.Count);
        Assert.Equal("wall", info.Classes[0]);

        var bad = CliRunner.Run("seg", "synthetic", "--out", dir.File("x"), "--train", "0");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--train must be ≥ 1", bad.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Seg_train_stopped_by_SIGINT_saves_exits_130_and_resumes_to_the_uninterrupted_result()
    {
        using var dir = new TempDirectory();
        string data = WriteFolderSet(dir);
        string arch = dir.File("tiny.json");
        File.WriteAllText(arch, SegShapes.TinyConfig().ToJson());
        string[] common =
        [
            "seg", "train", "--arch", arch, "--dataset", "folder", "--data", data, "--crop-size", "24", "--scale", "40,32", "--batch-size", "2",
            "--max-steps", "60", "--eval-every", "30", "--warmup-iters", "5", "--save-every", "5", "--ema-decay", "0.9", "--workers", "2",
            "--device", "cpu", "--threads", "1",
        ];
        string straight = dir.File("straight");
        var full = CliRunner.Run([.. common, "--out", straight]);
        Assert.True(full.ExitCode == 0, full.StdErr + full.StdOut);

        string stopped = dir.File("stopped");
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using (var process = CliRunner.StartCapturing(stdout, stderr, [.. common, "--out", stopped]))
        {
            string state = Path.Combine(stopped, "state.json");
            var deadline = DateTime.UtcNow.AddMinutes(2);
            while (!(File.Exists(state) && Step(state) > 0))
            {
                Assert.True(DateTime.UtcNow < deadline, "the run never saved");
                Assert.False(process.HasExited, "the run finished before it could be stopped: " + stderr);
                Thread.Sleep(5);
            }

            Assert.Equal(0, Kill(process.Id, 2));
            Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "the run did not stop");
            process.WaitForExit();
            Assert.True(process.ExitCode == 130, $"exit {process.ExitCode}: {stderr}{stdout}");
        }

        Assert.Contains("stopped by SIGINT after iteration", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("--resume", stdout.ToString(), StringComparison.Ordinal);
        var resumed = CliRunner.Run([.. common, "--out", stopped, "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.StdErr + resumed.StdOut);
        Assert.Contains("resumed from", resumed.StdOut, StringComparison.Ordinal);
        foreach (string file in new[] { "last.pth", "last-ema.pth", "best.pth" })
        {
            using var a = CheckpointFile.Read(Path.Combine(straight, file), ema: false, wholeModel: true);
            using var b = CheckpointFile.Read(Path.Combine(stopped, file), ema: false, wholeModel: true);
            Assert.Equal(a.State.Keys, b.State.Keys);
            foreach (var (key, tensor) in a.State)
            {
                Assert.True(tensor.equal(b.State[key]).all().item<bool>(), $"{file}: {key} differs after SIGINT and resume");
            }
        }

        Assert.Equal(File.ReadAllLines(Path.Combine(straight, "metrics.csv")).Select(l => string.Join(',', l.Split(',')[..6])),
            File.ReadAllLines(Path.Combine(stopped, "metrics.csv")).Select(l => string.Join(',', l.Split(',')[..6])));
    }

    private static long Step(string state)
    {
        try
        {
            return JsonNode.Parse(File.ReadAllText(state))!["step"]!.GetValue<long>();
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException)
        {
            return 0;
        }
    }
}
