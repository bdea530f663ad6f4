using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Runtime;

/// <summary>Largest absolute differences found by <see cref="DeviceSelfCheck.Run"/>, each relative to the reference's scale.</summary>
/// <param name="Device">The device checked.</param>
/// <param name="ForwardError">Max |y − y_ref| / max |y_ref|.</param>
/// <param name="InputGradError">Same for the input gradient.</param>
/// <param name="WeightGradError">Same for the weight gradient.</param>
public sealed record DeviceCheckResult(string Device, double ForwardError, double InputGradError, double WeightGradError)
{
    /// <summary>The largest of the three errors.</summary>
    public double MaxError => Math.Max(ForwardError, Math.Max(InputGradError, WeightGradError));
}

/// <summary>
/// Runs a dense 3×3 and a depthwise 13×13 convolution forward and backward in float32 on a device and compares them with
/// libtorch's float64 CPU result on the same random data: proof that the device really computes.
/// </summary>
public static class DeviceSelfCheck
{
    /// <summary>Runs the check on <paramref name="device"/> with data drawn from <paramref name="seed"/>.</summary>
    public static DeviceCheckResult Run(Device device, long seed)
    {
        ArgumentNullException.ThrowIfNull(device);
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)seed);
        var x = randn([2, 16, 20, 20], dtype: float64, generator: generator);
        var wDense = Scalars.MulInPlace(randn([16, 16, 3, 3], dtype: float64, generator: generator), 0.2);
        var wDepthwise = Scalars.MulInPlace(randn([16, 1, 13, 13], dtype: float64, generator: generator), 0.1);
        var upstream = randn([2, 16, 20, 20], dtype: float64, generator: generator);

        var reference = Evaluate(x, wDense, wDepthwise, upstream);
        var actual = Evaluate(x.to(float32).to(device), wDense.to(float32).to(device), wDepthwise.to(float32).to(device),
            upstream.to(float32).to(device));
        return new DeviceCheckResult(device.ToString(),
            TensorErrors.Relative(actual.Output, reference.Output),
            TensorErrors.Relative(actual.InputGrad, reference.InputGrad),
            TensorErrors.Relative(actual.WeightGrad, reference.WeightGrad));
    }

    private static (Tensor Output, Tensor InputGrad, Tensor WeightGrad) Evaluate(Tensor x, Tensor wDense, Tensor wDepthwise, Tensor upstream)
    {
        var xg = x.detach().requires_grad_(true);
        var wg = wDepthwise.detach().requires_grad_(true);
        var y = nn.functional.conv2d(xg, wDense, padding: [1, 1]);
        y = nn.functional.conv2d(nn.functional.relu(y), wg, padding: [6, 6], groups: 16);
        y.backward([upstream]);
        return (y.detach(), xg.grad!, wg.grad!);
    }
}
