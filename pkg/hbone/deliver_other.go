//go:build !unix

package hbone

import (
	"io"
	"net"
)

// newSinkWriter: only unix writes in RawConn.Write's callback; elsewhere
// WriteTo writes everything itself.
func newSinkWriter(io.Writer) sinkWriter { return nil }

// asSockWriter: raw writes only on unix.
func asSockWriter(w io.Writer) io.Writer { return w }

// asSockConn: raw reads and writes only on unix.
func asSockConn(c net.Conn) net.Conn { return c }
