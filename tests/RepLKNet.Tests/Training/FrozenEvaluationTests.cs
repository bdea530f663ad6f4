using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

/// <summary>The classification task scores a RepLKNet through its frozen copy: the same top-1 as the model in eval mode.</summary>
[Collection(SerialTests.Name)]
public sealed class FrozenEvaluationTests : IDisposable
{
    private readonly bool _frozen = ClassificationTask.UseFrozen;

    public FrozenEvaluationTests()
    {
        Torch.EnsureLoaded();
        ClassificationTask.UseFrozen = true;
    }

    public void Dispose() => ClassificationTask.UseFrozen = _frozen;

    [Fact]
    public void The_frozen_copy_scores_what_the_eval_mode_model_scores_and_leaves_the_model_unchanged()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(12);
        var images = Scalars.MulInPlace(rand([96, 1, 16, 16], generator: g), 255).to(ScalarType.Byte);
        var labels = randint(0, 4, [96], generator: g, dtype: int64);
        var test = new ImageTensorDataset(images, labels, ["a", "b", "c", "d"]);
        var augment = new AugmentOptions { InputSize = 16 };
        var pipeline = new SamplePipeline(augment, new Normalization([0.5], [0.25]), 1, 16);
        var task = new ClassificationTask(test, test, pipeline, augment, null, 32, workers: 1, CPU, null);

        var config = new RepLKNetConfig { LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [16, 32], SmallKernel = 3, InChannels = 1, NumClasses = 4 };
        manual_seed(5);
        using var model = new RepLKNetModel(config);
        RandomModels.RandomizeBatchNorms(model, new Generator(6));
        model.train();
        var before = RepLKNet.Checkpoints.StateDicts.Ordered(model).ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        var reference = Evaluation.Run(model, 4, test, pipeline, 32, CPU, 1, CancellationToken.None);
        long copies = ClassificationTask.FrozenCopies;
        double frozen = task.Score(model, RepLKNet.Distributed.ProcessGroup.Single, null, CancellationToken.None).Value;
        Assert.Equal(copies + 1, ClassificationTask.FrozenCopies); // the frozen copy was scored
        ClassificationTask.UseFrozen = false;
        double plain;
        try
        {
            plain = task.Score(model, RepLKNet.Distributed.ProcessGroup.Single, null, CancellationToken.None).Value;
        }
        finally
        {
            ClassificationTask.UseFrozen = true;
        }

        Assert.InRange(reference.Top1, 0.05, 0.95); // not a constant prediction
        Assert.Equal(reference.Top1, plain);
        Assert.Equal(reference.Top1, frozen);
        Assert.Equal(copies + 1, ClassificationTask.FrozenCopies); // and the switch turned it off
        Assert.Equal(reference.Top1, task.Evaluate(model, null, CancellationToken.None));
        // Scoring reads the model only (its BatchNorms were in eval mode, so running statistics did not move).
        foreach (var (key, value) in RepLKNet.Checkpoints.StateDicts.Ordered(model))
        {
            Assert.True(value.equal(before[key]).all().item<bool>(), key);
        }
    }
}
