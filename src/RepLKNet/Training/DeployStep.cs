using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Reparam;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>What <see cref="DeployStep.Write"/> did.</summary>
/// <param name="DeployPath">The deploy checkpoint written.</param>
/// <param name="Report">Train form vs deploy form on the probe batch, module by module.</param>
public sealed record DeployResult(string DeployPath, EquivalenceReport Report);

/// <summary>
/// The finish of a training run: load the best checkpoint, re-parameterize a copy (the official
/// <c>structural_reparam</c>), verify it against the train form on a random batch, and write the deploy checkpoint with the
/// same metadata (form: deploy) — only when the two agree within <see cref="EquivalenceCheck.DefaultTolerance"/>.
/// </summary>
public static class DeployStep
{
    /// <summary>Re-parameterizes <paramref name="bestCheckpoint"/> (train form, project format) into <paramref name="deployPath"/>.</summary>
    /// <param name="bestCheckpoint">The trained checkpoint.</param>
    /// <param name="deployPath">Where the deploy checkpoint goes (atomically).</param>
    /// <param name="inputSize">Side of the square probe batch [4, C, S, S] (the run's input size).</param>
    /// <param name="tolerance">Allowed relative end-to-end difference.</param>
    /// <exception cref="CheckpointException">The checkpoint cannot be read.</exception>
    /// <exception cref="InvalidOperationException">The two forms differ by more than <paramref name="tolerance"/>; nothing was written.</exception>
    public static DeployResult Write(string bestCheckpoint, string deployPath, int inputSize, double tolerance = EquivalenceCheck.DefaultTolerance)
    {
        ArgumentNullException.ThrowIfNull(bestCheckpoint);
        ArgumentNullException.ThrowIfNull(deployPath);
        using var best = ModelLoader.Load(bestCheckpoint, new ModelLoadOptions()).Model;
        using var deploy = Reparameterizer.ReparameterizedCopy(best);
        using var scope = NewDisposeScope();
        using var generator = new Generator(1);
        var probe = randn([4, best.Config.InChannels, inputSize, inputSize], generator: generator);
        var report = EquivalenceCheck.Compare(best, deploy, probe);
        if (report.RelativeEndToEnd > tolerance)
        {
            throw new InvalidOperationException($"the re-parameterized model differs from the trained one by {report.RelativeEndToEnd:E2}; '{deployPath}' was not written");
        }

        using var checkpoint = CheckpointFile.Read(bestCheckpoint);
        CheckpointFile.WriteRepLKNet(deployPath, StateDicts.Ordered(deploy), checkpoint.Metadata! with { Form = ModelForm.Deploy });
        return new DeployResult(deployPath, report);
    }
}
