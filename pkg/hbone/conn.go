package hbone

import (
	"bytes"
	"io"
	"net"
	"sync"
	"time"
)

// maxDrainedBuf is the capacity a stream's receive buffer keeps once
// drained: a burst of data must not leave an idle stream holding megabytes
// (the buffer grows up to the stream window, 4 MiB). Larger storage goes
// back to recvBufs, where the next burst on any stream takes it from.
const maxDrainedBuf = 64 << 10

var recvBufs sync.Pool // *[]byte of capacity > maxDrainedBuf

// trimDrained gives b's storage back to recvBufs when it is empty and large.
func trimDrained(b *bytes.Buffer) {
	if b.Len() == 0 && b.Cap() > maxDrainedBuf {
		b.Reset()
		spare := b.AvailableBuffer()
		*b = bytes.Buffer{}
		recvBufs.Put(&spare)
	}
}

// bufferData appends p to a stream's receive buffer b, starting a burst
// with storage from recvBufs.
func bufferData(b *bytes.Buffer, p []byte) {
	if b.Cap() == 0 && len(p) > maxDrainedBuf/2 {
		if sp, ok := recvBufs.Get().(*[]byte); ok {
			*b = *bytes.NewBuffer((*sp)[:0])
		}
	}
	b.Write(p)
}

// Conn is one tunnel stream. It is a net.Conn whose CloseWrite half-closes
// the stream (END_STREAM towards the peer) while reads continue.
// LocalAddr and RemoteAddr are those of the underlying TLS connection.
//
// Close ends the stream: gracefully (END_STREAM) if everything the peer sent
// has been read, otherwise with RST_STREAM, as TCP would send RST when closed
// with unread data. Deadlines are supported on both sides.
type Conn struct {
	s      *stream
	local  net.Addr
	remote net.Addr
}

var _ net.Conn = (*Conn)(nil)

// Read reads data sent by the peer; io.EOF once the peer half-closed.
func (c *Conn) Read(p []byte) (int, error) { return c.s.Read(p) }

// WriteTo writes what the peer sends to w until EOF (which is not an
// error). Unlike a copy through a buffer, it holds no buffer while it waits
// for data, so that idle tunnels stay cheap: [Relay] uses it. If w is a
// *net.TCPConn, the connection's reader goroutine writes data that arrives
// while WriteTo waits to w itself when w takes it without blocking
// (deliver.go).
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var written int64
	w = asSockWriter(w)
	sk := newSink(w)
	for {
		n, direct, err := c.s.buffered(sk)
		written += direct
		if err == io.EOF {
			return written, nil
		}
		if err != nil {
			return written, err
		}
		pool := &smallBufs
		if n > smallBufSize {
			pool = &largeBufs
		}
		bp := pool.Get().(*[]byte)
		nr, err := c.s.Read(*bp)
		if nr > 0 {
			nw, werr := w.Write((*bp)[:nr])
			written += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				pool.Put(bp)
				return written, werr
			}
		}
		pool.Put(bp)
		if err == io.EOF {
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
}

// Buffered reports, without blocking or touching the deadlines, what Read
// would return now: how many received bytes it would return at once, or,
// if none, its error (io.EOF once the peer half-closed, the reset or close
// that ended the stream). 0 and nil mean that the stream is open and
// nothing arrived: a kept connection that is still usable. It is the cheap
// form of a read with a past deadline.
func (c *Conn) Buffered() (int, error) { return c.s.pending() }

// Write sends p as HTTP/2 DATA frames, subject to flow control.
func (c *Conn) Write(p []byte) (int, error) { return c.s.Write(p) }

// CloseWrite half-closes the stream: the peer reads EOF, reads here go on.
func (c *Conn) CloseWrite() error { return c.s.CloseWrite() }

// Close closes the stream in both directions.
func (c *Conn) Close() error { return c.s.Close() }

// LocalAddr returns the local address of the underlying TLS connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the underlying TLS connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both the read and the write deadline.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.s.SetReadDeadline(t); err != nil {
		return err
	}
	return c.s.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for Read calls.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.s.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for Write calls.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

var _ io.WriterTo = (*Conn)(nil)
