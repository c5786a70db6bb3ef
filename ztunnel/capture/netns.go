package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
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
		host, err := hostNetns()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		if err := netns.Set(netns.NsHandle(ns.Fd())); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("capture: entering netns %s: %w", ns.Name(), err)
			return
		}
		ferr := f()
		if err := netns.Set(host); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- fmt.Errorf("capture: leaving netns %s: %w", ns.Name(), err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// hostNetns is the network namespace of ztunnel's own threads: opened
// once, on the first call, and kept open. Call it only from a locked
// thread that has not entered another namespace (a thread that is not
// locked is always in ztunnel's own namespace: Do and Dial unlock only
// threads that are back in it).
var hostNetns = sync.OnceValues(func() (netns.NsHandle, error) {
	h, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("capture: current netns: %w", err)
	}
	return h, nil
})

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
	// KeepAlive is net.Dialer's: zero enables Go's default TCP keepalive
	// (15 s), negative leaves keepalive alone, for a caller that sets its
	// own on the connection (four system calls fewer per dial).
	KeepAlive time.Duration
}

// Dial connects to to. A valid from binds the local address (port 0: any,
// picked at connect with IP_BIND_ADDRESS_NO_PORT); transparent sets
// IP_TRANSPARENT, so from may be an address that is not the pod's own (the
// client's, for an inbound connection).
//
// Only socket(2) depends on the thread's namespace: a socket keeps the
// namespace it was created in. So the dial runs on a goroutine of its own
// whose thread enters the pod's namespace, creates the socket, and leaves
// the namespace and unlocks the thread as soon as the socket exists (in
// the dialer's Control, before bind and connect); the connect and its wait
// run on any thread, as every other dial does.
func (d *Dialer) Dial(ctx context.Context, from netip.Addr, to netip.AddrPort, transparent bool) (net.Conn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	nd := net.Dialer{Timeout: timeout, KeepAlive: d.KeepAlive}
	control := Control(transparent)
	if from.IsValid() {
		nd.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		control = BindNoPort(control)
	}
	type dialed struct {
		c   net.Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		c, err := dialIn(ctx, d.Netns, &nd, control, to)
		ch <- dialed{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// dialIn dials to with nd, creating the socket inside ns and calling
// control on it. It locks the calling goroutine's thread, which must not be
// reused if it cannot return to ztunnel's namespace: the goroutine must end
// when dialIn returns (the thread is then discarded with it).
func dialIn(ctx context.Context, ns *os.File, nd *net.Dialer, control func(network, address string, c syscall.RawConn) error, to netip.AddrPort) (net.Conn, error) {
	runtime.LockOSThread()
	host, err := hostNetns()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	if err := netns.Set(netns.NsHandle(ns.Fd())); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("capture: entering netns %s: %w", ns.Name(), err)
	}
	t := nsThread{host: host, name: ns.Name(), inside: true}
	nd.Control = func(network, address string, c syscall.RawConn) error {
		// The socket was just created, on this thread: in ns only if the
		// thread has not left it yet.
		if !t.inside {
			return errSocketOutside
		}
		if err := t.leave(); err != nil {
			return err
		}
		return control(network, address, c)
	}
	c, err := nd.DialContext(ctx, "tcp", to.String())
	if lerr := t.leave(); lerr != nil {
		if c != nil {
			c.Close()
		}
		return nil, lerr
	}
	return c, err
}

// errSocketOutside: the dialer created a second socket after the thread
// had left the pod's namespace (it would not be in it).
var errSocketOutside = errors.New("capture: socket created outside the pod's netns")

// nsThread is a locked thread that has entered a pod's namespace.
type nsThread struct {
	host   netns.NsHandle
	name   string
	inside bool  // in the pod's namespace, locked
	err    error // leaving failed: the thread stays locked
}

// leave returns the thread to ztunnel's namespace and unlocks it, once;
// on failure the thread stays locked (it ends with its goroutine) and
// every call returns the error.
func (t *nsThread) leave() error {
	if !t.inside {
		return t.err
	}
	t.inside = false
	if err := netns.Set(t.host); err != nil {
		t.err = fmt.Errorf("capture: leaving netns %s: %w", t.name, err)
		return t.err
	}
	runtime.UnlockOSThread()
	return nil
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
