package capture

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// accept returns the next connection on l, or fails after a few seconds.
func accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept on %s: %v", l.Addr(), r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		l.Close()
		<-ch
		t.Fatalf("no connection on %s", l.Addr())
		return nil
	}
}

// echoOnce echoes what it reads on one connection of l until EOF.
func echoOnce(t *testing.T, l net.Listener) <-chan net.Addr {
	t.Helper()
	peer := make(chan net.Addr, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			close(peer)
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr()
		io.Copy(c, c)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return peer
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func ipOf(a net.Addr) netip.Addr { return apOf(a).Addr() }

func apOf(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func TestInstallRemove(t *testing.T) {
	tp := capturetest.NewPair(t)
	for i := 0; i < 2; i++ { // idempotent
		if err := Install(tp.Pod); err != nil {
			t.Fatalf("Install: %v", err)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(tp.Pod.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		got[ch.Name] = len(rules)
	}
	want := map[string]int{ChainPrerouting: 8, ChainOutput: 1, ChainNATOutput: 4}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("chains of table %s: rule counts (-want +got):\n%s", TableName, diff)
	}
	if rule, route, err := PolicyRouteInstalled(tp.Pod); err != nil || !rule || !route {
		t.Errorf("PolicyRouteInstalled = %v, %v, %v, want true, true, nil", rule, route, err)
	}
	// Exactly one policy rule, however often Install ran.
	rules, err := capturetest.Handle(t, tp.Pod).RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rules {
		if r.Table == RouteTable {
			n++
		}
	}
	if n != 1 {
		t.Errorf("policy rules for table %d = %d, want 1", RouteTable, n)
	}

	for i := 0; i < 2; i++ { // idempotent
		if err := Remove(tp.Pod); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	if ok, err := Installed(tp.Pod); err != nil || ok {
		t.Errorf("Installed after Remove = %v, %v, want false, nil", ok, err)
	}
	if rule, route, err := PolicyRouteInstalled(tp.Pod); err != nil || rule || route {
		t.Errorf("PolicyRouteInstalled after Remove = %v, %v, %v, want false, false, nil", rule, route, err)
	}
	// The server netns was never touched.
	if ok, err := Installed(tp.Server); err != nil || ok {
		t.Errorf("Installed(server) = %v, %v, want false, nil", ok, err)
	}
}

func TestRedirection(t *testing.T) {
	tp := capturetest.NewPair(t)
	if err := Install(tp.Pod); err != nil {
		t.Fatalf("Install: %v", err)
	}
	t.Cleanup(func() {
		if err := Remove(tp.Pod); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	outL, err := Listen(tp.Pod, netip.MustParseAddrPort("127.0.0.1:15001"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer outL.Close()
	inL, err := Listen(tp.Pod, netip.MustParseAddrPort("0.0.0.0:15006"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer inL.Close()
	hbL, err := Listen(tp.Pod, netip.MustParseAddrPort("0.0.0.0:15008"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer hbL.Close()
	podDialer := &Dialer{Netns: tp.Pod, Timeout: 2 * time.Second}

	t.Run("outbound is redirected to 15001 with its original destination", func(t *testing.T) {
		srv := capturetest.ListenIn(t, tp.Server, "198.18.200.2:80")
		peer := echoOnce(t, srv)
		app, err := capturetest.DialIn(tp.Pod, "198.18.200.2:80", 2*time.Second)
		if err != nil {
			t.Fatalf("app dial: %v", err)
		}
		defer app.Close()
		zc := accept(t, outL)
		od, err := OriginalDst(zc)
		if err != nil {
			t.Fatal(err)
		}
		if want := netip.MustParseAddrPort("198.18.200.2:80"); od != want {
			t.Errorf("OriginalDst = %v, want %v", od, want)
		}
		if got := ipOf(zc.RemoteAddr()); got != tp.PodIP {
			t.Errorf("redirected connection from %v, want the pod's %v", got, tp.PodIP)
		}
		// ztunnel's own connection (SO_MARK 0x539), from the pod's address,
		// is not captured and reaches the server.
		up, err := podDialer.Dial(context.Background(), tp.PodIP, od, false)
		if err != nil {
			t.Fatalf("ztunnel dial: %v", err)
		}
		defer up.Close()
		roundTrip(t, up, "outbound")
		if got := ipOf(<-peer); got != tp.PodIP {
			t.Errorf("server sees %v, want %v", got, tp.PodIP)
		}
	})

	t.Run("inbound plaintext is TPROXY'd to 15006 and reaches the app from the client's address", func(t *testing.T) {
		appL := capturetest.ListenIn(t, tp.Pod, "0.0.0.0:8080")
		peer := echoOnce(t, appL)
		client, err := capturetest.DialIn(tp.Server, "198.18.200.1:8080", 2*time.Second)
		if err != nil {
			t.Fatalf("client dial: %v", err)
		}
		defer client.Close()
		zc := accept(t, inL)
		if got, want := apOf(zc.LocalAddr()), netip.MustParseAddrPort("198.18.200.1:8080"); got != want {
			t.Errorf("TPROXY'd connection to %v, want %v", got, want)
		}
		if got := ipOf(zc.RemoteAddr()); got != tp.ServerIP {
			t.Errorf("TPROXY'd connection from %v, want %v", got, tp.ServerIP)
		}
		// ztunnel dials the app from the client's own address.
		up, err := podDialer.Dial(context.Background(), tp.ServerIP, netip.MustParseAddrPort("198.18.200.1:8080"), true)
		if err != nil {
			t.Fatalf("ztunnel transparent dial: %v", err)
		}
		defer up.Close()
		roundTrip(t, up, "inbound") // the app's replies come back to ztunnel
		if got := ipOf(<-peer); got != tp.ServerIP {
			t.Errorf("app sees %v, want the client's %v", got, tp.ServerIP)
		}
	})

	t.Run("HBONE is TPROXY'd to 15008", func(t *testing.T) {
		client, err := capturetest.DialIn(tp.Server, "198.18.200.1:15008", 2*time.Second)
		if err != nil {
			t.Fatalf("client dial: %v", err)
		}
		defer client.Close()
		zc := accept(t, hbL)
		if got := ipOf(zc.RemoteAddr()); got != tp.ServerIP {
			t.Errorf("HBONE connection from %v, want %v", got, tp.ServerIP)
		}
	})

	t.Run("capture fails closed without listeners", func(t *testing.T) {
		srv := capturetest.ListenIn(t, tp.Server, "198.18.200.2:81")
		appL := capturetest.ListenIn(t, tp.Pod, "0.0.0.0:8081")
		outL.Close()
		inL.Close()
		if c, err := capturetest.DialIn(tp.Pod, "198.18.200.2:81", time.Second); err == nil {
			c.Close()
			t.Errorf("outbound without ztunnel connected; want it refused")
		}
		if c, err := capturetest.DialIn(tp.Server, "198.18.200.1:8081", time.Second); err == nil {
			c.Close()
			t.Errorf("inbound without ztunnel connected; want it dropped")
		}
		// Nothing reached either application.
		for _, l := range []net.Listener{srv, appL} {
			l.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
			if c, err := l.Accept(); err == nil {
				c.Close()
				t.Errorf("%s accepted a connection that bypassed capture", l.Addr())
			} else if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("accept on %s: %v", l.Addr(), err)
			}
		}
	})

	t.Run("after Remove traffic is plain", func(t *testing.T) {
		if err := Remove(tp.Pod); err != nil {
			t.Fatal(err)
		}
		srv := capturetest.ListenIn(t, tp.Server, "198.18.200.2:82")
		peer := echoOnce(t, srv)
		c, err := capturetest.DialIn(tp.Pod, "198.18.200.2:82", 2*time.Second)
		if err != nil {
			t.Fatalf("dial after Remove: %v", err)
		}
		defer c.Close()
		roundTrip(t, c, "plain")
		if got := ipOf(<-peer); got != tp.PodIP {
			t.Errorf("server sees %v, want %v", got, tp.PodIP)
		}
	})
}

func TestListenNamespaces(t *testing.T) {
	tp := capturetest.NewPair(t)
	// A listener in the pod netns is not reachable from the server netns
	// through loopback, and vice versa: each namespace has its own.
	l, err := Listen(tp.Pod, netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c, err := capturetest.DialIn(tp.Server, l.Addr().String(), 500*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("dial from the server netns reached the pod's loopback listener")
	}
	c, err := capturetest.DialIn(tp.Pod, l.Addr().String(), time.Second)
	if err != nil {
		t.Fatalf("dial in the pod netns: %v", err)
	}
	c.Close()
	accept(t, l)
	// The thread that ran Do is back in the test's namespace.
	var ns netns.NsHandle
	if err := Do(tp.Pod, func() (err error) { ns, err = netns.Get(); return err }); err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if self.Equal(ns) {
		t.Errorf("Do did not enter the pod netns")
	}
}
