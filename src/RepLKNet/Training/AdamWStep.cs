using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>
/// The AdamW update (Loshchilov &amp; Hutter; <c>torch.optim.AdamW</c> with amsgrad and maximize off, as the official
/// recipe uses it) applied to a TorchSharp <see cref="AdamW"/>'s parameter groups and per-parameter state, safe against
/// the GC: TorchSharp's step passes temporary Scalars (<c>mul_(beta1)</c>, <c>/ Math.Sqrt(…)</c>, …) that the finalizer
/// thread may free while libtorch reads them (<see cref="Scalars"/>). The optimizer object keeps its role for everything
/// else (groups, learning rates, <c>save_state_dict</c>/<c>load_state_dict</c> in TorchSharp's format).
/// Per parameter p with gradient g at step t: p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
/// Two paths, as PyTorch has (<c>fused=True</c> and the per-tensor loop): contiguous float32 CPU parameters, with their
/// gradients and moments, are updated in one fused pass over all of them (<see cref="OptimizerCpu"/>: float32, every
/// operation rounded on its own, the same bits on any thread count and vector width; within float32 rounding of
/// TorchSharp's step, not bit-identical to it); every other parameter (CUDA, float64, non-contiguous), and all of them
/// with <c>REPLKNET_FUSED_OPTIMIZER=0</c>, takes exactly the operations of TorchSharp's <c>AdamW.step</c> in the same
/// order, bit-identical to it.
/// </summary>
public static class AdamWStep
{
    /// <summary>Applies one update to every parameter of <paramref name="optimizer"/> that has a gradient.</summary>
    /// <exception cref="NotSupportedException">A group turns on amsgrad or maximize.</exception>
    public static void Apply(AdamW optimizer)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        // The live per-parameter states, in the order of the groups' parameters (TorchSharp's state_dict()).
        var states = optimizer.state_dict().State;
        int index = 0;
        // The tensors of the fused path, updated together after the loop (they stay alive: the optimizer holds them, and
        // the gradient wrappers belong to this scope).
        var fused = UseFused ? new List<OptimizerCpu.AdamWSegment>() : null;
        foreach (var group in optimizer.ParamGroups.Cast<AdamW.ParamGroup>())
        {
            var o = group.Options;
            if (o.amsgrad == true || o.maximize == true)
            {
                throw new NotSupportedException("AdamWStep implements AdamW without amsgrad and maximize");
            }

            double lr = o.LearningRate!.Value, beta1 = o.beta1!.Value, beta2 = o.beta2!.Value, eps = o.eps!.Value, decay = o.weight_decay!.Value;
            foreach (var parameter in group.Parameters)
            {
                var state = (AdamW.State)states[index++];
                var grad = parameter.grad;
                if (grad is null)
                {
                    continue;
                }

                state.step++;
                if (fused is not null && FusablePointers(parameter, grad, state) is { } f)
                {
                    unsafe
                    {
                        fused.Add(OptimizerCpu.AdamWSegment.Create((float*)f.Param, (float*)f.Grad, (float*)f.ExpAvg, (float*)f.ExpAvgSq, f.Length,
                            lr, beta1, beta2, eps, decay, state.step));
                    }

                    continue;
                }

                Scalars.MulInPlace(parameter, 1.0 - lr * decay);
                double correction1 = 1.0 - Math.Pow(beta1, state.step);
                double correction2 = 1.0 - Math.Pow(beta2, state.step);
                Scalars.AddInPlace(Scalars.MulInPlace(state.exp_avg, beta1), grad, 1.0 - beta1);
                Scalars.AddcmulInPlace(Scalars.MulInPlace(state.exp_avg_sq, beta2), grad, grad, 1.0 - beta2);
                var denominator = Scalars.AddInPlace(Scalars.Div(state.exp_avg_sq.sqrt(), Math.Sqrt(correction2)), eps);
                // 0.0 − x, as TorchSharp writes it (−(x) would give −0.0 at lr = 0 and flip the sign of a −0.0 weight).
                Scalars.AddcdivInPlace(parameter, state.exp_avg, denominator, 0.0 - (lr / correction1));
            }
        }

        if (fused is { Count: > 0 })
        {
            OptimizerCpu.AdamW(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(fused), DepthwiseConv2d.ThreadCount);
        }

        GC.KeepAlive(states);
    }

    /// <summary>
    /// Whether CPU float32 parameters take the fused path (<see cref="OptimizerCpu"/>, one pass per tensor); true unless
    /// <c>REPLKNET_FUSED_OPTIMIZER=0</c>. Other tensors (CUDA, float64, non-contiguous) always take libtorch's ops.
    /// </summary>
    internal static bool UseFused { get; set; } = Environment.GetEnvironmentVariable("REPLKNET_FUSED_OPTIMIZER") != "0";

    private static unsafe (nint Param, nint Grad, nint ExpAvg, nint ExpAvgSq, long Length)? FusablePointers(Tensor parameter, Tensor grad, AdamW.State state)
    {
        float* p = OptimizerCpu.FloatData(parameter);
        if (p is null)
        {
            return null;
        }

        float* g = OptimizerCpu.FloatData(grad), m = OptimizerCpu.FloatData(state.exp_avg), v = OptimizerCpu.FloatData(state.exp_avg_sq);
        long n = parameter.numel();
        if (g is null || m is null || v is null || grad.numel() != n || state.exp_avg.numel() != n || state.exp_avg_sq.numel() != n)
        {
            return null;
        }

        return ((nint)p, (nint)g, (nint)m, (nint)v, n);
    }
}
