using System.ComponentModel;
using System.Globalization;
using System.Text.Json.Nodes;
using RepLKNet.Checkpoints;
using RepLKNet.Runtime;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary><c>replknet seg eval</c>: aAcc, mIoU, mAcc and per-class IoU/Acc of a segmenter checkpoint on a val split (MMSeg's definitions).</summary>
public sealed class SegEvalCommand(IAnsiConsole console) : Command<SegEvalCommand.Settings>
{
    /// <summary>Options of <c>seg eval</c>.</summary>
    public sealed class Settings : SegDatasetSettings
    {
        /// <summary>Mode.</summary>
        [CommandOption("--mode <MODE>")]
        [Description("whole (the image at the test scale in one pass) or slide (windows of --crop-size every --stride, logits averaged); default: the architecture's.")]
        public string? Mode { get; init; }

        /// <summary>Slide crop.</summary>
        [CommandOption("--crop-size <S>")]
        [Description("slide: window size S or H,W in pixels.")]
        public string? CropSize { get; init; }

        /// <summary>Slide stride.</summary>
        [CommandOption("--stride <S>")]
        [Description("slide: step between windows, S or H,W in pixels.")]
        public string? Stride { get; init; }

        /// <summary>JSON output.</summary>
        [CommandOption("--json <FILE>")]
        [Description("Also write the scores (aAcc, mIoU, mAcc, per-class IoU and Acc) as JSON to FILE.")]
        public string? Json { get; init; }

        /// <summary>Bar chart.</summary>
        [CommandOption("--plot <FILE>")]
        [Description("Also draw the per-class IoU as a bar chart PNG.")]
        public string? Plot { get; init; }

        /// <summary>Subset.</summary>
        [CommandOption("--limit <N>")]
        [Description("Score only the first N val images.")]
        public long? Limit { get; init; }

        /// <inheritdoc />
        protected override bool WeightsRequired => true;

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() =>
            Limit is <= 0 ? ValidationResult.Error($"--limit {Limit} must be positive")
            : Mode is not (null or "whole" or "slide") ? ValidationResult.Error($"--mode '{Mode}': use whole or slide")
            : base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        SegOptions.CheckOutputFile("--json", settings.Json);
        SegOptions.CheckOutputFile("--plot", settings.Plot);
        var (_, val) = settings.Open();
        var (loaded, pipeline) = SegOptions.LoadForInference(settings, settings.Scale, SegmentationDataset.Canonical(settings.Dataset), runtime.Device);
        using var model = loaded.Model;
        var test = SegOptions.Test(model.Config.Test, settings.Mode, settings.CropSize, settings.Stride);
        var evaluator = new SegmentationEvaluator(val, pipeline, test, runtime.Device, settings.Workers ?? Data.LoaderPlan.DefaultWorkers, settings.Limit);
        var skipped = new List<Data.SkippedImage>();
        SegmentationScores scores;
        try
        {
            if (Console.IsOutputRedirected || !console.Profile.Capabilities.Interactive)
            {
                var output = console.Profile.Out.Writer;
                long every = Math.Max(1, evaluator.Count / 10);
                scores = evaluator.Evaluate(model, (done, all) =>
                {
                    if (done % every == 0 && done < all)
                    {
                        output.WriteLine($"  {done}/{all} images");
                    }
                }, skipped.Add, cancellationToken);
            }
            else
            {
                SegmentationScores? result = null;
                console.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("evaluating", maxValue: evaluator.Count);
                        result = evaluator.Evaluate(model, (done, _) => task.Value = done, skipped.Add, cancellationToken);
                    });
                scores = result!;
            }
        }
        catch (Data.DatasetException e) when (e.ParamName == "model")
        {
            throw new UsageException($"--weights '{settings.Weights}' predicts {model.NumClasses} classes but --data has {val.ClassNames.Count}: the checkpoint was trained for other classes", e);
        }

        if (scores.Images == 0)
        {
            throw new Data.DatasetException($"--data '{settings.Data}': no val sample could be scored ({skipped.Count} skipped{(skipped.Count > 0 ? $", e.g. {skipped[0].Source}: {skipped[0].Reason}" : "")})");
        }

        var names = val.ClassNames;
        var table = new Table().AddColumns("class", "IoU", "Acc");
        for (int c = 0; c < names.Count; c++)
        {
            if (!double.IsNaN(scores.IoU[c]) || !double.IsNaN(scores.Accuracy[c]))
            {
                table.AddRow(Markup.Escape(names[c]), Percent(scores.IoU[c]), Percent(scores.Accuracy[c]));
            }
        }

        console.Write(table);
        int absent = Enumerable.Range(0, names.Count).Count(c => double.IsNaN(scores.IoU[c]));
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]{0}[/] on {1} val images ({2} mode{3}): aAcc [bold]{4}[/]  mIoU [bold]{5}[/]  mAcc [bold]{6}[/]{7}",
            Markup.Escape(loaded.Arch), scores.Images, test.Mode, test.Mode == "slide" ? $", crop {test.CropSize!.Value.H}×{test.CropSize.Value.W}, stride {test.Stride!.Value.H}×{test.Stride.Value.W}" : "",
            Percent(scores.AllAccuracy), Percent(scores.MeanIoU), Percent(scores.MeanAccuracy),
            absent > 0 ? $" ({absent} class(es) absent from labels and predictions left out)" : "");
        if (skipped.Count > 0)
        {
            console.MarkupLine($"[yellow]skipped {skipped.Count} sample(s) that could not be used[/], e.g. {Markup.Escape(skipped[0].Source)}: {Markup.Escape(skipped[0].Reason)}");
        }

        if (settings.Json is { } json)
        {
            var perClass = new JsonArray();
            for (int c = 0; c < names.Count; c++)
            {
                perClass.Add(new JsonObject { ["class"] = names[c], ["IoU"] = Number(scores.IoU[c]), ["Acc"] = Number(scores.Accuracy[c]) });
            }

            JsonOutput.Write(json, new JsonObject
            {
                ["arch"] = loaded.Arch, ["weights"] = settings.Weights, ["dataset"] = val.Kind, ["data"] = settings.Data, ["images"] = scores.Images, ["mode"] = test.Mode,
                ["aAcc"] = Number(scores.AllAccuracy), ["mIoU"] = Number(scores.MeanIoU), ["mAcc"] = Number(scores.MeanAccuracy), ["per_class"] = perClass,
                ["skipped"] = skipped.Count,
            });
            console.MarkupLine($"wrote [bold]{Markup.Escape(json)}[/]");
        }

        if (settings.Plot is { } png)
        {
            SegPlots.ClassIoU(names, scores.IoU, png, string.Create(CultureInfo.InvariantCulture, $"{loaded.Arch}: IoU per class (mIoU {scores.MeanIoU:P2})"));
            console.MarkupLine($"wrote [bold]{Markup.Escape(png)}[/]");
        }

        if (skipped.Count > 0)
        {
            // The figures cover part of the split only: say so in the exit status, as MMSeg (which stops at a bad sample) would.
            Console.Error.WriteLine($"replknet: error: the scores cover {scores.Images} of {scores.Images + skipped.Count} val samples; {skipped.Count} could not be used (the first is named above)");
            return ExitCodes.Failure;
        }

        return ExitCodes.Success;
    }

    private static string Percent(double v) => double.IsNaN(v) ? "-" : (v * 100).ToString("F2", CultureInfo.InvariantCulture);

    private static JsonValue? Number(double v) => double.IsNaN(v) ? null : JsonValue.Create(v);
}
