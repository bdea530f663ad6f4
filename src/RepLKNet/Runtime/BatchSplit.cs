using System.Diagnostics;
using System.Runtime.ExceptionServices;
using TorchSharp;

namespace RepLKNet.Runtime;

/// <summary>
/// Data parallelism inside one process: a batch cut into one part per thread of libtorch's OpenMP team, each part run
/// whole (forward, loss, backward) on its own thread with every op single-threaded inside it (libtorch, oneDNN and our
/// kernels run serially inside a parallel region), the parts meeting only where samples interact: they add up per-channel
/// sums through shared memory at each BatchNorm (<see cref="Part.Sum"/>), as <c>torch.nn.SyncBatchNorm</c>'s processes do
/// through an all-reduce. On small maps an op spread over threads costs a fork and a join for microseconds of work; a part
/// pays neither (docs/perf-notes.md, "The batch split").
/// </summary>
/// <remarks>
/// <para>
/// Threads: <see cref="Run"/> starts the parts with <see cref="OpenMpTeam.Run"/> (the caller runs one of them). A part waits for
/// the others only in <see cref="Part.Sum"/>/<see cref="Part.TrySum"/>, so every part must reach the same sums in the same
/// order (the same layers of the same model on equal-shaped parts); each sum carries a tag (the layer and the pass) and a
/// mismatch breaks the split with an error instead of adding unrelated numbers. A part is never left waiting for a part that
/// will not come: each team thread reads the team's size first, and a team smaller than the parts abandons the split before
/// anything ran (every member of an OpenMP team runs the region, so with enough members every part starts); a part that
/// throws breaks the split, and so does a part that ends while another waits (unequal numbers of sums) and any sum after
/// <see cref="Run"/> returned; a broken split wakes the waiting parts: <see cref="Part.Sum"/> then throws
/// <see cref="BatchSplitBrokenException"/>, <see cref="Part.TrySum"/> returns false (for autograd callbacks, which must not
/// throw). <see cref="Run"/> rethrows the first part's own exception after every part has ended.
/// </para>
/// <para>
/// Determinism: a sum is added part by part in part order (0, 1, …) on every part, so all parts see the same bits, and the
/// bits do not depend on thread timing.
/// </para>
/// </remarks>
public sealed class BatchSplit
{
    [ThreadStatic]
    private static Part? _current;

    private readonly double[][][] _slots;
    private readonly int[][] _lengths;
    private readonly object?[][] _tags;
    private volatile bool _abandoned;
    private volatile int _ended;
    private volatile bool _broken;
    private int _arrived;
    private int _generation;
    private ExceptionDispatchInfo? _error;

    private BatchSplit(int parts)
    {
        Parts = parts;
        _slots = [new double[parts][], new double[parts][]];
        _lengths = [new int[parts], new int[parts]];
        _tags = [new object?[parts], new object?[parts]];
        for (int b = 0; b < 2; b++)
        {
            for (int p = 0; p < parts; p++)
            {
                _slots[b][p] = [];
            }
        }
    }

    private static long _completed;

    /// <summary>Splits that ran to the end in this process (a diagnostic; the tests read it).</summary>
    public static long Completed => Interlocked.Read(ref _completed);

    /// <summary>The part this thread is running, or null outside a split.</summary>
    public static Part? Current => _current;

    /// <summary>Number of parts.</summary>
    public int Parts { get; }

    /// <summary>Whether a part failed (the others' sums then stop waiting).</summary>
    public bool IsBroken => _broken;

    /// <summary>
    /// Runs <paramref name="body"/> once per part, <paramref name="parts"/> parts at once on libtorch's OpenMP team (the
    /// caller runs one of them; part indices go to the threads in the order they arrive), with <see cref="Current"/> set on
    /// each part's thread, and returns when all have ended.
    /// </summary>
    /// <param name="parts">Number of parts, ≥ 2.</param>
    /// <param name="body">One part's work; it may call <see cref="Part.Sum"/>.</param>
    /// <returns>
    /// True when every part ran; false when the split was abandoned before any part's body started: libtorch's OpenMP
    /// runtime (with <c>omp_get_num_threads</c> and <c>omp_set_num_threads</c>) was not found, or its team has fewer
    /// threads than <paramref name="parts"/>. Run the work unsplit then.
    /// </returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="parts"/> &lt; 2.</exception>
    /// <exception cref="ArgumentNullException"><paramref name="body"/> is null.</exception>
    /// <exception cref="InvalidOperationException">Called from inside a part (splits do not nest).</exception>
    /// <remarks>The first exception a part's body threw (not a <see cref="BatchSplitBrokenException"/> it caused) is rethrown here.</remarks>
    public static bool Run(int parts, Action<Part> body)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(parts, 2);
        ArgumentNullException.ThrowIfNull(body);
        if (_current is not null)
        {
            throw new InvalidOperationException("a batch split cannot start inside another one");
        }

        if (!OpenMpTeam.CanSizeTeams)
        {
            return false;
        }

        var split = new BatchSplit(parts);
        int claimed = -1;
        OpenMpTeam.Run(parts, () =>
        {
            // Every team member runs this; all see the same team size, so they abandon together or all parts start.
            if (OpenMpTeam.TeamSize() < parts)
            {
                split._abandoned = true;
                return;
            }

            int index = Interlocked.Increment(ref claimed);
            if (index >= parts)
            {
                return;
            }

            try
            {
                var part = new Part(split, index);
                // Ops inside a part run on its thread alone, and must size themselves so (OpenMpTeam.SetThreadsHere).
                // libtorch sets a thread's OpenMP count once, lazily, on its first query: make that happen before ours.
                _ = torch.get_num_threads();
                OpenMpTeam.SetThreadsHere(1);
                _current = part;
                body(part);
            }
            catch (Exception e)
            {
                split.Fail(e);
            }
            finally
            {
                _current = null;
                Interlocked.Increment(ref split._ended);
                split.Wake();
            }
        });

        // Later sums (a graph of the split kept past it and run backward) break instead of waiting for parts long gone.
        split._broken = true;
        if (split._abandoned)
        {
            return false;
        }

        Volatile.Read(ref split._error)?.Throw();
        Interlocked.Increment(ref _completed);
        return true;
    }

    private void Fail(Exception e)
    {
        // The first failure is the cause; a part woken by it throws BatchSplitBrokenException later, which is not kept.
        Interlocked.CompareExchange(ref _error, ExceptionDispatchInfo.Capture(e), null);
        _broken = true;
        Interlocked.MemoryBarrier(); // the store is seen before Wake reads the sleepers
        Wake();
    }

    private void Break(string reason)
    {
        Interlocked.CompareExchange(ref _error, ExceptionDispatchInfo.Capture(new InvalidOperationException(reason)), null);
        _broken = true;
        Interlocked.MemoryBarrier();
        Wake();
    }

    /// <summary>
    /// Microseconds a part spins at a sum before it sleeps until the last part arrives (<c>REPLKNET_SPLIT_SPIN_US</c>; a
    /// negative value spins without end). A sleeping part leaves its core to other threads (the batch loader's), which a
    /// spinning one would share it with; waking costs a futex call.
    /// </summary>
    internal static long SpinMicroseconds { get; set; } =
        long.TryParse(Environment.GetEnvironmentVariable("REPLKNET_SPLIT_SPIN_US"), out var us) ? us : 50;

    private readonly object _sleep = new();
    private int _sleepers;

    // A sense-counting barrier: the last part to arrive resets the count, starts the next generation and wakes the parts
    // that went to sleep. False when broken.
    private bool Arrive()
    {
        int generation = Volatile.Read(ref _generation);
        if (Interlocked.Increment(ref _arrived) == Parts)
        {
            Volatile.Write(ref _arrived, 0);
            Interlocked.Increment(ref _generation);
            Wake();
            return !_broken;
        }

        long spinUntil = SpinMicroseconds < 0 ? long.MaxValue
            : Stopwatch.GetTimestamp() + (long)Math.Min(Math.Min(SpinMicroseconds, 1e9) * Stopwatch.Frequency / 1e6, long.MaxValue / 2.0);
        var spin = default(SpinWait);
        while (Volatile.Read(ref _generation) == generation)
        {
            if (_broken)
            {
                return false;
            }

            if (_ended > 0 && Volatile.Read(ref _generation) == generation)
            {
                // A part finished its body while this one waits for it (it did not pass this barrier: it would have
                // started the next generation before ending): the parts made different numbers of sums.
                Break("batch split: a part ended while another waited at a sum: the parts ran different layers");
                return false;
            }

            if (Stopwatch.GetTimestamp() < spinUntil)
            {
                spin.SpinOnce(-1);
                continue;
            }

            lock (_sleep)
            {
                // Counted before the generation is read again: the last part reads the count after it moved the
                // generation on, so it either sees this sleeper or this sleeper sees the new generation. The timeout
                // re-checks the broken and ended conditions.
                Interlocked.Increment(ref _sleepers); // a full fence: the store is seen before the generation is read
                if (Volatile.Read(ref _generation) == generation && !_broken)
                {
                    Monitor.Wait(_sleep, 1);
                }

                Interlocked.Decrement(ref _sleepers);
            }
        }

        return !_broken;
    }

    private void Wake()
    {
        if (Volatile.Read(ref _sleepers) > 0)
        {
            lock (_sleep)
            {
                Monitor.PulseAll(_sleep);
            }
        }
    }

    /// <summary>One part of a <see cref="BatchSplit"/>: its index and the sums it shares with the other parts.</summary>
    public sealed class Part
    {
        private readonly BatchSplit _split;
        private int _round;

        internal Part(BatchSplit split, int index)
        {
            _split = split;
            Index = index;
        }

        /// <summary>This part's index, 0 … <see cref="Count"/> − 1.</summary>
        public int Index { get; }

        /// <summary>Number of parts.</summary>
        public int Count => _split.Parts;

        /// <summary>
        /// Replaces <paramref name="values"/> with their sum over all parts (added in part order), once every part has
        /// contributed the same number of values under the same <paramref name="tag"/>.
        /// </summary>
        /// <param name="values">This part's values in, the sums out.</param>
        /// <param name="tag">What is being summed (e.g. a layer and a pass), compared by reference and value across parts.</param>
        /// <exception cref="BatchSplitBrokenException">Another part failed, or the parts disagreed on the tag or the length.</exception>
        /// <exception cref="ArgumentNullException"><paramref name="tag"/> is null.</exception>
        public void Sum(Span<double> values, object tag)
        {
            if (!TrySum(values, tag))
            {
                throw new BatchSplitBrokenException();
            }
        }

        /// <summary>
        /// <see cref="Sum"/> that does not throw on a broken split: false then, and <paramref name="values"/> holds this
        /// part's own values or an unfinished sum (the step fails anyway; for callbacks from native code, which must not throw).
        /// </summary>
        /// <param name="values">This part's values in, the sums out.</param>
        /// <param name="tag">What is being summed, compared across parts.</param>
        /// <returns>Whether <paramref name="values"/> holds the sums.</returns>
        /// <exception cref="ArgumentNullException"><paramref name="tag"/> is null (a programming error, checked first).</exception>
        public bool TrySum(Span<double> values, object tag)
        {
            ArgumentNullException.ThrowIfNull(tag);
            var split = _split;
            if (split._broken)
            {
                return false;
            }

            // Two sets of slots, used in turn: a part can be at most one round ahead of another (it cannot pass the next
            // barrier before the others arrive there), so the set it writes is one nobody still reads.
            int set = _round++ & 1;
            // A slot only grows (layers of different widths take turns), so the steady state allocates nothing.
            var own = split._slots[set][Index];
            if (own.Length < values.Length)
            {
                own = split._slots[set][Index] = new double[values.Length];
            }

            values.CopyTo(own);
            split._lengths[set][Index] = values.Length;
            split._tags[set][Index] = tag;
            if (!split.Arrive())
            {
                return false;
            }

            for (int p = 0; p < split.Parts; p++)
            {
                if (!Equals(split._tags[set][p], tag) || split._lengths[set][p] != values.Length)
                {
                    split.Break($"batch split: part {p} summed '{split._tags[set][p]}' ({split._lengths[set][p]} values) where part {Index} summed '{tag}' ({values.Length}): the parts ran different layers");
                    return false;
                }
            }

            values.Clear();
            for (int p = 0; p < split.Parts; p++)
            {
                var theirs = split._slots[set][p];
                for (int i = 0; i < values.Length; i++)
                {
                    values[i] += theirs[i];
                }
            }

            return true;
        }
    }
}

/// <summary>Another part of a <see cref="BatchSplit"/> failed (its own exception is the one <see cref="BatchSplit.Run"/> rethrows).</summary>
public sealed class BatchSplitBrokenException : Exception
{
    /// <summary>Creates the exception.</summary>
    public BatchSplitBrokenException()
        : base("another part of the batch split failed")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public BatchSplitBrokenException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public BatchSplitBrokenException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
