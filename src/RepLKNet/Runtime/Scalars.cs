using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>
/// Tensor arithmetic with numbers that is safe against the garbage collector. A TorchSharp <see cref="Scalar"/> owns a
/// native <c>c10::Scalar</c> and frees it in its finalizer; TorchSharp's implicit conversions (<c>t.mul_(0.5)</c>,
/// <c>a + b</c>, which is <c>a.add(b, 1)</c>) create one that nothing references while the native call reading it runs.
/// A GC in that window (any thread allocating) lets the finalizer thread free it mid-call, and libtorch reads freed
/// memory: <c>Expected false to be true, but got false</c> (<c>c10::Scalar::to&lt;T&gt;()</c> finding no valid tag) or
/// <c>Unknown scalar type</c>. Every number our code passes to libtorch goes through this class, which holds each Scalar
/// until the call that reads it has returned (constants are held for the life of the process). See docs/runtime.md,
/// "Object lifetimes"; <c>GcSafetyTests</c> fails on any other Scalar creation in our assemblies.
/// </summary>
public static class Scalars
{
    /// <summary>The integer 1 (alpha of additions, counter increments), held for the life of the process.</summary>
    public static Scalar One { get; } = 1.ToScalar();

    /// <summary>The integer 0 (zeroing in place with <c>fill_</c>), held for the life of the process.</summary>
    public static Scalar Zero { get; } = 0.ToScalar();

    /// <summary>Float NaN (poisoning outputs in checks), held for the life of the process.</summary>
    public static Scalar NaN { get; } = float.NaN.ToScalar();

    /// <summary>
    /// Sets every element of <paramref name="t"/> to zero in place (<c>fill_(0)</c>); returns <paramref name="t"/>. TorchSharp's
    /// <c>zero_()</c> reads the whole shape first (<see cref="TensorSizes"/>) and returns a new wrapper.
    /// </summary>
    public static Tensor ZeroInPlace(Tensor t) => t.fill_(Zero);

    /// <summary>a + b (broadcasting), without a temporary Scalar.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

    /// <summary>a += b in place; returns <paramref name="a"/>.</summary>
    public static Tensor AddInPlace(Tensor a, Tensor b) => a.add_(b, One);

    /// <summary>a += alpha·b in place; returns <paramref name="a"/>.</summary>
    public static Tensor AddInPlace(Tensor a, Tensor b, double alpha)
    {
        using var s = alpha.ToScalar();
        return a.add_(b, s);
    }

    /// <summary>t + value (a new tensor).</summary>
    public static Tensor Add(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.add(s, One);
    }

    /// <summary>t += value in place; returns <paramref name="t"/>.</summary>
    public static Tensor AddInPlace(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.add_(s, One);
    }

    /// <summary>t · value (a new tensor).</summary>
    public static Tensor Mul(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.mul(s);
    }

    /// <summary>t ·= value in place; returns <paramref name="t"/>.</summary>
    public static Tensor MulInPlace(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.mul_(s);
    }

    /// <summary>t / value (a new tensor).</summary>
    public static Tensor Div(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.div(s);
    }

    /// <summary>t /= value in place; returns <paramref name="t"/>.</summary>
    public static Tensor DivInPlace(Tensor t, double value)
    {
        using var s = value.ToScalar();
        return t.div_(s);
    }

    /// <summary>t += value·(a / b) elementwise in place (<c>addcdiv_</c>); returns <paramref name="t"/>.</summary>
    public static Tensor AddcdivInPlace(Tensor t, Tensor a, Tensor b, double value)
    {
        using var s = value.ToScalar();
        return t.addcdiv_(a, b, s);
    }

    /// <summary>t += value·(a · b) elementwise in place (<c>addcmul_</c>); returns <paramref name="t"/>.</summary>
    public static Tensor AddcmulInPlace(Tensor t, Tensor a, Tensor b, double value)
    {
        using var s = value.ToScalar();
        return t.addcmul_(a, b, s);
    }
}
