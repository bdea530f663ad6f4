using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Models;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

public sealed class CheckpointEvaluationTests
{
    private static readonly RepLKNetConfig Tiny = new()
    {
        LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 1, NumClasses = 10, DropPathRate = 0,
    };

    public CheckpointEvaluationTests() => Torch.EnsureLoaded();

    private static LoadedModel Loaded(Preprocessing? preprocessing) =>
        new(new RepLKNetModel(Tiny), "tiny", ModelForm.Train, new LoadReport([], [], [], [], []),
            preprocessing is null ? null : new CheckpointMetadata("tiny", Tiny, ModelForm.Train, Preprocessing: preprocessing));

    [Fact]
    public void The_recorded_preprocessing_comes_first_then_the_dataset_then_an_explicit_size_overrides_both()
    {
        using var dir = new TempDirectory();
        FakeFashionMnist.Write(dir.Path, train: 4, test: 4);
        using var splits = Datasets.Open("fashion-mnist", dir.Path);
        var bare = Loaded(null);
        var recorded = Loaded(new Preprocessing(24, [0.5], [0.25], 0.9));

        Assert.Equal(28, CheckpointEvaluation.Pipeline(bare, splits).Size);
        Assert.Equal(24, CheckpointEvaluation.Pipeline(recorded, splits).Size);
        Assert.Equal(40, CheckpointEvaluation.Pipeline(recorded, splits, inputSize: 40).Size);
        Assert.Equal(1, CheckpointEvaluation.Pipeline(bare, splits).Channels);
        var zero = Assert.Throws<ArgumentOutOfRangeException>(() => CheckpointEvaluation.Pipeline(bare, splits, inputSize: 0));
        Assert.Equal("inputSize", zero.ParamName);
        bare.Model.Dispose();
        recorded.Model.Dispose();
    }

    [Fact]
    public void Run_evaluates_the_test_split_on_the_device()
    {
        using var dir = new TempDirectory();
        FakeFashionMnist.Write(dir.Path, train: 4, test: 12);
        using var splits = Datasets.Open("fashion-mnist", dir.Path);
        var loaded = Loaded(null);
        using var model = loaded.Model;

        var result = CheckpointEvaluation.Run(loaded, splits, batchSize: 5, CPU, workers: 1);

        Assert.Equal(12, result.Count);
        Assert.Equal(12L, result.Confusion.Cast<long>().Sum());
        Assert.InRange(result.Top1, 0, result.Top5);
        Assert.Throws<ArgumentOutOfRangeException>(() => CheckpointEvaluation.Run(loaded, splits, batchSize: 0, CPU));
    }
}
