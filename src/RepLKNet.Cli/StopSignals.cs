using System.Runtime.InteropServices;

namespace RepLKNet.Cli;

/// <summary>
/// Graceful stop for long runs: the first SIGINT (Ctrl-C) or SIGTERM (what schedulers send before a kill) cancels
/// <see cref="Token"/>, so the run finishes its current step, saves a resume state and returns; a second one exits the
/// process at once with 130 (SIGINT) or 143 (SIGTERM), leaving the last saved state intact (every save is atomic).
/// Handlers run on a runtime signal thread and only touch a <see cref="CancellationTokenSource"/> (thread-safe), an
/// interlocked counter and stderr; libtorch objects are never touched there. The immediate exit is libc's <c>_exit</c>: no
/// atexit handlers or static destructors run while the training thread may still be inside libtorch (its thread pools'
/// destructors would race with it); nothing needs them, since every save is atomic.
/// </summary>
internal sealed partial class StopSignals : IDisposable
{
    private readonly CancellationTokenSource _source;
    private readonly PosixSignalRegistration[] _registrations;
    private readonly TextWriter _error;
    private int _received;
    private int _signal; // the first signal's number, set once before the token is cancelled

    public StopSignals(TextWriter error, CancellationToken outer)
    {
        _error = error;
        _source = CancellationTokenSource.CreateLinkedTokenSource(outer);
        _registrations = [PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle)];
    }

    /// <summary>Cancelled by the first signal.</summary>
    public CancellationToken Token => _source.Token;

    /// <summary>The signal that stopped the run (SIGINT or SIGTERM), or null.</summary>
    public PosixSignal? Received => Volatile.Read(ref _signal) is var s && s != 0 ? (PosixSignal)s : null;

    /// <summary>The exit code of a stop by <paramref name="signal"/>: 128 + its number (130, 143).</summary>
    public static int ExitCode(PosixSignal signal) => signal == PosixSignal.SIGTERM ? ExitCodes.Terminated : ExitCodes.Interrupted;

    private void Handle(PosixSignalContext context)
    {
        context.Cancel = true; // we decide when the process ends
        if (Interlocked.Increment(ref _received) == 1)
        {
            Interlocked.CompareExchange(ref _signal, (int)context.Signal, 0);
            _error.WriteLine($"replknet: {Name(context.Signal)} received: finishing the current step and saving a resume state (send it again to quit at once)");
            try
            {
                _source.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // The run already ended.
            }
        }
        else
        {
            _error.WriteLine($"replknet: {Name(context.Signal)} received again: quitting now; the last saved state is intact");
            _error.Flush();
            Console.Out.Flush();
            ExitNow(ExitCode(context.Signal));
        }
    }

    [LibraryImport("libc", EntryPoint = "_exit")]
    private static partial void ExitNow(int status);

    private static string Name(PosixSignal signal) => signal == PosixSignal.SIGTERM ? "SIGTERM" : "SIGINT";

    public void Dispose()
    {
        foreach (var r in _registrations)
        {
            r.Dispose();
        }

        _source.Dispose();
    }
}
