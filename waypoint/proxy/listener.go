package proxy

import (
	"net"
	"sync"
)

// streamListener hands accepted HBONE streams to the HTTP server: a
// net.Listener whose connections come from ServeHBONE instead of a socket.
type streamListener struct {
	ch        chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server; false when the listener is closed.
func (l *streamListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return streamAddr{} }

type streamAddr struct{}

func (streamAddr) Network() string { return "hbone" }
func (streamAddr) String() string  { return "hbone" }

// httpConn is one HBONE stream served by the HTTP server. Close (by the
// server, when the connection ends) releases the HBONE handler waiting in
// ServeHBONE.
type httpConn struct {
	net.Conn
	st        *stream
	closed    chan struct{}
	closeOnce sync.Once
}

func newHTTPConn(c net.Conn, st *stream) *httpConn {
	return &httpConn{Conn: c, st: st, closed: make(chan struct{})}
}

func (c *httpConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.closed) })
	return err
}

// RemoteAddr is the original client's address, so that net/http's
// Request.RemoteAddr names it.
func (c *httpConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.st.client) }
