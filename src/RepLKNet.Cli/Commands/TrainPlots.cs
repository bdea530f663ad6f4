using RepLKNet.Training;

namespace RepLKNet.Cli.Commands;

/// <summary>Training curves as a PNG.</summary>
internal static class TrainPlots
{
    /// <summary>Training loss and test top-1 (model and EMA) per epoch.</summary>
    public static void Curves(IReadOnlyList<EpochMetrics> history, string path, string title)
    {
        var plot = new ScottPlot.Plot();
        Bench.BenchPlots.UseSystemFont(plot);
        double[] epochs = [.. history.Select(h => (double)h.Epoch)];
        var loss = plot.Add.Scatter(epochs, [.. history.Select(h => h.TrainLoss)]);
        loss.LegendText = "training loss";
        var top1 = plot.Add.Scatter(epochs, [.. history.Select(h => h.Top1)]);
        top1.LegendText = "test top-1";
        top1.Axes.YAxis = plot.Axes.Right;
        if (history.Any(h => !double.IsNaN(h.EmaTop1)))
        {
            var ema = plot.Add.Scatter(epochs, [.. history.Select(h => h.EmaTop1)]);
            ema.LegendText = "test top-1 (EMA)";
            ema.Axes.YAxis = plot.Axes.Right;
        }

        plot.Axes.Bottom.Label.Text = "epoch";
        plot.Axes.Left.Label.Text = "loss";
        plot.Axes.Right.Label.Text = "top-1";
        plot.Title($"{title}: training");
        plot.ShowLegend(ScottPlot.Alignment.MiddleRight);
        plot.SavePng(path, 900, 550);
    }
}
