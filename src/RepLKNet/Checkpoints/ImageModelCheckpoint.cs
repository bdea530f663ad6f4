using System.Text.Json;
using RepLKNet.Models;

namespace RepLKNet.Checkpoints;

/// <summary>
/// Writes a trained model of any family as safetensors that the project's readers take back (the ERF tool's model
/// loading, <see cref="MobileNetV2Checkpoint.Read"/>): a MobileNetV2 in its own format (configuration, form and
/// class names in the metadata), any other family with its own state-dict keys (TorchVision's for ResNet) and the metadata
/// <c>replknet.model</c> (the factory name), <c>replknet.classes</c> (JSON array) and <c>replknet.dataset</c>.
/// </summary>
public static class ImageModelCheckpoint
{
    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/> atomically. <paramref name="name"/> is its
    /// <see cref="ModelFactory"/> name (e.g. resnet18; stored lower-case), <paramref name="classNames"/> its classes in label
    /// order, <paramref name="dataset"/> the dataset it was trained on (not recorded for a MobileNetV2).
    /// </summary>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public static void Write(string path, IImageModel model, string name, IReadOnlyList<string> classNames, string dataset)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(classNames);
        if (model is MobileNetV2 mobile)
        {
            MobileNetV2Checkpoint.Write(path, mobile, classNames);
            return;
        }

        SafetensorsFile.Write(path, StateDicts.Ordered(model.AsModule()), new Dictionary<string, string>
        {
            ["replknet.model"] = name.ToLowerInvariant(),
            ["replknet.classes"] = JsonSerializer.Serialize(classNames),
            ["replknet.dataset"] = dataset,
        });
    }
}
