using RepLKNet.Data;
using RepLKNet.Models.Segmentation;
using RepLKNet.Segmentation;
using RepLKNet.Tests.Support;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Segmentation;

public sealed class SegmentationPredictorTests
{
    [Fact]
    public void Overlay_blends_each_pixel_with_its_class_colour_as_mmseg_show_result()
    {
        var image = new ImageU8([100, 7, 50, 9, 200, 11], 3, 1, 2); // pixel 0 = (100, 50, 200), pixel 1 = (7, 9, 11)
        var mask = new ImageU8([1, 255], 1, 1, 2);
        var blended = SegmentationPredictor.Overlay(image, mask, [(0, 0, 0), (220, 20, 60)], 0.5);
        // (100·0.5 + 220·0.5, 50·0.5 + 20·0.5, 200·0.5 + 60·0.5); a class without a colour stays as it is.
        Assert.Equal(new byte[] { 160, 7, 35, 9, 130, 11 }, blended.Pixels);
        Assert.Equal(new byte[] { 100, 7, 50, 9, 200, 11 }, SegmentationPredictor.Overlay(image, mask, [(0, 0, 0), (220, 20, 60)], 0).Pixels);
        Assert.Equal("mask", Assert.Throws<ArgumentException>(() => SegmentationPredictor.Overlay(image, new ImageU8(1, 2, 2), [(0, 0, 0)])).ParamName);
    }

    [Fact]
    public void Predict_gives_a_mask_at_the_images_size_and_writes_an_index_png_and_an_overlay()
    {
        Torch.EnsureLoaded();
        manual_seed(6);
        using var model = new EncoderDecoder(SegShapes.TinyConfig());
        var pipeline = new SegmentationPipeline(new SegmentationPipelineOptions { Scale = (48, 24), CropSize = (24, 24) });
        var shapes = new SegShapes(1, 30, 38, seed: 3);
        var predictor = new SegmentationPredictor(model, pipeline, shapes.Palette);
        var image = shapes.Read(0).Image;
        var prediction = predictor.Predict(image);
        Assert.Equal((1, 30, 38), (prediction.Mask.Channels, prediction.Mask.Height, prediction.Mask.Width));
        Assert.Equal(30 * 38, prediction.PixelsPerClass.Sum());

        var view = pipeline.Test(image);
        using var noGrad = no_grad();
        using var direct = SegmentationInference.Predict(model, tensor(view.Image, [1, 3, view.Height, view.Width]), (30, 38));
        Assert.Equal(direct.data<long>().ToArray().Select(v => (byte)v), prediction.Mask.Pixels);

        using var dir = new TempDirectory();
        predictor.Write(prediction, image, dir.File("m.png"), dir.File("o.png"));
        Assert.Equal(prediction.Mask.Pixels, IndexPng.Read(dir.File("m.png")).Pixels);
        var overlay = ImageDecoder.Decode(dir.File("o.png"), 3);
        Assert.Equal((30, 38), (overlay.Height, overlay.Width));
        Assert.Equal("palette", Assert.Throws<ArgumentException>(() => new SegmentationPredictor(model, pipeline, [(0, 0, 0)])).ParamName);
    }
}
