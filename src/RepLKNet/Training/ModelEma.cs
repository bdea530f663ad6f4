using RepLKNet.Checkpoints;
using System.Runtime.InteropServices;
using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Runtime;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace RepLKNet.Training;

/// <summary>
/// Exponential moving average of a model's weights (timm's <c>ModelEma</c>, as the official recipe uses with decay 0.9999):
/// after every optimizer step, ema = decay·ema + (1 − decay)·current for floating-point entries; integer buffers
/// (<c>num_batches_tracked</c>) are copied. The average lives in a second model of the same topology. With
/// <c>warmup</c>, the decay used at update u is min(decay, (1 + u) / (10 + u)), so short runs are not dominated by the
/// random initialization.
/// </summary>
public sealed class ModelEma
{
    private readonly Module _average;

    /// <summary>
    /// Starts the average at <paramref name="model"/>'s current weights, copied into <paramref name="average"/>, which is
    /// put in eval mode with gradients off for its parameters.
    /// </summary>
    /// <param name="model">The trained model; only read.</param>
    /// <param name="average">A model of the same topology (same state-dict keys and shapes); its weights are overwritten.</param>
    /// <param name="decay">Weight kept by the average at each update, in [0, 1] (the official recipe: 0.9999).</param>
    /// <param name="warmup">Ramp the decay up as min(<paramref name="decay"/>, (1 + u) / (10 + u)) over the updates u.</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> or <paramref name="average"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="decay"/> is NaN or outside [0, 1] (<see cref="ArgumentException.ParamName"/> is <c>decay</c>).</exception>
    /// <exception cref="KeyNotFoundException"><paramref name="average"/> has a state-dict entry that <paramref name="model"/> lacks (a topology mismatch; entries only <paramref name="model"/> has are ignored).</exception>
    public ModelEma(Module model, Module average, double decay, bool warmup = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(average);
        if (decay is < 0 or > 1 || double.IsNaN(decay))
        {
            throw new ArgumentOutOfRangeException(nameof(decay), decay, "EMA decay must be in [0, 1]");
        }

        _average = average;
        Decay = decay;
        Warmup = warmup;
        _average.eval();
        using var noGrad = no_grad();
        var source = StateDicts.Ordered(model).ToDictionary();
        foreach (var (key, tensor) in StateDicts.Ordered(_average))
        {
            tensor.copy_(source[key]);
        }

        foreach (var parameter in _average.parameters())
        {
            parameter.requires_grad_(false);
        }
    }

    /// <summary>The decay given to the constructor, in [0, 1] (the ceiling of the ramped decay under <see cref="Warmup"/>).</summary>
    public double Decay { get; }

    /// <summary>Whether the decay ramps up over the first updates.</summary>
    public bool Warmup { get; }

    /// <summary>Updates applied so far; drives the <see cref="Warmup"/> ramp, so a resumed run sets it back from its saved state.</summary>
    public long Updates { get; set; }

    /// <summary>The averaged model (eval mode).</summary>
    public Module Average => _average;

    /// <summary>
    /// Folds <paramref name="model"/>'s current weights into the average (call after each optimizer step): floating-point
    /// entries become decay·average + (1 − decay)·current, integer buffers are copied. <see cref="Updates"/> grows by one first (the ramp uses the count before it).
    /// </summary>
    /// <param name="model">The trained model, with the topology and device of <see cref="Average"/>; only read.</param>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="KeyNotFoundException"><see cref="Average"/> has a state-dict entry that <paramref name="model"/> lacks (a topology mismatch); <see cref="Updates"/> has grown and the entries before it are already folded.</exception>
    public void Update(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var noGrad = no_grad();
        // Every wrapper made here (state-dict views) belongs to this scope, and each number is a held Scalar (GC safety).
        using var scope = NewDisposeScope();
        double decay = Warmup ? Math.Min(Decay, (1.0 + Updates) / (10.0 + Updates)) : Decay;
        Updates++;
        var current = StateDicts.Ordered(model).ToDictionary();
        // CPU float32 pairs in one fused pass (Ops.Cpu.OptimizerCpu); the rest (CUDA, other dtypes) through libtorch's ops.
        var fused = AdamWStep.UseFused ? new List<OptimizerCpu.EmaSegment>() : null;
        foreach (var (key, tensor) in StateDicts.Ordered(_average))
        {
            var value = current[key];
            if (tensor.is_floating_point())
            {
                if (fused is not null && FusablePair(tensor, value) is { } pair)
                {
                    fused.Add(pair);
                    continue;
                }

                Scalars.AddInPlace(Scalars.MulInPlace(tensor, decay), value.detach(), 1 - decay);
            }
            else
            {
                tensor.copy_(value);
            }
        }

        if (fused is { Count: > 0 })
        {
            // The tensors stay alive until here: both models hold them, and their wrappers belong to this scope.
            OptimizerCpu.Ema(CollectionsMarshal.AsSpan(fused), decay, DepthwiseConv2d.ThreadCount);
        }

        GC.KeepAlive(current);
    }

    private static unsafe OptimizerCpu.EmaSegment? FusablePair(Tensor average, Tensor current)
    {
        float* a = OptimizerCpu.FloatData(average);
        float* c = a is null ? null : OptimizerCpu.FloatData(current);
        long n = average.numel();
        return c is null || current.numel() != n ? null : new OptimizerCpu.EmaSegment(a, c, n);
    }
}
