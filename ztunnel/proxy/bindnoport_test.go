package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// bindNoPort reads IP_BIND_ADDRESS_NO_PORT from c's socket.
func bindNoPort(t testing.TB, c net.Conn) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// closer accepts and closes every connection on l until l is closed.
func closer(t testing.TB, l net.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
}

// TestDialDirectBindsWithoutPort: dialing an application from a client's
// address binds that address with IP_BIND_ADDRESS_NO_PORT, so that the
// port is picked at connect and not searched for among TIME_WAIT sockets.
func TestDialDirectBindsWithoutPort(t *testing.T) {
	controlled := false
	f := newInboundFixture(t, Config{Control: func(network, address string, c syscall.RawConn) error {
		controlled = true
		return nil
	}})
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	closer(t, l)
	from := f.Pod.Next()
	c, err := f.Proxy.dialDirect(context.Background(), f.Pod, from, l.Addr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := addrPort(c.LocalAddr()).Addr(); got != from {
		t.Errorf("dialed from %v, want %v", got, from)
	}
	if v := bindNoPort(t, c); v != 1 {
		t.Errorf("IP_BIND_ADDRESS_NO_PORT = %d, want 1", v)
	}
	if !controlled {
		t.Error("Config.Control was not applied")
	}
}

// BenchmarkDialFromBoundAddress dials from a bound loopback address on
// which 3,000 sockets are in TIME_WAIT (as after a burst of short
// connections), with IP_BIND_ADDRESS_NO_PORT (dialDirect) and without (a
// plain bind before connect). The ratio of the two is the point.
func BenchmarkDialFromBoundAddress(b *testing.B) {
	const timeWait = 3000
	base := testAddrBase(b)
	from := netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1})
	to := netip.AddrFrom4([4]byte{base[0], base[1], base[2], 2})
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: to.AsSlice()})
	if err != nil {
		b.Fatal(err)
	}
	closer(b, l)
	target := l.Addr().(*net.TCPAddr).AddrPort()
	// TIME_WAIT is held by the side that closes first: the client here. The
	// server closes as soon as it accepts; the client waits for that close
	// (EOF) and then closes, so its socket ends in TIME_WAIT on from.
	plain := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
	for range timeWait {
		c, err := plain.Dial("tcp", target.String())
		if err != nil {
			b.Fatalf("creating TIME_WAIT sockets: %v", err)
		}
		c.Read(make([]byte, 1))
		c.Close()
	}
	f := &Proxy{cfg: Config{ConnectTimeout: 0}}
	dial := map[string]func() (net.Conn, error){
		"bind-no-port": func() (net.Conn, error) {
			return f.dialDirect(context.Background(), from, from, target)
		},
		"bind-before-connect": func() (net.Conn, error) { return plain.Dial("tcp", target.String()) },
	}
	for _, name := range []string{"bind-no-port", "bind-before-connect"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				c, err := dial[name]()
				if err != nil {
					b.Fatal(err)
				}
				// A reset leaves no TIME_WAIT: the count stays as set up.
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		})
	}
}
