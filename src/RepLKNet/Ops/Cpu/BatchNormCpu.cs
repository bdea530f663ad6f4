using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using RepLKNet.Runtime;

namespace RepLKNet.Ops.Cpu;

/// <summary>
/// Batch normalization with batch statistics (training) on contiguous NCHW float32: the forward (statistics, normalized
/// output) and the backward (input, weight and bias gradients). The formulas are libtorch's CPU kernels'
/// (<c>batch_norm_cpu_collect_stats</c>, <c>batch_norm_cpu_backward</c>): two-pass statistics (the mean, then
/// Σ(x − mean)²), the biased variance for normalization; backward dx = w·invstd·(dy − Σdy/M − (x − mean)·invstd²·Σdy(x −
/// mean)/M) with M = N·H·W. The traversal is not: each thread takes a range of channels and walks the batch image by
/// image, adding each image's contiguous run of C·H·W/threads floats into a float32 row of per-position sums (one vector
/// add per 8 floats, whatever H·W is), then sums each channel's H·W positions in float64. So every pass streams the
/// tensor once in order, and 2×2 maps vectorize as well as 14×14 ones. The order of every sum is fixed (image 0, 1, …;
/// then position 0, 1, …), so results do not depend on the thread count.
/// </summary>
/// <remarks>
/// Why our own: libtorch's NCHW kernels reduce each (n, c) plane of H·W floats separately, and on the default model's
/// maps (2×2 … 14×14, 32–256 channels, batch 128) its training forward + backward took 1.6–11× ours
/// (docs/perf-notes.md, 2026-12-01 (later), "BatchNorm by rows of the batch"). Precision: each position's sum over the N images is float32
/// (N terms), the rest float64; outputs and gradients are within 1e-5 of float64 (BatchNormTrainingTests).
/// </remarks>
internal static unsafe class BatchNormCpu
{
    /// <summary>
    /// y = (x − mean)·invstd·w + b per channel with the batch's mean and biased variance; writes the per-channel mean,
    /// invstd = 1/√(var + eps) and biased variance (for the running statistics).
    /// </summary>
    /// <param name="x">Input (N, C, H·W), contiguous.</param>
    /// <param name="y">Output, same shape; may not alias <paramref name="x"/>.</param>
    /// <param name="weight">Scale (C) or null (1).</param>
    /// <param name="bias">Shift (C) or null (0).</param>
    /// <param name="mean">Out: batch mean (C).</param>
    /// <param name="invstd">Out: 1/√(biased var + eps) (C).</param>
    /// <param name="variance">Out: biased variance (C), in float64.</param>
    /// <param name="n">Batch size N.</param>
    /// <param name="c">Channels C.</param>
    /// <param name="hw">Pixels per map, H·W.</param>
    /// <param name="eps">Added to the variance.</param>
    /// <param name="threads">Worker threads at most.</param>
    /// <param name="relu">Write max(y, 0) instead of y (the ReLU of a conv_bn_relu, fused).</param>
    /// <param name="alpha">Out, or null: the per-channel scale α = w·invstd, as the float32 the output used (C).</param>
    /// <param name="beta">Out, or null: the per-channel shift β = b − mean·α, as the float32 the output used (C).</param>
    public static void Forward(float* x, float* y, float* weight, float* bias, float* mean, float* invstd, double* variance, int n, int c, long hw,
        double eps, int threads, bool relu = false, float* alpha = null, float* beta = null)
    {
        int workers = Workers(n, c, hw, threads);
        int block = BlockChannels(c, hw, workers, n);
        DepthwiseConvCpu.ParallelPlanes(c, workers, 2 * block * hw, (scratch, first, last) =>
        {
            for (int b0 = first; b0 < last; b0 += block)
            {
                ForwardChannels(x, y, weight, bias, mean, invstd, variance, n, c, hw, eps, scratch, b0, Math.Min(last, b0 + block), relu, alpha, beta, null, null);
            }
        }, workers);
    }

    /// <summary>
    /// <see cref="Forward"/> for channels [<paramref name="first"/>, <paramref name="last"/>), with a scratch of two rows of
    /// their (last − first)·H·W floats.
    /// </summary>
    private static long ForwardChannels(float* x, float* y, float* weight, float* bias, float* mean, float* invstd, double* variance, int n, int c, long hw,
        double eps, float* scratch, int first, int last, bool relu, float* alphaOut, float* betaOut, BatchSplit.Part? part, object? tag)
    {
        long count = n * hw;
        long rowStride = c * hw;
        long offset = first * hw, length = (last - first) * hw;
        float* acc = scratch;
        float* row = scratch + length;
        // A part of a split batch centres its squares on its own mean, then adds its sums to the other parts' once, for both
        // statistics (Chan et al.'s pairwise combination: M2 = Σ M2ₚ + Σ nₚ(μₚ − μ)², with Σ nₚ(μₚ − μ)² = Σ Sₚ²/nₚ − S²/M).
        int channels = last - first;
        bool split = part is not null;
        // The part's sums (Σx, M2, Σx·mean per channel, and its count), then the combined M2: one per-thread array.
        double[]? splitSums = split ? SplitScratch((4 * channels) + 1) : null;
        Span<double> sums = split ? splitSums.AsSpan(0, (3 * channels) + 1) : default;
        // Σ over the batch, position by position (one contiguous run per image), then over each channel's positions.
        Clear(acc, length);
        for (int i = 0; i < n; i++)
        {
            AddTo(acc, x + (i * rowStride) + offset, length);
        }

        for (int ch = first; ch < last; ch++)
        {
            double sum = SumDouble(acc + ((ch - first) * hw), hw);
            mean[ch] = (float)(sum / count);
            Fill(row + ((ch - first) * hw), hw, mean[ch]);
            if (split)
            {
                sums[ch - first] = sum;
            }
        }

        Clear(acc, length);
        for (int i = 0; i < n; i++)
        {
            AddSquaredDifferences(acc, x + (i * rowStride) + offset, row, length);
        }

        Span<double> m2 = default;
        if (split)
        {
            m2 = splitSums.AsSpan((3 * channels) + 1, channels);
            for (int k = 0; k < channels; k++)
            {
                m2[k] = SumDouble(acc + (k * hw), hw);
            }

            for (int k = 0; k < channels; k++)
            {
                // Squares about the part's exact mean (they were taken about its float32 rounding).
                double exact = sums[k] / count, shift = exact - mean[first + k];
                sums[channels + k] = m2[k] - (count * shift * shift);
                sums[(2 * channels) + k] = sums[k] * exact;
            }

            sums[^1] = count;
            part!.Sum(sums, (tag!, "statistics"));
            count = (long)sums[^1];
            for (int k = 0; k < channels; k++)
            {
                mean[first + k] = (float)(sums[k] / count);
                m2[k] = Math.Max(0, sums[channels + k] + (sums[(2 * channels) + k] - (sums[k] * sums[k] / count)));
            }
        }

        for (int ch = first; ch < last; ch++)
        {
            double var = (!split ? SumDouble(acc + ((ch - first) * hw), hw) : m2[ch - first]) / count;
            double inv = 1.0 / Math.Sqrt(var + eps);
            double alpha = inv * (weight is null ? 1.0 : weight[ch]);
            double beta = (bias is null ? 0.0 : bias[ch]) - (mean[ch] * alpha);
            if (alphaOut is not null)
            {
                alphaOut[ch] = (float)alpha;
                betaOut[ch] = (float)beta;
            }

            invstd[ch] = (float)inv;
            variance[ch] = var;
            Fill(acc + ((ch - first) * hw), hw, (float)alpha);
            Fill(row + ((ch - first) * hw), hw, (float)beta);
        }

        for (int i = 0; i < n; i++)
        {
            if (relu)
            {
                AffineRelu(x + (i * rowStride) + offset, y + (i * rowStride) + offset, acc, row, length);
            }
            else
            {
                Affine(x + (i * rowStride) + offset, y + (i * rowStride) + offset, acc, row, length);
            }
        }

        return count;
    }

    /// <summary>
    /// The gradients of <see cref="Forward"/>: dweight = invstd·Σdy·(x − mean), dbias = Σdy per channel, and, when
    /// <paramref name="dx"/> is not null, dx = w·invstd·(dy − Σdy/M − (x − mean)·invstd²·Σdy·(x − mean)/M).
    /// </summary>
    /// <param name="dy">Gradient of the output (N, C, H·W), contiguous.</param>
    /// <param name="x">The forward's input.</param>
    /// <param name="weight">Scale (C) or null (1).</param>
    /// <param name="mean">The forward's mean (C).</param>
    /// <param name="invstd">The forward's invstd (C).</param>
    /// <param name="dx">Out: input gradient, or null (not needed).</param>
    /// <param name="dweight">Out: weight gradient (C), or null.</param>
    /// <param name="dbias">Out: bias gradient (C), or null.</param>
    /// <param name="n">Batch size N.</param>
    /// <param name="c">Channels C.</param>
    /// <param name="hw">Pixels per map, H·W.</param>
    /// <param name="threads">Worker threads at most.</param>
    /// <param name="reluAlpha">For a forward with a fused ReLU: its α (C), else null; dy then counts except where x·α + β ≤ 0.</param>
    /// <param name="reluBeta">For a forward with a fused ReLU: its β (C), else null.</param>
    public static void Backward(float* dy, float* x, float* weight, float* mean, float* invstd, float* dx, float* dweight, float* dbias, int n, int c, long hw,
        int threads, float* reluAlpha = null, float* reluBeta = null)
    {
        int workers = Workers(n, c, hw, threads);
        int block = BlockChannels(c, hw, workers, n);
        int rows = reluAlpha is null ? 4 : 6;
        DepthwiseConvCpu.ParallelPlanes(c, workers, rows * block * hw, (scratch, first, last) =>
        {
            for (int b0 = first; b0 < last; b0 += block)
            {
                BackwardChannels(dy, x, weight, mean, invstd, dx, dweight, dbias, n, c, hw, scratch, b0, Math.Min(last, b0 + block), reluAlpha, reluBeta,
                    n * hw, null, null);
            }
        }, workers);
    }

    /// <summary>
    /// <see cref="Forward"/> of one part of a batch split over threads (<see cref="BatchSplit"/>), on this thread alone:
    /// the statistics are those of the whole batch (every part's per-channel sums added before the mean and before the
    /// variance are taken, as <c>torch.nn.SyncBatchNorm</c> does across processes); the part's own images are normalized.
    /// Every part must call it for the same layer (<c>tag</c>, compared across parts), with the same C and H·W; the other
    /// arguments are <see cref="Forward"/>'s for the part's n images.
    /// </summary>
    /// <returns>M: the whole batch's N·H·W (for the running variance's M/(M − 1) and the backward).</returns>
    /// <exception cref="BatchSplitBrokenException">Another part failed, or the parts disagreed on the layer.</exception>
    public static long ForwardPart(float* x, float* y, float* weight, float* bias, float* mean, float* invstd, double* variance, int n, int c, long hw,
        double eps, bool relu, float* alpha, float* beta, BatchSplit.Part part, object tag)
    {
        return ForwardChannels(x, y, weight, bias, mean, invstd, variance, n, c, hw, eps, PartScratch(2 * c * hw), 0, c, relu, alpha, beta, part, tag);
    }

    [ThreadStatic]
    private static float* _partScratch;

    [ThreadStatic]
    private static long _partScratchFloats;

    /// <summary>
    /// This thread's scratch for <see cref="ForwardPart"/>/<see cref="BackwardPart"/>, grown to the largest layer seen and
    /// kept for the thread's life (the parts run on libtorch's OpenMP team, whose threads live as long as the process): a
    /// fresh allocation per call, hundreds of KiB, went to mmap and cost a page fault per 4 KiB every time.
    /// </summary>
    private static float* PartScratch(long floats)
    {
        if (_partScratchFloats < floats)
        {
            NativeMemory.AlignedFree(_partScratch);
            _partScratch = null;
            _partScratchFloats = 0;
            _partScratch = (float*)NativeMemory.AlignedAlloc((nuint)((floats + 64) * sizeof(float)), 64);
            _partScratchFloats = floats;
        }

        return _partScratch;
    }

    [ThreadStatic]
    private static double[]? _splitSums;

    /// <summary>
    /// This thread's array for a split part's per-channel sums (at least <paramref name="length"/> doubles), grown to the
    /// widest layer seen: the parts' sums were a new array per layer and pass, hundreds of KiB a step of garbage. A call
    /// holds it only while it runs on this thread (the exchange in <see cref="BatchSplit.Part.Sum"/> copies it out).
    /// </summary>
    private static double[] SplitScratch(int length)
    {
        if (_splitSums is null || _splitSums.Length < length)
        {
            _splitSums = new double[Math.Max(length, 64)];
        }

        return _splitSums;
    }

    /// <summary>
    /// <see cref="Backward"/> of one part of a split batch (<see cref="ForwardPart"/>), on this thread alone: dx with the
    /// whole batch's Σdy and Σdy·(x − mean) (added over the parts), dweight and dbias of this part's images only (autograd
    /// adds the parts'). Does not throw when the split is broken (see <see cref="BatchSplit.Part.TrySum"/>). <c>count</c> is the
    /// whole batch's N·H·W (<see cref="ForwardPart"/>'s result), <c>tag</c> the layer; the other arguments are
    /// <see cref="Backward"/>'s for the part's n images.
    /// </summary>
    public static void BackwardPart(float* dy, float* x, float* weight, float* mean, float* invstd, float* dx, float* dweight, float* dbias, int n, int c, long hw,
        float* reluAlpha, float* reluBeta, long count, BatchSplit.Part part, object tag)
    {
        int rows = reluAlpha is null ? 4 : 6;
        BackwardChannels(dy, x, weight, mean, invstd, dx, dweight, dbias, n, c, hw, PartScratch(rows * c * hw), 0, c, reluAlpha, reluBeta, count, part, tag);
    }

    /// <summary>
    /// <see cref="Backward"/> for channels [<paramref name="first"/>, <paramref name="last"/>), with a scratch of four rows
    /// of their (last − first)·H·W floats.
    /// </summary>
    private static void BackwardChannels(float* dy, float* x, float* weight, float* mean, float* invstd, float* dx, float* dweight, float* dbias, int n, int c,
        long hw, float* scratch, int first, int last, float* reluAlpha, float* reluBeta, long count, BatchSplit.Part? part, object? tag)
    {
        long rowStride = c * hw;
        long offset = first * hw, length = (last - first) * hw;
        float* sumDy = scratch;
        float* dot = scratch + length;
        float* meanRow = scratch + (2 * length);
        float* kRow = scratch + (3 * length);
        // With a fused ReLU: the forward's y = x·α + β, recomputed with the same float operations, masks the gradient.
        float* alphaRow = reluAlpha is null ? null : scratch + (4 * length);
        float* betaRow = reluAlpha is null ? null : scratch + (5 * length);
        for (int ch = first; ch < last; ch++)
        {
            Fill(meanRow + ((ch - first) * hw), hw, mean[ch]);
            if (alphaRow is not null)
            {
                Fill(alphaRow + ((ch - first) * hw), hw, reluAlpha[ch]);
                Fill(betaRow + ((ch - first) * hw), hw, reluBeta[ch]);
            }
        }

        Clear(sumDy, length);
        Clear(dot, length);
        for (int i = 0; i < n; i++)
        {
            float* xi = x + (i * rowStride) + offset;
            float* gi = dy + (i * rowStride) + offset;
            if (alphaRow is null)
            {
                AddSumAndDot(sumDy, dot, gi, xi, meanRow, length);
            }
            else
            {
                AddSumAndDotMasked(sumDy, dot, gi, xi, meanRow, alphaRow, betaRow, length);
            }
        }

        // A part of a split batch: its own Σdy and Σdy·(x − mean) give its share of the weight and bias gradients (autograd
        // adds the parts' shares); dx needs the whole batch's. Backward is an autograd callback and must not throw: if the
        // split broke, the part goes on with its own sums and the step fails afterwards (BatchSplit.Run rethrows the cause).
        int channels = last - first;
        bool split = part is not null;
        Span<double> sums = split ? SplitScratch(2 * channels).AsSpan(0, 2 * channels) : default;
        for (int ch = first; ch < last && split; ch++)
        {
            long at = (ch - first) * hw;
            double s = SumDouble(sumDy + at, hw), d = SumDouble(dot + at, hw);
            sums[ch - first] = s;
            sums[channels + ch - first] = d;

            if (dweight is not null)
            {
                dweight[ch] = (float)(d * invstd[ch]);
            }

            if (dbias is not null)
            {
                dbias[ch] = (float)s;
            }
        }

        _ = split && part!.TrySum(sums, (tag!, "backward"));
        for (int ch = first; ch < last; ch++)
        {
            long at = (ch - first) * hw;
            double s = !split ? SumDouble(sumDy + at, hw) : sums[ch - first];
            double d = !split ? SumDouble(dot + at, hw) : sums[channels + ch - first];
            double inv = invstd[ch];
            if (!split)
            {
                // Unsplit: this block's sums are the batch's (a split part wrote its own shares above).
                if (dweight is not null)
                {
                    dweight[ch] = (float)(d * inv);
                }

                if (dbias is not null)
                {
                    dbias[ch] = (float)s;
                }
            }

            // Rows of the per-channel constants: dx = (dy − Σdy/M − (x − mean)·k)·scale.
            Fill(sumDy + at, hw, (float)(s / count));
            Fill(kRow + at, hw, (float)(d * inv * inv / count));
            Fill(dot + at, hw, (float)(inv * (weight is null ? 1.0 : weight[ch])));
        }

        if (dx is null)
        {
            return;
        }

        for (int i = 0; i < n; i++)
        {
            if (alphaRow is null)
            {
                InputGrad(dy + (i * rowStride) + offset, x + (i * rowStride) + offset, dx + (i * rowStride) + offset, meanRow, sumDy, kRow, dot, length);
            }
            else
            {
                InputGradMasked(dy + (i * rowStride) + offset, x + (i * rowStride) + offset, dx + (i * rowStride) + offset, meanRow, sumDy, kRow, dot, alphaRow,
                    betaRow, length);
            }
        }
    }

    /// <summary>
    /// Bytes of the tensors a block of channels spans over the whole batch (x, and y or dy and dx: ~3 floats a position)
    /// that should stay in the core's cache between the passes over the block.
    /// </summary>
    private const long BlockBytes = 128 * 1024;

    /// <summary>
    /// Channels handled together: as many as keep the block's part of the tensors within <see cref="BlockBytes"/> (at
    /// least one), and no more than a thread's share. Each block is finished (all passes) before the next, so its second
    /// and third passes reread it from cache. Measured on the default model's shapes (forward + backward, weighted by
    /// layer count): 0.29–0.30 of libtorch's time against 0.29–0.41 with blocks of 4,096 floats per image (noisy machine;
    /// docs/perf-notes.md).
    /// </summary>
    private static int BlockChannels(int c, long hw, int workers, int n) =>
        (int)Math.Clamp(BlockBytes / (n * 12L) / hw, 1, (c + workers - 1) / workers);

    /// <summary>One thread for layers too small to pay for a team hand-off (under ~32k elements).</summary>
    private static int Workers(int n, int c, long hw, int threads) => (long)n * c * hw < 32768 ? 1 : threads;

    private static void Clear(float* p, long length) => new Span<float>(p, checked((int)length)).Clear();

    private static void Fill(float* p, long length, float value) => new Span<float>(p, checked((int)length)).Fill(value);

    /// <summary>Σ p[i] in float64 (a channel's positions; H·W terms).</summary>
    private static double SumDouble(float* p, long length)
    {
        double total = 0;
        for (long i = 0; i < length; i++)
        {
            total += p[i];
        }

        return total;
    }

    private static void AddTo(float* acc, float* x, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                (Vector256.Load(acc + i) + Vector256.Load(x + i)).Store(acc + i);
            }
        }

        for (; i < length; i++)
        {
            acc[i] += x[i];
        }
    }

    private static void AddSquaredDifferences(float* acc, float* x, float* mean, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var d = Vector256.Load(x + i) - Vector256.Load(mean + i);
                (Vector256.Load(acc + i) + (d * d)).Store(acc + i);
            }
        }

        for (; i < length; i++)
        {
            float d = x[i] - mean[i];
            acc[i] += d * d;
        }
    }

    private static void Affine(float* x, float* y, float* alpha, float* beta, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                ((Vector256.Load(x + i) * Vector256.Load(alpha + i)) + Vector256.Load(beta + i)).Store(y + i);
            }
        }

        for (; i < length; i++)
        {
            y[i] = (x[i] * alpha[i]) + beta[i];
        }
    }

    private static void AffineRelu(float* x, float* y, float* alpha, float* beta, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var v = (Vector256.Load(x + i) * Vector256.Load(alpha + i)) + Vector256.Load(beta + i);
                // v ≤ 0 → 0, else v: a NaN stays NaN, as torch.relu leaves it.
                Vector256.ConditionalSelect(Vector256.LessThanOrEqual(v, Vector256<float>.Zero), Vector256<float>.Zero, v).Store(y + i);
            }
        }

        for (; i < length; i++)
        {
            float v = (x[i] * alpha[i]) + beta[i];
            y[i] = v <= 0 ? 0 : v;
        }
    }

    /// <summary>dy, or 0 where the forward's x·α + β (the same float operations) was ≤ 0: <c>threshold_backward</c>.</summary>
    private static Vector256<float> ReluGradient(Vector256<float> dy, Vector256<float> x, Vector256<float> alpha, Vector256<float> beta) =>
        Vector256.ConditionalSelect(Vector256.LessThanOrEqual((x * alpha) + beta, Vector256<float>.Zero), Vector256<float>.Zero, dy);

    /// <summary>The scalar <see cref="ReluGradient(Vector256{float}, Vector256{float}, Vector256{float}, Vector256{float})"/>.</summary>
    private static float ReluGradient(float dy, float x, float alpha, float beta) => (x * alpha) + beta <= 0 ? 0 : dy;

    /// <summary>
    /// <see cref="AddSumAndDot"/> of dy, 0 where the forward's x·α + β was ≤ 0 (<c>threshold_backward</c>'s rule: a NaN
    /// output passes its gradient).
    /// </summary>
    private static void AddSumAndDotMasked(float* sum, float* dot, float* dy, float* x, float* mean, float* alpha, float* beta, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var xv = Vector256.Load(x + i);
                var g = ReluGradient(Vector256.Load(dy + i), xv, Vector256.Load(alpha + i), Vector256.Load(beta + i));
                (Vector256.Load(sum + i) + g).Store(sum + i);
                (Vector256.Load(dot + i) + (g * (xv - Vector256.Load(mean + i)))).Store(dot + i);
            }
        }

        for (; i < length; i++)
        {
            float g = ReluGradient(dy[i], x[i], alpha[i], beta[i]);
            sum[i] += g;
            dot[i] += g * (x[i] - mean[i]);
        }
    }

    /// <summary><see cref="InputGrad"/> with dy masked as in <see cref="AddSumAndDotMasked"/>.</summary>
    private static void InputGradMasked(float* dy, float* x, float* dx, float* mean, float* meanDy, float* k, float* scale, float* alpha, float* beta, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var xv = Vector256.Load(x + i);
                var g = ReluGradient(Vector256.Load(dy + i), xv, Vector256.Load(alpha + i), Vector256.Load(beta + i));
                var xm = xv - Vector256.Load(mean + i);
                ((g - Vector256.Load(meanDy + i) - (xm * Vector256.Load(k + i))) * Vector256.Load(scale + i)).Store(dx + i);
            }
        }

        for (; i < length; i++)
        {
            float g = ReluGradient(dy[i], x[i], alpha[i], beta[i]);
            dx[i] = (g - meanDy[i] - ((x[i] - mean[i]) * k[i])) * scale[i];
        }
    }

    private static void AddSumAndDot(float* sum, float* dot, float* dy, float* x, float* mean, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var g = Vector256.Load(dy + i);
                (Vector256.Load(sum + i) + g).Store(sum + i);
                (Vector256.Load(dot + i) + (g * (Vector256.Load(x + i) - Vector256.Load(mean + i)))).Store(dot + i);
            }
        }

        for (; i < length; i++)
        {
            sum[i] += dy[i];
            dot[i] += dy[i] * (x[i] - mean[i]);
        }
    }

    private static void InputGrad(float* dy, float* x, float* dx, float* mean, float* meanDy, float* k, float* scale, long length)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= length; i += 8)
            {
                var xm = Vector256.Load(x + i) - Vector256.Load(mean + i);
                ((Vector256.Load(dy + i) - Vector256.Load(meanDy + i) - (xm * Vector256.Load(k + i))) * Vector256.Load(scale + i)).Store(dx + i);
            }
        }

        for (; i < length; i++)
        {
            dx[i] = (dy[i] - meanDy[i] - ((x[i] - mean[i]) * k[i])) * scale[i];
        }
    }
}
