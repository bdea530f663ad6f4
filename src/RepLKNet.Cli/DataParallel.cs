using System.Globalization;
using RepLKNet.Distributed;
using RepLKNet.Runtime;
using Spectre.Console;

namespace RepLKNet.Cli;

/// <summary>
/// The CLI's side of a data-parallel job (docs/distributed.md): <c>mpiexec -n N ./replknet train …</c> starts N copies of
/// the tool; each finds its rank in the launcher's environment (<see cref="MpiLaunch.Detect"/>), only rank 0 prints and
/// writes, every rank reports its own errors prefixed with its rank, libtorch's threads default to the cores divided among
/// the processes of the machine, and a failure on one rank ends the whole job (<c>MPI_Abort</c>).
/// </summary>
internal static class DataParallel
{
    /// <summary>Commands that run data-parallel (the others refuse to run under a launcher with more than one process).</summary>
    public static readonly string[] Commands = ["train", "seg train", "bench scale", "distributed check"];

    /// <summary>The launcher's view of this process, or null when no MPI launcher started it (read by <see cref="Detect"/>).</summary>
    public static MpiLaunch? Launch { get; private set; }

    /// <summary>The job's process group once a command opened it (<see cref="Open"/>), or null.</summary>
    public static ProcessGroup? Current { get; private set; }

    /// <summary>"[rank r] " in a job of several processes, else empty: the prefix of this process's error lines.</summary>
    public static string Prefix => Launch is { WorldSize: > 1 } l ? $"[rank {l.Rank}] " : "";

    /// <summary>Reads the launcher's environment (once, at start; no MPI call).</summary>
    /// <exception cref="CollectiveException">An unsupported launcher (Open MPI) or malformed variables.</exception>
    public static MpiLaunch? Detect(Func<string, string?>? environment = null) => Launch = MpiLaunch.Detect(environment);

    /// <summary>
    /// Whether <paramref name="args"/> name a command that may run under a launcher with several processes (help and
    /// version requests always may).
    /// </summary>
    public static bool Allows(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var words = args.TakeWhile(a => !a.StartsWith('-')).ToArray();
        string first = words.Length > 0 ? words[0] : "", two = words.Length > 1 ? $"{first} {words[1]}" : first;
        return words.Length == 0 || args.Any(a => a is "--help" or "-h" or "--version" or "-v") || first == "train" || two is "seg train" or "bench scale" or "distributed check";
    }

    /// <summary>
    /// The cores libtorch and the loaders use by default on this process: all of them for one process, else the machine's
    /// cores divided among its processes (at least 1), so N ranks on one machine do not oversubscribe it.
    /// </summary>
    public static int DefaultThreads(MpiLaunch launch)
    {
        ArgumentNullException.ThrowIfNull(launch);
        return Math.Max(1, Environment.ProcessorCount / Math.Max(1, launch.LocalWorldSize));
    }

    /// <summary>Applies the per-process defaults of a job at start: libtorch threads (unless <c>--threads</c> is given).</summary>
    public static void ApplyDefaults(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        // Every launch: libtorch alone picks 1 intra-op thread under mpiexec.mpich even for one process (measured), so say it.
        if (Launch is { } launch && !args.Contains("--threads"))
        {
            TorchRuntime.SetThreads(DefaultThreads(launch));
        }
    }

    /// <summary>Loader threads of this process: <paramref name="given"/>, else the default shared among the machine's processes.</summary>
    public static int Workers(int? given) =>
        given ?? (Launch is { WorldSize: > 1 } launch ? Math.Max(1, Data.LoaderPlan.DefaultWorkers / launch.LocalWorldSize) : Data.LoaderPlan.DefaultWorkers);

    /// <summary>
    /// The job's process group: <see cref="ProcessGroup.Single"/> without a launcher, else MPI (initialized here, once) with
    /// <paramref name="timeoutSeconds"/> as the collective timeout (null: 30 min).
    /// </summary>
    /// <exception cref="UsageException"><paramref name="timeoutSeconds"/> is not positive.</exception>
    /// <exception cref="CollectiveException">MPI cannot start (e.g. MPICH is not installed).</exception>
    public static ProcessGroup Open(double? timeoutSeconds)
    {
        if (timeoutSeconds is { } t && !(t >= 0.1 && t <= MaxTimeoutSeconds))
        {
            throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"--collective-timeout {t} must be a number of seconds in [0.1, {MaxTimeoutSeconds}] (7 days)"));
        }

        if (Launch is null)
        {
            return ProcessGroup.Single;
        }

        Current = MpiProcessGroup.Initialize(Launch, timeoutSeconds is { } s ? TimeSpan.FromSeconds(s) : null);
        return Current;
    }

    /// <summary>
    /// The device of this process: on CUDA in a job, one GPU per process of the machine (<c>cuda:{local rank % GPUs}</c>,
    /// <see cref="GpuPlacement"/>, whatever index was asked for); otherwise <paramref name="device"/> as it is.
    /// </summary>
    public static TorchSharp.torch.Device Place(TorchSharp.torch.Device device, ProcessGroup group, Action<string>? notice)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(group);
        if (!group.IsDistributed || device.type != TorchSharp.DeviceType.CUDA)
        {
            return device;
        }

        int count = (int)TorchSharp.torch.cuda.device_count();
        if (GpuPlacement.Oversubscribed(group, count) is { } shared)
        {
            notice?.Invoke($"note: {shared}; CUDA gradients are then reduced through host memory");
        }

        return new TorchSharp.torch.Device(GpuPlacement.DeviceName(group, count));
    }

    /// <summary>
    /// The stop a process of a job takes part in without having received the signal itself (the ranks agree to stop after
    /// the same step when any of them got SIGINT or SIGTERM): SIGINT, so that every rank exits alike (130) and the launcher
    /// reports the job's stop; null for one process or a run that finished.
    /// </summary>
    public static System.Runtime.InteropServices.PosixSignal? StopOfOthers(ProcessGroup group, long stepsDone, long totalSteps)
    {
        ArgumentNullException.ThrowIfNull(group);
        return group.IsDistributed && stepsDone < totalSteps ? System.Runtime.InteropServices.PosixSignal.SIGINT : null;
    }

    /// <summary>The settings' check of <c>--collective-timeout</c> (null: fine).</summary>
    public static Spectre.Console.ValidationResult? CheckTimeout(double? seconds) =>
        seconds is { } t && !(t >= 0.1 && t <= MaxTimeoutSeconds)
            ? Spectre.Console.ValidationResult.Error(string.Create(CultureInfo.InvariantCulture, $"--collective-timeout {t} must be a number of seconds in [0.1, {MaxTimeoutSeconds}] (7 days)"))
            : null;

    /// <summary>The longest collective timeout accepted: 7 days.</summary>
    public const double MaxTimeoutSeconds = 7 * 24 * 3600;

    /// <summary>
    /// The note for data-parallel flags given to one process (they change nothing there), or null:
    /// <c>--sync-bn</c> (BatchNorm already sees the whole batch).
    /// </summary>
    public static string? OneProcessNote(ProcessGroup group, bool syncBn)
    {
        ArgumentNullException.ThrowIfNull(group);
        return !group.IsDistributed && syncBn ? "note: --sync-bn changes nothing in one process (BatchNorm already sees the whole batch); it applies under mpiexec" : null;
    }

    /// <summary>A console that prints nothing (ranks other than 0).</summary>
    public static IAnsiConsole Silent() => AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null), Interactive = InteractionSupport.No });

    /// <summary>Ends the job after a failure on this process (others would otherwise wait in a collective until their timeout).</summary>
    public static void AbortAfterFailure(int exitCode)
    {
        if (Current is { IsDistributed: true } group)
        {
            group.Abort(exitCode);
        }
    }

    /// <summary>Releases MPI at the end of a successful command (MPI_Finalize).</summary>
    public static void Close()
    {
        Current?.Dispose();
        Current = null;
    }

    /// <summary>The launch prefix a resume command needs in a job (e.g. "mpiexec -n 2 "), else empty.</summary>
    public static string LaunchPrefix(ProcessGroup group) =>
        group is { IsDistributed: true } ? $"mpiexec -n {group.WorldSize} " : "";
}
