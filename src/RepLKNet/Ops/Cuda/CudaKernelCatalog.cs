using System.Collections.Concurrent;
using System.Diagnostics;

namespace RepLKNet.Ops.Cuda;

/// <summary>The outcome of compiling one kernel variant for one architecture.</summary>
/// <param name="Spec">The variant.</param>
/// <param name="Architecture">e.g. <c>sm_90</c>.</param>
/// <param name="Report">ptxas' resources, when it compiled.</param>
/// <param name="Error">NVRTC's error and log, when it did not.</param>
/// <param name="Milliseconds">Compile time.</param>
public sealed record CompileResult(CudaKernelSpec Spec, string Architecture, PtxasReport? Report, string? Error, double Milliseconds);

/// <summary>Every kernel variant the project can launch, for compile checks without a GPU (CI) and on the GPU machine.</summary>
public static class CudaKernelCatalog
{
    /// <summary>
    /// The variants: the FFMA microkernel, and for each kernel size every forward tile <see cref="CudaDepthwise.SelectTile"/>
    /// picks for the project's map sizes (and every tuned tile in the committed table) and the weight-gradient kernel's.
    /// </summary>
    public static List<CudaKernelSpec> Variants(IEnumerable<int> kernels)
    {
        ArgumentNullException.ThrowIfNull(kernels);
        var specs = new List<CudaKernelSpec> { new("ffma_peak.cu", "ffma_peak", []) };
        var seen = new HashSet<string>();
        foreach (int k in kernels)
        {
            var tiles = CudaDepthwise.CommonTiles(k).Concat(DepthwiseTuning.Entries.Where(e => e.K == k).Select(e => (e.Tile, e.Width)));
            foreach (var (tile, width) in tiles)
            {
                var spec = tile.Spec(k, width);
                if (seen.Add(spec.Label))
                {
                    specs.Add(spec);
                }
            }

            foreach (int size in CudaDepthwise.CommonSizes)
            {
                var spec = CudaDepthwise.WeightGradSpec(k, CudaDepthwise.WeightGradRows(size, size, k, 227 * 1024));
                if (seen.Add(spec.Label))
                {
                    specs.Add(spec);
                }
            }
        }

        return specs;
    }

    /// <summary>Compiles every variant for every architecture (in parallel); errors are collected, not thrown.</summary>
    public static List<CompileResult> CompileAll(IReadOnlyList<string> architectures, IEnumerable<int> kernels)
    {
        ArgumentNullException.ThrowIfNull(architectures);
        var jobs = Variants(kernels).SelectMany(s => architectures.Select(a => (Spec: s, Arch: a))).ToList();
        var results = new ConcurrentBag<(int Index, CompileResult Result)>();
        Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i =>
        {
            var (spec, arch) = jobs[i];
            var clock = Stopwatch.StartNew();
            try
            {
                var (_, report) = CudaModules.CompileOnly(spec, arch);
                results.Add((i, new CompileResult(spec, arch, report, null, clock.Elapsed.TotalMilliseconds)));
            }
            catch (NvrtcException e)
            {
                results.Add((i, new CompileResult(spec, arch, null, e.Message, clock.Elapsed.TotalMilliseconds)));
            }
        });
        return [.. results.OrderBy(r => r.Index).Select(r => r.Result)];
    }
}
