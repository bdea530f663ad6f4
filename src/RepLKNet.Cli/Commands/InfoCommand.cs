using System.ComponentModel;
using System.Globalization;
using System.Runtime.InteropServices;
using RepLKNet.Ops;
using RepLKNet.Ops.Cuda;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet info</c>: what the tool runs on.</summary>
public sealed class InfoCommand(IAnsiConsole console) : Command<InfoCommand.Settings>
{
    /// <summary>Options of <c>info</c>.</summary>
    public sealed class Settings : TableOrJsonSettings
    {
        /// <summary>Run a convolution forward/backward on the device against a float64 CPU reference.</summary>
        [CommandOption("--check")]
        [Description("Also run a conv2d forward + backward on the selected device and compare it with libtorch's float64 CPU result.")]
        public bool Check { get; init; }
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var rows = new List<(string Key, string Value)>
        {
            (".NET", RuntimeInformation.FrameworkDescription),
            ("OS", $"{RuntimeInformation.OSDescription} ({RuntimeInformation.RuntimeIdentifier})"),
            ("TorchSharp", typeof(torch).Assembly.GetName().Version?.ToString(3) ?? "unknown"),
            ("libtorch", runtime.LibTorchVersion),
            ("libtorch path", runtime.LibTorchDirectory),
            ("LibTorchSharp", runtime.NativeLibrary),
            ("GLIBCXX fix", DescribeFix(runtime)),
            ("threads", $"{torch.get_num_threads()} intra-op (libtorch), {Environment.ProcessorCount} logical CPUs"),
            ("kernel threads", OpenMpTeam.Library is { } omp
                ? $"libtorch's OpenMP team ({Path.GetFileName(omp)}; {OpenMpTeam.EnvironmentVariable}=dotnet for .NET's thread pool)"
                : ".NET's thread pool"),
            ("CPU vectors", CpuFeatures.Describe()),
            ("device", runtime.Device.ToString()),
            ("libtorch log", LibTorchLog.Current() is { } level
                ? $"{level} and above ({LibTorchLog.LevelEnvironmentVariable} to change)"
                : "level not found in libc10"),
            ("memory allocator", HeapTuning.Describe()),
            ("CPU tensor fill", CpuAllocatorFill.Current() switch
            {
                CpuFill.None => $"none (libtorch's default; {CpuAllocatorFill.EnvironmentVariable}=junk fills new CPU tensors with NaN to expose reads of unwritten memory)",
                CpuFill.Zero => $"zero ({CpuAllocatorFill.EnvironmentVariable}=zero)",
                CpuFill.Junk => $"junk: NaN in every new CPU tensor ({CpuAllocatorFill.EnvironmentVariable}=junk; {JunkProbe()})",
                _ => "flags not found in libc10",
            }),
        };

        var devices = new List<CudaDeviceProperties>();
        if (runtime.CudaAvailable)
        {
            rows.Add(("CUDA", $"libtorch sees {torch.cuda.device_count()} device(s); driver CUDA {CudaDriver.DriverVersion()}; cuDNN {(torch.cuda.is_cudnn_available() ? "available" : "not available")}; TF32 {(torch.backends.cudnn.allow_tf32 ? "on" : $"off (set {TorchRuntime.Tf32EnvironmentVariable}=1 to allow)")}"));
            devices.AddRange(CudaDriver.Devices());
            foreach (var d in devices)
            {
                rows.Add(($"cuda:{d.Ordinal}", $"{d.Name}, {d.Architecture}, {d.Multiprocessors} SMs, {d.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB"));
            }
        }
        else
        {
            rows.Add(("CUDA", $"not available: {OptionNames.CudaUnavailableReason(runtime)}"));
        }

        DeviceCheckResult? check = null;
        bool denseOk = true;
        if (settings.Check)
        {
            check = DeviceSelfCheck.Run(runtime.Device, seed: Environment.TickCount64);
            rows.Add(("self-check", $"conv2d on {check.Device} vs float64 CPU: forward {check.ForwardError:E2}, input-grad {check.InputGradError:E2}, weight-grad {check.WeightGradError:E2} (relative max error)"));
            var dense = DenseConv2d.Check(Environment.TickCount64);
            bool defect = Math.Max(dense.LibTorchOutput, dense.LibTorchInputGrad) >= DeviceCheckResult.Tolerance;
            // Short enough for the 200-column table even with four numbers (a wrapped row is hard to read and to grep).
            rows.Add(("odd-channel conv", string.Create(CultureInfo.InvariantCulture,
                $"CPU 3x3 at 24 channels vs float64: libtorch out {Error(dense.LibTorchOutput)}, in-grad {Error(dense.LibTorchInputGrad)}" +
                $"{(defect ? " (oneDNN defect)" : string.Empty)}; padded {Error(dense.OursOutput)}, {Error(dense.OursInputGrad)}" +
                $"{(DenseConv2d.Enabled ? string.Empty : $" ({DenseConv2d.EnvironmentVariable}=off: not padded)")}")));
            denseOk = Math.Max(dense.OursOutput, dense.OursInputGrad) < DeviceCheckResult.Tolerance;
        }

        if (settings.Json)
        {
            JsonOutput.Print(console, rows.ToDictionary(r => r.Key, r => r.Value));
            return (check is null || check.Passed) && denseOk ? ExitCodes.Success : ExitCodes.Failure;
        }

        var grid = new Grid().AddColumn(new GridColumn().NoWrap()).AddColumn();
        foreach (var (key, value) in rows)
        {
            grid.AddRow(new Text(key, new Style(decoration: Decoration.Bold)), new Text(value));
        }

        console.Write(grid);
        return (check is null || check.Passed) && denseOk ? ExitCodes.Success : ExitCodes.Failure;
    }

    // Whether a freshly allocated CPU tensor really reads as NaN (c10 honours the flag this process wrote).
    private static string JunkProbe()
    {
        using var fresh = torch.empty(1024);
        return fresh.isnan().all().item<bool>() ? "checked: a new tensor reads NaN" : "NOT in effect: a new tensor holds numbers";
    }

    // A relative error as E2, or "NaN" (DenseConv2d.Check reports NaN as +∞).
    private static string Error(double e) => double.IsPositiveInfinity(e) ? "NaN" : e.ToString("E2", CultureInfo.InvariantCulture);

    private static string DescribeFix(TorchRuntimeInfo runtime) => runtime.GlibcxxFix switch
    {
        GlibcxxFixState.Applied => $"applied ({ElfSymbolVersions.TorchSharpGlibcxxVersion} marked weak; system libstdc++ {runtime.SystemLibStdCxx ?? "not found"} lacks it)",
        GlibcxxFixState.NotNeeded => $"not needed (system libstdc++ {runtime.SystemLibStdCxx} provides {ElfSymbolVersions.TorchSharpGlibcxxVersion})",
        _ => "missing",
    };
}
