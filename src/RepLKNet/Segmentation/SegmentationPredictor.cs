using RepLKNet.Data;
using RepLKNet.Models.Segmentation;
using static TorchSharp.torch;

namespace RepLKNet.Segmentation;

/// <summary>One image's prediction.</summary>
/// <param name="Mask">Class index per pixel, (1, H, W) at the image's own size.</param>
/// <param name="PixelsPerClass">Pixels predicted as each class.</param>
public sealed record SegmentationPrediction(ImageU8 Mask, IReadOnlyList<long> PixelsPerClass);

/// <summary>
/// Segments images with a trained segmenter as MMSeg's <c>inference_segmentor</c> does (test view: keep-ratio resize to the
/// scale and normalize; whole or slide inference; logits back at the image's size; argmax), and writes the results: a
/// class-index PNG (8-bit greyscale, the stored values are the classes) and a colour overlay (MMSeg's <c>show_result</c>:
/// image · (1 − opacity) + palette colour · opacity).
/// </summary>
public sealed class SegmentationPredictor
{
    private readonly EncoderDecoder _model;
    private readonly SegmentationPipeline _pipeline;

    /// <summary>Creates the predictor; puts <paramref name="model"/> in eval mode.</summary>
    /// <param name="model">The segmenter, on <paramref name="device"/>.</param>
    /// <param name="pipeline">The test view's scale and normalization.</param>
    /// <param name="palette">One colour per class for overlays (at least the model's classes).</param>
    /// <param name="test">Mode, crop and stride; null: the model's own.</param>
    /// <param name="device">Where the model runs (null: the CPU).</param>
    /// <exception cref="ArgumentException">The palette has fewer colours than the model has classes (ParamName <c>palette</c>).</exception>
    public SegmentationPredictor(EncoderDecoder model, SegmentationPipeline pipeline, IReadOnlyList<(byte R, byte G, byte B)> palette,
        SegmentationTestConfig? test = null, Device? device = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        Palette = palette ?? throw new ArgumentNullException(nameof(palette));
        if (palette.Count < model.NumClasses)
        {
            throw new ArgumentException($"palette has {palette.Count} colours for {model.NumClasses} classes", nameof(palette));
        }

        if (model.NumClasses > 256)
        {
            throw new ArgumentException($"model predicts {model.NumClasses} classes; an 8-bit index PNG holds at most 256", nameof(model));
        }

        Test = test;
        Device = device ?? CPU;
        _model.eval();
    }

    /// <summary>Colours per class.</summary>
    public IReadOnlyList<(byte R, byte G, byte B)> Palette { get; }

    /// <summary>Mode, crop and stride, or null for the model's own.</summary>
    public SegmentationTestConfig? Test { get; }

    /// <summary>Where the model runs.</summary>
    public Device Device { get; }

    /// <summary>Segments <paramref name="image"/> (RGB, (3, H, W)).</summary>
    /// <returns>The class mask at the image's size and the pixel count per class.</returns>
    /// <exception cref="ArgumentException">The image is not RGB (ParamName <c>image</c>).</exception>
    public SegmentationPrediction Predict(ImageU8 image)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image.Channels != 3)
        {
            throw new ArgumentException($"image must be RGB (3 channels), got {image.Channels}", nameof(image));
        }

        var view = _pipeline.Test(image);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var input = tensor(view.Image, [1, 3, view.Height, view.Width]).to(Device);
        var classes = SegmentationInference.Predict(_model, input, (image.Height, image.Width), Test).cpu().to(ScalarType.Int64).data<long>().ToArray();
        var mask = new ImageU8(1, image.Height, image.Width);
        var counts = new long[_model.NumClasses];
        for (int i = 0; i < classes.Length; i++)
        {
            mask.Pixels[i] = (byte)classes[i];
            counts[classes[i]]++;
        }

        return new SegmentationPrediction(mask, counts);
    }

    /// <summary>
    /// MMSeg's <c>show_result</c> blend: each pixel of <paramref name="image"/> (RGB) mixed with its class's palette colour,
    /// image · (1 − <paramref name="opacity"/>) + colour · <paramref name="opacity"/>, truncated to 8 bits; pixels whose
    /// class has no colour (e.g. 255) stay as they are.
    /// </summary>
    /// <param name="image">(3, H, W) RGB.</param>
    /// <param name="mask">(1, H, W) class indices.</param>
    /// <param name="palette">Colour per class.</param>
    /// <param name="opacity">Weight of the colours, in [0, 1] (MMSeg's default 0.5).</param>
    /// <exception cref="ArgumentException">Sizes or channels do not fit (ParamName <c>mask</c>), or the opacity is outside [0, 1].</exception>
    public static ImageU8 Overlay(ImageU8 image, ImageU8 mask, IReadOnlyList<(byte R, byte G, byte B)> palette, double opacity = 0.5)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(mask);
        ArgumentNullException.ThrowIfNull(palette);
        if (image.Channels != 3 || mask.Channels != 1 || image.Height != mask.Height || image.Width != mask.Width)
        {
            throw new ArgumentException($"mask ({mask.Channels}×{mask.Height}×{mask.Width}) must be one channel at the RGB image's size ({image.Channels}×{image.Height}×{image.Width})", nameof(mask));
        }

        if (!(opacity is >= 0 and <= 1))
        {
            throw new ArgumentException($"opacity must be in [0, 1], got {opacity}", nameof(opacity));
        }

        var result = new ImageU8(3, image.Height, image.Width);
        int plane = image.Height * image.Width;
        for (int i = 0; i < plane; i++)
        {
            int c = mask.Pixels[i];
            for (int ch = 0; ch < 3; ch++)
            {
                byte v = image.Pixels[ch * plane + i];
                if (c < palette.Count)
                {
                    var colour = palette[c];
                    byte p = ch == 0 ? colour.R : ch == 1 ? colour.G : colour.B;
                    v = (byte)(v * (1 - opacity) + p * opacity);
                }

                result.Pixels[ch * plane + i] = v;
            }
        }

        return result;
    }

    /// <summary>Writes <paramref name="prediction"/>'s mask to <paramref name="maskPath"/> (8-bit greyscale index PNG) and, when given, the overlay of <paramref name="image"/> to <paramref name="overlayPath"/> (PNG, or JPEG for .jpg).</summary>
    /// <exception cref="IOException">A file cannot be written.</exception>
    public void Write(SegmentationPrediction prediction, ImageU8 image, string maskPath, string? overlayPath, double opacity = 0.5)
    {
        ArgumentNullException.ThrowIfNull(prediction);
        ArgumentNullException.ThrowIfNull(maskPath);
        IndexPng.Write(maskPath, prediction.Mask);
        if (overlayPath is not null)
        {
            RgbImageFile.Write(overlayPath, Overlay(image, prediction.Mask, Palette, opacity));
        }
    }
}
