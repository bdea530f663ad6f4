using System.Globalization;
using RepLKNet.Training;

namespace RepLKNet.Cli.Commands.Seg;

/// <summary>The segmentation plots: training curves by iteration and per-class IoU bars.</summary>
internal static class SegPlots
{
    /// <summary>Training loss (left axis) and validation mIoU, model and EMA (right axis), per evaluation, by iteration.</summary>
    public static void Curves(IReadOnlyList<EpochMetrics> history, string path, string title)
    {
        var plot = new ScottPlot.Plot();
        Bench.BenchPlots.UseSystemFont(plot);
        double[] steps = [.. history.Select(h => (double)h.Step)];
        var loss = plot.Add.Scatter(steps, [.. history.Select(h => h.TrainLoss)]);
        loss.LegendText = "training loss (mean since the previous evaluation)";
        var miou = plot.Add.Scatter(steps, [.. history.Select(h => h.ScoreValue)]);
        miou.LegendText = "val mIoU";
        miou.Axes.YAxis = plot.Axes.Right;
        if (history.Any(h => !double.IsNaN(h.EmaScoreValue)))
        {
            var ema = plot.Add.Scatter(steps, [.. history.Select(h => h.EmaScoreValue)]);
            ema.LegendText = "val mIoU (EMA)";
            ema.Axes.YAxis = plot.Axes.Right;
        }

        plot.Axes.Bottom.Label.Text = "iteration";
        plot.Axes.Left.Label.Text = "loss";
        plot.Axes.Right.Label.Text = "mIoU";
        plot.Axes.SetLimitsY(0, 1, plot.Axes.Right);
        plot.Title($"{title}: training");
        plot.ShowLegend(ScottPlot.Alignment.MiddleRight);
        plot.SavePng(path, 900, 550);
    }

    /// <summary>One bar per class with its IoU (classes whose IoU is NaN — absent from labels and predictions — are left out).</summary>
    public static void ClassIoU(IReadOnlyList<string> classes, IReadOnlyList<double> iou, string path, string title)
    {
        var plot = new ScottPlot.Plot();
        Bench.BenchPlots.UseSystemFont(plot);
        var shown = Enumerable.Range(0, iou.Count).Where(c => !double.IsNaN(iou[c])).ToList();
        var bars = shown.Select((c, i) => new ScottPlot.Bar { Position = i, Value = iou[c], FillColor = ScottPlot.Colors.SteelBlue }).ToList();
        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks([.. shown.Select((_, i) => (double)i)], [.. shown.Select(c => c < classes.Count ? classes[c] : c.ToString(CultureInfo.InvariantCulture))]);
        plot.Axes.Bottom.TickLabelStyle.Rotation = shown.Count > 8 ? 60 : 0;
        plot.Axes.Bottom.TickLabelStyle.Alignment = shown.Count > 8 ? ScottPlot.Alignment.MiddleLeft : ScottPlot.Alignment.UpperCenter;
        plot.Axes.Left.Label.Text = "IoU";
        plot.Axes.SetLimitsY(0, 1);
        plot.Title(title);
        plot.SavePng(path, Math.Max(700, 24 * shown.Count + 200), 600);
    }
}
