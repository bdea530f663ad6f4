using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Data.Transforms;
using RepLKNet.Models;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet predict</c>: top-5 classes of images with a checkpoint's class names and preprocessing.</summary>
public sealed class PredictCommand(IAnsiConsole console) : Command<PredictCommand.Settings>
{
    /// <summary>Options of <c>predict</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Images or folders.</summary>
        [CommandArgument(0, "<IMAGES>")]
        [Description("Image files (PNG, JPEG, WebP, BMP, GIF) or folders of them.")]
        public string[] Images { get; init; } = [];

        /// <summary>Input size.</summary>
        [CommandOption("--input-size <SIZE>")]
        [Description("Resize to SIZE×SIZE (default: the variant's input size, else 224).")]
        public int? InputSize { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var loaded = ModelLoader.Load(settings.Weights!, settings.LoadOptions);
        using var model = loaded.Model;
        model.to(runtime.Device);
        var variant = ModelRegistry.Find(loaded.Arch);
        var pretrained = variant?.Pretrained;
        var pre = loaded.Metadata?.Preprocessing;
        int size = settings.InputSize ?? pre?.InputSize ?? pretrained?.InputSize.H ?? 224;
        int channels = model.Config.InChannels;
        Normalization normalization = pre is not null
            ? pre.Normalization
            : pretrained is { } p
                ? new Normalization([p.Mean.R, p.Mean.G, p.Mean.B], [p.Std.R, p.Std.G, p.Std.B])
                : Normalization.ImageNet;
        if (normalization.Mean.Count == 3 && channels == 1)
        {
            normalization = new Normalization([normalization.Mean.Average()], [normalization.Std.Average()]);
        }

        // The checkpoint's eval transform: short side to size / crop_pct (bicubic), centre crop; same-size images as they are.
        var pipeline = new SamplePipeline(new AugmentOptions { CropPct = pre?.CropPct ?? 0.875 }, normalization, channels, size);
        var names = loaded.Metadata?.ClassNames;
        var files = ImageDecoder.Expand(settings.Images);
        if (files.Count == 0)
        {
            throw new UsageException("no images: give image files or folders holding some");
        }

        using var noGrad = no_grad();
        foreach (var file in files)
        {
            using var scope = NewDisposeScope();
            var sample = new float[pipeline.SampleLength];
            pipeline.Eval(ImageDecoder.Decode(file, channels), sample);
            var x = tensor(sample, [1, channels, size, size]).to(runtime.Device);
            var probabilities = nn.functional.softmax(model.call(x), 1).squeeze(0).cpu();
            int k = (int)Math.Min(5, probabilities.shape[0]);
            var (values, indexes) = probabilities.topk(k);
            console.Profile.Out.Writer.WriteLine(file);
            for (int i = 0; i < k; i++)
            {
                long c = indexes[i].item<long>();
                string label = names is not null && c < names.Count ? names[(int)c] : $"class {c}";
                console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i + 1}. {label,-24} {values[i].item<float>():P2}"));
            }
        }

        return ExitCodes.Success;
    }
}
