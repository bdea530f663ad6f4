using RepLKNet.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace RepLKNet.Training;

/// <summary>
/// The AdamW update (Loshchilov &amp; Hutter; <c>torch.optim.AdamW</c> with amsgrad and maximize off, as the official
/// recipe uses it) applied to a TorchSharp <see cref="AdamW"/>'s parameter groups and per-parameter state, with exactly
/// the operations of TorchSharp's <c>AdamW.step</c> in the same order (so results are bit-identical to it), but safe
/// against the GC: TorchSharp's step passes temporary Scalars (<c>mul_(beta1)</c>, <c>/ Math.Sqrt(…)</c>, …) that the
/// finalizer thread may free while libtorch reads them (<see cref="Scalars"/>). The optimizer object keeps its role
/// for everything else (groups, learning rates, <c>save_state_dict</c>/<c>load_state_dict</c> in TorchSharp's format).
/// Per parameter p with gradient g at step t: p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
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
    }
}
