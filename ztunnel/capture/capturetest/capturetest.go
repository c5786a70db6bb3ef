// Package capturetest builds throwaway network namespaces for tests of
// in-pod capture: a "pod" netns joined by a veth to a "server" netns, in
// 198.18.200.0/24, with no route anywhere else. Namespaces are named with a
// unique prefix, removed in t.Cleanup (veths first), and leftovers of
// earlier runs are removed first. Root is required: without it tests skip,
// or fail when CI=true.
package capturetest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testPrefix names every namespace and link the tests create.
const testPrefix = "zcap-"

// RequireRoot skips the test without root, or fails it in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("capture tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true: not skipping")
	}
	t.Skip("capture tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces; skipping")
}

// removeLeftovers deletes namespaces of earlier runs that did not clean
// up: those whose creating process (named in them) is gone. Tests of other
// packages running at the same time keep theirs.
func removeLeftovers(t testing.TB) {
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), testPrefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		if err := netns.DeleteNamed(e.Name()); err != nil {
			t.Logf("removing leftover netns %s: %v", e.Name(), err)
		}
	}
}

// uniqueName is testPrefix, this process's id and a random suffix.
func uniqueName(t testing.TB) string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("%s%d-%s", testPrefix, os.Getpid(), hex.EncodeToString(b))
}

// NewNetns creates a named network namespace with lo up, removed at the end
// of the test.
func NewNetns(t testing.TB, name string) *os.File {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			netns.Set(orig)
			errc <- err
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	f, err := os.Open(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})
	h := Handle(t, f)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return f
}

// Handle returns a netlink handle in ns, closed at the end of the test.
func Handle(t testing.TB, ns *os.File) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Pair is a pod netns joined by a veth to a server netns:
// pod 198.18.200.1/24 (eth0), server 198.18.200.2/24. No other route.
type Pair struct {
	Pod, Server     *os.File   // the namespaces, open
	PodIP, ServerIP netip.Addr // 198.18.200.1 and .2, on eth0 of each
	PodLink         string     // the veth's name in each namespace
}

func NewPair(t testing.TB) *Pair {
	t.Helper()
	RequireRoot(t)
	removeLeftovers(t)
	name := uniqueName(t)
	tp := &Pair{
		Pod:      NewNetns(t, name+"-pod"),
		Server:   NewNetns(t, name+"-srv"),
		PodIP:    netip.MustParseAddr("198.18.200.1"),
		ServerIP: netip.MustParseAddr("198.18.200.2"),
		PodLink:  "eth0",
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: tp.PodLink, Namespace: netlink.NsFd(int(tp.Pod.Fd()))},
		PeerName:      tp.PodLink,
		PeerNamespace: netlink.NsFd(int(tp.Server.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	hp, hs := Handle(t, tp.Pod), Handle(t, tp.Server)
	t.Cleanup(func() {
		// Veths before namespaces (cleanups run last-in first-out).
		if l, err := hp.LinkByName(tp.PodLink); err == nil {
			if err := hp.LinkDel(l); err != nil {
				t.Errorf("deleting veth: %v", err)
			}
		}
	})
	for _, s := range []struct {
		h    *netlink.Handle
		link string
		cidr string
	}{{hp, tp.PodLink, "198.18.200.1/24"}, {hs, tp.PodLink, "198.18.200.2/24"}} {
		l, err := s.h.LinkByName(s.link)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(s.cidr)
		if err := s.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := s.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return tp
}

// ListenIn opens a plain listener inside ns, as an unmodified application
// would.
func ListenIn(t testing.TB, ns *os.File, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := do(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// DialIn dials from inside ns, as an unmodified application would.
func DialIn(ns *os.File, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, timeout); return err })
	return c, err
}

// do runs f inside ns on a locked OS thread.
func do(ns *os.File, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(ns.Fd())); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leaving netns: %w", err) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
