package capture

import (
	"context"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDialerBindsWithoutPort: a Dialer that binds a local address sets
// IP_BIND_ADDRESS_NO_PORT (the port is picked at connect, not searched
// for among TIME_WAIT sockets at bind) next to SO_MARK.
func TestDialerBindsWithoutPort(t *testing.T) {
	ns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := Dialer{Netns: ns}
	from := netip.MustParseAddr("127.0.0.1")
	c, err := d.Dial(context.Background(), from, l.Addr().(*net.TCPAddr).AddrPort(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var noPort, mark int
	var errs [2]error
	rc.Control(func(fd uintptr) {
		noPort, errs[0] = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT)
		mark, errs[1] = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
	})
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if noPort != 1 || mark != Mark {
		t.Errorf("IP_BIND_ADDRESS_NO_PORT, SO_MARK = %d, %#x; want 1, %#x", noPort, mark, Mark)
	}
}
