using System.ComponentModel;
using System.Globalization;
using RepLKNet.Distributed;
using RepLKNet.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace RepLKNet.Cli.Commands;

/// <summary>
/// <c>replknet distributed check</c>: before a long job, checks that the job's collectives give exact results on this
/// machine or cluster (<c>mpiexec -n N ./replknet distributed check</c>): allreduce (sum, max) and broadcast of float32,
/// float64, int64 and bfloat16 tensors (1 M elements, 7, a view) compared with the float64 result computed on every rank
/// (<see cref="CollectiveCheck"/>); on CUDA also straight through NCCL when it loads. Exit 1 on any difference.
/// </summary>
public sealed class DistributedCheckCommand(IAnsiConsole console) : Command<DistributedCheckCommand.Settings>
{
    /// <summary>Options of <c>distributed check</c>.</summary>
    public sealed class Settings : GlobalSettings
    {
        /// <summary>Collective timeout.</summary>
        [CommandOption("--collective-timeout <SECONDS>")]
        [Description("End the job when a collective waits longer than this (default 1800).")]
        public double? CollectiveTimeout { get; init; }

        /// <inheritdoc />
        protected override ValidationResult ValidateOptions() => DataParallel.CheckTimeout(CollectiveTimeout) ?? base.ValidateOptions();
    }

    /// <inheritdoc />
    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var group = DataParallel.Open(settings.CollectiveTimeout);
        var runtime = TorchRuntime.Initialize(settings.DeviceRequest);
        var device = DataParallel.Place(runtime.Device, group, text => console.MarkupLine(Markup.Escape(text)));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var lines = new List<string>(CollectiveCheck.Run(group, device));
        // Whether to check NCCL too is decided by every process together (it is a collective: a process without NCCL must
        // not skip what the others do).
        string? lacking = device.type != TorchSharp.DeviceType.CUDA ? "not on CUDA"
            : NcclLibrary.UnavailableReason ?? GpuPlacement.Oversubscribed(group, (int)TorchSharp.torch.cuda.device_count());
        var anyLacking = new double[] { lacking is null ? 0 : 1 };
        group.AllReduce(anyLacking, ReduceOp.Max);
        if (anyLacking[0] == 0)
        {
            using var nccl = NcclCommunicator.Create(group, device.index < 0 ? 0 : device.index);
            lines.AddRange(CollectiveCheck.Run(group, nccl).Select(l => "nccl " + l));
        }

        else if (device.type == TorchSharp.DeviceType.CUDA)
        {
            lines.Add($"nccl: not checked ({lacking ?? "another process cannot use it"})");
        }

        int failures = CollectiveCheck.Failures(lines.Where(l => !l.StartsWith("nccl: not checked", StringComparison.Ordinal)));
        var all = new double[] { failures };
        group.AllReduce(all); // every rank's failures, so that every rank exits alike
        console.MarkupLine(CultureInfo.InvariantCulture, "[bold]distributed check[/]: {0} process(es), {1}, {2}; {3} cases per process in {4:F2} s",
            group.WorldSize, Markup.Escape(group.Backend), device, lines.Count, clock.Elapsed.TotalSeconds);
        foreach (var line in lines)
        {
            console.MarkupLine(Markup.Escape("  " + line));
        }

        if (all[0] > 0)
        {
            throw new CollectiveException(string.Create(CultureInfo.InvariantCulture, $"{all[0]} collective result(s) differ from the float64 reference over the job (this process: {failures})"));
        }

        console.MarkupLine("all collectives exact");
        return ExitCodes.Success;
    }
}
