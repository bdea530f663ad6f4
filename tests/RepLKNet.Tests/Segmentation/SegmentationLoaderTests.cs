using RepLKNet.Data;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

public sealed class SegmentationLoaderTests
{
    public SegmentationLoaderTests() => Torch.EnsureLoaded();

    private static SegmentationPipeline Small() => new(new SegmentationPipelineOptions { Scale = (64, 32), CropSize = (24, 24) });

    [Fact]
    public void Batches_have_the_crop_shapes_and_a_corrupt_sample_is_skipped_and_reported()
    {
        using var dir = new TempDirectory();
        var set = SyntheticSegmentation.Write(dir.Path, "folder", trainCount: 5, valCount: 1, size: 32, seed: 3);
        File.WriteAllBytes(Path.Combine(dir.Path, "images", "train", "synth_train_00002.png"), [1, 2, 3, 4]);
        var data = SegmentationDataset.Open("folder", dir.Path, "train");
        long[] order = [4, 2, 0, 1, 3];
        using var loader = SegmentationLoader.ForEpoch(data, Small(), order, epoch: 0, batchSize: 2, firstBatch: 0, batchCount: 3, seed: 1, workers: 2);
        var batches = loader.Batches().ToList();
        Assert.Equal(3, batches.Count);
        Assert.Equal([1, 2, 1], batches.Select(b => b.Count));
        Assert.Equal([0, 1], batches[1].Indices);
        var skipped = Assert.Single(batches[0].Skipped);
        Assert.Equal(2, skipped.Index);
        Assert.EndsWith("synth_train_00002.png", skipped.Source, StringComparison.Ordinal);
        Assert.Equal([4], batches[0].Indices);

        using var scope = NewDisposeScope();
        var images = batches[0].ImageTensor();
        var labels = batches[0].LabelTensor();
        Assert.Equal([1L, 3, 24, 24], images.shape);
        Assert.Equal(ScalarType.Float32, images.dtype);
        Assert.Equal([1L, 24, 24], labels.shape);
        Assert.Equal(ScalarType.Int64, labels.dtype);
        var values = batches.SelectMany(b => b.Labels).Distinct().ToHashSet();
        Assert.Subset(new HashSet<long>([0, 1, 2, 3, 4, 255]), values);
        Assert.Equal(5, set.ClassCount);
    }

    [Fact]
    public void The_same_key_gives_the_same_batch_whatever_the_workers_or_the_first_batch_and_another_epoch_differs()
    {
        using var dir = new TempDirectory();
        SyntheticSegmentation.Write(dir.Path, "ade20k", trainCount: 6, valCount: 1, size: 32, seed: 5);
        var data = SegmentationDataset.Open("ade20k", dir.Path, "train");
        var pipeline = Small();
        long[] order = [5, 3, 1, 0, 2, 4];
        LoaderPlan Plan(int epoch, long first, int workers) => new() { Order = order, BatchSize = 2, FirstBatch = first, Train = true, Key = (11, epoch), Workers = workers };
        var full = SegmentationLoader.Prepare(data, pipeline, Plan(0, 0, 1), number: 1);
        using (var resumed = new SegmentationLoader(data, pipeline, Plan(0, 1, 2)))
        {
            var first = resumed.Batches().First();
            Assert.Equal(1, first.Number);
            Assert.Equal(full.Images, first.Images);
            Assert.Equal(full.Labels, first.Labels);
            Assert.Equal(2, resumed.BatchCount);
        }

        var again = SegmentationLoader.Prepare(data, pipeline, Plan(0, 0, 2), number: 1, workers: 2);
        Assert.Equal(full.Images, again.Images);
        var other = SegmentationLoader.Prepare(data, pipeline, Plan(1, 0, 1), number: 1);
        Assert.NotEqual(full.Images, other.Images);
        Assert.Equal(full.Indices, other.Indices);
    }

    [Fact]
    public void The_test_view_gives_the_rescaled_image_and_the_original_label_one_sample_a_batch()
    {
        using var dir = new TempDirectory();
        SyntheticSegmentation.Write(dir.Path, "cityscapes", trainCount: 1, valCount: 2, size: 20, seed: 2);
        var data = SegmentationDataset.Open("cityscapes", dir.Path, "val");
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (100, 40), CropSize = (16, 16) });
        var plan = new LoaderPlan { Order = [0, 1], BatchSize = 1 };
        using var loader = new SegmentationLoader(data, pipeline, plan);
        foreach (var batch in loader.Batches())
        {
            var sample = data.Read(batch.Indices[0]);
            var (w, h) = SegmentationPipeline.RescaleSize(sample.Image.Width, sample.Image.Height, (100, 40));
            Assert.Equal((h, w), (batch.Height, batch.Width));
            Assert.Equal((sample.Label.Height, sample.Label.Width), (batch.LabelHeight, batch.LabelWidth));
            Assert.Equal(sample.Label.Pixels.Select(p => (long)p), batch.Labels);
            Assert.Equal(pipeline.Test(sample.Image).Image, batch.Images);
        }

        Assert.Equal("plan", Assert.Throws<ArgumentException>(() => new SegmentationLoader(data, pipeline, plan with { BatchSize = 2 })).ParamName);
    }
}
