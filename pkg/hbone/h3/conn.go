package h3

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// stream is what Conn needs of an HTTP/3 request stream; both the client's
// *http3.RequestStream and the server's taken-over *http3.Stream have it.
type stream interface {
	io.ReadWriter
	Close() error // ends the send direction (FIN)
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	SetDeadline(time.Time) error
}

// Conn is one established tunnel: the stream of an answered CONNECT. It is
// a net.Conn with CloseWrite: the stream's FIN is the tunnelled
// connection's FIN; Close before both directions ended resets the stream
// with H3_CONNECT_ERROR, as a TCP reset.
type Conn struct {
	s             stream
	local, remote net.Addr

	mu          sync.Mutex
	readDone    bool // EOF read: the peer's FIN
	writeClosed bool // FIN sent, or reset
	closed      bool
	onClose     func() // returns the pool's reservation; nil on the server
}

var _ net.Conn = (*Conn)(nil)

// Read reads from the tunnel; io.EOF once the peer half-closed.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.s.Read(p)
	if err == io.EOF {
		c.mu.Lock()
		c.readDone = true
		c.mu.Unlock()
	}
	return n, err
}

// Write writes to the tunnel.
func (c *Conn) Write(p []byte) (int, error) { return c.s.Write(p) }

// CloseWrite half-closes the tunnel: the peer reads EOF.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	if c.writeClosed {
		c.mu.Unlock()
		return nil
	}
	c.writeClosed = true
	c.mu.Unlock()
	return c.s.Close()
}

// Close ends the tunnel. A direction that has not ended cleanly is reset
// with H3_CONNECT_ERROR (the send side) or stopped (the receive side).
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	resetWrite, stopRead := !c.writeClosed, !c.readDone
	c.writeClosed = true
	onClose := c.onClose
	c.mu.Unlock()
	if resetWrite {
		c.s.CancelWrite(ErrCodeConnect)
	}
	if stopRead {
		c.s.CancelRead(ErrCodeConnect)
	}
	if onClose != nil {
		onClose()
	}
	return nil
}

// LocalAddr is the local address of the QUIC connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the peer's address of the QUIC connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the stream's read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.s.SetDeadline(t) }

// SetReadDeadline sets the stream's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.s.SetReadDeadline(t) }

// SetWriteDeadline sets the stream's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }
