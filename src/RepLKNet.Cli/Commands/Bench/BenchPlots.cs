using RepLKNet.Benchmarks;

namespace RepLKNet.Cli.Commands.Bench;

/// <summary>PNG figures of benchmark results (the paper's latency-vs-kernel-size figure).</summary>
internal static class BenchPlots
{
    /// <summary>Latency (log scale) against kernel size: one line per (implementation, resolution) for one pass.</summary>
    public static void LatencyVsKernel(IReadOnlyList<DepthwiseBenchResult> results, string pass, string title, string path)
    {
        var plot = new ScottPlot.Plot();
        UseSystemFont(plot);
        var colors = new Dictionary<string, ScottPlot.Color> { ["ours"] = ScottPlot.Colors.OrangeRed, ["torch"] = ScottPlot.Colors.SteelBlue };
        var patterns = new[] { ScottPlot.LinePattern.Solid, ScottPlot.LinePattern.Dashed, ScottPlot.LinePattern.Dotted, ScottPlot.LinePattern.DenselyDashed };
        var sizes = results.Select(r => r.R).Distinct().Order().ToList();
        foreach (var group in results.Where(r => r.Pass == pass).GroupBy(r => (r.Implementation, r.R)).OrderBy(g => g.Key.Implementation).ThenBy(g => g.Key.R))
        {
            var points = group.OrderBy(r => r.K).ToList();
            double[] xs = [.. points.Select(p => (double)p.K)];
            double[] ys = [.. points.Select(p => Math.Log10(p.Ms))];
            var scatter = plot.Add.Scatter(xs, ys);
            scatter.LegendText = $"{group.Key.Implementation}, R={group.Key.R}";
            scatter.Color = colors.GetValueOrDefault(group.Key.Implementation, ScottPlot.Colors.Gray);
            scatter.LinePattern = patterns[sizes.IndexOf(group.Key.R) % patterns.Length];
            scatter.LineWidth = 2;
            scatter.MarkerSize = 6;
        }

        var ticks = new ScottPlot.TickGenerators.NumericAutomatic
        {
            LabelFormatter = y => { double ms = Math.Pow(10, y); return ms >= 10 ? $"{ms:N0}" : $"{ms:0.##}"; },
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
        };
        plot.Axes.Left.TickGenerator = ticks;
        plot.Axes.Left.Label.Text = "latency of the stack, ms (log scale)";
        plot.Axes.Bottom.Label.Text = "kernel size K";
        plot.Title(title);
        plot.ShowLegend(ScottPlot.Alignment.UpperLeft);
        plot.SavePng(path, 1000, 650);
    }

    // Skia's self-contained native build has no fontconfig: register a system TrueType font by file, or text is blank.
    internal static void UseSystemFont(ScottPlot.Plot plot)
    {
        string? file = RepLKNet.Erf.Fonts.SansFile();
        if (file is null)
        {
            return;
        }

        ScottPlot.Fonts.AddFontFile("ReplknetPlotFont", file);
        plot.Font.Set("ReplknetPlotFont");
    }
}
