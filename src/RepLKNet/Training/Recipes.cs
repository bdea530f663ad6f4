using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>
/// The knobs every recipe has; each recipe's record (<see cref="TrainOptions"/>, <see cref="ClassifierTrainingOptions"/>)
/// sets their defaults in its constructor and adds its own.
/// </summary>
public abstract record RecipeOptions
{
    /// <summary>Sets the recipe's defaults of the shared knobs.</summary>
    protected RecipeOptions(int batchSize, double learningRate, double weightDecay)
    {
        BatchSize = batchSize;
        LearningRate = learningRate;
        WeightDecay = weightDecay;
    }

    /// <summary>Per-channel normalization of [0, 1] inputs.</summary>
    public required Normalization Normalization { get; init; }

    /// <summary>Training augmentation and the eval crop (label smoothing lives here too).</summary>
    public AugmentOptions Augment { get; init; } = new();

    /// <summary>Samples per (micro-)batch.</summary>
    public int BatchSize { get; init; }

    /// <summary>Peak AdamW learning rate, reached after the warm-up.</summary>
    public double LearningRate { get; init; }

    /// <summary>AdamW weight decay (not applied to biases and 1-D parameters).</summary>
    public double WeightDecay { get; init; }

    /// <summary>Seed of initialization (where the recipe builds the model), data order and every augmentation draw.</summary>
    public long Seed { get; init; }

    /// <summary>Stop after this many optimizer steps whatever the budget (smoke runs); null: no limit.</summary>
    public long? MaxSteps { get; init; }

    /// <summary>
    /// Use only this many training images; null: all. Which ones is the recipe's choice: the first N for the official recipe
    /// (<see cref="TrainingPool.First"/>), a seeded random subset for the experiments (<see cref="TrainingPool.Random"/>).
    /// </summary>
    public long? TrainSubset { get; init; }

    /// <summary>Background threads preparing batches.</summary>
    public int Workers { get; init; } = LoaderPlan.DefaultWorkers;

    /// <summary>Device of the model and batches.</summary>
    public Device Device { get; init; } = CPU;

    /// <summary>Checks every knob's range; the recipes call it before any work.</summary>
    /// <exception cref="ArgumentException">A value is out of range; the message starts with the property's name, which <see cref="ArgumentException.ParamName"/> holds.</exception>
    public virtual void Validate()
    {
        Check(BatchSize >= 1, nameof(BatchSize), $"must be ≥ 1, got {BatchSize}");
        Check(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), $"must be positive, got {LearningRate}");
        Check(WeightDecay >= 0 && double.IsFinite(WeightDecay), nameof(WeightDecay), $"must be ≥ 0, got {WeightDecay}");
        Check(MaxSteps is null or >= 1, nameof(MaxSteps), $"must be ≥ 1, got {MaxSteps}");
        Check(TrainSubset is null or >= 1, nameof(TrainSubset), $"must be ≥ 1, got {TrainSubset}");
        Check(Workers >= 1, nameof(Workers), $"must be ≥ 1, got {Workers}");
        Augment.Validate();
    }

    /// <summary>Throws <see cref="ArgumentException"/> "<paramref name="name"/> <paramref name="problem"/>" unless <paramref name="ok"/>.</summary>
    protected static void Check(bool ok, string name, string problem) => OptionCheck.That(ok, name, problem);
}

/// <summary>
/// The recipes' data defaults, in one place beside their optimizer defaults (<see cref="TrainOptions"/> for the official
/// recipe, <see cref="ClassifierTrainingOptions"/> for the compact experiment recipe): the official ImageNet augmentation
/// and the per-dataset augmentation both recipes start from.
/// </summary>
public static class Recipes
{
    /// <summary>Augmentation presets accepted by <see cref="Augmentation"/>.</summary>
    public static IReadOnlyList<string> Presets { get; } = ["default", "none", "official"];

    /// <summary>
    /// The official ImageNet training augmentation at <paramref name="inputSize"/> (timm's <c>create_transform</c> as the
    /// official <c>main.py</c> calls it): RandomResizedCrop 0.08–1 bicubic, flip 0.5, RandAugment rand-m9-mstd0.5-inc1,
    /// RandomErasing 0.25 (pixel mode), Mixup 0.8 / CutMix 1.0, label smoothing 0.1; eval crop 0.875.
    /// </summary>
    public static AugmentOptions OfficialAugment(int inputSize) => new()
    {
        InputSize = inputSize, CropScale = (0.08, 1.0), HorizontalFlip = 0.5, RandAugment = "rand-m9-mstd0.5-inc1",
        EraseProbability = 0.25, Mixup = 0.8, CutMix = 1.0, LabelSmoothing = 0.1, CropPct = 0.875,
    };

    /// <summary>
    /// The augmentation a dataset trains with by default: Fashion-MNIST without augmentation (28×28 grey garments: no crops
    /// or flips unless asked), CIFAR-10 with crops (scale 0.35–1), flips, RandAugment and random erasing at 32×32, an image
    /// folder with <see cref="OfficialAugment"/> at 224. Label smoothing 0.1 everywhere.
    /// </summary>
    /// <param name="dataset">fashion-mnist, cifar10 or folder (<see cref="Data.Datasets.Canonical"/> names).</param>
    /// <exception cref="ArgumentException">Another name.</exception>
    public static AugmentOptions DatasetAugment(string dataset)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        return Data.Datasets.Canonical(dataset) switch
        {
            "fashion-mnist" => new AugmentOptions { LabelSmoothing = 0.1 },
            "cifar10" => new AugmentOptions
            {
                CropScale = (0.35, 1.0), HorizontalFlip = 0.5, RandAugment = "rand-m9-mstd0.5-inc1", EraseProbability = 0.25, LabelSmoothing = 0.1,
            },
            "folder" => OfficialAugment(224),
            _ => throw new ArgumentException($"dataset '{dataset}': use {string.Join(", ", Data.Datasets.Names)}", nameof(dataset)),
        };
    }

    /// <summary>
    /// A preset: <c>default</c> (<see cref="DatasetAugment"/>), <c>none</c> (label smoothing 0.1 only) or <c>official</c>
    /// (<see cref="OfficialAugment"/> at the dataset's image size, else its default input size, else 224).
    /// </summary>
    /// <param name="preset">default, none or official.</param>
    /// <param name="dataset">The dataset's canonical name.</param>
    /// <param name="imageSize">The dataset's fixed image side, or null when sizes vary.</param>
    /// <exception cref="ArgumentException">An unknown preset or dataset.</exception>
    public static AugmentOptions Augmentation(string preset, string dataset, int? imageSize)
    {
        ArgumentNullException.ThrowIfNull(preset);
        return preset switch
        {
            "none" => new AugmentOptions { LabelSmoothing = 0.1 },
            "official" => OfficialAugment(imageSize ?? DatasetAugment(dataset).InputSize ?? 224),
            "default" => DatasetAugment(dataset),
            _ => throw new ArgumentException($"preset '{preset}': use {string.Join(", ", Presets)}", nameof(preset)),
        };
    }
}
