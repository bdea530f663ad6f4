namespace RepLKNet.Training;

/// <summary>
/// The official per-iteration schedule (ConvNeXt/RepLKNet <c>cosine_scheduler</c>): a linear warm-up from
/// <c>start</c> to <c>base</c> over the warm-up iterations (numpy <c>linspace</c>, both ends included), then a cosine from
/// <c>base</c> down towards <c>final</c> over the remaining iterations: final + ½(base − final)(1 + cos(π·i / n)).
/// Used for the learning rate (final = min_lr) and the weight decay (final = wd_end, by default = wd: constant).
/// </summary>
public sealed class CosineSchedule : ILearningRateSchedule
{
    /// <summary>Creates the schedule over <paramref name="epochs"/> × <paramref name="iterationsPerEpoch"/> iterations.</summary>
    /// <param name="baseValue">Peak value, reached at the end of the warm-up (official <c>base_value</c>).</param>
    /// <param name="finalValue">Value the cosine decays towards (official <c>final_value</c>); the last iteration stops one cosine step short of it.</param>
    /// <param name="epochs">Training epochs (≥ 1).</param>
    /// <param name="iterationsPerEpoch">Iterations (optimizer steps) per epoch (≥ 1).</param>
    /// <param name="warmupEpochs">Warm-up length in epochs (≥ 0); used only when <paramref name="warmupSteps"/> is not positive.</param>
    /// <param name="startWarmupValue">Value at iteration 0 of the warm-up (official <c>start_warmup_value</c>).</param>
    /// <param name="warmupSteps">
    /// Warm-up length in iterations; when positive it replaces <paramref name="warmupEpochs"/> (official
    /// <c>warmup_steps</c>); the default −1 (or any value ≤ 0) means "use <paramref name="warmupEpochs"/>".
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="epochs"/> or <paramref name="iterationsPerEpoch"/> is 0 or negative, or <paramref name="warmupEpochs"/> is negative
    /// (<see cref="ArgumentException.ParamName"/> names it).
    /// </exception>
    /// <exception cref="ArgumentException">The warm-up is longer than the whole schedule (more iterations than <paramref name="epochs"/> × <paramref name="iterationsPerEpoch"/>).</exception>
    public CosineSchedule(double baseValue, double finalValue, int epochs, int iterationsPerEpoch, int warmupEpochs = 0,
        double startWarmupValue = 0, int warmupSteps = -1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(epochs);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(iterationsPerEpoch);
        ArgumentOutOfRangeException.ThrowIfNegative(warmupEpochs);
        BaseValue = baseValue;
        FinalValue = finalValue;
        StartWarmupValue = startWarmupValue;
        TotalIterations = (long)epochs * iterationsPerEpoch;
        WarmupIterations = warmupSteps > 0 ? warmupSteps : (long)warmupEpochs * iterationsPerEpoch;
        if (WarmupIterations > TotalIterations)
        {
            throw new ArgumentException($"warm-up ({WarmupIterations} iterations) is longer than training ({TotalIterations})");
        }
    }

    /// <summary>Peak value (reached at the end of warm-up).</summary>
    public double BaseValue { get; }

    /// <summary>Value the cosine decays towards.</summary>
    public double FinalValue { get; }

    /// <summary>Value at iteration 0 of the warm-up.</summary>
    public double StartWarmupValue { get; }

    /// <summary>Iterations in the whole schedule.</summary>
    public long TotalIterations { get; }

    /// <summary>Warm-up iterations: <c>warmupSteps</c> when positive, else <c>warmupEpochs</c> × <c>iterationsPerEpoch</c>.</summary>
    public long WarmupIterations { get; }

    /// <summary>The value at iteration <paramref name="iteration"/> (0-based); past the end, the last value (that of iteration <see cref="TotalIterations"/> − 1).</summary>
    /// <param name="iteration">0-based iteration (optimizer step) index.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="iteration"/> is negative.</exception>
    public double this[long iteration]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfNegative(iteration);
            iteration = Math.Min(iteration, TotalIterations - 1);
            if (iteration < WarmupIterations)
            {
                return WarmupIterations == 1
                    ? StartWarmupValue
                    : StartWarmupValue + (BaseValue - StartWarmupValue) * iteration / (WarmupIterations - 1);
            }

            long cosineLength = TotalIterations - WarmupIterations;
            long i = iteration - WarmupIterations;
            return FinalValue + 0.5 * (BaseValue - FinalValue) * (1 + Math.Cos(Math.PI * i / cosineLength));
        }
    }

    /// <summary>The value at step <paramref name="stepIndex"/>: <c>this[stepIndex]</c>; the schedule is per iteration, so <paramref name="budgetFraction"/> is ignored.</summary>
    /// <param name="stepIndex">0-based optimizer step.</param>
    /// <param name="budgetFraction">Ignored.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="stepIndex"/> is negative.</exception>
    public double At(long stepIndex, double budgetFraction) => this[stepIndex];
}

/// <summary>
/// MMSegmentation's iteration-based learning rate (mmcv <c>PolyLrUpdaterHook</c> with <c>by_epoch=False</c> and
/// <c>warmup='linear'</c>, as the official RepLKNet UperNet configs set it: power 1, min_lr 0, warm-up 400 iterations from
/// ratio 1e-6). At iteration i (0-based, mmcv's <c>runner.iter</c>) the regular rate is
/// <c>(base − min)·(1 − i / maxIters)^power + min</c>; during the warm-up (i &lt; warmupIters) it is multiplied by
/// <c>1 − (1 − i / warmupIters)·(1 − warmupRatio)</c>, so iteration 0 runs at <c>regular · warmupRatio</c>
/// (mmcv/runner/hooks/lr_updater.py: <c>get_lr</c>, <c>get_warmup_lr</c>, <c>before_train_iter</c>).
/// </summary>
public sealed class PolySchedule : ILearningRateSchedule
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="baseValue">The base learning rate (mmcv's <c>initial_lr</c> of the group; official 2e-4).</param>
    /// <param name="maxIterations">The run's iterations (mmcv's <c>max_iters</c>), ≥ 1.</param>
    /// <param name="power">Exponent of the decay (official 1.0), &gt; 0.</param>
    /// <param name="minValue">Learning rate at <paramref name="maxIterations"/> (official 0), ≥ 0.</param>
    /// <param name="warmupIterations">Linear warm-up length in iterations (official 400 for 31B, 800 for 31L, 1500 for XL); 0: none.</param>
    /// <param name="warmupRatio">The fraction of the regular rate at iteration 0, in (0, 1] (official 1e-6).</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of its range (<see cref="ArgumentException.ParamName"/> names it).</exception>
    public PolySchedule(double baseValue, long maxIterations, double power = 1.0, double minValue = 0, long warmupIterations = 0, double warmupRatio = 0.1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxIterations);
        ArgumentOutOfRangeException.ThrowIfNegative(warmupIterations);
        if (!(power > 0) || double.IsInfinity(power))
        {
            throw new ArgumentOutOfRangeException(nameof(power), power, "the poly power must be positive");
        }

        if (!(minValue >= 0) || double.IsInfinity(minValue))
        {
            throw new ArgumentOutOfRangeException(nameof(minValue), minValue, "the minimum learning rate must be ≥ 0");
        }

        if (!(warmupRatio > 0 && warmupRatio <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(warmupRatio), warmupRatio, "the warm-up ratio must be in (0, 1], as mmcv requires");
        }

        BaseValue = baseValue;
        MaxIterations = maxIterations;
        Power = power;
        MinValue = minValue;
        WarmupIterations = warmupIterations;
        WarmupRatio = warmupRatio;
    }

    /// <summary>The base learning rate.</summary>
    public double BaseValue { get; }

    /// <summary>The run's iterations (mmcv's <c>max_iters</c>).</summary>
    public long MaxIterations { get; }

    /// <summary>The decay's exponent.</summary>
    public double Power { get; }

    /// <summary>The learning rate the decay ends at.</summary>
    public double MinValue { get; }

    /// <summary>Warm-up iterations (0: none).</summary>
    public long WarmupIterations { get; }

    /// <summary>The warm-up's starting fraction of the regular rate.</summary>
    public double WarmupRatio { get; }

    /// <summary>The learning rate of iteration <paramref name="iteration"/> (0-based); at or past <see cref="MaxIterations"/>, <see cref="MinValue"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="iteration"/> is negative.</exception>
    public double this[long iteration]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfNegative(iteration);
            double progress = Math.Min(iteration, MaxIterations);
            double regular = (BaseValue - MinValue) * Math.Pow(1 - progress / MaxIterations, Power) + MinValue;
            if (iteration >= WarmupIterations)
            {
                return regular;
            }

            double k = (1 - (double)iteration / WarmupIterations) * (1 - WarmupRatio);
            return regular * (1 - k);
        }
    }

    /// <summary>The rate of step <paramref name="stepIndex"/>: <c>this[stepIndex]</c> (the schedule is per iteration; <paramref name="budgetFraction"/> is ignored).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="stepIndex"/> is negative.</exception>
    public double At(long stepIndex, double budgetFraction) => this[stepIndex];
}
