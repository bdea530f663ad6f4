using RepLKNet.Models;
using static TorchSharp.torch;

namespace RepLKNet.Checkpoints;

/// <summary>MobileNetV2 weights as safetensors with the configuration, form and class names in the metadata.</summary>
public static class MobileNetV2Checkpoint
{
    private const string ModelKey = "replknet.model";
    private const string ConfigKey = "replknet.mobilenetv2";
    private const string FormKey = "replknet.form";
    private const string ClassesKey = "replknet.classes";

    /// <summary>Writes <paramref name="model"/> (train or deploy form) atomically.</summary>
    public static void Write(string path, MobileNetV2 model, IReadOnlyList<string>? classNames = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var metadata = new Dictionary<string, string>
        {
            [ModelKey] = "mobilenetv2",
            [ConfigKey] = model.Config.ToJson(),
            [FormKey] = model.IsDeploy ? "deploy" : "train",
        };
        if (classNames is not null)
        {
            metadata[ClassesKey] = System.Text.Json.JsonSerializer.Serialize(classNames);
        }

        SafetensorsFile.Write(path, StateDicts.Ordered(model), metadata);
    }

    /// <summary>Reads the model in <paramref name="path"/> (in the form it was saved, eval mode).</summary>
    /// <exception cref="CheckpointException">The file is not a MobileNetV2 checkpoint or does not fit its recorded configuration.</exception>
    public static MobileNetV2 Read(string path) =>
        TryRead(path) ?? throw new CheckpointException($"'{path}' is not a MobileNetV2 checkpoint written by replknet (no '{ConfigKey}' metadata)");

    /// <summary>
    /// Reads <paramref name="path"/> once: the model when the file is a MobileNetV2 checkpoint written by <see cref="Write"/>,
    /// else null (any other safetensors file).
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing or unreadable, or does not fit its recorded configuration.</exception>
    public static MobileNetV2? TryRead(string path)
    {
        if (!File.Exists(path))
        {
            throw new CheckpointException($"'{path}': no such checkpoint file");
        }

        var (state, metadata) = SafetensorsFile.Read(path);
        try
        {
            if (!metadata.TryGetValue(ModelKey, out var kind) || kind != "mobilenetv2" || !metadata.TryGetValue(ConfigKey, out var json))
            {
                return null;
            }

            MobileNetV2Config config;
            try
            {
                config = MobileNetV2Config.FromJson(json);
            }
            catch (ConfigException e)
            {
                throw new CheckpointException($"'{path}': its recorded MobileNetV2 configuration is invalid: {e.Message}", e);
            }

            var model = new MobileNetV2(config);
            try
            {
                if (metadata.GetValueOrDefault(FormKey) == "deploy")
                {
                    model.SwitchToDeploy();
                }

                StateDictLoader.Load(model, state, strict: true, skipHead: false, $"'{path}'");
            }
            catch
            {
                model.Dispose();
                throw;
            }

            model.eval();
            return model;
        }
        finally
        {
            foreach (var t in state.Values)
            {
                t.Dispose();
            }
        }
    }
}
