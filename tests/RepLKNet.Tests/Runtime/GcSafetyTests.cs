using System.Reflection;
using RepLKNet.Models;
using RepLKNet.Runtime;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Runtime;

/// <summary>
/// The rule behind the intermittent <c>Expected false to be true</c> failure (docs/runtime.md, "Object lifetimes"): a
/// TorchSharp <c>Scalar</c> or <c>Tensor</c> that nothing references while the native call reading it runs can be
/// finalized by the GC in the middle of that call. TorchSharp creates such temporary Scalars inside many of its own
/// methods (an implicit conversion whose result is only passed on: <c>a + b</c> is <c>a.add(b, 1)</c>). These tests read
/// the IL of TorchSharp and of our assemblies and fail on every call that creates one, and run the race itself.
/// </summary>
public sealed class GcSafetyTests
{
    // TorchSharp and TorchVision: the third-party code whose IL is read (ours is checked by the rule itself).
    private static readonly Assembly[] ThirdParty = [typeof(torch).Assembly, typeof(torchvision).Assembly];
    private static readonly Dictionary<MethodBase, bool> Memo = [];

    public GcSafetyTests() => Torch.EnsureLoaded();

    private static bool CreatesScalarItself(MethodBase m) => IlCalls.Callees(m).Any(IsScalarFactory);

    private static bool IsScalarFactory(MethodBase c) =>
        c.DeclaringType == typeof(Scalar) && c.Name == "op_Implicit" ||
        c.DeclaringType?.Name == "ScalarExtensionMethods" && c.Name == "ToScalar";

    private static readonly HashSet<MethodBase> Visiting = [];
    private static bool _cycle;

    /// <summary>
    /// Whether a TorchSharp/TorchVision method creates a Scalar it does not hold, directly or through any third-party method
    /// it calls statically, however deep (a depth-first search over the call graph; a method on the current path counts as
    /// clean while it is being decided, and what it calls is still followed, so a cycle cannot hide a Scalar below it).
    /// </summary>
    private static bool CreatesTemporaryScalar(MethodBase m)
    {
        if (m.DeclaringType is null || !ThirdParty.Contains(m.DeclaringType.Assembly))
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
                _cycle = true; // decided further up the path; a "no" below it must not be remembered
                return false;
            }

            bool outer = _cycle;
            _cycle = false;
            try
            {
                bool result = IsScalarFactory(m) || CreatesScalarItself(m) || IlCalls.Callees(m).Any(CreatesTemporaryScalar);
                if (result || !_cycle)
                {
                    Memo[m] = result;
                }

                return result;
            }
            finally
            {
                Visiting.Remove(m);
                _cycle |= outer;
            }
        }
    }

    [Fact]
    public void The_scanner_sees_the_hidden_scalars_it_must_see()
    {
        // Guards the guard: these TorchSharp members are known (from their source) to create a temporary Scalar, and these not.
        var tensor = typeof(Tensor);
        Assert.True(CreatesTemporaryScalar(tensor.GetMethod("op_Addition", [tensor, tensor])!));
        Assert.True(CreatesTemporaryScalar(tensor.GetMethod("add_", [tensor])!));
        Assert.True(CreatesTemporaryScalar(typeof(TorchSharp.Modules.BatchNorm).GetMethod("forward")!));
        Assert.True(CreatesTemporaryScalar(typeof(TorchSharp.Modules.AdamW).GetMethod("step")!));
        Assert.False(CreatesTemporaryScalar(tensor.GetMethod("add", [tensor, typeof(Scalar)])!));
        Assert.False(CreatesTemporaryScalar(tensor.GetMethod("op_Subtraction", [tensor, tensor])!));
        Assert.False(CreatesTemporaryScalar(tensor.GetMethod("mul_", [typeof(Scalar)])!));
    }

    [Fact]
    public void No_method_of_ours_creates_a_temporary_scalar()
    {
        var ours = new[] { typeof(RepLKNetModel).Assembly, typeof(RepLKNet.Cli.ReplknetApp).Assembly };
        var violations = new List<string>();
        foreach (var method in ours.SelectMany(IlCalls.MethodsOf))
        {
            // Scalars is the one place that creates Scalars, each held until the call reading it returns; what it calls is checked.
            bool holder = method.DeclaringType == typeof(Scalars);
            foreach (var callee in IlCalls.Callees(method))
            {
                if (holder && IsScalarFactory(callee))
                {
                    continue;
                }

                if (IsScalarFactory(callee) || CreatesTemporaryScalar(callee))
                {
                    violations.Add($"{IlCalls.Describe(method)} calls {IlCalls.Describe(callee)}");
                }
            }
        }

        Assert.True(violations.Count == 0,
            $"{violations.Count} call(s) create a Scalar that the GC may finalize while libtorch reads it; use RepLKNet.Runtime.Scalars:\n" +
            string.Join("\n", violations.Distinct().Order()));
    }

    [Fact]
    public void The_modules_our_models_are_built_from_do_not_create_temporary_scalars_in_forward()
    {
        var configs = new nn.Module[]
        {
            new RepLKNetModel(new RepLKNetConfig
            {
                LargeKernelSizes = [7, 5], Layers = [1, 1], Channels = [8, 16], SmallKernel = 3, InChannels = 3, NumClasses = 4,
                DropPathRate = 0.1,
            }),
            new MobileNetV2(MobileNetV2Config.SmallImages(3, 4).WithKernel(7) with { SmallKernel = 3 }),
            new TorchVisionResNet(18, 4),
        };
        var violations = new List<string>();
        foreach (var model in configs)
        {
            foreach (var type in model.modules().Select(m => m.GetType()).Distinct())
            {
                // The forward that runs: the most derived override (ours are scanned by the test above).
                foreach (var forward in type.GetMethods(BindingFlags.Public | BindingFlags.Instance).Where(m => m.Name == "forward"))
                {
                    if (CreatesTemporaryScalar(forward))
                    {
                        violations.Add($"{type.FullName}: {IlCalls.Describe(forward)}");
                    }
                }
            }

            model.Dispose();
        }

        Assert.True(violations.Count == 0, "TorchSharp modules whose forward creates a temporary Scalar:\n" + string.Join("\n", violations.Distinct()));
    }
}
