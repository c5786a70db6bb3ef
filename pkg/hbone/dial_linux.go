package hbone

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// BindAddressNoPort is a net.Dialer Control that sets
// IP_BIND_ADDRESS_NO_PORT, for a dialer that binds a local address with
// port 0: Linux then picks the port at connect, unique for the 4-tuple,
// instead of at bind, where it must search for a port that no socket of
// the address holds, TIME_WAIT ones included (milliseconds per dial with
// tens of thousands of them, then EADDRINUSE). The pool's default dialer
// uses it; so do ztunnel's dials from a pod's or client's address.
func BindAddressNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("IP_BIND_ADDRESS_NO_PORT: %w", serr)
	}
	return nil
}
