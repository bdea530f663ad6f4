using RepLKNet.Tests.Support;
using RepLKNet.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Training;

/// <summary><see cref="ModelInputs.Batch(float[], int, int, int, ScalarType, Device)"/> against TorchSharp's own <c>tensor(float[], dims)</c>.</summary>
public sealed class ModelInputsTests
{
    public ModelInputsTests() => Torch.EnsureLoaded();

    [Theory]
    [InlineData(ScalarType.Float32, 1L << 28)]
    [InlineData(ScalarType.Float32, 7L)] // 22 pieces and a short last one: the path batches over 2 GiB take
    [InlineData(ScalarType.Float32, 150L)] // exactly one piece
    [InlineData(ScalarType.Float64, 7L)]
    [InlineData(ScalarType.BFloat16, 1L << 28)]
    public void A_batch_holds_the_loader_floats_in_the_model_dtype(ScalarType dtype, long chunk)
    {
        int seed = Environment.TickCount;
        var random = new Random(seed);
        const int count = 3, channels = 2, size = 5;
        // Longer than the batch: a loader array may carry room for skipped images.
        var images = new float[(count * channels * size * size) + 11];
        for (int i = 0; i < images.Length; i++)
        {
            images[i] = (float)((random.NextDouble() * 8) - 4);
        }

        using var expected = tensor(images.AsSpan(0, count * channels * size * size).ToArray(), [count, channels, size, size]).to(dtype);
        using var actual = ModelInputs.Batch(images, count, channels, size, dtype, CPU, chunk);
        Assert.Equal(dtype, actual.dtype);
        Assert.Equal([count, channels, size, size], actual.shape);
        Assert.True(actual.eq(expected).all().item<bool>(), $"seed {seed}: the batch differs from tensor(float[], dims)");
    }

    [Fact]
    public void An_empty_batch_and_bad_arguments()
    {
        using var empty = ModelInputs.Batch([], 0, 1, 28, ScalarType.Float32, CPU);
        Assert.Equal([0, 1, 28, 28], empty.shape);
        Assert.Throws<ArgumentOutOfRangeException>(() => ModelInputs.Batch(new float[10], 1, 1, 4, ScalarType.Float32, CPU));
        Assert.Throws<ArgumentOutOfRangeException>(() => ModelInputs.Batch(new float[10], -1, 1, 1, ScalarType.Float32, CPU));
        Assert.Throws<ArgumentNullException>(() => ModelInputs.Batch(null!, 1, 1, 1, ScalarType.Float32, CPU));
    }
}
