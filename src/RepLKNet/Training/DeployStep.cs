using RepLKNet.Checkpoints;
using RepLKNet.Models;

namespace RepLKNet.Training;

/// <summary>
/// The finish of a training run: the best checkpoint re-parameterized into its deploy form, verified against the train form
/// on a random batch and written beside it (<see cref="CheckpointReparameterization"/>, what <c>replknet reparam</c> does).
/// </summary>
public static class DeployStep
{
    /// <summary>Re-parameterizes <paramref name="bestCheckpoint"/> (train form, project format) into <paramref name="deployPath"/>.</summary>
    /// <param name="bestCheckpoint">The trained checkpoint.</param>
    /// <param name="deployPath">Where the deploy checkpoint goes (atomically).</param>
    /// <param name="inputSize">Side S of the verification batch [4, C, S, S] (the run's input size).</param>
    /// <param name="tolerance">Allowed relative end-to-end difference.</param>
    /// <returns>The comparison report of the written checkpoint.</returns>
    /// <exception cref="CheckpointException">The checkpoint cannot be read.</exception>
    /// <exception cref="InvalidOperationException">The two forms differ by more than <paramref name="tolerance"/>; nothing was written.</exception>
    public static EquivalenceReport Write(string bestCheckpoint, string deployPath, int inputSize, double tolerance = EquivalenceCheck.DefaultTolerance)
    {
        var result = CheckpointReparameterization.Convert(bestCheckpoint, new ModelLoadOptions(), deployPath,
            new ReparamOptions { InputSize = inputSize, Seed = 1, Tolerance = tolerance });
        return result.Written
            ? result.Report
            : throw new InvalidOperationException($"the re-parameterized model differs from the trained one by {result.Report.RelativeEndToEnd:E2}; '{deployPath}' was not written");
    }
}
