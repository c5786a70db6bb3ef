package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
)

// netnsCookie is SO_NETNS_COOKIE of a socket: the identity of the network
// namespace the socket was created in.
func netnsCookie(t *testing.T, sc syscall.Conn) uint64 {
	t.Helper()
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("SO_NETNS_COOKIE: %v", serr)
	}
	return cookie
}

// threadNetns returns, for every thread of this process, the network
// namespace it is in (readlink of /proc/self/task/TID/ns/net).
func threadNetns(t *testing.T) map[string]string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, task := range tasks {
		ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // the thread exited
		}
		out[task.Name()] = ns
	}
	return out
}

// threadsIn returns the threads of this process in namespace ns (a
// readlink of ns/net), waiting up to a second for threads that are being
// discarded to exit.
func threadsIn(t *testing.T, ns string) []string {
	t.Helper()
	var in []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		in = in[:0]
		for tid, n := range threadNetns(t) {
			if n == ns {
				in = append(in, tid)
			}
		}
		if len(in) == 0 || time.Now().After(deadline) {
			return in
		}
	}
}

// nsLink is ns's namespace as /proc/PID/task/TID/ns/net names it.
func nsLink(t *testing.T, ns *os.File) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// The main goroutine stays on the main thread (init functions run there),
// so that no dial runs on it: the runtime cannot discard the main thread,
// it parks it instead, and /proc/self/ns/net (TestDialerBindsWithoutPort)
// names the main thread's namespace.
func init() { runtime.LockOSThread() }

// TestDialerSocketInPodNetns: the Dialer's socket is created in the pod's
// namespace (its SO_NETNS_COOKIE is that of a socket opened there, not the
// test's), with and without a bound address and IP_TRANSPARENT, and every
// thread of the process is back in the test's namespace afterwards.
func TestDialerSocketInPodNetns(t *testing.T) {
	tp := capturetest.NewPair(t)
	l := capturetest.ListenIn(t, tp.Pod, tp.PodIP.String()+":0")
	go closeAccepted(l)
	podCookie := netnsCookie(t, l.(*net.TCPListener))
	hostL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostCookie := netnsCookie(t, hostL.(*net.TCPListener))
	hostL.Close()
	if podCookie == hostCookie {
		t.Fatalf("pod and test namespaces have the same cookie %d", podCookie)
	}
	to := l.Addr().(*net.TCPAddr).AddrPort()
	d := Dialer{Netns: tp.Pod, Timeout: 2 * time.Second}
	for _, tc := range []struct {
		name        string
		from        netip.Addr
		transparent bool
	}{
		{name: "no local address"},
		{name: "from the pod's address", from: tp.PodIP},
		{name: "from the pod's address, transparent", from: tp.PodIP, transparent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				c, err := d.Dial(context.Background(), tc.from, to, tc.transparent)
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				got := netnsCookie(t, c.(*net.TCPConn))
				c.Close()
				if got != podCookie {
					t.Fatalf("Dial's socket is in netns cookie %d, want the pod's %d (test's: %d)", got, podCookie, hostCookie)
				}
			}
		})
	}
	if in := threadsIn(t, nsLink(t, tp.Pod)); len(in) > 0 {
		t.Errorf("threads %v are still in the pod's namespace after Dial returned", in)
	}
}

// TestDialerNamespaceErrors: a Dialer that cannot enter the namespace
// fails without a connection; one whose thread cannot return to the
// test's namespace fails before connecting, and that thread is discarded,
// never reused (no thread is left in the pod's namespace).
func TestDialerNamespaceErrors(t *testing.T) {
	tp := capturetest.NewPair(t)
	l := capturetest.ListenIn(t, tp.Pod, tp.PodIP.String()+":0")
	to := l.Addr().(*net.TCPAddr).AddrPort()

	notNS, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notNS.Close()
	d := Dialer{Netns: notNS, Timeout: time.Second}
	if c, err := d.Dial(context.Background(), netip.Addr{}, to, false); err == nil || !strings.Contains(err.Error(), "entering netns") {
		if c != nil {
			c.Close()
		}
		t.Errorf("Dial into %s = %v, want an error entering the netns", os.DevNull, err)
	}

	// ztunnel's own namespace cannot be re-entered: setns to a file that
	// is not a namespace fails.
	orig := hostNetns
	hostNetns = func() (netns.NsHandle, error) { return netns.NsHandle(notNS.Fd()), nil }
	d = Dialer{Netns: tp.Pod, Timeout: time.Second}
	c, err := d.Dial(context.Background(), netip.Addr{}, to, false)
	hostNetns = orig
	if err == nil || !strings.Contains(err.Error(), "leaving netns") {
		if c != nil {
			c.Close()
		}
		t.Errorf("Dial whose thread cannot leave the pod's netns = %v, want an error leaving it", err)
	}
	// Nothing connected: the socket was closed before connect.
	l.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := l.Accept(); err == nil {
		c.Close()
		t.Errorf("the listener got a connection from the failed Dial")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("accept: %v", err)
	}
	if in := threadsIn(t, nsLink(t, tp.Pod)); len(in) > 0 {
		t.Errorf("threads %v stayed in the pod's namespace: a thread that could not leave it was reused", in)
	}
	// The Dialer works again.
	c, err = d.Dial(context.Background(), netip.Addr{}, to, false)
	if err != nil {
		t.Fatalf("Dial after the failures: %v", err)
	}
	c.Close()
}

// closeAccepted accepts on l and closes every connection at once, until l
// is closed.
func closeAccepted(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}
