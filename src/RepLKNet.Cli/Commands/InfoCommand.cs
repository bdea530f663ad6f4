using System.ComponentModel;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using RepLKNet.Ops.Cuda;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;
using TorchSharp;

namespace RepLKNet.Cli.Commands;

/// <summary><c>replknet info</c>: what the tool runs on.</summary>
public sealed class InfoCommand(IAnsiConsole console) : Command<InfoCommand.Settings>
{
    // float32 against float64 on O(100)-term sums; TF32 would show as ~1e-3, real breakage as O(1).
    private const double SelfCheckTolerance = 1e-4;

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Options of <c>info</c>.</summary>
    public sealed class Settings : GlobalSettings
    {
        /// <summary>Print JSON instead of a table.</summary>
        [CommandOption("--json")]
        [Description("Print one JSON object instead of a table.")]
        public bool Json { get; init; }

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
            ("CPU vectors", CpuVectors()),
            ("device", runtime.Device.ToString()),
            ("libtorch log", LibTorchLog.Current() is { } level
                ? $"{level} and above ({LibTorchLog.LevelEnvironmentVariable} to change)"
                : "level not found in libc10"),
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
        if (settings.Check)
        {
            check = DeviceSelfCheck.Run(runtime.Device, seed: Environment.TickCount64);
            rows.Add(("self-check", $"conv2d on {check.Device} vs float64 CPU: forward {check.ForwardError:E2}, input-grad {check.InputGradError:E2}, weight-grad {check.WeightGradError:E2} (relative max error)"));
        }

        if (settings.Json)
        {
            var json = rows.ToDictionary(r => r.Key, r => r.Value);
            console.Profile.Out.Writer.WriteLine(JsonSerializer.Serialize(json, JsonOptions));
            return check is null || check.MaxError < SelfCheckTolerance ? ExitCodes.Success : ExitCodes.Failure;
        }

        var grid = new Grid().AddColumn(new GridColumn().NoWrap()).AddColumn();
        foreach (var (key, value) in rows)
        {
            grid.AddRow(new Text(key, new Style(decoration: Decoration.Bold)), new Text(value));
        }

        console.Write(grid);
        return check is null || check.MaxError < SelfCheckTolerance ? ExitCodes.Success : ExitCodes.Failure;
    }

    private static string DescribeFix(TorchRuntimeInfo runtime) => runtime.GlibcxxFix switch
    {
        GlibcxxFixState.Applied => $"applied ({ElfSymbolVersions.TorchSharpGlibcxxVersion} marked weak; system libstdc++ {runtime.SystemLibStdCxx ?? "not found"} lacks it)",
        GlibcxxFixState.NotNeeded => $"not needed (system libstdc++ {runtime.SystemLibStdCxx} provides {ElfSymbolVersions.TorchSharpGlibcxxVersion})",
        _ => "missing",
    };

    internal static string CpuVectors()
    {
        var parts = new List<string>();
        if (Avx2.IsSupported)
        {
            parts.Add("AVX2");
        }

        if (Fma.IsSupported)
        {
            parts.Add("FMA");
        }

        if (Avx512F.IsSupported)
        {
            parts.Add("AVX-512F");
        }

        if (parts.Count == 0)
        {
            parts.Add("no AVX2");
        }

        return $"{string.Join(", ", parts)}; Vector512 {(Vector512.IsHardwareAccelerated ? "accelerated" : "not accelerated")}, Vector256 {(Vector256.IsHardwareAccelerated ? "accelerated" : "not accelerated")}";
    }
}
