using RepLKNet.Data;
using RepLKNet.Distributed;
using RepLKNet.Tests.Support;
using RepLKNet.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using BatchNorm2d = RepLKNet.Layers.BatchNorm2d;

namespace RepLKNet.Tests.Distributed;

/// <summary>
/// The optimizer step of a data-parallel job, with threads standing in for ranks: rank 0's BatchNorm buffers each step
/// (DDP's broadcast_buffers), a micro-batch one rank cannot train on skipped by all, and a layout mismatch refused
/// before any gradient is exchanged.
/// </summary>
public sealed class DataParallelStepTests
{
    [Fact]
    public void BroadcastBuffers_gives_every_rank_rank_0s_running_statistics_and_leaves_counters()
    {
        var seen = new float[3][];
        ThreadProcessGroup.Run(3, g =>
        {
            using var bn = new BatchNorm2d(4);
            using (no_grad())
            {
                bn.running_mean!.fill_(g.Rank + 1.5);
                bn.running_var!.fill_(10 * (g.Rank + 1));
                bn.num_batches_tracked!.fill_(g.Rank + 7);
            }

            GradientReducer.BroadcastBuffers(g, bn);
            seen[g.Rank] = [bn.running_mean!.mean().item<float>(), bn.running_var!.mean().item<float>(), bn.num_batches_tracked!.item<long>()];
        });
        for (int r = 0; r < 3; r++)
        {
            Assert.Equal(1.5f, seen[r][0]);
            Assert.Equal(10f, seen[r][1]);
            Assert.Equal(r + 7, seen[r][2]); // integer buffers are not sent
        }
    }

    [Fact]
    public void A_micro_batch_one_rank_cannot_train_on_is_skipped_by_every_rank()
    {
        // Two micro-batches per step; rank 1's first has no readable sample: both ranks skip it and train on the second
        // only, then average the same gradients (a rank that trained alone would wait in the gradient allreduce).
        var forwards = new int[2];
        var weights = new float[2][];
        ThreadProcessGroup.Run(2, g =>
        {
            using var model = new Probe();
            using (no_grad())
            {
                model.weight.fill_(1.0);
            }

            var (optimizer, scales) = TrainStep.CreateOptimizer(model, 0.1, 0);
            using var disposeOptimizer = optimizer;
            var step = new TrainStep(model, optimizer, scales, CPU, accumulationSteps: 2)
            {
                Reducer = new GradientReducer(g, model.parameters()), Group = g,
            };
            var data = new Batches([g.Rank == 1 ? 0 : 2, 2], g.Rank, () => forwards[g.Rank]++);
            using var scope = NewDisposeScope();
            var outcome = step.Run(data, 0.1, 1);
            Assert.Equal(2, outcome.Samples); // the second micro-batch only
            weights[g.Rank] = model.weight.data<float>().ToArray();
        });
        Assert.Equal([1, 1], forwards);
        Assert.Equal(weights[0], weights[1]);
    }

    [Fact]
    public void Different_models_are_refused_before_any_gradient_is_exchanged()
    {
        var errors = new string?[2];
        ThreadProcessGroup.Run(2, g =>
        {
            using var model = Linear(3, g.Rank == 0 ? 2 : 3);
            using var scope = NewDisposeScope();
            model.call(ones(1, 3)).sum().backward();
            var reducer = new GradientReducer(g, model.parameters(), bucketBytes: 4); // a bucket per parameter
            var e = Assert.Throws<InvalidOperationException>(reducer.Reduce);
            errors[g.Rank] = e.Message;
            Assert.Equal(1, g.Collectives); // the layout check only: no bucket went out
        });
        Assert.All(errors, m => Assert.Contains("differ in layout", m, StringComparison.Ordinal));
    }

    /// <summary>y = w·x summed; the loss is its mean.</summary>
    private sealed class Probe : Module<Tensor, Tensor>
    {
        public Probe()
            : base(nameof(Probe))
        {
            weight = Parameter(zeros(4));
            RegisterComponents();
        }

#pragma warning disable IDE1006 // PyTorch's parameter name
        public Parameter weight { get; }
#pragma warning restore IDE1006

        public override Tensor forward(Tensor input) => (input * weight).sum(1);
    }

    /// <summary>Micro-batches of the given sizes (0: none readable); values depend on the rank so the ranks' gradients differ.</summary>
    private sealed class Batches(int[] counts, int rank, Action onForward) : ITrainingEpoch
    {
        private int _next = -1;

        public int Count => counts[_next];

        public IReadOnlyList<SkippedImage> Skipped => Count == 0 ? [new SkippedImage(0, "bad.png", "unreadable")] : [];

        public TimeSpan WaitTime => TimeSpan.Zero;

        public bool MoveNext() => ++_next < counts.Length;

        public Tensor Loss(Module<Tensor, Tensor> model, Device device)
        {
            onForward();
            var x = arange(Count * 4, dtype: ScalarType.Float32).view(Count, 4).add(rank);
            return model.call(x).mean();
        }

        public void Dispose()
        {
        }
    }
}

/// <summary>The data-parallel flags' bad values, in one process: one line naming the flag, exit 2.</summary>
public sealed class DataParallelFlagTests
{
    [Theory]
    [InlineData("--collective-timeout 0 must be a number of seconds in [0.1, 604800]", "train", "--collective-timeout", "0")]
    [InlineData("--collective-timeout 1E+300 must be", "train", "--collective-timeout", "1e300")]
    [InlineData("--collective-timeout 'abc' is not a number", "train", "--collective-timeout", "abc")]
    [InlineData("--collective-timeout -1 must be", "seg", "train", "--collective-timeout", "-1")]
    [InlineData("--collective-timeout 0 must be", "distributed", "check", "--collective-timeout", "0")]
    [InlineData("--allow-world-size-change does not apply without --resume", "train", "--allow-world-size-change")]
    [InlineData("--allow-world-size-change does not apply without --resume", "seg", "train", "--allow-world-size-change")]
    [InlineData("--dtype 'float16': use float32 or float64", "train", "--dtype", "float16")]
    [InlineData("--dtype 'half': use float32 or float64", "seg", "train", "--dtype", "half")]
    [InlineData("--lr 'abc' is not a number", "train", "--lr", "abc")]
    [InlineData("--epochs 'x' is not an integer", "train", "--epochs", "x")]
    public void Bad_values_name_the_flag(string expected, params string[] args)
    {
        var result = CliRunner.Run([.. args, "--device", "cpu"]);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(expected, result.StdErr, StringComparison.Ordinal);
        Assert.Single(result.StdErr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("replknet: usage:", StringComparison.Ordinal));
    }

    [Fact]
    public void Open_MPIs_launcher_is_named_and_a_stray_variable_of_one_process_is_ignored()
    {
        var several = CliRunner.Run(new Dictionary<string, string?> { ["OMPI_COMM_WORLD_SIZE"] = "4" }, "models");
        Assert.Equal(1, several.ExitCode);
        Assert.Contains("Open MPI", several.StdErr, StringComparison.Ordinal);
        var one = CliRunner.Run(new Dictionary<string, string?> { ["OMPI_COMM_WORLD_SIZE"] = "1" }, "models");
        Assert.True(one.ExitCode == 0, one.StdErr);
    }
}
