package hbone

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket that binds a
// local address before connect: Linux then picks the port at connect, per
// destination, instead of searching at bind for a port that no socket of
// the address holds (TIME_WAIT included), which grows slow and ends in
// EADDRINUSE after a connection storm.
func bindAddressNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
