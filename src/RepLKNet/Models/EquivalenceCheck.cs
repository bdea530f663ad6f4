using static TorchSharp.torch;

namespace RepLKNet.Models;

/// <summary>Max |reference − candidate| after one part of the network, both fed their own previous outputs.</summary>
/// <param name="Module">Module name (stem.i, stages.i.blocks.j, transitions.i, head), or "end to end" in <see cref="EquivalenceReport.EndToEnd"/>.</param>
/// <param name="MaxAbsDiff">Largest absolute element-wise difference of the two outputs (in the outputs' units; computed in float64).</param>
/// <param name="MaxAbsReference">Largest absolute reference output (for scale).</param>
public sealed record StepDifference(string Module, double MaxAbsDiff, double MaxAbsReference);

/// <summary>Result of comparing two forms of a model on one batch.</summary>
/// <param name="Steps">Per-module differences, in network order.</param>
/// <param name="EndToEnd">The final output's difference: the last step's (the head's logits for a classifier, the last stage's blocks for a backbone), named "end to end".</param>
public sealed record EquivalenceReport(IReadOnlyList<StepDifference> Steps, StepDifference EndToEnd)
{
    /// <summary>End-to-end max abs difference relative to the largest reference output (a ratio; the denominator is at least 1e-30), compared with <see cref="EquivalenceCheck.DefaultTolerance"/>.</summary>
    public double RelativeEndToEnd => EndToEnd.MaxAbsDiff / Math.Max(EndToEnd.MaxAbsReference, 1e-30);
}

/// <summary>Runs two forms of the same RepLKNet side by side (eval mode) and records where they drift apart.</summary>
public static class EquivalenceCheck
{
    /// <summary>
    /// The largest end-to-end difference, relative to the largest reference output
    /// (<see cref="EquivalenceReport.RelativeEndToEnd"/>), at which two forms count as equivalent: float32 rounding of a
    /// re-parameterized model stays well below it, a wrong merge lands far above it.
    /// </summary>
    public const double DefaultTolerance = 1e-4;

    /// <summary>
    /// Compares <paramref name="candidate"/> with <paramref name="reference"/> on <paramref name="input"/> (N, C_in, H, W),
    /// module by module; both are switched to eval mode and run without gradients. The steps are those of
    /// <paramref name="reference"/>: the four stem convs, each stage's blocks, the transitions and, for a classifier, the head
    /// (<see cref="RepLKNetModel.forward_head"/>); the stages' feature norms of backbone mode are not run. The candidate
    /// must have the same topology apart from each module's training or deploy form (e.g. the model before and after
    /// <see cref="RepLKNetModel.Reparameterize"/>); its modules that the reference lacks are ignored.
    /// </summary>
    /// <param name="reference">The trusted form (usually the training form).</param>
    /// <param name="candidate">The form under test, on the same device as <paramref name="reference"/>.</param>
    /// <param name="input">Images [N, C_in, H, W] (H and W in pixels), on the models' device.</param>
    /// <returns>The per-step differences and the end-to-end one; the caller judges them (e.g. against <see cref="DefaultTolerance"/>).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="reference"/> or <paramref name="candidate"/> is null.</exception>
    /// <exception cref="KeyNotFoundException">
    /// <paramref name="candidate"/> lacks a step of <paramref name="reference"/> (fewer stages or blocks, or a backbone compared with a
    /// classifier); channel or shape mismatches fail inside TorchSharp instead.
    /// </exception>
    public static EquivalenceReport Compare(RepLKNetModel reference, RepLKNetModel candidate, Tensor input)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(candidate);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        reference.eval();
        candidate.eval();
        var steps = new List<StepDifference>();
        var refChildren = Children(reference);
        var candChildren = Children(candidate);
        var a = input;
        var b = input;
        foreach (var (name, refModule) in refChildren)
        {
            a = refModule(a);
            b = candChildren[name](b);
            steps.Add(Difference(name, a, b));
        }

        var end = steps[^1];
        return new EquivalenceReport(steps, end with { Module = "end to end" });
    }

    private static StepDifference Difference(string name, Tensor a, Tensor b) =>
        new(name, (a - b).abs().max().to(float64).item<double>(), a.abs().max().to(float64).item<double>());

    // The model unrolled into named steps: stem items, each stage's blocks, transitions, then the classifier head.
    private static Dictionary<string, Func<Tensor, Tensor>> Children(RepLKNetModel model)
    {
        var steps = new Dictionary<string, Func<Tensor, Tensor>>();
        var named = model.named_modules().ToDictionary(m => m.name, m => m.module);
        for (int i = 0; i < 4; i++)
        {
            var m = (nn.Module<Tensor, Tensor>)named[$"stem.{i}"];
            steps[$"stem.{i}"] = m.call;
        }

        for (int i = 0; i < model.Stages.Count; i++)
        {
            var blocks = model.Stages[i].Blocks;
            for (int j = 0; j < blocks.Count; j++)
            {
                steps[$"stages.{i}.blocks.{j}"] = blocks[j].call;
            }

            if (i < model.Stages.Count - 1)
            {
                var t = (nn.Module<Tensor, Tensor>)named[$"transitions.{i}"];
                steps[$"transitions.{i}"] = t.call;
            }
        }

        if (model.Config.NumClasses is not null)
        {
            steps["head"] = x => model.forward_head(x);
        }

        return steps;
    }
}
