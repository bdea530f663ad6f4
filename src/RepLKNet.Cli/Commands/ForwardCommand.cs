using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.IO;
using RepLKNet.Models;
using RepLKNet.Models.Segmentation;
using RepLKNet.Reparam;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet forward</c>: eval-mode outputs on a raw float32 tensor, for parity checks across frameworks.</summary>
public sealed class ForwardCommand(IAnsiConsole console) : Command<ForwardCommand.Settings>
{
    /// <summary>Options of <c>forward</c>.</summary>
    public sealed class Settings : WeightsSettings
    {
        /// <summary>Input tensor path.</summary>
        [CommandOption("--input <FILE>")]
        [Description("Raw little-endian float32 NCHW tensor.")]
        public string? Input { get; init; }

        /// <summary>Input shape.</summary>
        [CommandOption("--input-shape <N,C,H,W>")]
        [Description("Shape of --input, e.g. 2,3,224,224.")]
        public string? InputShape { get; init; }

        /// <summary>Logits output path.</summary>
        [CommandOption("--output <FILE>")]
        [Description("Write the logits as raw float32: (N, classes) for classifiers, (N, classes, H, W) at the input size for segmenters.")]
        public string? Output { get; init; }

        /// <summary>Stage features prefix.</summary>
        [CommandOption("--features <PREFIX>")]
        [Description("Also write each stage output (the out_indices features) as PREFIX0.bin, PREFIX1.bin, …")]
        public string? Features { get; init; }

        /// <summary>Re-parameterize before running.</summary>
        [CommandOption("--reparam")]
        [Description("Convert a training-form model to the deploy form before running.")]
        public bool Reparam { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions()
        {
            if (string.IsNullOrWhiteSpace(Input))
            {
                return ValidationResult.Error("--input is required");
            }

            return string.IsNullOrWhiteSpace(InputShape) ? ValidationResult.Error("--input-shape is required") : base.ValidateOptions();
        }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        long[] shape = CliParsing.Shape(settings.InputShape, "--input-shape");
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        using var scope = NewDisposeScope();
        if (SegmentorRegistry.IsSegmentor(settings.Arch) || (settings.Arch is null && SegmentorCheckpoint.IsSegmentorCheckpoint(settings.Weights!)))
        {
            return ForwardSegmentor(settings, shape, runtime.Device);
        }

        var loaded = ModelLoader.Load(settings.Weights!, settings.LoadOptions);
        var model = loaded.Model;
        Console.Error.WriteLine($"loaded {loaded.Arch} ({loaded.Form.Name()} form) from '{settings.Weights}': {loaded.Report.Describe()}");
        if (settings.Reparam)
        {
            int switched = Reparameterizer.Reparameterize(model);
            Console.Error.WriteLine($"re-parameterized {switched} large-kernel module(s)");
        }

        if (shape[1] != model.Config.InChannels)
        {
            throw new UsageException($"--input-shape {settings.InputShape}: the model takes {model.Config.InChannels} input channels, not {shape[1]}");
        }

        model.to(runtime.Device);
        var input = RawTensorFile.Read(settings.Input!, shape).to(runtime.Device);
        using var noGrad = no_grad();
        if (settings.Features is { } prefix)
        {
            var features = model.forward_intermediates(input);
            var indices = model.Config.OutIndices ?? Enumerable.Range(0, model.Config.NumStages).ToArray();
            for (int i = 0; i < features.Count; i++)
            {
                string path = $"{prefix}{indices[i]}.bin";
                RawTensorFile.Write(path, features[i]);
                Console.Error.WriteLine($"wrote stage {indices[i]} features {TensorSizes.Text(features[i])} to '{path}'");
            }
        }

        if (model.Config.NumClasses is null)
        {
            return ExitCodes.Success;
        }

        var logits = model.call(input).cpu();
        if (settings.Output is { } output)
        {
            RawTensorFile.Write(output, logits);
            Console.Error.WriteLine($"wrote logits {TensorSizes.Text(logits)} to '{output}'");
        }

        var (values, classes) = logits.max(1);
        for (int i = 0; i < logits.size(0); i++)
        {
            console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"sample {i}: top-1 class {classes[i].item<long>()} (logit {values[i].item<float>():F6})"));
        }

        return ExitCodes.Success;
    }

    // Segmenters: the (N, classes, H, W) logits of whole-image inference (MMSeg's encode_decode), eval mode.
    private int ForwardSegmentor(Settings settings, long[] shape, Device device)
    {
        if (settings.Ema)
        {
            throw new UsageException("--ema applies to classification training checkpoints, not to segmenters");
        }

        var loaded = SegmentorCheckpoint.Load(settings.Weights!, settings.Arch, settings.Strict, settings.NumClasses);
        using var model = loaded.Model;
        Console.Error.WriteLine($"loaded {loaded.Arch} segmenter ({loaded.Info.Form.Name()} form) from '{settings.Weights}': {loaded.Report.Describe()}");
        if (settings.Reparam)
        {
            int switched = model.Reparameterize();
            Console.Error.WriteLine($"re-parameterized {switched} large-kernel module(s)");
        }

        if (shape[1] != model.InChannels)
        {
            throw new UsageException($"--input-shape {settings.InputShape}: the model takes {model.InChannels} input channels, not {shape[1]}");
        }

        model.to(device);
        model.eval();
        var input = RawTensorFile.Read(settings.Input!, shape).to(device);
        using var noGrad = no_grad();
        if (settings.Features is { } prefix)
        {
            var features = model.ExtractFeatures(input);
            var indices = model.Config.Backbone.OutIndices!;
            for (int i = 0; i < features.Count; i++)
            {
                string path = $"{prefix}{indices[i]}.bin";
                RawTensorFile.Write(path, features[i]);
                Console.Error.WriteLine($"wrote stage {indices[i]} features {TensorSizes.Text(features[i])} to '{path}'");
            }
        }

        var logits = model.call(input).cpu();
        if (settings.Output is { } output)
        {
            RawTensorFile.Write(output, logits);
            Console.Error.WriteLine($"wrote logits {TensorSizes.Text(logits)} to '{output}'");
        }

        var predicted = logits.argmax(1);
        for (int i = 0; i < logits.size(0); i++)
        {
            var counts = predicted[i].flatten().bincount(null, model.NumClasses);
            long top = counts.argmax().item<long>();
            console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"sample {i}: logits [{model.NumClasses}, {logits.size(2)}, {logits.size(3)}], most frequent class {top} ({counts[top].item<long>()} pixels)"));
        }

        return ExitCodes.Success;
    }
}
