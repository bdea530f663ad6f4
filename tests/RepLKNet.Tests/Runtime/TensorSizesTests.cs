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
        int seed = Environment.TickCount;
        var random = new Random(seed);
        for (int trial = 0; trial < 50; trial++)
        {
            int dims = random.Next(0, 6);
            long[] shape = [.. Enumerable.Range(0, dims).Select(_ => (long)random.Next(0, 5))];
            using var t = rand(shape);
            // A view with other strides: dimensions swapped, or a narrowed first dimension.
            using var view = dims >= 2 ? t.transpose(0, dims - 1) : dims == 1 && shape[0] > 1 ? t.narrow(0, 1, shape[0] - 1) : t.alias();
            foreach (var x in new[] { t, view })
            {
                string what = $"seed {seed}, trial {trial}, shape [{string.Join(", ", x.shape)}], strides [{string.Join(", ", x.stride())}]";
                Assert.True(x.shape.SequenceEqual(TensorSizes.Of(x)), what);
                Assert.True(x.stride().SequenceEqual(TensorSizes.StridesOf(x)), what);
                Assert.True("[" + string.Join(", ", x.shape) + "]" == TensorSizes.Text(x), what);
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

    private static readonly Dictionary<MethodBase, bool> Memo = [];
    private static readonly HashSet<MethodBase> Visiting = [];

    /// <summary>Whether a TorchSharp method reads a whole shape, itself or through any TorchSharp method it calls (depth-first, memoized).</summary>
    private static bool ReadsShapeInside(MethodBase m)
    {
        if (m.DeclaringType is null || m.DeclaringType.Assembly != typeof(Tensor).Assembly)
        {
            return false;
        }

        lock (Memo)
        {
            if (Memo.TryGetValue(m, out bool known))
            {
                return known;
            }

            if (!Visiting.Add(m))
            {
                return false;
            }

            try
            {
                bool result = IsWholeShapeRead(m) || IlCalls.Callees(m).Any(ReadsShapeInside);
                Memo[m] = result;
                return result;
            }
            finally
            {
                Visiting.Remove(m);
            }
        }
    }


    [Fact]
    public void The_rule_sees_a_whole_shape_read()
    {
        // Guards the guard: the helper above reads t.shape, and TensorSizes itself only reads single dimensions.
        var violator = typeof(TensorSizesTests).GetMethod(nameof(ReadsTheWholeShape), BindingFlags.NonPublic | BindingFlags.Static)!;
        Assert.Contains(IlCalls.Callees(violator), IsWholeShapeRead);
        Assert.DoesNotContain(typeof(TensorSizes).GetMethods().SelectMany(IlCalls.Callees), IsWholeShapeRead);
        Assert.Contains(typeof(TensorSizes).GetMethods().SelectMany(IlCalls.Callees), m => m.DeclaringType == typeof(Tensor) && m.Name == "size");
    }

    // TorchSharp members that read a shape or the strides inside and that our code may call: each runs at most a few times
    // per batch (a loss or a count read back, a prediction copied out) or when a model is built, not per layer or per
    // parameter. Anything else that reads a whole shape inside (zero_, view_as, expand_as, dot, ...) is refused.
    private static bool Allowed(MethodBase m) =>
        (m.DeclaringType == typeof(Tensor) && m.Name is "item" or "data") ||
        (m.DeclaringType is { IsGenericType: true } t && t.GetGenericTypeDefinition() == typeof(TorchSharp.Utils.TensorAccessor<>) && m.Name is "ToArray" or "CopyTo") ||
        (m.DeclaringType == typeof(nn) && m.Name is "Conv2d" or "Linear");

    [Fact]
    public void The_rule_sees_the_reads_torchsharp_makes_inside()
    {
        // Guards the guard: these members read the whole shape inside (zero_ and view_as are the two this project used).
        var tensor = typeof(Tensor);
        Assert.True(ReadsShapeInside(tensor.GetMethod("zero_", Type.EmptyTypes)!));
        Assert.True(ReadsShapeInside(tensor.GetMethod("view_as", [tensor])!));
        Assert.False(ReadsShapeInside(tensor.GetMethod("view", [typeof(long[])])!));
        Assert.False(ReadsShapeInside(tensor.GetMethod("fill_", [typeof(TorchSharp.Scalar)])!));
    }

    [Fact]
    public void No_method_of_ours_reads_a_whole_shape_through_torchsharp()
    {
        var ours = new[] { typeof(RepLKNetModel).Assembly, typeof(RepLKNet.Cli.ReplknetApp).Assembly };
        var violations = ours.SelectMany(IlCalls.MethodsOf)
            .SelectMany(method => IlCalls.Callees(method).Where(c => !Allowed(c) && ReadsShapeInside(c)).Select(callee => $"{IlCalls.Describe(method)} calls {IlCalls.Describe(callee)}"))
            .Distinct().Order().ToList();
        Assert.True(violations.Count == 0,
            $"{violations.Count} whole-shape read(s) through TorchSharp, directly or inside the member called (a pinned array and a finalizable object each); " +
            "use RepLKNet.Runtime.TensorSizes, size(d), Scalars.ZeroInPlace, view(TensorSizes.Of(t)):\n" + string.Join("\n", violations));
    }
}
