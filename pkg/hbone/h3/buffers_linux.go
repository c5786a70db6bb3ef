package h3

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// BufferSize is the UDP socket buffer quic-go asks for (7 MiB each way,
// its wiki's UDP-Buffer-Sizes).
const BufferSize = 7 << 20

// SizeBuffers sets c's receive and send buffers to BufferSize: with
// SO_RCVBUFFORCE / SO_SNDBUFFORCE (CAP_NET_ADMIN; not capped by
// net.core.rmem_max / wmem_max), else as far as those limits let
// SO_RCVBUF / SO_SNDBUF go. It returns the sizes the kernel reports (Linux
// reports twice what was set) and, when one is short, an error saying
// why, for the caller to log; quic-go then finds the buffers as large as it
// can make them itself.
func SizeBuffers(c *net.UDPConn) (rcv, snd int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("h3: udp socket: %w", err)
	}
	var errs []error
	size := func(name string, force, opt int, fallback func(int) error) int {
		var got int
		var ferr error
		if cerr := rc.Control(func(fd uintptr) {
			if ferr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, BufferSize); ferr != nil {
				_ = fallback(BufferSize)
			}
			got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt)
		}); cerr != nil {
			errs = append(errs, cerr)
			return 0
		}
		if got < BufferSize {
			errs = append(errs, fmt.Errorf("%s buffer is %d KiB, wanted %d KiB: forcing it failed (%v; needs CAP_NET_ADMIN) and the sysctl limit (net.core.%s_max) is lower", name, got/2/1024, BufferSize/1024, ferr, map[string]string{"receive": "rmem", "send": "wmem"}[name]))
		}
		return got
	}
	rcv = size("receive", unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, c.SetReadBuffer)
	snd = size("send", unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, c.SetWriteBuffer)
	if len(errs) > 0 {
		return rcv, snd, fmt.Errorf("h3: udp buffers: %w", errors.Join(errs...))
	}
	return rcv, snd, nil
}
