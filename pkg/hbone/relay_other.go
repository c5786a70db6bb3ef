//go:build !unix

package hbone

import (
	"net"
	"syscall"
)

// copySocket: only unix reads in rc.Read's callback; elsewhere Relay
// copies through a buffer.
func copySocket(dst, src net.Conn, rc syscall.RawConn) (written int64, ok bool, err error) {
	return 0, false, nil
}
