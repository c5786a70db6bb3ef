package hbone

import (
	"net"
	"time"
)

// stream is one side of a tunnel stream: the server's or the client's.
type stream interface {
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	CloseWrite() error
	Close() error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// Conn is one tunnel stream. It is a net.Conn whose CloseWrite half-closes
// the stream (END_STREAM towards the peer) while reads continue.
// LocalAddr and RemoteAddr are those of the underlying TLS connection.
//
// Close ends the stream: gracefully (END_STREAM) if everything the peer sent
// has been read, otherwise with RST_STREAM, as TCP would send RST when closed
// with unread data. Deadlines are supported on both sides.
type Conn struct {
	s      stream
	local  net.Addr
	remote net.Addr
}

var _ net.Conn = (*Conn)(nil)

// Read reads data sent by the peer; io.EOF once the peer half-closed.
func (c *Conn) Read(p []byte) (int, error) { return c.s.Read(p) }

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
