using System.Globalization;
using RepLKNet.Experiments.ShapeBias;
using RepLKNet.IO;

namespace RepLKNet.Cli.Commands;

/// <summary>
/// The shape-bias figure of model-vs-human (<c>plot_shape_bias_matrixplot</c> in <c>modelvshuman/plotting/plot.py</c>),
/// as a PNG: one row per shape category, the bottom axis the fraction of 'texture' decisions (0 … 1), the top axis the
/// same scale reversed as the fraction of 'shape' decisions; per model one marker per category at 1 − the category's
/// shape bias and a vertical line at 1 − its overall shape bias. Rows are ordered by the first model's per-category values
/// (the reference orders by the humans'), the most shape-biased category at the bottom. The reference draws an icon per
/// category beside the y axis; here the category names stand in for them.
/// </summary>
internal static class ShapeBiasPlot
{
    /// <summary>Distinct colours (Tableau 10 / matplotlib's tab10) for up to 10 models.</summary>
    private static readonly ScottPlot.Color[] ModelColors =
    [
        ScottPlot.Color.FromHex("#1f77b4"), ScottPlot.Color.FromHex("#d62728"), ScottPlot.Color.FromHex("#2ca02c"), ScottPlot.Color.FromHex("#ff7f0e"),
        ScottPlot.Color.FromHex("#9467bd"), ScottPlot.Color.FromHex("#8c564b"), ScottPlot.Color.FromHex("#e377c2"), ScottPlot.Color.FromHex("#17becf"),
        ScottPlot.Color.FromHex("#bcbd22"), ScottPlot.Color.FromHex("#7f7f7f"),
    ];

    /// <summary>Distinct marker shapes for up to 8 models.</summary>
    private static readonly ScottPlot.MarkerShape[] ModelMarkers =
    [
        ScottPlot.MarkerShape.FilledCircle, ScottPlot.MarkerShape.FilledSquare, ScottPlot.MarkerShape.FilledTriangleUp, ScottPlot.MarkerShape.FilledDiamond,
        ScottPlot.MarkerShape.FilledTriangleDown, ScottPlot.MarkerShape.OpenCircle, ScottPlot.MarkerShape.OpenSquare, ScottPlot.MarkerShape.OpenTriangleUp,
    ];

    /// <summary>Draws <paramref name="reports"/> (the first one sets the row order) and writes the PNG atomically.</summary>
    /// <param name="reports">One report per model; categories without a shape or texture decision (NaN) get no marker, a
    /// model without any gets no line.</param>
    /// <param name="path">The PNG.</param>
    /// <param name="title">Title; by default "Shape bias on cue-conflict stimuli".</param>
    /// <exception cref="ArgumentException">No reports, or <paramref name="path"/> cannot be written (ParamName <c>path</c>).</exception>
    public static void Write(IReadOnlyList<ShapeBiasReport> reports, string path, string? title = null)
    {
        ArgumentNullException.ThrowIfNull(reports);
        ArgumentNullException.ThrowIfNull(path);
        if (reports.Count == 0)
        {
            throw new ArgumentException("reports: nothing to draw", nameof(reports));
        }

        if (string.IsNullOrWhiteSpace(path))
        {
            throw new ArgumentException("path: no file name for the figure", nameof(path));
        }

        var perModel = reports.Select(r => r.PerCategory.ToDictionary(c => c.Category, c => c.ShapeBias, StringComparer.Ordinal)).ToList();

        // The rows: every shape category any model saw (all 16 on the standard set), ordered as the reference orders its
        // rows (np.argsort of 1 − shape bias, ascending, so row 0 at the bottom is the most shape-biased) by the first
        // model; categories without a value for it go last, in alphabetical order (argsort puts NaN last, too).
        var categories = CueConflictCategories.Names.Where(c => perModel.Any(m => m.ContainsKey(c))).ToList();
        double First(string c) => perModel[0].TryGetValue(c, out double b) && !double.IsNaN(b) ? 1 - b : double.PositiveInfinity;
        categories = [.. categories.Select((c, i) => (c, i)).OrderBy(t => First(t.c)).ThenBy(t => t.i).Select(t => t.c)];
        int rows = categories.Count;

        var plot = new ScottPlot.Plot();
        Bench.BenchPlots.UseSystemFont(plot);
        plot.HideGrid();

        // Dotted gray separators between rows.
        for (int i = 0; i < rows - 1; i++)
        {
            var line = plot.Add.HorizontalLine(i + 0.5, 1, ScottPlot.Colors.Gray.WithOpacity(0.4), ScottPlot.LinePattern.Dotted);
            line.ExcludeFromLegend = true;
        }

        for (int m = 0; m < reports.Count; m++)
        {
            var report = reports[m];
            var color = ModelColors[m % ModelColors.Length];
            double overall = report.ShapeBias;
            if (!double.IsNaN(overall))
            {
                var line = plot.Add.VerticalLine(1 - overall, 2, color);
                line.ExcludeFromLegend = true;
            }

            var xs = new List<double>();
            var ys = new List<double>();
            for (int row = 0; row < rows; row++)
            {
                if (perModel[m].TryGetValue(categories[row], out double b) && !double.IsNaN(b))
                {
                    xs.Add(1 - b);
                    ys.Add(row);
                }
            }

            string bias = double.IsNaN(overall) ? "n/a" : overall.ToString("0.000", CultureInfo.InvariantCulture);
            string legend = $"{report.Model}: shape bias {bias}" + (string.IsNullOrEmpty(report.Note) ? "" : $" ({report.Note})");
            var markers = plot.Add.Markers(xs.ToArray(), ys.ToArray(), ModelMarkers[m % ModelMarkers.Length], 12, color);
            markers.LegendText = legend;
        }

        // A small margin so that markers at 0 and 1 are not cut in half (the reference draws them unclipped).
        const double margin = 0.03;
        plot.Axes.SetLimitsX(-margin, 1 + margin, plot.Axes.Bottom);
        plot.Axes.SetLimitsX(-margin, 1 + margin, plot.Axes.Top);
        plot.Axes.SetLimitsY(-0.5, rows - 0.5, plot.Axes.Left);

        var bottom = new ScottPlot.TickGenerators.NumericManual();
        var top = new ScottPlot.TickGenerators.NumericManual();
        for (int k = 0; k <= 10; k++)
        {
            double x = k / 10.0;
            bottom.AddMajor(x, x.ToString("0.#", CultureInfo.InvariantCulture));
            top.AddMajor(x, (1 - x).ToString("0.#", CultureInfo.InvariantCulture));
        }

        var left = new ScottPlot.TickGenerators.NumericManual();
        for (int row = 0; row < rows; row++)
        {
            left.AddMajor(row, categories[row]);
        }

        plot.Axes.Bottom.TickGenerator = bottom;
        plot.Axes.Top.TickGenerator = top;
        plot.Axes.Left.TickGenerator = left;
        plot.Axes.Bottom.Label.Text = "Fraction of 'texture' decisions";
        plot.Axes.Top.Label.Text = "Fraction of 'shape' decisions";
        plot.Axes.Left.Label.Text = "Shape categories";
        foreach (var axis in new ScottPlot.IAxis[] { plot.Axes.Bottom, plot.Axes.Top, plot.Axes.Left })
        {
            axis.Label.FontSize = 16;
            axis.TickLabelStyle.FontSize = 14;
        }

        // ScottPlot 5.1 anchors the top axis label by its lower edge at the top of the axis panel, so that it sticks out over
        // the title (ScottPlot issue #5243); padding as tall as the label (which the panel's size includes) brings it back in.
        if (plot.Axes.Top is ScottPlot.AxisPanels.AxisBase topAxis)
        {
            topAxis.PaddingOutsideAxisLabels = new ScottPlot.PixelPadding(0, 0, 0, 1.5f * topAxis.LabelFontSize);
        }

        plot.Title(title ?? "Shape bias on cue-conflict stimuli");
        plot.ShowLegend(ScottPlot.Edge.Bottom);

        int height = Math.Max(500, 36 * rows + 220 + 22 * reports.Count);
        byte[] png = plot.GetImageBytes(900, height, ScottPlot.ImageFormat.Png);
        try
        {
            AtomicFile.Write(path, s => s.Write(png));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"path '{path}': cannot write the figure ({e.Message})", nameof(path), e);
        }
    }
}
