package netns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rootLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// exchange has a server in dst's namespace accept one connection, read a
// line, and answer with the address it saw; the client dials from src's
// namespace. It returns what the server saw.
func exchange(t *testing.T, src, dst *Pod, port int) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	l, err := dst.Listen("tcp", netip.AddrPortFrom(dst.IP, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := make(chan netip.Addr, 1)
	go func() {
		defer close(seen)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 6)
		if _, err := io.ReadFull(c, line); err != nil {
			return
		}
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		fmt.Fprintf(c, "%s%s", line, remote)
		seen <- remote
	}()
	c, err := src.Dial(ctx, "tcp", netip.AddrPortFrom(dst.IP, uint16(port)).String())
	if err != nil {
		t.Fatalf("dial %s → %s: %v", src.PodName, dst.IP, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello ")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello " + src.IP.String(); string(got) != want {
		t.Errorf("%s → %s: answer %q, want %q", src.PodName, dst.IP, got, want)
	}
	return <-seen
}

func TestTopology(t *testing.T) {
	before := rootLinks(t)
	topo := New(t, Options{Nodes: 2, Pods: 3})

	t.Run("connectivity", func(t *testing.T) {
		var pods []*Pod
		for _, n := range topo.Nodes {
			for _, name := range []string{"p1", "p2", "p3"} {
				pods = append(pods, n.Pod(name))
			}
		}
		port := 9000
		for _, src := range pods {
			for _, dst := range pods {
				if src == dst {
					continue
				}
				port++
				if got := exchange(t, src, dst, port); got != src.IP {
					t.Errorf("server in %s saw %s, want %s", dst.Name, got, src.IP)
				}
			}
		}
	})

	t.Run("no route out", func(t *testing.T) {
		all := []NS{topo.Underlay}
		for _, n := range topo.Nodes {
			all = append(all, n.NS)
			for _, p := range n.Pods() {
				all = append(all, p.NS)
			}
		}
		for _, ns := range all {
			h, err := ns.Handle()
			if err != nil {
				t.Fatal(err)
			}
			routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
			h.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range routes {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() {
					t.Errorf("%s has a default route: %v", ns.Name, r)
					continue
				}
				p, _ := netip.AddrFromSlice(r.Dst.IP)
				if !netip.MustParsePrefix("198.18.0.0/15").Contains(p.Unmap()) {
					t.Errorf("%s routes %s, outside 198.18.0.0/15", ns.Name, r.Dst)
				}
			}
		}
	})

	t.Run("VIPs are not routed past the node", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		c, err := topo.Node(1).Pod("p1").Dial(ctx, "tcp", netip.AddrPortFrom(VIP(1), 80).String())
		if err == nil {
			c.Close()
			t.Fatal("dialing a VIP without a proxy succeeded")
		}
	})

	t.Run("only a pod routed to the underlay reaches it", func(t *testing.T) {
		l, err := topo.Underlay.Listen("tcp", netip.AddrPortFrom(UnderlayIP, 15012).String())
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan netip.Addr, 1)
		go func() {
			defer close(accepted)
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			c.Close()
		}()
		dial := func(p *Pod) error {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			c, err := p.Dial(ctx, "tcp", netip.AddrPortFrom(UnderlayIP, 15012).String())
			if err == nil {
				c.Close()
			}
			return err
		}
		if err := dial(topo.Node(1).Pod("p3")); err == nil {
			t.Fatal("a pod without RouteUnderlay reached the underlay")
		}
		p := topo.Node(2).Pod("p3")
		if err := p.RouteUnderlay(); err != nil {
			t.Fatal(err)
		}
		if err := dial(p); err != nil {
			t.Fatalf("after RouteUnderlay: %v", err)
		}
		if got := <-accepted; got != p.IP {
			t.Errorf("the underlay saw %s, want the pod's own address %s", got, p.IP)
		}
	})

	t.Run("exec in a pod", func(t *testing.T) {
		p := topo.Node(2).Pod("p2")
		var out bytes.Buffer
		cmd := exec.Command("cat", "/proc/net/fib_trie")
		cmd.Stdout = &out
		if err := p.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), p.IP.String()) {
			t.Errorf("a process started in %s does not see its address %s:\n%s", p.Name, p.IP, out.String())
		}
	})

	t.Run("remove a pod", func(t *testing.T) {
		n := topo.Node(1)
		p, err := n.AddPod("extra")
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Remove(); err != nil {
			t.Fatal(err)
		}
		if left, _ := List(p.Name); len(left) > 0 {
			t.Errorf("namespaces left: %v", left)
		}
		h, err := n.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.LinkByName(p.HostLink); err == nil {
			t.Errorf("veth %s left in %s", p.HostLink, n.Name)
		}
	})

	t.Run("close leaves nothing", func(t *testing.T) {
		if err := topo.Close(); err != nil {
			t.Fatal(err)
		}
		if left, err := List(topo.Prefix); err != nil || len(left) > 0 {
			t.Errorf("List(%q) = %v, %v; want none", topo.Prefix, left, err)
		}
		if diff := cmp.Diff(before, rootLinks(t)); diff != "" {
			t.Errorf("links of the root namespace changed (-before +after):\n%s", diff)
		}
	})
}

func TestRemoveLeftovers(t *testing.T) {
	RequireRoot(t)
	// A pid that no longer runs.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	a, err := create(fmt.Sprintf("mt%d-zzzzz-a", dead))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remove(a.Name) })
	b, err := create(fmt.Sprintf("mt%d-zzzzz-b", dead))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remove(b.Name) })
	ah, err := a.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer ah.Close()
	if _, _, err := addVeth(ah, "x0", nil, b, "x1", netip.MustParsePrefix("198.18.200.1/24")); err != nil {
		t.Fatal(err)
	}
	mine, err := create(fmt.Sprintf("mt%d-zzzzz-mine", 1)) // pid 1 runs: not a leftover
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remove(mine.Name) })

	removed, err := RemoveLeftovers()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if diff := cmp.Diff([]string{a.Name, b.Name}, removed); diff != "" {
		t.Errorf("RemoveLeftovers() (-want +got):\n%s", diff)
	}
	if left, _ := List(fmt.Sprintf("mt%d-", dead)); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
	if left, _ := List(mine.Name); len(left) != 1 {
		t.Errorf("the namespace of a running process was removed")
	}
}

func TestCapture(t *testing.T) {
	topo := New(t, Options{Nodes: 2, Pods: 1})
	src, dst := topo.Node(1).Pod("p1"), topo.Node(2).Pod("p1")
	c, err := topo.Underlay.Capture(topo.Node(2).UnderlayLink, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("MARKER-" + randomTag())

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	l, err := dst.Listen("tcp", netip.AddrPortFrom(dst.IP, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		defer close(got)
		s, err := l.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		s.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(s)
		got <- b
	}()
	conn, err := src.Dial(ctx, "tcp", netip.AddrPortFrom(dst.IP, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(marker)
	conn.Close()
	if b := <-got; !bytes.Equal(b, marker) {
		t.Fatalf("server read %q, want %q", b, marker)
	}
	frames := c.Stop()
	if Contains(frames, marker) == 0 {
		t.Fatalf("the marker sent in plain text is in none of the %d frames captured", len(frames))
	}
	var found bool
	for _, s := range Segments(frames) {
		if bytes.Contains(s.Payload, marker) {
			found = true
			if s.Src.Addr() != src.IP || s.Dst != netip.AddrPortFrom(dst.IP, 7000) {
				t.Errorf("marker in %v, want %s > %s:7000", s, src.IP, dst.IP)
			}
		}
	}
	if !found {
		t.Error("no decoded TCP segment carries the marker")
	}
}
