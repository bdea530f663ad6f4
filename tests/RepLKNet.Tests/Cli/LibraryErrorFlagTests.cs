using RepLKNet.Cli;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Experiments;
using RepLKNet.Tests.Support;

namespace RepLKNet.Tests.Cli;

/// <summary>
/// Errors of the data, experiment and export code word their argument in library words (a parameter or options property,
/// held in ParamName); the CLI puts its flag in that word's place (<see cref="OptionNames"/>), so a user still reads the
/// flag they typed — the same text the CLI printed when the library wrote the flags itself.
/// </summary>
public sealed class LibraryErrorFlagTests
{
    private static string Cli(Exception e) => OptionNames.Rewrite(e, e.Message);

    [Fact]
    public void Dataset_arguments_read_as_their_flags()
    {
        var e = Assert.Throws<DatasetException>(() => Datasets.Open("folder", null));
        Assert.Equal("data", e.ParamName);
        Assert.Equal("--data is required for dataset 'folder': a folder with one sub-folder of images per class (or train/ and val/ folders holding them)", Cli(e));

        using var dir = new TempDirectory();
        e = Assert.Throws<DatasetException>(() => Datasets.Open("folder", dir.Path, channels: 2));
        Assert.Equal("--channels must be 1 or 3, got 2", Cli(e));

        e = Assert.Throws<DatasetException>(() => Datasets.Open("imagenet", dir.Path));
        Assert.Equal("dataset 'imagenet': use fashion-mnist, cifar10, folder", e.Message);
        Assert.Equal("--dataset 'imagenet': use fashion-mnist, cifar10, folder", Cli(e));

        string missing = dir.File("nope");
        e = Assert.Throws<DatasetException>(() => Datasets.Open("folder", missing));
        Assert.Equal($"--data '{missing}': no such folder (expected one sub-folder of images per class, or train/ and val/ folders holding them)", Cli(e));

        e = Assert.Throws<DatasetException>(() => Datasets.Open("folder", dir.Path, valSplit: 0));
        Assert.Equal("valFraction", e.ParamName);
        Assert.Equal($"--val-split must be in (0, 1), got 0: '{dir.Path}' has no train/ and val/ folders, so part of each class is held out", Cli(e));

        e = Assert.Throws<DatasetException>(() => FashionMnist.Load(dir.Path, "train"));
        Assert.StartsWith($"--data: Fashion-MNIST (train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]) was not found; looked in '{dir.Path}'", Cli(e), StringComparison.Ordinal);
        e = Assert.Throws<DatasetException>(() => Cifar10.Load(dir.Path));
        Assert.StartsWith($"--data: CIFAR-10 (data_batch_1..5.bin, test_batch.bin) was not found; looked in '{dir.Path}'", Cli(e), StringComparison.Ordinal);
    }

    [Fact]
    public void Augmentation_options_read_as_their_flags()
    {
        (AugmentOptions Options, string Cli)[] cases =
        [
            (new AugmentOptions { InputSize = 0 }, "--input-size must be positive"),
            (new AugmentOptions { CropScale = (0.5, 0.2) }, "--crop-scale must be MIN,MAX with 0 < MIN ≤ MAX ≤ 1"),
            (new AugmentOptions { HorizontalFlip = 1.5 }, "--hflip must be in [0, 1]"),
            (new AugmentOptions { EraseProbability = -0.1 }, "--reprob must be in [0, 1]"),
            (new AugmentOptions { Mixup = -1 }, "--mixup must be ≥ 0"),
            (new AugmentOptions { CutMix = -1 }, "--cutmix must be ≥ 0"),
            (new AugmentOptions { LabelSmoothing = 1 }, "--smoothing must be in [0, 1)"),
            (new AugmentOptions { CropPct = 0 }, "--crop-pct must be in (0, 1]"),
            (new AugmentOptions { RandAugment = "bogus" }, "--randaug 'bogus' is not a RandAugment string (it must start with 'rand', e.g. rand-m9-mstd0.5-inc1)"),
        ];
        foreach (var (options, cli) in cases)
        {
            var e = Assert.Throws<ArgumentException>(options.Validate);
            Assert.StartsWith(e.ParamName + " ", e.Message, StringComparison.Ordinal);
            Assert.Equal(cli, Cli(e));
        }

        // Options with no flag keep the library's word.
        var ratio = Assert.Throws<ArgumentException>(new AugmentOptions { CropRatio = (2, 1) }.Validate);
        Assert.StartsWith("CropRatio must be MIN,MAX with 0 < MIN ≤ MAX", Cli(ratio), StringComparison.Ordinal);
    }

    [Fact]
    public void The_kernel_size_table_reads_as_its_flag()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelSizeExperiment.ParseTable("widest"));
        Assert.Equal("table", e.ParamName);
        Assert.Equal("--table 'widest' is not one of shortcut, reparam, last-stage", Cli(e));
    }
}
