using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Distributed;
using RepLKNet.Models.Segmentation;
using RepLKNet.Runtime;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Tests.Distributed;

/// <summary>
/// Issue 18: data sharding (the union of the shards' micro-batches at step k is, sample for sample and pixel for pixel,
/// the one-process batch of B·W at step k) and sharded evaluation (every rank returns exactly the one-process score).
/// </summary>
public sealed class ShardingTests
{
    private const int Samples = 23;

    private static readonly AugmentOptions Augment = new()
    {
        InputSize = 16, CropScale = (0.3, 1), HorizontalFlip = 0.5, EraseProbability = 0.3, LabelSmoothing = 0.1,
    };

    public ShardingTests() => Torch.EnsureLoaded();

    // Label i for image i (the label names the sample), one channel of 20×20 noise.
    private static ImageTensorDataset Indexed(int count, int seed)
    {
        var g = new Generator((ulong)seed);
        var images = Scalars.MulInPlace(rand([count, 1, 20, 20], generator: g), 255).to(ScalarType.Byte);
        return new ImageTensorDataset(images, arange(count, dtype: int64), [.. Enumerable.Range(0, count).Select(i => $"c{i}")]);
    }

    private static long[] Order(int count, long seed)
    {
        var order = TrainingPool.All(count);
        new SampleRandom((ulong)seed, 1, 0).Shuffle(order);
        return order;
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void The_shards_of_a_classification_step_together_are_the_one_process_batch_of_that_step(int world)
    {
        using var data = Indexed(Samples, 5);
        var pipeline = new SamplePipeline(Augment, new Normalization([0.5], [0.25]), 1, 16);
        var order = Order(Samples, 9);
        const int b = 3;
        var whole = new LoaderPlan { Order = order, BatchSize = b * world, Train = true, Key = (17, 2), Workers = 2 };
        var shards = Enumerable.Range(0, world).Select(r => whole with { BatchSize = b, Shard = new DataShard(r, world) }).ToArray();
        var perRank = shards.Select(plan =>
        {
            using var loader = new BatchLoader(data, pipeline, Augment, plan);
            return loader.Batches().ToList();
        }).ToArray();

        long full = Samples / (b * world);
        Assert.All(perRank, batches => Assert.Equal(full, batches.Count));
        Assert.All(shards, plan => Assert.Equal(full, plan.Batches));
        Assert.True(whole.Batches > full); // the one-process epoch keeps its last partial batch; the shards drop it
        for (int k = 0; k < full; k++)
        {
            var expected = BatchLoader.Prepare(data, pipeline, Augment, whole, k);
            Assert.Equal(b * world, expected.Count);
            Assert.Equal(order.Skip(k * b * world).Take(b * world), expected.Labels);
            Assert.Equal(expected.Labels, perRank.SelectMany(batches => batches[k].Labels));
            Assert.Equal(expected.Images, perRank.SelectMany(batches => batches[k].Images));
        }

        // Not the trivial case: the augmentation draws differ from one position to the next.
        var first = BatchLoader.Prepare(data, pipeline, Augment, whole with { Key = (18, 2) }, 0);
        Assert.NotEqual(first.Images, BatchLoader.Prepare(data, pipeline, Augment, whole, 0).Images);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void A_shard_micro_batch_with_mixing_is_the_one_process_micro_batch_of_its_global_number(int world)
    {
        using var data = Indexed(Samples, 6);
        var mixing = Augment with { Mixup = 0.8, CutMix = 1.0 };
        var pipeline = new SamplePipeline(mixing, new Normalization([0.5], [0.25]), 1, 16);
        const int b = 3;
        var single = new LoaderPlan { Order = Order(Samples, 4), BatchSize = b, Train = true, Key = (3, 1), Workers = 1 };
        for (int r = 0; r < world; r++)
        {
            var plan = single with { Shard = new DataShard(r, world) };
            for (int k = 0; k < plan.Batches; k++)
            {
                var mine = BatchLoader.Prepare(data, pipeline, mixing, plan, k);
                var reference = BatchLoader.Prepare(data, pipeline, mixing, single, (k * world) + r);
                Assert.NotNull(mine.Targets);
                Assert.Equal(reference.Labels, mine.Labels);
                Assert.Equal(reference.Images, mine.Images);
                Assert.Equal(reference.Targets, mine.Targets);
            }
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void The_shards_of_a_segmentation_step_together_are_the_one_process_batch_of_that_step(int world)
    {
        var data = new SegShapes(Samples, 40, 48, seed: 3);
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (64, 32), CropSize = (24, 24) });
        var order = Order(Samples, 2);
        const int b = 2;
        var perRank = Enumerable.Range(0, world).Select(r =>
        {
            using var loader = SegmentationLoader.ForEpoch(data, pipeline, order, epoch: 3, batchSize: b, firstBatch: 0, batchCount: 100, seed: 21, workers: 2,
                new DataShard(r, world));
            return loader.Batches().ToList();
        }).ToArray();

        var whole = new LoaderPlan { Order = order, BatchSize = b * world, Train = true, Key = (21, 3) };
        long full = Samples / (b * world);
        Assert.All(perRank, batches => Assert.Equal(full, batches.Count));
        for (int k = 0; k < full; k++)
        {
            var expected = SegmentationLoader.Prepare(data, pipeline, whole, k);
            Assert.Equal(order.Skip(k * b * world).Take(b * world), expected.Indices);
            Assert.Equal(expected.Indices, perRank.SelectMany(batches => batches[k].Indices));
            Assert.Equal(expected.Images, perRank.SelectMany(batches => batches[k].Images));
            Assert.Equal(expected.Labels, perRank.SelectMany(batches => batches[k].Labels));
        }
    }

    [Fact]
    public void Evaluation_blocks_are_disjoint_whole_batches_covering_the_set_in_rank_order()
    {
        foreach (long total in new long[] { 0, 1, 2, 5, 23, 100 })
        {
            foreach (int unit in new[] { 1, 3, 8 })
            {
                foreach (int world in new[] { 1, 2, 3, 7 })
                {
                    long next = 0;
                    for (int r = 0; r < world; r++)
                    {
                        var (first, count) = ShardedEvaluation.Block(total, unit, new DataShard(r, world));
                        Assert.True(count >= 0);
                        if (count > 0)
                        {
                            Assert.Equal(next, first);
                            Assert.Equal(0, first % unit);
                            next = first + count;
                        }

                        Assert.True(count % unit == 0 || first + count == total);
                    }

                    Assert.Equal(total, next);
                }
            }
        }

        Assert.Equal("Index", Assert.Throws<ArgumentOutOfRangeException>(() => ShardedEvaluation.Block(5, 1, new DataShard(2, 2))).ParamName);
    }

    // A classifier whose predictions spread over the classes: a random linear map of the flattened image.
    // (Its weights replaced, not perturbed: the default initialisation draws from the global generator, which tests running
    // in parallel share, and the score's range is asserted.)
    private static TorchSharp.Modules.Sequential Classifier(int classes) => Randomized(Sequential(Flatten(), Linear(256, classes)), 0.05, replace: true);

    // Weights drawn from a local generator (the global one is shared with tests running in parallel): replacing the
    // parameters, or added to their initialisation.
    private static T Randomized<T>(T model, double scale, bool replace = false)
        where T : Module
    {
        var g = new Generator(12);
        using var noGrad = no_grad();
        foreach (var p in model.parameters())
        {
            using var draw = randn(p.shape, generator: g);
            Scalars.MulInPlace(draw, scale);
            if (replace)
            {
                p.copy_(draw);
            }
            else
            {
                Scalars.AddInPlace(p, draw);
            }
        }

        return model;
    }

    // Copies of one model (one per rank; the global generator is shared with tests running in parallel, so the copies are
    // made by copying the weights, not by re-seeding).
    private static T[] Copies<T>(int count, Func<T> make)
        where T : Module
    {
        var models = Enumerable.Range(0, count).Select(_ => make()).ToArray();
        using var noGrad = no_grad();
        var reference = models[0].state_dict();
        foreach (var model in models.Skip(1))
        {
            foreach (var (name, value) in model.state_dict())
            {
                value.copy_(reference[name]);
            }
        }

        return models;
    }

    private sealed class Unreadable(IImageDataset inner, IReadOnlySet<long> bad, bool fatal = false) : IImageDataset
    {
        public IReadOnlyList<string> ClassNames => inner.ClassNames;

        public long Count => inner.Count;

        public int Channels => inner.Channels;

        public (int Height, int Width)? FixedSize => inner.FixedSize;

        public string Describe(long index) => $"img#{index}";

        public long Label(long index) => inner.Label(index);

        public ImageU8 Read(long index) => !bad.Contains(index) ? inner.Read(index)
            : fatal ? throw new InvalidOperationException($"disk gone at {index}") : throw new DatasetException($"broken {index}");
    }

    private static ClassificationTask Task(IImageDataset test, int evalBatch)
    {
        var pipeline = new SamplePipeline(Augment, new Normalization([0.5], [0.25]), 1, 16);
        return new ClassificationTask(test, test, pipeline, Augment, null, evalBatch, workers: 1, CPU, null);
    }

    private static ImageTensorDataset FourClasses(int count, int seed)
    {
        var g = new Generator((ulong)seed);
        var images = Scalars.MulInPlace(rand([count, 1, 16, 16], generator: g), 255).to(ScalarType.Byte);
        var labels = randint(0, 4, [count], generator: g, dtype: int64);
        return new ImageTensorDataset(images, labels, ["a", "b", "c", "d"]);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void A_sharded_classification_score_is_the_one_process_score_on_every_rank(int world)
    {
        var test = new Unreadable(FourClasses(29, 8), new HashSet<long> { 4, 22 });
        var task = Task(test, evalBatch: 4);
        var pipeline = task.Pipeline;
        var models = Copies(world + 1, () => Classifier(4));
        var one = Evaluation.Run(models[world], 4, test, pipeline, 4, CPU, 1, CancellationToken.None);
        var oneNotices = new List<string>();
        double oneScore = task.Score(models[world], ProcessGroup.Single, oneNotices.Add, CancellationToken.None).Value;
        Assert.Equal(one.Top1, oneScore);
        Assert.InRange(one.Top1, 0.05, 0.95); // not a constant prediction
        Assert.Equal(27, one.Count);

        var results = new EvaluationResult[world];
        var scores = new double[world];
        var notices = new List<string>[world];
        ThreadProcessGroup.Run(world, g =>
        {
            results[g.Rank] = Evaluation.Run(models[g.Rank], 4, test, pipeline, 4, CPU, 1, g, CancellationToken.None);
            notices[g.Rank] = [];
            scores[g.Rank] = ((ITrainingTask)task).Score(models[g.Rank], g, notices[g.Rank].Add, CancellationToken.None).Value; // as the loop calls it
            // Per evaluation: one reduction, then one broadcast from each of the two ranks whose blocks hold a skipped image.
            Assert.Equal(world > 1 ? 6 : 0, g.Collectives);
        });

        for (int r = 0; r < world; r++)
        {
            var got = results[r];
            Assert.Equal(one.Count, got.Count);
            Assert.Equal(one.Top1, got.Top1);
            Assert.Equal(one.Top5, got.Top5);
            Assert.Equal(one.Confusion, got.Confusion);
            Assert.Equal(one.PerClass, got.PerClass);
            // The per-batch loss is a float32 sum whose rounding libtorch's CPU reduction may change from thread to thread
            // (even one process on another thread differs at ~1e-8): the loss is compared at float32 precision.
            Assert.True(Math.Abs(one.Loss - got.Loss) <= 1e-6 * Math.Abs(one.Loss), $"loss {got.Loss} vs {one.Loss}");
            Assert.Equal(one.Skipped, got.Skipped);
            Assert.Equal(oneScore, scores[r]);
            Assert.Equal(oneNotices, notices[r]);
        }
    }

    [Fact]
    public void A_cancelled_or_failing_rank_does_not_leave_the_others_in_a_collective()
    {
        const int world = 3;
        var test = FourClasses(24, 3);
        var task = Task(test, evalBatch: 4);
        var models = Copies(world, () => Classifier(4));
        var errors = new Exception?[world];
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        ThreadProcessGroup.Run(world, g =>
        {
            var token = g.Rank == 1 ? cancelled.Token : CancellationToken.None;
            errors[g.Rank] = Record.Exception(() => task.Score(models[g.Rank], g, null, token));
        });
        Assert.All(errors, e => Assert.IsAssignableFrom<OperationCanceledException>(e));

        // Rank 2's block (images 16–23) holds an image whose read fails outright.
        var failing = Task(new Unreadable(test, new HashSet<long> { 18 }, fatal: true), evalBatch: 4);
        ThreadProcessGroup.Run(world, g => errors[g.Rank] = Record.Exception(() => failing.Score(models[g.Rank], g, null, CancellationToken.None)));
        Assert.IsType<CollectiveException>(errors[0]);
        Assert.IsType<CollectiveException>(errors[1]);
        Assert.NotNull(errors[2]);
        Assert.IsNotType<CollectiveException>(errors[2]);
        Assert.Contains("disk gone at 18", errors[2]!.ToString(), StringComparison.Ordinal);
    }

    private static EncoderDecoder Segmenter()
    {
        return Randomized(new EncoderDecoder(SegShapes.TinyConfig()), 1.0); // far from the initialisation: predictions mix the classes
    }

    private sealed class BrokenSeg(ISegmentationDataset inner, long bad) : ISegmentationDataset
    {
        public long Count => inner.Count;

        public IReadOnlyList<string> ClassNames => inner.ClassNames;

        public IReadOnlyList<(byte R, byte G, byte B)> Palette => inner.Palette;

        public string Describe(long index) => inner.Describe(index);

        public SegmentationSample Read(long index) => index == bad ? throw new DatasetException($"broken {index}") : inner.Read(index);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void A_sharded_segmentation_score_and_its_details_are_the_one_process_ones_on_every_rank(int world)
    {
        var train = new SegShapes(4, 32, 32, seed: 1);
        var val = new BrokenSeg(new SegShapes(8, 30, 38, seed: 9), bad: 5);
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (48, 24), CropSize = (24, 24) });
        var evaluator = new SegmentationEvaluator(val, pipeline, SegmentationTestConfig.Whole);
        var task = new SegmentationTask(train, pipeline, evaluator, "tiny", train.ClassNames, train.Palette);
        var models = Copies(world + 1, Segmenter);
        var oneNotices = new List<string>();
        var one = task.Score(models[world], oneNotices.Add, CancellationToken.None);
        var oneScores = task.LastScores!;
        Assert.Equal(7, oneScores.Images);
        Assert.Contains(oneScores.IoU, iou => iou is > 0 and < 1);
        Assert.Single(oneNotices);

        var scores = new TaskScore[world];
        var notices = new List<string>[world];
        var tasks = Enumerable.Range(0, world).Select(_ => new SegmentationTask(train, pipeline, evaluator, "tiny", train.ClassNames, train.Palette)).ToArray();
        ThreadProcessGroup.Run(world, g =>
        {
            notices[g.Rank] = [];
            scores[g.Rank] = ((ITrainingTask)tasks[g.Rank]).Score(models[g.Rank], g, notices[g.Rank].Add, CancellationToken.None); // as the loop calls it
        });

        for (int r = 0; r < world; r++)
        {
            Assert.Equal(one.Value, scores[r].Value);
            Assert.Equal(one.Details!, scores[r].Details!);
            Assert.Equal(oneNotices, notices[r]);
            var got = tasks[r].LastScores!;
            Assert.Equal(oneScores.Images, got.Images);
            Assert.Equal(oneScores.IoU, got.IoU);
            Assert.Equal(oneScores.Accuracy, got.Accuracy);
            Assert.Equal(oneScores.AllAccuracy, got.AllAccuracy);
        }
    }

    [Fact]
    public void Segmentation_counts_survive_the_float64_round_trip_and_bad_counts_are_refused()
    {
        var metrics = new SegmentationMetrics(3);
        metrics.Update([0, 1, 2, 2, 1, 0], [0, 1, 1, 255, 2, 7]);
        var back = SegmentationMetrics.FromCounts(3, metrics.ToCounts());
        Assert.Equal(metrics.AreaIntersect, back.AreaIntersect);
        Assert.Equal(metrics.AreaPrediction, back.AreaPrediction);
        Assert.Equal(metrics.AreaLabel, back.AreaLabel);
        Assert.Equal(metrics.Images, back.Images);
        Assert.Equal("counts", Assert.Throws<ArgumentException>(() => SegmentationMetrics.FromCounts(3, new double[9])).ParamName);
        Assert.Equal("counts", Assert.Throws<ArgumentException>(() => SegmentationMetrics.FromCounts(1, [0.5, 0, 0, 1])).ParamName);
    }
}
