using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace RepLKNet.Ops.Cpu;

/// <summary>The instruction sets the CPU kernels can use.</summary>
public enum CpuIsa
{
    /// <summary>The widest the machine supports.</summary>
    Auto,

    /// <summary>AVX-512F: 16 floats per vector.</summary>
    Vector512,

    /// <summary>AVX2 + FMA3: 8 floats per vector.</summary>
    Vector256,

    /// <summary>Plain scalar code (one float per "vector"): the reference path and the fallback.</summary>
    Scalar,
}

/// <summary>
/// The few vector operations the kernels need, as static abstract members so that one generic kernel is compiled
/// into a specialized, fully inlined body per instruction set (the JIT specializes generics over struct types).
/// </summary>
/// <typeparam name="TV">The vector type.</typeparam>
internal unsafe interface IVectorOps<TV>
    where TV : struct
{
    static abstract int Count { get; }

    static abstract TV Zero { get; }

    static abstract TV Load(float* p);

    static abstract void Store(float* p, TV v);

    static abstract TV Broadcast(float value);

    /// <summary>a·b + c.</summary>
    static abstract TV Fma(TV a, TV b, TV c);

    static abstract float Sum(TV v);

    /// <summary>a + b.</summary>
    static abstract TV Add(TV a, TV b);

    /// <summary>max(a, 0) (ReLU).</summary>
    static abstract TV Relu(TV a);
}

internal unsafe struct Ops512 : IVectorOps<Vector512<float>>
{
    public static int Count => 16;

    public static Vector512<float> Zero => Vector512<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector512<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Broadcast(float value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Avx512F.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector512<float> v) => Vector512.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Relu(Vector512<float> a) => Vector512.Max(a, Vector512<float>.Zero);
}

internal unsafe struct Ops256 : IVectorOps<Vector256<float>>
{
    public static int Count => 8;

    public static Vector256<float> Zero => Vector256<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector256<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Broadcast(float value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Relu(Vector256<float> a) => Vector256.Max(a, Vector256<float>.Zero);
}

internal unsafe struct OpsScalar : IVectorOps<float>
{
    public static int Count => 1;

    public static float Zero => 0f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(float* p) => *p;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, float v) => *p = v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Broadcast(float value) => value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fma(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Add(float a, float b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Relu(float a) => MathF.Max(a, 0f);
}

/// <summary>Which <see cref="CpuIsa"/> the machine can run.</summary>
public static class CpuIsas
{
    /// <summary>Whether <paramref name="isa"/> can run here.</summary>
    public static bool IsSupported(CpuIsa isa) => isa switch
    {
        CpuIsa.Vector512 => Avx512F.IsSupported && Vector512.IsHardwareAccelerated,
        CpuIsa.Vector256 => Avx2.IsSupported && Fma.IsSupported,
        _ => true,
    };

    /// <summary>The widest supported instruction set.</summary>
    public static CpuIsa Best => IsSupported(CpuIsa.Vector512) ? CpuIsa.Vector512 : IsSupported(CpuIsa.Vector256) ? CpuIsa.Vector256 : CpuIsa.Scalar;

    /// <summary>Every instruction set this machine can run, widest first.</summary>
    public static IReadOnlyList<CpuIsa> Supported => [.. new[] { CpuIsa.Vector512, CpuIsa.Vector256, CpuIsa.Scalar }.Where(IsSupported)];

    /// <summary>Resolves <see cref="CpuIsa.Auto"/> and rejects an unsupported request.</summary>
    public static CpuIsa Resolve(CpuIsa requested)
    {
        if (requested == CpuIsa.Auto)
        {
            return Best;
        }

        return IsSupported(requested) ? requested : throw new NotSupportedException($"this CPU cannot run the {requested} path");
    }
}
