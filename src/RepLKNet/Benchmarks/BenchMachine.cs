using System.Runtime.InteropServices;
using RepLKNet.Ops;
using RepLKNet.Ops.Cpu;
using RepLKNet.Ops.Cuda;
using TorchSharp;

namespace RepLKNet.Benchmarks;

/// <summary>
/// The machine a benchmark runs on, as its reports name it: the CPU model (and libtorch's thread count, our kernels'
/// instruction set) or the CUDA card (and its multiprocessors); <see cref="MeasurePeakGflops"/> measures the fp32
/// fused-multiply-add ceiling every efficiency figure is relative to.
/// </summary>
/// <param name="Device">The benchmark's device.</param>
/// <param name="Name">The CPU model (/proc/cpuinfo's "model name", else the architecture) or the CUDA card's name.</param>
/// <param name="Threads">libtorch's CPU threads (<c>get_num_threads()</c>).</param>
/// <param name="Isa">The instruction set our CPU kernels use; null on CUDA.</param>
/// <param name="Multiprocessors">The CUDA card's streaming multiprocessors; null on the CPU.</param>
public sealed record BenchMachine(torch.Device Device, string Name, int Threads, CpuIsa? Isa, int? Multiprocessors)
{
    /// <summary>Whether <see cref="Device"/> is a CUDA device.</summary>
    public bool IsCuda => Device.type == DeviceType.CUDA;

    /// <summary>The CUDA device ordinal (0 for <c>cuda</c> without an index).</summary>
    public int CudaIndex => Device.index < 0 ? 0 : Device.index;

    /// <summary>How <see cref="MeasurePeakGflops"/> measures: our FMA microkernel on every thread, or the FFMA kernel on every SM.</summary>
    public string PeakKind => IsCuda ? "fp32 FFMA microkernel (ffma_peak.cu)" : "FMA microkernel";

    /// <summary>Describes the machine of <paramref name="device"/> (libtorch initialized; CUDA through our driver bindings).</summary>
    public static BenchMachine Of(torch.Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (device.type == DeviceType.CUDA)
        {
            var card = CudaDriver.Device(device.index < 0 ? 0 : device.index);
            return new BenchMachine(device, card.Name, torch.get_num_threads(), null, card.Multiprocessors);
        }

        return new BenchMachine(device, CpuName(), torch.get_num_threads(), CpuIsas.Resolve(DepthwiseConv2d.Isa), null);
    }

    /// <summary>The fp32 FMA ceiling in GFLOP/s: <see cref="FmaPeak"/> on <see cref="Threads"/> threads, or the CUDA microkernel.</summary>
    public double MeasurePeakGflops() => IsCuda ? 1e3 * CudaPeak.MeasureTflops(CudaIndex) : FmaPeak.MeasureGflops(Threads);

    private static string CpuName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line is null ? RuntimeInformation.ProcessArchitecture.ToString() : line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
        }
        catch (IOException)
        {
            return RuntimeInformation.ProcessArchitecture.ToString();
        }
    }
}
