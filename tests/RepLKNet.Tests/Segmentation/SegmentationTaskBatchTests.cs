using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

/// <summary>A training batch left with one readable crop: BatchNorm in training mode on one crop would poison its statistics.</summary>
public sealed class SegmentationTaskBatchTests
{
    public SegmentationTaskBatchTests() => Torch.EnsureLoaded();

    [Fact]
    public void A_batch_left_with_one_readable_crop_is_left_out_and_reported_without_touching_the_model()
    {
        using var dir = new TempDirectory();
        SyntheticSegmentation.Write(dir.Path, "folder", trainCount: 4, valCount: 1, size: 32, seed: 2);
        File.WriteAllBytes(Path.Combine(dir.Path, "images", "train", "synth_train_00002.png"), [1, 2, 3]);
        var train = SegmentationDataset.Open("folder", dir.Path, "train");
        var val = SegmentationDataset.Open("folder", dir.Path, "val");
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (64, 32), CropSize = (32, 32) });
        var evaluator = new SegmentationEvaluator(val, pipeline, SegmentationTestConfig.Whole);
        var task = new SegmentationTask(train, pipeline, evaluator, "tiny", train.ClassNames, train.Palette);
        using var model = new EncoderDecoder(SegShapes.TinyConfig(classes: train.ClassNames.Count));
        model.train();
        var before = model.modules().OfType<RepLKNet.Layers.BatchNorm2d>().Select(bn => bn.running_var!.clone()).ToList();

        using var epoch = task.OpenEpoch([2, 0, 1, 3], epoch: 0, batchSize: 2, firstBatch: 0, batchCount: 2, seed: 1, RepLKNet.Data.DataShard.Whole);
        Assert.True(epoch.MoveNext());
        Assert.Equal(0, epoch.Count);
        Assert.Equal(2, epoch.Skipped.Count);
        Assert.EndsWith("synth_train_00002.png", epoch.Skipped[0].Source, StringComparison.Ordinal);
        Assert.Contains("only readable crop", epoch.Skipped[1].Reason, StringComparison.Ordinal);
        using (var scope = NewDisposeScope())
        {
            var loss = epoch.Loss(model, CPU);
            Assert.Equal(0, loss.item<float>());
            loss.backward();
        }

        var after = model.modules().OfType<RepLKNet.Layers.BatchNorm2d>().Select(bn => bn.running_var!).ToList();
        Assert.All(before.Zip(after), p => Assert.Equal(0, (p.First - p.Second).abs().max().item<float>()));

        Assert.True(epoch.MoveNext());
        Assert.Equal(2, epoch.Count);
        Assert.Empty(epoch.Skipped);
        using (var scope = NewDisposeScope())
        {
            var loss = epoch.Loss(model, CPU);
            Assert.True(loss.item<float>() > 0);
        }

        Assert.All(model.modules().OfType<RepLKNet.Layers.BatchNorm2d>(), bn => Assert.False(bn.running_var!.isnan().any().item<bool>()));
    }
}
