package capture

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// Do runs f on an OS thread that has entered the network namespace ns, and
// returns f's error. The thread returns to its own namespace afterwards; if
// it cannot, the thread is discarded rather than reused. Sockets f creates
// stay in ns.
func Do(ns *os.File, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("capture: current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(ns.Fd())); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("capture: entering netns %s: %w", ns.Name(), err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- fmt.Errorf("capture: leaving netns %s: %w", ns.Name(), err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Control returns a net.Dialer / net.ListenConfig Control function that
// sets SO_MARK Mark, and IP_TRANSPARENT when transparent is true (needed
// to receive TPROXY'd connections and to bind a non-local address).
func Control(transparent bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark); serr != nil {
				serr = fmt.Errorf("SO_MARK: %w", serr)
				return
			}
			if transparent {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
					serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// BindNoPort returns control (nil: none) followed by
// hbone.BindAddressNoPort, for a dialer that binds a local address with
// port 0.
func BindNoPort(control func(network, address string, c syscall.RawConn) error) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if control != nil {
			if err := control(network, address, c); err != nil {
				return err
			}
		}
		return hbone.BindAddressNoPort(network, address, c)
	}
}

// Listen opens a TCP listener on addr (an IP literal) inside ns, with
// SO_MARK Mark and, if transparent, IP_TRANSPARENT.
func Listen(ns *os.File, addr netip.AddrPort, transparent bool) (net.Listener, error) {
	var l net.Listener
	err := Do(ns, func() error {
		lc := net.ListenConfig{Control: Control(transparent)}
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture: listen on %s: %w", addr, err)
	}
	return l, nil
}

// Dialer opens TCP connections from inside a network namespace, with
// SO_MARK Mark so that capture lets them through.
type Dialer struct {
	// Netns is the namespace; required.
	Netns *os.File
	// Timeout bounds a connect; default 10s.
	Timeout time.Duration
}

// Dial connects to to. A valid from binds the local address (port 0: any,
// picked at connect with IP_BIND_ADDRESS_NO_PORT); transparent sets
// IP_TRANSPARENT, so from may be an address that is not the pod's own (the
// client's, for an inbound connection).
func (d *Dialer) Dial(ctx context.Context, from netip.Addr, to netip.AddrPort, transparent bool) (net.Conn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	nd := net.Dialer{Timeout: timeout, Control: Control(transparent)}
	if from.IsValid() {
		nd.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		nd.Control = BindNoPort(nd.Control)
	}
	var c net.Conn
	err := Do(d.Netns, func() error {
		var err error
		c, err = nd.DialContext(ctx, "tcp", to.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// OriginalDst returns the destination a redirected connection was
// addressed to before nat OUTPUT sent it to ztunnel (SO_ORIGINAL_DST).
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("capture: %T has no socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: %w", err)
	}
	var (
		ap   netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		// SO_ORIGINAL_DST (80) at SOL_IP returns a sockaddr_in.
		var mreq *unix.IPv6Mreq
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if serr != nil {
			return
		}
		raw := mreq.Multiaddr // struct sockaddr_in: family(2) port(2, big endian) addr(4)
		port := uint16(raw[2])<<8 | uint16(raw[3])
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{raw[4], raw[5], raw[6], raw[7]}), port)
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: SO_ORIGINAL_DST: %w", serr)
	}
	return ap, nil
}
