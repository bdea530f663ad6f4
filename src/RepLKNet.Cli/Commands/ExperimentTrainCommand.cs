using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet experiment train</c>: one comparison model (ResNet or MobileNetV2) trained with the experiments' recipe.</summary>
public sealed class ExperimentTrainCommand(IAnsiConsole console) : Command<ExperimentTrainCommand.Settings>
{
    /// <summary>Options of <c>experiment train</c>.</summary>
    public sealed class Settings : ExperimentSettings
    {
        /// <summary>Model.</summary>
        [CommandOption("--model <NAME>")]
        [Description("resnet18, resnet50, resnet101 (TorchVision layout and keys), or mobilenetv2[[-kN]] (the small-image layout, kernel N in every stage).")]
        public string? Model { get; init; }

        /// <summary>Budget.</summary>
        [CommandOption("--budget <BUDGET>")]
        [Description("Epochs (2, 0.5e) or time (90s, 5m); the schedule spans it.")]
        [DefaultValue("1")]
        public override string Budget { get; init; } = "1";

        /// <summary>Seed.</summary>
        [CommandOption("--seed <SEED>")]
        [DefaultValue(0L)]
        [Description("Seed of initialization, data order and augmentation.")]
        public long Seed { get; init; }

        /// <summary>Output.</summary>
        [CommandOption("--out <FILE>")]
        [Description("Weights file (safetensors): torchvision keys for ResNet, the project's MobileNetV2 format otherwise.")]
        public string? Out { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        string model = settings.Model ?? throw new UsageException("--model is required: resnet18, resnet50, resnet101 or mobilenetv2[-kN]");
        string output = settings.Out ?? throw new UsageException("--out FILE.safetensors is required");
        if (ModelFactory.FamilyOf(model) is not (ModelFamily.ResNet or ModelFamily.MobileNetV2))
        {
            throw new UsageException($"--model '{model}': use resnet18, resnet50, resnet101 or mobilenetv2[-kN] (RepLKNets train with 'replknet train')");
        }

        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        using var data = settings.OpenData();
        var recipe = settings.Recipe(data, runtime.Device) with { Seed = settings.Seed };
        int classes = data.Train.ClassNames.Count;
        manual_seed(settings.Seed);
        using var built = ModelFactory.Create(model, new ModelFit(classes, data.Train.Channels) { SmallImages = true });
        var net = built.AsModule();
        net.to(runtime.Device);
        long parameters = built.Describe().Parameters;
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]experiment train[/] {0} ({1:N0} parameters) on {2}: {3}, batch {4}, lr {5}, {6} → {7}",
            Markup.Escape(model), parameters, Markup.Escape(data.Name), recipe.Budget, recipe.BatchSize, recipe.LearningRate, runtime.Device, Markup.Escape(output));
        var writer = console.Profile.Out.Writer;
        var result = ClassifierTraining.Run(net, classes, data.Train, data.Test, recipe, p =>
        {
            if (p.Step % 100 == 0)
            {
                writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  step {p.Step}: {p.Fraction:P0} of the budget, loss {p.Loss:F4}, lr {p.LearningRate:0.00e+00}, {p.ImagesPerSecond:F0} images/s{TrainCommand.PeakRss(PeakMemory.ProcessPeak()?.Bytes, ", ")}"));
            }
        }, cancellationToken);
        ImageModelCheckpoint.Write(output, built, model, data.Train.ClassNames, data.Name);
        writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{model}: test top-1 {100 * result.Top1:F2} % after {result.Steps} steps ({result.Epochs:F2} epochs) in {result.Seconds / 60:F1} min, {result.ImagesPerSecond:F0} images/s{TrainCommand.PeakRss(PeakMemory.ProcessPeak()?.Bytes, ", ")}; weights: {output}"));
        return ExitCodes.Success;
    }
}
