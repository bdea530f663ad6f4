using System.Collections.Concurrent;
using System.Diagnostics;

namespace RepLKNet.Data;

/// <summary>
/// The background half of a batch loader, whatever the batch: one long-running producer prepares batches
/// <c>first … first + count − 1</c> in order (each by <c>prepare(number, cancel)</c>, which may fan out over worker threads)
/// and hands them to the consumer through a bounded queue. A failure of the producer is rethrown by <see cref="Batches"/>;
/// disposing stops the producer. <see cref="BatchLoader"/> (classification) and the segmentation loader both run on it.
/// </summary>
/// <typeparam name="TBatch">The prepared batch.</typeparam>
public sealed class BackgroundBatches<TBatch> : IDisposable
    where TBatch : class
{
    private readonly BlockingCollection<TBatch> _queue;
    private readonly CancellationTokenSource _cancel = new();
    private readonly Task _producer;
    private readonly Stopwatch _waiting = new();
    private readonly Func<long, CancellationToken, TBatch> _prepare;
    private readonly long _first;
    private Exception? _failure;

    /// <summary>Starts preparing <paramref name="count"/> batches from number <paramref name="first"/>, at most <paramref name="prefetch"/> ahead.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="prefetch"/> ≤ 0 or <paramref name="count"/> &lt; 0.</exception>
    public BackgroundBatches(long first, long count, int prefetch, Func<long, CancellationToken, TBatch> prepare)
    {
        ArgumentNullException.ThrowIfNull(prepare);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(prefetch);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        _prepare = prepare;
        _first = first;
        Count = count;
        _queue = new BlockingCollection<TBatch>(prefetch);
        _producer = Task.Factory.StartNew(Produce, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>Batches handed out.</summary>
    public long Count { get; }

    /// <summary>Time the consumer spent waiting for a batch (ideally close to zero).</summary>
    public TimeSpan WaitTime => _waiting.Elapsed;

    /// <summary>The batches, in order; rethrows a failure of the background work.</summary>
    public IEnumerable<TBatch> Batches()
    {
        while (true)
        {
            TBatch? batch;
            _waiting.Start();
            try
            {
                if (!_queue.TryTake(out batch, Timeout.Infinite, _cancel.Token))
                {
                    batch = null;
                }
            }
            catch (OperationCanceledException)
            {
                batch = null;
            }
            finally
            {
                _waiting.Stop();
            }

            if (batch is null)
            {
                if (_failure is not null)
                {
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_failure).Throw();
                }

                yield break;
            }

            yield return batch;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _cancel.Cancel();
        try
        {
            _producer.Wait();
        }
        catch (AggregateException)
        {
            // Cancellation or a failure already reported through Batches().
        }

        _queue.Dispose();
        _cancel.Dispose();
    }

    private void Produce()
    {
        try
        {
            for (long b = _first; b < _first + Count; b++)
            {
                var batch = _prepare(b, _cancel.Token);
                _queue.Add(batch, _cancel.Token);
            }
        }
        catch (OperationCanceledException) when (_cancel.IsCancellationRequested)
        {
            // Disposed early (the consumer stopped).
        }
        catch (Exception e)
        {
            _failure = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e;
        }
        finally
        {
            _queue.CompleteAdding();
        }
    }
}
