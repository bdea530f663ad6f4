using System.Globalization;
using RepLKNet.IO;
using SkiaSharp;

namespace RepLKNet.Erf;

/// <summary>One panel of an ERF figure.</summary>
/// <param name="Title">Model name.</param>
/// <param name="Subtitle">Weights (trained on what, or random) and image count.</param>
/// <param name="Normalized">A = log10(M + 1) / max, row-major.</param>
/// <param name="Height">Rows.</param>
/// <param name="Width">Columns.</param>
/// <param name="Areas">Area ratios at the paper's thresholds.</param>
public sealed record ErfPanel(string Title, string Subtitle, double[] Normalized, int Height, int Width, IReadOnlyList<AreaRatio?> Areas);

/// <summary>
/// Draws ERF heatmaps as the official <c>analyze_erf.py</c> does (seaborn, <c>RdYlGn</c>, <c>center=0</c>: with A in [0, 1] that
/// is the upper half of the map, light yellow at 0 to dark green at 1) with a horizontal colour bar on top; several models
/// side by side share one colour bar, each with its area ratios underneath.
/// </summary>
public static class ErfFigure
{
    // matplotlib's RdYlGn (ColorBrewer, 11 classes), evenly spaced.
    private static readonly (byte R, byte G, byte B)[] RdYlGn =
    [
        (0xa5, 0x00, 0x26), (0xd7, 0x30, 0x27), (0xf4, 0x6d, 0x43), (0xfd, 0xae, 0x61), (0xfe, 0xe0, 0x8b), (0xff, 0xff, 0xbf),
        (0xd9, 0xef, 0x8b), (0xa6, 0xd9, 0x6a), (0x66, 0xbd, 0x63), (0x1a, 0x98, 0x50), (0x00, 0x68, 0x37),
    ];

    /// <summary>The colour of normalized value <paramref name="a"/> ∈ [0, 1] (seaborn centre 0: RdYlGn at 0.5 + a/2).</summary>
    public static SKColor Colour(double a)
    {
        double x = (0.5 + 0.5 * Math.Clamp(double.IsNaN(a) ? 0 : a, 0, 1)) * (RdYlGn.Length - 1);
        int i = Math.Min((int)x, RdYlGn.Length - 2);
        double f = x - i;
        var (r0, g0, b0) = RdYlGn[i];
        var (r1, g1, b1) = RdYlGn[i + 1];
        return new SKColor(Lerp(r0, r1, f), Lerp(g0, g1, f), Lerp(b0, b1, f));
    }

    /// <summary>Writes a PNG with one panel per entry of <paramref name="panels"/>.</summary>
    public static void Write(string path, IReadOnlyList<ErfPanel> panels, string? caption = null, int panelSize = 480)
    {
        ArgumentNullException.ThrowIfNull(panels);
        if (panels.Count == 0)
        {
            throw new ArgumentException("nothing to draw");
        }

        const int margin = 24, barHeight = 18, titleBlock = 54, textBlock = 112;
        int captionBlock = caption is null ? 0 : 30;
        int width = margin + panels.Count * (panelSize + margin);
        int height = margin + captionBlock + barHeight + 34 + titleBlock + panelSize + textBlock;
        using var surface = SKSurface.Create(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var typeface = Fonts.Sans();
        using var font = new SKFont(typeface, 15);
        using var small = new SKFont(typeface, 13);
        using var bold = new SKFont(typeface, 17) { Embolden = true };
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var grey = new SKPaint { Color = new SKColor(0x44, 0x44, 0x44), IsAntialias = true };

        int y = margin;
        if (caption is not null)
        {
            canvas.DrawText(caption, margin, y + 18, SKTextAlign.Left, bold, ink);
            y += captionBlock;
        }

        // The shared colour bar, across the figure as seaborn's cbar_kws orientation="horizontal" location="top".
        int barWidth = width - 2 * margin;
        for (int x = 0; x < barWidth; x++)
        {
            using var p = new SKPaint { Color = Colour((double)x / (barWidth - 1)) };
            canvas.DrawRect(margin + x, y, 1, barHeight, p);
        }

        using (var frame = new SKPaint { Color = SKColors.Black, IsStroke = true, StrokeWidth = 1 })
        {
            canvas.DrawRect(margin, y, barWidth, barHeight, frame);
        }

        for (int k = 0; k <= 5; k++)
        {
            double v = k / 5.0;
            float x = margin + (float)(v * (barWidth - 1));
            canvas.DrawLine(x, y + barHeight, x, y + barHeight + 4, ink);
            canvas.DrawText(v.ToString("0.0", CultureInfo.InvariantCulture), x, y + barHeight + 18, SKTextAlign.Center, small, ink);
        }

        canvas.DrawText("log10(contribution + 1), scaled to [0, 1]", width / 2f, y + barHeight + 32, SKTextAlign.Center, small, grey);
        y += barHeight + 34;
        for (int i = 0; i < panels.Count; i++)
        {
            var panel = panels[i];
            int x0 = margin + i * (panelSize + margin);
            canvas.DrawText(panel.Title, x0, y + 20, SKTextAlign.Left, bold, ink);
            canvas.DrawText(panel.Subtitle, x0, y + 42, SKTextAlign.Left, small, grey);
            using (var bitmap = Heatmap(panel))
            using (var image = SKImage.FromBitmap(bitmap))
            {
                var sampling = panel.Width >= panelSize ? new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear) : new SKSamplingOptions(SKFilterMode.Nearest);
                canvas.DrawImage(image, SKRect.Create(x0, y + titleBlock, panelSize, panelSize), sampling);
            }

            int ty = y + titleBlock + panelSize + 20;
            canvas.DrawText("high-contribution area ratio r (side):", x0, ty, SKTextAlign.Left, font, ink);
            for (int t = 0; t < panel.Areas.Count; t++)
            {
                var a = panel.Areas[t];
                string text = a is null
                    ? string.Create(CultureInfo.InvariantCulture, $"t = {EffectiveReceptiveField.Thresholds[t] * 100:0}%:  none")
                    : string.Create(CultureInfo.InvariantCulture, $"t = {a.Threshold * 100:0}%:  r = {100 * a.Ratio:0.00}%  ({a.Side}×{a.Side})");
                canvas.DrawText(text, x0 + 8, ty + 20 * (t + 1), SKTextAlign.Left, font, ink);
            }
        }

        using var snapshot = surface.Snapshot();
        using var png = snapshot.Encode(SKEncodedImageFormat.Png, 100);
        AtomicFile.Write(path, s => png.SaveTo(s));
    }

    private static SKBitmap Heatmap(ErfPanel panel)
    {
        var bitmap = new SKBitmap(panel.Width, panel.Height, SKColorType.Rgba8888, SKAlphaType.Premul);
        for (int r = 0; r < panel.Height; r++)
        {
            for (int c = 0; c < panel.Width; c++)
            {
                bitmap.SetPixel(c, r, Colour(panel.Normalized[r * panel.Width + c]));
            }
        }

        return bitmap;
    }

    private static byte Lerp(byte a, byte b, double f) => (byte)Math.Round(a + (b - a) * f);
}

/// <summary>Finds a sans-serif TrueType font on the system (DejaVu or Liberation on Debian), else Skia's default.</summary>
public static class Fonts
{
    /// <summary>
    /// A sans-serif TrueType file (DejaVu Sans, Liberation Sans, else any .ttf under /usr/share/fonts), or null. Skia's
    /// self-contained native build has no fontconfig, so text needs a font registered by file.
    /// </summary>
    public static string? SansFile()
    {
        string[] candidates =
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        return candidates.FirstOrDefault(File.Exists)
            ?? (Directory.Exists("/usr/share/fonts") ? Directory.EnumerateFiles("/usr/share/fonts", "*.ttf", SearchOption.AllDirectories).FirstOrDefault() : null);
    }

    /// <summary>A sans-serif typeface; Skia's (possibly empty) default when no font file is found.</summary>
    public static SKTypeface Sans() => (SansFile() is { } file ? SKTypeface.FromFile(file) : null) ?? SKTypeface.Default;
}
