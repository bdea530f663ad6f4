using System.ComponentModel;
using System.Globalization;
using RepLKNet.Checkpoints;
using RepLKNet.Data;
using RepLKNet.Runtime;
using RepLKNet.Training;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet eval</c>: top-1/top-5, loss, per-class accuracy and the confusion matrix of a checkpoint.</summary>
public sealed class EvalCommand(IAnsiConsole console) : Command<EvalCommand.Settings>
{
    /// <summary>Options of <c>eval</c>.</summary>
    public sealed class Settings : DatasetSettings
    {
        /// <summary>Split seed.</summary>
        [CommandOption("--seed <SEED>")]
        [DefaultValue(0L)]
        [Description("folder without train/ and val/: the seed of the split (the training run's).")]
        public long Seed { get; init; }

        /// <summary>Batch size.</summary>
        [CommandOption("--batch-size <B>")]
        [DefaultValue(256)]
        [Description("Batch size.")]
        public int BatchSize { get; init; } = 256;

        /// <summary>Confusion-matrix PNG.</summary>
        [CommandOption("--plot <FILE>")]
        [Description("Also draw the confusion matrix as a PNG.")]
        public string? Plot { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() => BatchSize <= 0 ? ValidationResult.Error("--batch-size must be positive") : base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var loaded = ModelLoader.Load(settings.Weights!, settings.LoadOptions);
        using var model = loaded.Model;
        using (var splits = settings.OpenData(settings.Seed, model.Config.InChannels))
        {
            var data = splits.Test;
            var r = CheckpointEvaluation.Run(loaded, splits, settings.BatchSize, runtime.Device, settings.InputSize, settings.Workers);
            if (r.Skipped.Count > 0)
            {
                Console.Error.WriteLine($"skipped {r.Skipped.Count} unreadable image(s), e.g. {r.Skipped[0].Source}: {r.Skipped[0].Reason}");
            }

            var names = loaded.Metadata?.ClassNames ?? data.ClassNames;
            console.Profile.Out.Writer.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{loaded.Arch} ({loaded.Form.ToString().ToLowerInvariant()} form) on {r.Count:N0} {splits.Name} {(splits.Name == "folder" ? "validation" : "test")} images: top-1 {r.Top1:P2}  top-5 {r.Top5:P2}  loss {r.Loss:F4}"));
            var table = new Table().AddColumn("true \\ predicted");
            for (int j = 0; j < names.Count; j++)
            {
                table.AddColumn(new TableColumn(j.ToString(CultureInfo.InvariantCulture)).RightAligned());
            }

            table.AddColumn(new TableColumn("accuracy").RightAligned());
            for (int i = 0; i < names.Count; i++)
            {
                var row = new List<string> { $"{i} {Markup.Escape(names[i])}" };
                for (int j = 0; j < names.Count; j++)
                {
                    row.Add(r.Confusion[i, j].ToString(CultureInfo.InvariantCulture));
                }

                row.Add(double.IsNaN(r.PerClass[i]) ? "-" : r.PerClass[i].ToString("P1", CultureInfo.InvariantCulture));
                table.AddRow([.. row]);
            }

            console.Write(table);
            if (settings.Plot is { } png)
            {
                var plot = new ScottPlot.Plot();
                Bench.BenchPlots.UseSystemFont(plot);
                var counts = new double[names.Count, names.Count];
                for (int i = 0; i < names.Count; i++)
                {
                    for (int j = 0; j < names.Count; j++)
                    {
                        counts[names.Count - 1 - i, j] = r.Confusion[i, j];
                    }
                }

                var heatmap = plot.Add.Heatmap(counts);
                plot.Add.ColorBar(heatmap);
                plot.Title(string.Create(CultureInfo.InvariantCulture, $"{loaded.Arch}: confusion matrix (top-1 {r.Top1:P2})"));
                plot.Axes.Bottom.Label.Text = "predicted class";
                plot.Axes.Left.Label.Text = "true class (top = 0)";
                plot.SavePng(png, 800, 700);
                console.MarkupLine($"wrote [bold]{Markup.Escape(png)}[/]");
            }
        }

        return ExitCodes.Success;
    }
}
