using RepLKNet.Checkpoints;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

/// <summary>The segmentation commands on bad input: one clear line naming the argument or file, exit 1 or 2, no half work.</summary>
public sealed class SegBadInputTests
{
    private static readonly string[] Cpu = ["--device", "cpu", "--threads", "1"];

    private static string[] Train(string data, string run, params string[] more) =>
        ["seg", "train", "--arch", "upernet-tiny", "--dataset", "folder", "--data", data, "--crop-size", "32", "--batch-size", "2", "--workers", "1",
            "--out", run, .. more, .. Cpu];

    private static string Set(TempDirectory dir, string name = "set")
    {
        string root = dir.File(name);
        SyntheticSegmentation.Write(root, "folder", trainCount: 4, valCount: 2, size: 32, seed: 4);
        return root;
    }

    private static string Checkpoint(TempDirectory dir, int classes = 5)
    {
        var (_, config) = SegmentorRegistry.Resolve("upernet-tiny");
        using var model = new EncoderDecoder(config.WithNumClasses(classes));
        string path = dir.File("seg.pth");
        SegmentorCheckpoint.Save(path, model, "upernet-tiny");
        return path;
    }

    [Fact]
    public void Training_on_images_none_of_which_can_be_read_stops_with_an_example()
    {
        using var dir = new TempDirectory();
        string data = Set(dir);
        foreach (string image in Directory.GetFiles(Path.Combine(data, "images", "train")))
        {
            File.WriteAllBytes(image, [1, 2, 3]);
        }

        var result = CliRunner.Run(Train(data, dir.File("run"), "--max-steps", "2", "--eval-every", "2"));
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("no training crop could be used since the last evaluation", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("e.g. ", result.StdErr, StringComparison.Ordinal);
        Assert.Contains("synth_train_", result.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Resuming_with_another_max_steps_is_refused_by_name()
    {
        using var dir = new TempDirectory();
        string data = Set(dir);
        string run = dir.File("run");
        var first = CliRunner.Run(Train(data, run, "--max-steps", "2", "--eval-every", "2"));
        Assert.True(first.ExitCode == 0, first.StdErr);
        var again = CliRunner.Run(Train(data, run, "--max-steps", "3", "--eval-every", "2", "--resume"));
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("--max-steps: ", again.StdErr, StringComparison.Ordinal);
        Assert.Contains("run of 2 iterations, not 3", again.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_sizes_missing_splits_and_non_empty_synthetic_folders_are_refused_before_any_work()
    {
        using var dir = new TempDirectory();
        string data = Set(dir);
        var crop = CliRunner.Run(["seg", "train", "--dataset", "folder", "--data", data, "--crop-size", "1", "--out", dir.File("r1"), .. Cpu]);
        Assert.Equal(2, crop.ExitCode);
        Assert.Contains("--crop-size must be 8", crop.StdErr, StringComparison.Ordinal);
        var scale = CliRunner.Run(["seg", "train", "--dataset", "folder", "--data", data, "--scale", "100000,100000", "--out", dir.File("r2"), .. Cpu]);
        Assert.Equal(2, scale.ExitCode);
        Assert.Contains("--scale must be two sizes", scale.StdErr, StringComparison.Ordinal);

        Directory.Delete(Path.Combine(data, "images", "val"), recursive: true);
        var noVal = CliRunner.Run(Train(data, dir.File("r3"), "--max-steps", "2"));
        Assert.Equal(1, noVal.ExitCode);
        Assert.Contains("the 'val' split has no folder", noVal.StdErr, StringComparison.Ordinal);

        var synthetic = CliRunner.Run("seg", "synthetic", "--out", data, "--layout", "folder");
        Assert.Equal(2, synthetic.ExitCode);
        Assert.Contains("is not empty", synthetic.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Eval_refuses_a_folder_as_json_a_classifier_as_weights_and_exits_1_when_it_skipped_samples()
    {
        using var dir = new TempDirectory();
        string data = Set(dir);
        string weights = Checkpoint(dir);
        var folder = CliRunner.Run(["seg", "eval", "--weights", weights, "--dataset", "folder", "--data", data, "--json", dir.Path, .. Cpu]);
        Assert.Equal(2, folder.ExitCode);
        Assert.Contains("--json '", folder.StdErr, StringComparison.Ordinal);
        Assert.Contains("is a folder", folder.StdErr, StringComparison.Ordinal);

        var classifier = CliRunner.Run(["seg", "eval", "--weights", OfficialFixture.File("small-train.pth"), "--dataset", "folder", "--data", data, .. Cpu]);
        Assert.Equal(1, classifier.ExitCode);
        Assert.Contains("is a classification checkpoint", classifier.StdErr, StringComparison.Ordinal);

        File.WriteAllBytes(Directory.GetFiles(Path.Combine(data, "masks", "val"))[0], [9, 9, 9]);
        var skipped = CliRunner.Run(["seg", "eval", "--weights", weights, "--dataset", "folder", "--data", data, .. Cpu]);
        Assert.Equal(1, skipped.ExitCode);
        Assert.Contains("the scores cover 1 of 2 val samples", skipped.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Predict_refuses_one_file_for_several_images_and_names_that_would_collide()
    {
        using var dir = new TempDirectory();
        string data = Set(dir);
        string weights = Checkpoint(dir);
        var images = Directory.GetFiles(Path.Combine(data, "images", "val")).Order().ToArray();
        var one = CliRunner.Run(["seg", "predict", "--weights", weights, images[0], images[1], "--out", dir.File("x.png"), .. Cpu]);
        Assert.Equal(2, one.ExitCode);
        Assert.Contains("names one file but 2 images were given", one.StdErr, StringComparison.Ordinal);

        string a = dir.File("a.png"), aOverlay = dir.File("a-overlay.png");
        File.Copy(images[0], a);
        File.Copy(images[1], aOverlay);
        var clash = CliRunner.Run(["seg", "predict", "--weights", weights, a, aOverlay, "--out", dir.File("out"), .. Cpu]);
        Assert.Equal(2, clash.ExitCode);
        Assert.Contains("would both write 'a-overlay.png'", clash.StdErr, StringComparison.Ordinal);

        string bad = dir.File("bad.png");
        File.WriteAllBytes(bad, [1, 2, 3]);
        var partial = CliRunner.Run(["seg", "predict", "--weights", weights, images[0], bad, "--out", dir.File("masks"), .. Cpu]);
        Assert.Equal(1, partial.ExitCode);
        Assert.Contains("1 of 2 image(s) could not be read", partial.StdErr, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(dir.File("masks"), Path.GetFileNameWithoutExtension(images[0]) + ".png")));
    }
}
