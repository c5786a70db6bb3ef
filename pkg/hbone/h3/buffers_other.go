//go:build !linux

package h3

import (
	"errors"
	"net"
)

// BufferSize is the UDP socket buffer quic-go asks for (7 MiB each way).
const BufferSize = 7 << 20

// SizeBuffers tries SO_RCVBUF / SO_SNDBUF of BufferSize; the sizes are not
// read back outside Linux.
func SizeBuffers(c *net.UDPConn) (rcv, snd int, err error) {
	return 0, 0, errors.Join(c.SetReadBuffer(BufferSize), c.SetWriteBuffer(BufferSize))
}
