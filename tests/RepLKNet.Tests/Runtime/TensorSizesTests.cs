using System.Reflection;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using Xunit;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// <see cref="TensorSizes"/> returns what TorchSharp's whole-shape reads return, and no code of ours calls those reads
/// (each leaves a pinned array and a finalizable object behind: docs/perf-notes.md, "Finalized shape reads").
/// </summary>
public sealed class TensorSizesTests
{
    public TensorSizesTests() => Torch.EnsureLoaded();

    [Fact]
    public void Sizes_and_strides_equal_torchsharps_whole_shape_reads_on_random_tensors_and_views()
    {
        var random = new Random(Environment.TickCount);
        for (int trial = 0; trial < 50; trial++)
        {
            int dims = random.Next(0, 6);
            long[] shape = [.. Enumerable.Range(0, dims).Select(_ => (long)random.Next(0, 5))];
            using var t = rand(shape);
            // A view with other strides: dimensions swapped, or a narrowed first dimension.
            using var view = dims >= 2 ? t.transpose(0, dims - 1) : dims == 1 && shape[0] > 1 ? t.narrow(0, 1, shape[0] - 1) : t.alias();
            foreach (var x in new[] { t, view })
            {
                Assert.Equal(x.shape, TensorSizes.Of(x));
                Assert.Equal(x.stride(), TensorSizes.StridesOf(x));
                Assert.Equal("[" + string.Join(", ", x.shape) + "]", TensorSizes.Text(x));
            }
        }

        using var scalar = tensor(3.0f);
        Assert.Empty(TensorSizes.Of(scalar));
        Assert.Equal("[]", TensorSizes.Text(scalar));
        Assert.Throws<ArgumentNullException>(() => TensorSizes.Of(null!));
    }

    // What the rule looks for: TorchSharp's parameterless whole-shape reads.
    private static bool IsWholeShapeRead(MethodBase m) =>
        m.DeclaringType == typeof(Tensor) && m.GetParameters().Length == 0 && m.Name is "get_shape" or "size" or "stride";

    private static long[] ReadsTheWholeShape(Tensor t) => t.shape;

    [Fact]
    public void The_rule_sees_a_whole_shape_read()
    {
        // Guards the guard: the helper above reads t.shape, and TensorSizes itself only reads single dimensions.
        var violator = typeof(TensorSizesTests).GetMethod(nameof(ReadsTheWholeShape), BindingFlags.NonPublic | BindingFlags.Static)!;
        Assert.Contains(IlCalls.Callees(violator), IsWholeShapeRead);
        Assert.DoesNotContain(typeof(TensorSizes).GetMethods().SelectMany(IlCalls.Callees), IsWholeShapeRead);
        Assert.Contains(typeof(TensorSizes).GetMethods().SelectMany(IlCalls.Callees), m => m.DeclaringType == typeof(Tensor) && m.Name == "size");
    }

    [Fact]
    public void No_method_of_ours_reads_a_whole_shape_through_torchsharp()
    {
        var ours = new[] { typeof(RepLKNetModel).Assembly, typeof(RepLKNet.Cli.ReplknetApp).Assembly };
        var violations = ours.SelectMany(IlCalls.MethodsOf)
            .SelectMany(method => IlCalls.Callees(method).Where(IsWholeShapeRead).Select(callee => $"{IlCalls.Describe(method)} calls {IlCalls.Describe(callee)}"))
            .Distinct().Order().ToList();
        Assert.True(violations.Count == 0,
            $"{violations.Count} whole-shape read(s) through TorchSharp (a pinned array and a finalizable object each); use RepLKNet.Runtime.TensorSizes or size(d):\n" +
            string.Join("\n", violations));
    }
}
