using System.Diagnostics;
using System.Globalization;

namespace RepLKNet.Distributed;

/// <summary>
/// The timeout of blocking collectives (MPI has none; <c>torch.distributed</c>'s default is 30 min): a background thread
/// watches the collective in progress and, once it has waited longer than <see cref="Timeout"/>, reports it and runs the
/// expiry action, which by default ends the whole job (<c>MPI_Abort</c>, then the process). A process whose peer died or
/// hangs thus ends with a clear message instead of waiting forever; the files a run wrote stay intact (every checkpoint
/// is written atomically).
/// </summary>
/// <remarks>
/// Thread safety: <see cref="Enter"/> / <see cref="Exit"/> come from the one thread making collectives (see
/// <see cref="ProcessGroup"/>); the watch thread only reads the current entry under the lock and never calls into libtorch.
/// </remarks>
public sealed class CollectiveWatchdog : IDisposable
{
    private readonly object _gate = new(); // Monitor.Wait/PulseAll need a monitor
    private readonly Thread _thread;
    private readonly Action<string> _expired;
    private readonly int _rank;
    private string? _what;
    private long _since;
    private bool _stop;
    private bool _fired;

    /// <summary>Starts watching.</summary>
    /// <param name="timeout">How long one collective may wait (positive).</param>
    /// <param name="rank">This process's rank (for the message).</param>
    /// <param name="expired">Runs (once, on the watch thread) with the message when a collective waited too long.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is not positive.</exception>
    public CollectiveWatchdog(TimeSpan timeout, int rank, Action<string> expired)
    {
        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "timeout must be positive");
        }

        Timeout = timeout;
        _rank = rank;
        _expired = expired ?? throw new ArgumentNullException(nameof(expired));
        _thread = new Thread(Watch) { IsBackground = true, Name = "replknet collective watchdog" };
        _thread.Start();
    }

    /// <summary>How long one collective may wait.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Whether a collective has expired.</summary>
    public bool Fired
    {
        get
        {
            lock (_gate)
            {
                return _fired;
            }
        }
    }

    /// <summary>Marks the start of a collective described by <paramref name="what"/> (e.g. "allreduce of gradients, 12.0 MB"); dispose the result when it returns.</summary>
    public Scope Enter(string what)
    {
        lock (_gate)
        {
            _what = what;
            _since = Stopwatch.GetTimestamp();
        }

        return new Scope(this);
    }

    /// <summary>Marks the end of the collective in progress.</summary>
    public void Exit()
    {
        lock (_gate)
        {
            _what = null;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_gate)
        {
            _stop = true;
            Monitor.PulseAll(_gate);
        }

        _thread.Join();
    }

    private void Watch()
    {
        string? message = null;
        lock (_gate)
        {
            while (!_stop)
            {
                if (_what is { } what && Stopwatch.GetElapsedTime(_since) > Timeout)
                {
                    _fired = true;
                    message = string.Create(CultureInfo.InvariantCulture,
                        $"rank {_rank}: the collective '{what}' did not complete within {Timeout.TotalSeconds:0.###} s: another process of the job has probably died or hangs; ending the job (files already written, the last checkpoint included, are intact)");
                    break;
                }

                // Wake often enough that an expiry is seen within a twentieth of the timeout (at most one second late).
                Monitor.Wait(_gate, TimeSpan.FromMilliseconds(Math.Clamp(Timeout.TotalMilliseconds / 20, 10, 1000)));
            }
        }

        if (message is not null)
        {
            _expired(message);
        }
    }

    /// <summary>The collective in progress; disposing it marks its end.</summary>
    public readonly struct Scope(CollectiveWatchdog watchdog) : IDisposable
    {
        /// <inheritdoc />
        public void Dispose() => watchdog?.Exit();
    }
}
