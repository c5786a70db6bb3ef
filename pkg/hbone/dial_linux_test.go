package hbone

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDefaultDialBindsWithoutPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := defaultDial(context.Background(), "tcp", "127.0.0.1:0", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) {
		v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
	})
	if serr != nil || v != 1 {
		t.Errorf("IP_BIND_ADDRESS_NO_PORT on a pool dial from a bound address = %d, %v; want 1", v, serr)
	}
}
