using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// The optimizer's per-element updates on float32 CPU tensors, fused into one pass over all tensors of a step: the AdamW
/// update (<c>Training.AdamWStep</c>) and the weight EMA (<c>Training.ModelEma</c>). libtorch runs each as 5–7 separate
/// ops per tensor, one interop call and one dispatch each, ~1,100 calls per step on the default model's 94 parameters
/// (docs/perf-notes.md, 2026-12-01 (later), "The optimizer and the EMA as one pass"); here each tensor is read and written once.
/// </summary>
/// <remarks>
/// Arithmetic: float32, each operation rounded on its own (no fused multiply-add), in the same order in the vector body and
/// the scalar tail, so a result does not depend on the vector width, the machine or how the elements are split between
/// threads. The update is the one of <c>torch.optim.AdamW</c> written as one expression per element, as its
/// <c>fused=True</c> CPU kernel does (which writes the first moment as a lerp, equal up to rounding); like it, the results
/// may differ from the one-op-at-a-time path in the last bits.
/// </remarks>
internal static unsafe class OptimizerCpu
{
    /// <summary>Elements per piece of work handed to a thread.</summary>
    private const int PieceElements = 16384;

    /// <summary>Below this many elements in all, one thread does everything (a team hand-off costs more).</summary>
    private const long ParallelMinimum = 65536;

    /// <summary>One tensor's AdamW update: pointers and the step's coefficients (see <see cref="AdamWSegment.Create"/>).</summary>
    internal readonly struct AdamWSegment
    {
        public readonly float* Param;
        public readonly float* Grad;
        public readonly float* ExpAvg;
        public readonly float* ExpAvgSq;
        public readonly long Length;
        public readonly float Decay;
        public readonly float Beta1;
        public readonly float OneMinusBeta1;
        public readonly float Beta2;
        public readonly float OneMinusBeta2;
        public readonly float Correction2Sqrt;
        public readonly float Eps;
        public readonly float NegStepSize;

        private AdamWSegment(float* param, float* grad, float* expAvg, float* expAvgSq, long length, float decay, float beta1, float oneMinusBeta1,
            float beta2, float oneMinusBeta2, float correction2Sqrt, float eps, float negStepSize)
        {
            Param = param;
            Grad = grad;
            ExpAvg = expAvg;
            ExpAvgSq = expAvgSq;
            Length = length;
            Decay = decay;
            Beta1 = beta1;
            OneMinusBeta1 = oneMinusBeta1;
            Beta2 = beta2;
            OneMinusBeta2 = oneMinusBeta2;
            Correction2Sqrt = correction2Sqrt;
            Eps = eps;
            NegStepSize = negStepSize;
        }

        /// <summary>
        /// The coefficients of step <paramref name="step"/> (1-based), computed in float64 and rounded once to float32:
        /// p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g·g; p ← p + (−lr/(1 − β₁ᵗ))·(m / (√v / √(1 − β₂ᵗ) + ε)).
        /// </summary>
        public static AdamWSegment Create(float* param, float* grad, float* expAvg, float* expAvgSq, long length, double lr, double beta1, double beta2,
            double eps, double weightDecay, long step)
        {
            double correction1 = 1.0 - Math.Pow(beta1, step);
            double correction2 = 1.0 - Math.Pow(beta2, step);
            return new AdamWSegment(param, grad, expAvg, expAvgSq, length, (float)(1.0 - lr * weightDecay), (float)beta1, (float)(1.0 - beta1),
                (float)beta2, (float)(1.0 - beta2), (float)Math.Sqrt(correction2), (float)eps, (float)(0.0 - (lr / correction1)));
        }
    }

    /// <summary>One tensor's EMA update: average ← average·decay + current·(1 − decay).</summary>
    internal readonly struct EmaSegment(float* average, float* current, long length)
    {
        public readonly float* Average = average;
        public readonly float* Current = current;
        public readonly long Length = length;
    }

    /// <summary>
    /// The element pointer of a CPU float32 tensor whose elements are contiguous, or null when it is not one (then the
    /// caller takes libtorch's path). The tensor must stay alive while the pointer is used.
    /// </summary>
    public static float* FloatData(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        if (t.device_type != DeviceType.CPU || t.dtype != ScalarType.Float32 || !t.is_contiguous() || t.numel() == 0 ||
            t.numel() > int.MaxValue / sizeof(float))
        {
            return null;
        }

        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
    }

    /// <summary>Applies every segment's AdamW update, on up to <paramref name="threads"/> threads.</summary>
    public static void AdamW(ReadOnlySpan<AdamWSegment> segments, int threads)
    {
        var work = segments.ToArray();
        Run(work, static (in AdamWSegment s) => s.Length, static (in AdamWSegment s, long start, long end) => AdamWRange(s, start, end), threads);
    }

    /// <summary>Applies every segment's EMA update with <paramref name="decay"/>, on up to <paramref name="threads"/> threads.</summary>
    public static void Ema(ReadOnlySpan<EmaSegment> segments, double decay, int threads)
    {
        float keep = (float)decay, take = (float)(1.0 - decay);
        var work = segments.ToArray();
        Run(work, static (in EmaSegment s) => s.Length, (in EmaSegment s, long start, long end) => EmaRange(s, keep, take, start, end), threads);
    }

    private delegate long LengthOf<T>(in T segment);

    private delegate void RangeBody<T>(in T segment, long start, long end);

    /// <summary>Splits the segments into pieces of at most <see cref="PieceElements"/> elements and runs them on the team.</summary>
    private static void Run<T>(T[] segments, LengthOf<T> length, RangeBody<T> body, int threads)
    {
        long total = 0;
        var pieces = new List<(int Segment, long Start, long End)>();
        for (int i = 0; i < segments.Length; i++)
        {
            long n = length(segments[i]);
            total += n;
            for (long start = 0; start < n; start += PieceElements)
            {
                pieces.Add((i, start, Math.Min(n, start + PieceElements)));
            }
        }

        if (pieces.Count == 0)
        {
            return;
        }

        int workers = total < ParallelMinimum ? 1 : threads;
        DepthwiseConvCpu.ParallelPlanes(pieces.Count, workers, 0, (_, first, last) =>
        {
            for (int p = first; p < last; p++)
            {
                var (segment, start, end) = pieces[p];
                body(segments[segment], start, end);
            }
        });
    }

    private static void AdamWRange(in AdamWSegment s, long start, long end)
    {
        float* p = s.Param, g = s.Grad, m = s.ExpAvg, v = s.ExpAvgSq;
        long i = start;
        if (Vector256.IsHardwareAccelerated)
        {
            var decay = Vector256.Create(s.Decay);
            var beta1 = Vector256.Create(s.Beta1);
            var rest1 = Vector256.Create(s.OneMinusBeta1);
            var beta2 = Vector256.Create(s.Beta2);
            var rest2 = Vector256.Create(s.OneMinusBeta2);
            var c2 = Vector256.Create(s.Correction2Sqrt);
            var eps = Vector256.Create(s.Eps);
            var negStep = Vector256.Create(s.NegStepSize);
            for (; i + 8 <= end; i += 8)
            {
                var gi = Vector256.Load(g + i);
                var pi = Vector256.Load(p + i) * decay;
                var mi = (Vector256.Load(m + i) * beta1) + (rest1 * gi);
                var vi = (Vector256.Load(v + i) * beta2) + ((rest2 * gi) * gi);
                var denominator = (Vector256.Sqrt(vi) / c2) + eps;
                pi += negStep * (mi / denominator);
                mi.Store(m + i);
                vi.Store(v + i);
                pi.Store(p + i);
            }
        }

        for (; i < end; i++)
        {
            float gi = g[i];
            float pi = p[i] * s.Decay;
            float mi = (m[i] * s.Beta1) + (s.OneMinusBeta1 * gi);
            float vi = (v[i] * s.Beta2) + ((s.OneMinusBeta2 * gi) * gi);
            float denominator = (MathF.Sqrt(vi) / s.Correction2Sqrt) + s.Eps;
            pi += s.NegStepSize * (mi / denominator);
            m[i] = mi;
            v[i] = vi;
            p[i] = pi;
        }
    }

    private static void EmaRange(in EmaSegment s, float keep, float take, long start, long end)
    {
        float* a = s.Average, c = s.Current;
        long i = start;
        if (Vector256.IsHardwareAccelerated)
        {
            var k = Vector256.Create(keep);
            var t = Vector256.Create(take);
            for (; i + 8 <= end; i += 8)
            {
                ((Vector256.Load(a + i) * k) + (Vector256.Load(c + i) * t)).Store(a + i);
            }
        }

        for (; i < end; i++)
        {
            a[i] = (a[i] * keep) + (c[i] * take);
        }
    }
}
