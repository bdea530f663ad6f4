using RepLKNet.Models;
using RepLKNet.Reparam;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;
using Xunit.Abstractions;

namespace RepLKNet.Tests.Reparam;

public sealed class FullSizeReparamTests
{
    private readonly ITestOutputHelper _output;

    public FullSizeReparamTests(ITestOutputHelper output)
    {
        _output = output;
        Torch.EnsureLoaded();
    }

    [Fact]
    public void RepLKNet_31B_at_224_deploy_form_matches_the_train_form_within_1e_4()
    {
        using var scope = NewDisposeScope();
        long seed = Environment.TickCount64;
        var generator = new Generator((ulong)seed);
        var model = new RepLKNetModel(ModelRegistry.Find("RepLKNet-31B")!.Config);
        RandomModels.RandomizeBatchNorms(model, generator);
        var deploy = Reparameterizer.ReparameterizedCopy(model);
        var x = randn([2, 3, 224, 224], generator: generator);

        var report = EquivalenceCheck.Compare(model, deploy, x);

        _output.WriteLine($"31B@224 batch 2: max |train − deploy| = {report.EndToEnd.MaxAbsDiff:E3}, max |logit| = {report.EndToEnd.MaxAbsReference:F3}");
        Assert.Equal(2 + 2 + 18 + 2, report.Steps.Count(s => s.Module.StartsWith("stages.", StringComparison.Ordinal)) / 2);
        Assert.True(report.EndToEnd.MaxAbsDiff <= 1e-4,
            $"31B@224: max |train − deploy| = {report.EndToEnd.MaxAbsDiff:E3} on logits up to {report.EndToEnd.MaxAbsReference:F3} (seed {seed})");
        Assert.True(report.EndToEnd.MaxAbsDiff > 0, "the forms compute differently rounded sums: an exact 0 means one model ran twice");
    }
}
