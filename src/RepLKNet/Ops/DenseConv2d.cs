using TorchSharp;
using static TorchSharp.torch;
using RepLKNet.Runtime;

namespace RepLKNet.Ops;

/// <summary>
/// libtorch's dense (groups = 1) 2-D convolution, with channel counts padded with zeros to a multiple of 16 where
/// libtorch 2.10's oneDNN kernels compute wrong results on the project's machines.
/// <para>
/// The defect (docs/runtime.md, "Dense convolutions with odd channel counts"): on the project's AMD Zen 5 machines,
/// libtorch 2.10's CPU float32 convolution (oneDNN 3.7.1, <c>jit:avx512_core</c> or <c>jit:avx2</c>, blocked layout
/// <c>aBcd16b</c>/<c>aBcd8b</c>) returns outputs 5–55 % off (relative to the largest output) for every k×k kernel (k &gt; 1)
/// whose input channels exceed the ISA's channel block B (16 with AVX-512, 8 with AVX2) without being a multiple of it,
/// and input gradients as far off whenever the output channels are not a multiple of B. Weight gradients, 1×1,
/// grouped and depthwise convolutions, and channel counts that are multiples of B, are exact. When the heap holds NaN
/// leftovers the padded lanes make whole runs of outputs NaN. Debian's PyTorch 1.13 (oneDNN 2.6.3, the same kernel family)
/// is exact on the same machine, so the fault is in the libtorch build, not the CPU; float64 and libtorch's other
/// backends are exact.
/// </para>
/// <para>
/// The workaround: zero input channels (and the matching zero weight columns) are appended up to a multiple of 16 when
/// the input has more than 8 channels and is not a multiple of 16; zero output channels (zero weights, zero bias) are
/// appended when the output channels are not a multiple of 16 and the input gradient will be needed, and cut off the
/// result. Zero channels add exactly zero, so the values are those of the unpadded convolution; autograd flows through
/// the pad and the cut (<c>F.pad</c>, <c>narrow</c>), so every gradient is the unpadded one. A multiple of 16 is a multiple
/// of both blocks, so one rule serves AVX-512 and AVX2 machines. Cost: only odd channel counts pay, the convolution's
/// work times ⌈C_in⌉₁₆·⌈C_out⌉₁₆ / (C_in·C_out) (each count rounded up to 16 only where it is padded): 1.33× for 24 → 24
/// in inference, 1.78× in training; the worst cases are tiny output counts in training (40 → 3: 6.4×).
/// </para>
/// <para><c>REPLKNET_CONV_CHANNEL_PAD=off</c> (or <c>0</c>, <c>false</c>) calls libtorch unchanged (to reproduce the defect).</para>
/// <para>
/// One more choice is made for libtorch: a 1×1 convolution of a few samples on a thread where libtorch counts one thread
/// is given dilation 2, which a 1×1 kernel ignores, so that libtorch runs it on oneDNN instead of its slower native kernel
/// (<see cref="PointwiseDilation(Tensor, Tensor, long[], long[], long)"/>; <c>REPLKNET_CONV_1X1_ONEDNN=off</c> restores libtorch's choice).
/// </para>
/// </summary>
public static class DenseConv2d
{
    /// <summary>Environment variable: <c>off</c>, <c>0</c> or <c>false</c> disables the padding (default: on).</summary>
    public const string EnvironmentVariable = "REPLKNET_CONV_CHANNEL_PAD";

    /// <summary>The channel multiple padded to.</summary>
    public const long Block = 16;

    /// <summary>Whether the padding is applied (<see cref="EnvironmentVariable"/> is not <c>off</c>); settable for tests and comparisons.</summary>
    public static bool Enabled { get; set; } = SwitchedOn(EnvironmentVariable);

    /// <summary>
    /// Environment variable: <c>off</c>, <c>0</c> or <c>false</c> leaves 1×1 convolutions to libtorch's own choice of
    /// kernel (<see cref="PointwiseDilation(Tensor, Tensor, long[], long[], long)"/>; default: on).
    /// </summary>
    public const string PointwiseEnvironmentVariable = "REPLKNET_CONV_1X1_ONEDNN";

    /// <summary>
    /// Whether small single-thread 1×1 convolutions are steered to oneDNN (<see cref="PointwiseDilation(Tensor, Tensor, long[], long[], long)"/>;
    /// <see cref="PointwiseEnvironmentVariable"/> is not <c>off</c>); settable for tests and comparisons.
    /// </summary>
    public static bool OneDnnPointwise { get; set; } = SwitchedOn(PointwiseEnvironmentVariable);

    /// <summary>
    /// <c>F.conv2d(input, weight, bias, stride, padding, dilation, groups)</c>, padded as the class describes where the
    /// defect applies (CPU float32, groups = 1, kernel larger than 1×1), and a small one-thread 1×1 convolution passed to
    /// oneDNN (<see cref="PointwiseDilation(Tensor, Tensor, long[], long[], long)"/>).
    /// </summary>
    /// <param name="input">[N, C_in, H, W].</param>
    /// <param name="weight">[C_out, C_in / groups, kh, kw].</param>
    /// <param name="bias">[C_out] or null.</param>
    /// <param name="stride">(sh, sw), pixels.</param>
    /// <param name="padding">(ph, pw), pixels of zero padding on each side.</param>
    /// <param name="dilation">(dh, dw).</param>
    /// <param name="groups">Convolution groups.</param>
    /// <returns>[N, C_out, H_out, W_out] as <c>F.conv2d</c> defines them, in the memory format libtorch gives (a padded,
    /// cut result is made contiguous in the input's format: channels_last or NCHW).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="weight"/> is null.</exception>
    /// <exception cref="ArgumentException">The input's channels differ from the weight's (where padding applies; elsewhere libtorch's own error).</exception>
    public static Tensor Forward(Tensor input, Tensor weight, Tensor? bias, long[] stride, long[] padding, long[] dilation, long groups)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        var (inPad, outPad) = ChannelPadding(input, weight, groups, input.requires_grad && is_grad_enabled());
        if (inPad == 0 && outPad == 0)
        {
            return nn.functional.conv2d(input, weight, bias, strides: stride, padding: padding, dilation: PointwiseDilation(input, weight, stride, dilation, groups), groups: groups);
        }

        if (input.size(1) != weight.size(1))
        {
            // libtorch's own check would quote the padded counts.
            throw new ArgumentException($"conv2d: weight {TensorSizes.Text(weight)} expects {weight.size(1)} input channels, " +
                $"but the input {TensorSizes.Text(input)} has {input.size(1)}", nameof(input));
        }

        using var scope = NewDisposeScope();
        long outChannels = weight.size(0);
        var x = inPad > 0 ? nn.functional.pad(input, [0, 0, 0, 0, 0, inPad]) : input;
        // Weight [C_out, C_in, kh, kw]: pad list from the last dim: kw, kh, C_in, C_out.
        var w = nn.functional.pad(weight, [0, 0, 0, 0, 0, inPad, 0, outPad]);
        var b = bias is null || outPad == 0 ? bias : nn.functional.pad(bias, [0, outPad]);
        var y = nn.functional.conv2d(x, w, b, strides: stride, padding: padding, dilation: dilation, groups: 1);
        if (outPad > 0)
        {
            y = y.narrow(1, 0, outChannels);
            // Made dense in the input's layout: NHWC strides (channels_last) when the input has them, else NCHW.
            y = input.permute(0, 2, 3, 1).is_contiguous() && !input.is_contiguous() ? y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) : y.contiguous();
        }

        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Measures the defect on this machine: a 3×3 convolution with 24 input and 24 output channels (batch 2, 10×13) in
    /// float32 on the CPU, forward and input gradient, against the float64 result, through libtorch directly and through
    /// <see cref="Forward"/>. Errors are max |a − ref| / max |ref| (+∞ for NaN).
    /// </summary>
    /// <param name="seed">Seed of the random data.</param>
    /// <returns>(libtorch output, libtorch input gradient, ours output, ours input gradient) errors.</returns>
    public static (double LibTorchOutput, double LibTorchInputGrad, double OursOutput, double OursInputGrad) Check(long seed)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)seed);
        var x = randn([2, 24, 10, 13], dtype: ScalarType.Float64, generator: generator);
        var w = randn([24, 24, 3, 3], dtype: ScalarType.Float64, generator: generator);
        var upstream = randn([2, 24, 10, 13], dtype: ScalarType.Float64, generator: generator);
        long[] one = [1, 1];
        (Tensor Y, Tensor Dx) Run(Tensor input, Tensor weight, Tensor dy, bool ours)
        {
            var xg = input.detach().requires_grad_();
            var y = ours ? Forward(xg, weight, null, one, one, one, 1) : nn.functional.conv2d(xg, weight, null, padding: one);
            y.backward([dy]);
            return (y.detach(), xg.grad!);
        }

        var (y64, dx64) = Run(x, w, upstream, ours: false);
        var (yTorch, dxTorch) = Run(x.to(ScalarType.Float32), w.to(ScalarType.Float32), upstream.to(ScalarType.Float32), ours: false);
        var (yOurs, dxOurs) = Run(x.to(ScalarType.Float32), w.to(ScalarType.Float32), upstream.to(ScalarType.Float32), ours: true);
        return (Runtime.TensorErrors.Relative(yTorch, y64), Runtime.TensorErrors.Relative(dxTorch, dx64),
            Runtime.TensorErrors.Relative(yOurs, y64), Runtime.TensorErrors.Relative(dxOurs, dx64));
    }

    /// <summary>
    /// The dilation <see cref="Forward"/> passes to libtorch: (2, 2) in place of (1, 1) for a dense (groups = 1) 1×1 kernel
    /// with stride 1 and input and output channels that are multiples of 16, on a CPU float32 input of 2–15 samples (or
    /// one sample of more than 20,480 values) while libtorch counts one thread on the calling thread (inside a part of the
    /// batch split, <see cref="Runtime.BatchSplit"/>, or in a one-thread process); otherwise <paramref name="dilation"/>
    /// itself. Without the channel condition, those are exactly the convolutions that libtorch's
    /// <c>ConvParams::use_mkldnn</c> (aten/src/ATen/native/Convolution.cpp, 2.10: "for 1x1 filters, MKLDNN is faster than
    /// THNN when multi-threaded, but THNN is faster when single-threaded") keeps from oneDNN and runs as its native unfold +
    /// GEMM convolution, which on the project machine took 1.3–7× as long as oneDNN's for forward and both gradients
    /// (RepLKNet-31B's and RepLKNet-FMNIST's 1×1 shapes, 4–8 samples, one thread; docs/perf-notes.md, thirteenth session).
    /// A 1×1 kernel has a single tap, so the dilation changes neither the output's size nor its values, and libtorch hands
    /// such a dilated convolution to oneDNN, which runs it (unpadded) with the same <c>jit_1x1</c> kernel it uses for
    /// undilated 1×1 convolutions of 16 samples or more. One sample of at most 20,480 values is left alone: libtorch keeps
    /// it from oneDNN dilated or not (its other clause). Channel counts that are not multiples of 16 (oneDNN's channel
    /// block with AVX-512, two of AVX2's) stay with libtorch's choice: oneDNN was 0.62–0.93× as fast on 24 → 24, 24 → 40,
    /// 17 → 33 and 3 → 64 channels. Off with <see cref="OneDnnPointwise"/> = false.
    /// </summary>
    /// <param name="input">[N, C_in, H, W].</param>
    /// <param name="weight">[C_out, C_in / groups, kh, kw].</param>
    /// <param name="stride">(sh, sw); null: 1.</param>
    /// <param name="dilation">(dh, dw) as requested; null: 1.</param>
    /// <param name="groups">Convolution groups.</param>
    /// <returns>The dilation to pass: a new (2, 2) array, or <paramref name="dilation"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="weight"/> is null.</exception>
    public static long[] PointwiseDilation(Tensor input, Tensor weight, long[]? stride, long[]? dilation, long groups) =>
        PointwiseDilation(input, weight, stride, dilation, groups, OneDnnPointwise);

    /// <summary><see cref="PointwiseDilation(Tensor, Tensor, long[], long[], long)"/> with the switch given (tests).</summary>
    internal static long[] PointwiseDilation(Tensor input, Tensor weight, long[]? stride, long[]? dilation, long groups, bool enabled)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        // Managed checks first; the native reads (a P/Invoke each) only when they pass.
        if (!enabled || groups != 1 || !AllOnes(stride) || !AllOnes(dilation) || input.device_type != DeviceType.CPU || input.dtype != ScalarType.Float32
            || input.dim() != 4 || weight.dim() != 4 || weight.size(2) != 1 || weight.size(3) != 1 || weight.size(0) % Block != 0 || weight.size(1) % Block != 0)
        {
            return dilation!;
        }

        long n = input.size(0);
        bool steer = n < 16 && (n > 1 || input.numel() > 20480) && torch.get_num_threads() == 1;
        return steer ? [2, 2] : dilation!;
    }

    /// <summary>Whether the switch <paramref name="variable"/> is on: unset or anything but <c>off</c>, <c>0</c>, <c>false</c>.</summary>
    private static bool SwitchedOn(string variable) =>
        Environment.GetEnvironmentVariable(variable)?.Trim().ToUpperInvariant() is not ("OFF" or "0" or "FALSE");

    private static bool AllOnes(long[]? values)
    {
        if (values is null)
        {
            return true;
        }

        foreach (long v in values)
        {
            if (v != 1)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The zero channels <see cref="Forward"/> appends: (input, output); (0, 0) where the defect does not apply or
    /// <see cref="Enabled"/> is false.
    /// </summary>
    /// <param name="input">[N, C_in, H, W].</param>
    /// <param name="weight">[C_out, C_in / groups, kh, kw].</param>
    /// <param name="groups">Convolution groups.</param>
    /// <param name="inputGradient">Whether the input gradient will be computed (output channels matter only then).</param>
    public static (long Input, long Output) ChannelPadding(Tensor input, Tensor weight, long groups, bool inputGradient)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(weight);
        if (!Enabled || groups != 1 || input.device_type != DeviceType.CPU || input.dtype != ScalarType.Float32 || input.dim() != 4)
        {
            return (0, 0);
        }

        // One native shape read per call (this runs on every ConvBn forward).
        var shape = TensorSizes.Of(weight);
        if (shape.Length != 4 || shape[2] * shape[3] == 1)
        {
            return (0, 0);
        }

        long inChannels = shape[1], outChannels = shape[0];
        long inPad = inChannels > 8 && inChannels % Block != 0 ? Block - inChannels % Block : 0;
        long outPad = inputGradient && outChannels % Block != 0 ? Block - outChannels % Block : 0;
        return (inPad, outPad);
    }
}
