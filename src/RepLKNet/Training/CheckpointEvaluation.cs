using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>
/// Evaluates a loaded checkpoint on a dataset's test split (a folder's validation part) with the preprocessing the
/// checkpoint was trained with: what <c>replknet eval</c> does.
/// </summary>
public static class CheckpointEvaluation
{
    /// <summary>
    /// The eval pipeline for <paramref name="loaded"/> on <paramref name="splits"/>: the checkpoint's recorded preprocessing
    /// (normalization, input size, crop fraction) where it has one, else the dataset's (its normalization; its images' size,
    /// else the recipe's input size for it, else 224; the recipe's crop fraction). <paramref name="inputSize"/> (pixels,
    /// square) overrides the size.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="inputSize"/> is not positive.</exception>
    public static SamplePipeline Pipeline(LoadedModel loaded, DatasetSplits splits, int? inputSize = null)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        ArgumentNullException.ThrowIfNull(splits);
        if (inputSize is int requested)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(requested, nameof(inputSize));
        }

        var recorded = loaded.Metadata?.Preprocessing;
        var recipe = Recipes.DatasetAugment(splits.Name);
        int size = inputSize ?? recorded?.InputSize ?? splits.Test.FixedSize?.Height ?? recipe.InputSize ?? 224;
        return new SamplePipeline(new AugmentOptions { CropPct = recorded?.CropPct ?? recipe.CropPct }, recorded?.Normalization ?? splits.Normalization,
            splits.Test.Channels, size);
    }

    /// <summary>
    /// Moves <paramref name="loaded"/>'s model to <paramref name="device"/> and evaluates it (eval mode, no gradients) on
    /// <paramref name="splits"/>' test split through <see cref="Pipeline"/>, <paramref name="batchSize"/> images at a time, with
    /// <paramref name="workers"/> loader threads (null: <see cref="LoaderPlan.DefaultWorkers"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> or <paramref name="inputSize"/> is not positive.</exception>
    /// <exception cref="DatasetException">The model's classes differ from the dataset's, or no test image could be read.</exception>
    public static EvaluationResult Run(LoadedModel loaded, DatasetSplits splits, int batchSize, Device device, int? inputSize = null, int? workers = null)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        ArgumentNullException.ThrowIfNull(splits);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var pipeline = Pipeline(loaded, splits, inputSize);
        loaded.Model.to(device);
        return Evaluation.Run(loaded.Model, splits.Test, pipeline, batchSize, device, workers);
    }
}
