package hbone

import "io"

// Direct delivery. A tunnel's [Conn.WriteTo] ([Relay]'s copy out of a
// stream) mostly waits with nothing buffered. While it does, the reader
// goroutine writes the payload of a DATA frame for that stream straight to
// WriteTo's destination socket, if the socket takes it without blocking:
// no copy into the stream's buffer and out again, and no wake-up of the
// WriteTo goroutine (per request, one goroutine hand-off and one context
// switch fewer on each end of a tunnel). What the socket does not take is
// buffered and left to WriteTo, as before; it writes it blocking, with the
// socket's deadline. The reader never waits for the socket.

// directSink is WriteTo's destination as the reader goroutine writes to it. The
// fields other than try's are guarded by the connection's mu.
type directSink struct {
	w sinkWriter

	busy    bool  // the reader writes to w, without mu
	waiting bool  // WriteTo waits for busy to end
	written int64 // written by the reader, not yet counted by WriteTo
	err     error // the reader's write failed: WriteTo returns it
}

// sinkWriter writes without blocking: n < len(p) with a nil error when the
// destination is full.
type sinkWriter interface {
	tryWrite(p []byte) (n int, err error)
}

// newSink returns a directSink for w, or nil if w cannot be written without
// blocking (only a plain TCP socket can: see deliver_unix.go).
func newSink(w io.Writer) *directSink {
	sw := newSinkWriter(w)
	if sw == nil {
		return nil
	}
	return &directSink{w: sw}
}

// deliverLocked writes a prefix of data to st's sink, releasing mu during
// the write, and returns what the sink did not take. The written bytes are
// consumed: their window goes back to the peer, as after a Read. The
// caller must check st again: it may have been closed meanwhile.
func (c *h2Conn) deliverLocked(st *stream, data []byte) []byte {
	sk := st.sink
	sk.busy = true
	hook := c.deliverHook
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	n, err := sk.w.tryWrite(data)
	c.mu.Lock()
	sk.busy = false
	if sk.waiting {
		sk.waiting = false
		st.cond.Broadcast()
	}
	if n > 0 {
		sk.written += int64(n)
		if st.err == nil {
			st.refundLocked(int64(n))
		}
		c.refundLocked(int64(n))
	}
	if err != nil && sk.err == nil {
		sk.err = err
		st.cond.Broadcast()
	}
	return data[n:]
}

// waitSinkLocked is waitLocked for WriteTo with sk (nil: none): while it
// waits with nothing buffered, the reader may deliver to sk. It returns
// what the reader wrote to sk meanwhile, and its error if it failed.
func (st *stream) waitSinkLocked(sk *directSink) (written int64, err error) {
	if sk == nil {
		return 0, st.waitLocked()
	}
	st.sink = sk
	for {
		if sk.err != nil {
			err = sk.err
			break
		}
		if st.buf.Len() > 0 || st.err != nil || st.appClosed || st.remoteClosed || expired(st.rdl) {
			err = st.waitLocked() // returns at once
			break
		}
		st.cond.Wait()
	}
	st.sink = nil
	for sk.busy {
		// A write the reader started must end before WriteTo returns or
		// writes to the socket itself.
		sk.waiting = true
		st.cond.Wait()
	}
	if err == nil && sk.err != nil {
		err = sk.err
	}
	written, sk.written = sk.written, 0
	return written, err
}
