using StorageNode.Interop;

namespace StorageNode.Transport;

/// <summary>
/// For one connection's byte stream, the earliest time each byte can have reached this node: a conservative bound on
/// when a command arrived, so that time it spent in the socket's receive queue or behind a stalled reactor counts
/// against its relay deadline (docs/ha.md). It learns from observations "at time T every byte before stream offset O
/// had arrived, so every byte from O on arrived after T": a receive that drained the socket (O = bytes received so
/// far), or one that filled the buffer, completed with FIONREAD (O = bytes received + bytes still queued). A few
/// observations wait in a small ring until parsing reaches their offset; when the ring is full the newest is
/// replaced (still true, only less tight). No allocation; one ioctl per receive that filled its buffer.
/// </summary>
internal unsafe struct ArrivalClock
{
    private const int Ring = 4;
    private fixed long _offsets[Ring];
    private fixed long _times[Ring];
    private int _head;
    private int _count;
    private long _bound;
    private long _received;

    public ArrivalClock(long createdTicks) => _bound = createdTicks;

    /// <summary>Total bytes received so far (the stream offset of the next byte).</summary>
    public readonly long Received => _received;

    /// <summary><paramref name="bytes"/> arrived; <paramref name="drained"/> when the read took less than it asked for.</summary>
    public void OnReceived(long bytes, bool drained, int fd, long iterationStart)
    {
        _received += bytes;
        if (drained)
        {
            Observe(_received, iterationStart);
            return;
        }
        int queued = 0;
        if (Libc.Ioctl(fd, Libc.FIONREAD, &queued) == 0 && queued >= 0) Observe(_received + queued, iterationStart);
    }

    /// <summary>The socket had nothing to read (EAGAIN) at some point after <paramref name="iterationStart"/>.</summary>
    public void OnEmpty(long iterationStart) => Observe(_received, iterationStart);

    private void Observe(long offset, long time)
    {
        if (_count > 0)
        {
            int last = (_head + _count - 1) % Ring;
            if (_offsets[last] == offset)
            {
                // The same bytes seen empty again, later: a tighter bound for what follows them.
                if (time > _times[last]) _times[last] = time;
                return;
            }
            if (_offsets[last] > offset) return; // nothing new
            if (_count == Ring)
            {
                _offsets[last] = offset;
                _times[last] = time;
                return;
            }
        }
        int at = (_head + _count) % Ring;
        _offsets[at] = offset;
        _times[at] = time;
        _count++;
    }

    /// <summary>
    /// The bound for a PDU that starts at stream offset <paramref name="offset"/> (offsets asked for never decrease).
    /// </summary>
    public long ArrivedAfter(long offset)
    {
        while (_count > 0 && _offsets[_head] <= offset)
        {
            _bound = _times[_head];
            _head = (_head + 1) % Ring;
            _count--;
        }
        return _bound;
    }
}
