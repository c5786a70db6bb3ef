//go:build unix

package hbone

import (
	"io"
	"net"
)

// newSinkWriter returns w as a sinkWriter if it is a socket that writes
// without blocking (a sockConn, made by asSockWriter from a plain TCP
// socket: a wrapper may hold bytes of its own), else nil.
func newSinkWriter(w io.Writer) sinkWriter {
	if sc, ok := w.(*sockConn); ok {
		return sc
	}
	return nil
}

// asSockWriter returns w with raw writes (sock_unix.go) if it is a plain
// TCP connection, else w.
func asSockWriter(w io.Writer) io.Writer {
	if c, ok := w.(net.Conn); ok {
		return asSockConn(c)
	}
	return w
}
