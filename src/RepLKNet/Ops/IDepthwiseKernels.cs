using static TorchSharp.torch;

namespace RepLKNet.Ops;

/// <summary>
/// Our depthwise kernels on one device type (<see cref="Cpu.CpuDepthwise"/>, <see cref="Cuda.CudaDepthwise"/>), as
/// <see cref="DepthwiseConv2d"/> uses them: it picks one per call (<see cref="DepthwiseConv2d.Select"/>) and runs the
/// forward and, through its autograd function, both gradients on that same one. None of these track gradients.
/// </summary>
internal interface IDepthwiseKernels
{
    /// <summary>Whether these kernels take the call: the contract on their device, and for a tracked call, their backward too.</summary>
    bool Takes(Tensor input, Tensor weight, Tensor? bias, bool tracked);

    /// <summary>y = depthwise_conv(input, weight) + bias, (N, C, H, W).</summary>
    Tensor Forward(Tensor input, Tensor weight, Tensor? bias);

    /// <summary>The input gradient (N, C, H, W) for <paramref name="gradOutput"/>.</summary>
    Tensor InputGrad(Tensor gradOutput, Tensor weight);

    /// <summary>The filter gradient (C, 1, K, K) for <paramref name="gradOutput"/>.</summary>
    Tensor WeightGrad(Tensor input, Tensor gradOutput, int k);
}
