using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using RepLKNet.Export;
using RepLKNet.Layers;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace RepLKNet.Tests.Export;

/// <summary>
/// The ONNX emitters the segmenter needs, each run by ONNX Runtime on graphs with symbolic sizes and compared with
/// libtorch's own operation (functional adaptive_avg_pool2d, interpolate, cat, relu, the ConvBn module) on sizes that are
/// not multiples of the pool scale, odd, non-square and 1×1.
/// </summary>
public sealed class OnnxEmitterTests
{
    public OnnxEmitterTests() => Torch.EnsureLoaded();

    /// <summary>Runs a fragment (inputs a, b, … → y) with ONNX Runtime.</summary>
    private static Tensor RunFragment(InferenceSession session, params Tensor[] inputs)
    {
        var values = inputs.Select(x => OrtValue.CreateTensorValueFromMemory(x.contiguous().data<float>().ToArray(), x.shape)).ToList();
        try
        {
            using var outputs = session.Run(new RunOptions(), session.InputNames, values, ["y"]);
            return tensor(outputs[0].GetTensorDataAsSpan<float>().ToArray(), outputs[0].GetTensorTypeAndShape().Shape);
        }
        finally
        {
            values.ForEach(v => v.Dispose());
        }
    }

    private static InferenceSession Session(string[] inputs, Func<OnnxExporter.GraphWriter, IReadOnlyList<string>, string> emit, int opset = 17) =>
        new(OnnxExporter.Fragment(opset, inputs, emit).ToByteArray());

    /// <summary>
    /// Gives every BatchNorm (the project's <see cref="RepLKNet.Layers.BatchNorm2d"/> derives from TorchSharp's
    /// <c>BatchNorm</c>, not its <c>BatchNorm2d</c>) non-trivial statistics and affine parameters; returns how many.
    /// </summary>
    internal static int RandomizeNorms(nn.Module module, Generator generator)
    {
        using var noGrad = no_grad();
        int count = 0;
        foreach (var bn in module.modules().OfType<TorchSharp.Modules.BatchNorm>())
        {
            using var scope = NewDisposeScope();
            long n = bn.weight!.shape[0];
            bn.weight!.copy_(rand(n, generator: generator) + 0.5);
            bn.bias!.copy_(randn(n, generator: generator) * 0.2);
            bn.running_mean!.copy_(randn(n, generator: generator) * 0.5);
            bn.running_var!.copy_(rand(n, generator: generator) * 1.5 + 0.5);
            count++;
        }

        return count;
    }

    private static void AssertClose(Tensor expected, Tensor actual, double tolerance, string what)
    {
        Assert.True(expected.shape.SequenceEqual(actual.shape), $"{what}: shape [{string.Join(',', actual.shape)}], libtorch [{string.Join(',', expected.shape)}]");
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= tolerance, $"{what}: max |ORT − libtorch| = {diff}");
    }

    [Theory]
    [InlineData(1, 17)]
    [InlineData(2, 17)]
    [InlineData(3, 13)]
    [InlineData(6, 17)]
    [InlineData(6, 21)]
    public void Adaptive_average_pooling_matches_libtorch_at_any_size(int scale, int opset)
    {
        using var session = Session(["a"], (g, x) => g.AdaptiveAvgPool(x[0], scale, "pool"), opset);
        var generator = new Generator(21);
        foreach (var (h, w) in new[] { (7, 5), (13, 11), (1, 1), (2, 3), (6, 6), (4, 9), (17, 2), (12, 18) })
        {
            using var scope = NewDisposeScope();
            var x = randn([2, 3, h, w], generator: generator);
            AssertClose(F.adaptive_avg_pool2d(x, [scale, scale]), RunFragment(session, x), 2e-6, $"pool {scale} of {h}×{w}");
        }
    }

    [Theory]
    [InlineData(false, 17)]
    [InlineData(true, 17)]
    [InlineData(false, 13)]
    [InlineData(true, 21)]
    public void Bilinear_resize_to_another_values_size_matches_interpolate(bool alignCorners, int opset)
    {
        using var session = Session(["a", "b"], (g, x) => g.ResizeLike(x[0], x[1], alignCorners, "resize"), opset);
        var generator = new Generator(22);
        // Up, down, mixed, to and from 1×1, outputs with one side 1.
        foreach (var (from, to) in new[] { ((3, 4), (7, 5)), ((7, 5), (13, 11)), ((13, 11), (6, 4)), ((5, 4), (1, 1)), ((1, 1), (7, 5)), ((5, 4), (1, 3)), ((2, 9), (9, 1)), ((6, 6), (6, 6)) })
        {
            using var scope = NewDisposeScope();
            var x = randn([2, 3, from.Item1, from.Item2], generator: generator);
            var like = zeros([1, 1, to.Item1, to.Item2]);
            var expected = F.interpolate(x, [to.Item1, to.Item2], mode: InterpolationMode.Bilinear, align_corners: alignCorners);
            AssertClose(expected, RunFragment(session, x, like), 2e-6, $"{from} → {to}, align_corners={alignCorners}");
        }
    }

    [Fact]
    public void Pytorch_half_pixel_would_differ_from_libtorch_where_an_output_side_is_1()
    {
        // Why the exporter writes half_pixel: libtorch's align_corners=False maps output 0 of size 1 to in/2 − 0.5.
        var model = OnnxExporter.Fragment(17, ["a", "b"], (g, x) => g.ResizeLike(x[0], x[1], false, "resize"));
        var resize = model.Graph.Node.Single(n => n.OpType == "Resize");
        Assert.Equal("half_pixel", resize.Attribute.Single(a => a.Name == "coordinate_transformation_mode").S.ToStringUtf8());
        resize.Attribute.Single(a => a.Name == "coordinate_transformation_mode").S = ByteString.CopyFromUtf8("pytorch_half_pixel");
        using var session = new InferenceSession(model.ToByteArray());
        using var scope = NewDisposeScope();
        var x = arange(0f, 20f).reshape(1, 1, 4, 5);
        var like = zeros([1, 1, 1, 3]);
        var expected = F.interpolate(x, [1, 3], mode: InterpolationMode.Bilinear, align_corners: false);
        double diff = (expected - RunFragment(session, x, like)).abs().max().item<float>();
        Assert.True(diff > 1, $"pytorch_half_pixel unexpectedly matched libtorch (diff {diff})");
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(3, false)]
    [InlineData(3, true)]
    [InlineData(1, true)]
    public void ConvModule_conv_bn_relu_matches_the_module_in_both_forms(int kernel, bool fused)
    {
        var generator = new Generator(23);
        using var module = new ConvBn(6, 5, kernel, 1, kernel / 2, 1, relu: true);
        Assert.Equal(1, RandomizeNorms(module, generator));
        module.eval();
        if (fused)
        {
            module.FuseBn();
        }

        using var session = Session(["a"], (g, x) => g.ConvBn(module, x[0], "m"));
        foreach (var (h, w) in new[] { (7, 5), (1, 1), (13, 11) })
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var x = randn([2, 6, h, w], generator: generator);
            AssertClose(module.call(x), RunFragment(session, x), 1e-5, $"k{kernel} {h}×{w}");
        }
    }

    [Fact]
    public void Concat_relu_and_add_match_libtorch()
    {
        using var session = Session(["a", "b"], (g, x) =>
            g.Node("Add", [g.Relu(g.ConcatChannels([x[0], x[1]], "cat"), "relu"), g.ConcatChannels([x[1], x[0]], "cat2")], "add"));
        var generator = new Generator(24);
        using var scope = NewDisposeScope();
        var a = randn([2, 3, 7, 5], generator: generator);
        var b = randn([2, 3, 7, 5], generator: generator);
        var expected = F.relu(cat([a, b], 1)) + cat([b, a], 1);
        AssertClose(expected, RunFragment(session, a, b), 1e-6, "relu(cat(a, b)) + cat(b, a)");
    }
}
