using RepLKNet.Data;
using RepLKNet.Models;

namespace RepLKNet.Checkpoints;

/// <summary>
/// How a loaded checkpoint's inputs must be prepared for evaluation: its recorded preprocessing, else its variant's
/// pretrained configuration, else ImageNet's at 224 (crop fraction 0.875); ImageNet's three means and stds are averaged
/// for one-channel models.
/// </summary>
/// <param name="InputSize">Square input size.</param>
/// <param name="Channels">Input channels.</param>
/// <param name="Normalization">Mean and std on [0, 1].</param>
/// <param name="CropPct">Resize the short side to size / crop_pct, then centre-crop.</param>
public sealed record EvalPreprocessing(int InputSize, int Channels, Normalization Normalization, double CropPct)
{
    /// <summary>The preprocessing of <paramref name="loaded"/>; <paramref name="inputSize"/> overrides the size.</summary>
    public static EvalPreprocessing From(LoadedModel loaded, int? inputSize = null)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        var pretrained = ModelRegistry.Find(loaded.Arch)?.Pretrained;
        var pre = loaded.Metadata?.Preprocessing;
        int size = inputSize ?? pre?.InputSize ?? pretrained?.InputSize.H ?? 224;
        int channels = loaded.Model.Config.InChannels;
        Normalization normalization = pre is not null
            ? pre.Normalization
            : pretrained is { } p
                ? new Normalization([p.Mean.R, p.Mean.G, p.Mean.B], [p.Std.R, p.Std.G, p.Std.B])
                : Normalization.ImageNet;
        if (normalization.Mean.Count == 3 && channels == 1)
        {
            normalization = new Normalization([normalization.Mean.Average()], [normalization.Std.Average()]);
        }

        return new EvalPreprocessing(size, channels, normalization, pre?.CropPct ?? 0.875);
    }
}
