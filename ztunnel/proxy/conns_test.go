package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// TestConnections: while a connection is open through two proxies (HBONE
// over TCP), the source lists it outbound and the destination inbound,
// with istioctl's columns; once it ends, neither lists it.
func TestConnections(t *testing.T) {
	m := newQUICMesh(t, true)
	l, err := net.Listen("tcp", netip.AddrPortFrom(m.Client, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: m.Client.AsSlice()}, Timeout: 5 * time.Second}
	client, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Src.Outbound(ctx, c, m.Store.WorkloadByAddr(m.Client), m.App, "", nil)
		c.Close()
	}()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 4)); err != nil {
		t.Fatalf("echo: %v", err)
	}

	// The destination sees the source ztunnel's connection from the
	// client's address, on an ephemeral port.
	ignorePort := cmp.Transformer("addr", func(c Connection) Connection {
		if a, err := netip.ParseAddrPort(c.Remote); err == nil && c.Direction == "Inbound" {
			c.Remote = a.Addr().String() + ":*"
		}
		return c
	})
	ignoreStart := cmpopts.IgnoreFields(Connection{}, "Start")
	hboneAt := netip.AddrPortFrom(m.Echo, hbone.Port).String()
	for _, tc := range []struct {
		name string
		p    *Proxy
		want []Connection
	}{
		{"source", m.Src, []Connection{{Workload: "client.demo", Direction: "Outbound", Local: c.RemoteAddr().String(), Remote: hboneAt, RemoteTarget: m.App.String(), Protocol: "HBONE"}}},
		{"destination", m.Dst, []Connection{{Workload: "echo.demo", Direction: "Inbound", Local: m.App.String(), Remote: m.Client.String() + ":*", Protocol: "HBONE"}}},
	} {
		if diff := cmp.Diff(tc.want, tc.p.Connections(), ignoreStart, ignorePort); diff != "" {
			t.Errorf("%s: Connections() while open: (-want +got)\n%s", tc.name, diff)
		}
		for _, got := range tc.p.Connections() {
			if time.Since(got.Start) > 10*time.Second || got.Start.After(time.Now()) {
				t.Errorf("%s: start %v is not the connection's", tc.name, got.Start)
			}
		}
	}

	client.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(client); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := m.Src.Connections(); len(got) != 0 {
		t.Errorf("source: Connections() after the end = %v, want none", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(m.Dst.Connections()) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := m.Dst.Connections(); len(got) != 0 {
		t.Errorf("destination: Connections() after the end = %v, want none", got)
	}
}

// TestConnectionsFailedNotListed: a connection that fails (nothing
// listens at the target) is never left listed.
func TestConnectionsFailedNotListed(t *testing.T) {
	m := newQUICMesh(t, true)
	target := netip.AddrPortFrom(m.Echo, 9) // nothing listens
	_, _ = m.roundTrip(t, target, "x")      // fails at the destination's dial
	if got := m.Src.Connections(); len(got) != 0 {
		t.Errorf("source: Connections() = %v, want none", got)
	}
	if got := m.Dst.Connections(); len(got) != 0 {
		t.Errorf("destination: Connections() = %v, want none", got)
	}
}

// BenchmarkConnTable is the data path's cost of listing connections: one
// add at open and one remove at finish per connection, from parallel
// goroutines.
func BenchmarkConnTable(b *testing.B) {
	var p Proxy
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := p.newResult("outbound", "source", netip.MustParseAddrPort("10.0.0.1:40000"))
		r.rec.SrcWorkload, r.rec.SrcNamespace = "client", "demo"
		r.setDestinationAddr(netip.MustParseAddrPort("10.0.0.2:15008"), netip.MustParseAddrPort("10.0.0.2:8080"))
		r.setTransport(TransportTCP)
		for pb.Next() {
			p.live.add(r)
			p.live.remove(r)
		}
	})
}
