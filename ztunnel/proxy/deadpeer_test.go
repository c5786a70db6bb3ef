package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/hbonetest"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// The tests of this file block the destination's HBONE port as a
// NetworkPolicy that drops packets would (a black hole: no FIN, no RST)
// with every limit at its default, and check what the source ztunnel's
// users see: the access log record, the metrics, and recovery.

// deadPeerFixture is a source proxy with default limits; demo/client (.1)
// connects to echo-0 (.10), whose ztunnel (a fake HBONE server that echoes)
// is reached through a black hole at its HBONE address.
type deadPeerFixture struct {
	Client, Echo netip.Addr
	Proxy        *Proxy
	Hole         *hbonetest.Blackhole
	Reg          *prometheus.Registry
	Hits         *LimitHits
	Recs         <-chan accesslog.Record
	store        *state.Store
	wg           sync.WaitGroup
}

func newDeadPeerFixture(t *testing.T) *deadPeerFixture {
	t.Helper()
	base := testAddrBase(t)
	ip := func(n byte) netip.Addr { return netip.AddrFrom4([4]byte{base[0], base[1], base[2], n}) }
	f := &deadPeerFixture{Client: ip(1), Echo: ip(10), Reg: prometheus.NewRegistry(), store: state.NewStore()}
	f.Hits = NewLimitHits(f.Reg)
	ca := identitytest.New(t, "cluster.local")
	echoZ := startFakeHBONE(t, ca, "echo", ca.ID("/ns/demo/sa/echo"), netip.AddrPortFrom(f.Echo, 0), make(chan connectInfo, 100))
	f.Hole = hbonetest.NewBlackhole(t, netip.AddrPortFrom(f.Echo, 0), echoZ.Addr)
	(&waypointMesh{Store: f.store}).apply(t,
		meshWorkload("client", "client", f.Client, nil, nil),
		meshWorkload("echo-0", "echo", f.Echo, nil, nil),
	)
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil), OnLimit: f.Hits.Hit})
	access := accesslog.New(slog.New(slog.DiscardHandler))
	recs, unsub := access.Subscribe(10)
	f.Recs = recs
	p, err := New(Config{
		Store: f.store, Pool: pool, Metrics: telemetry.NewMetrics(f.Reg), AccessLog: access, Limits: f.Hits,
		HBONEPort: f.Hole.Addr().Port(),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Proxy = p
	t.Cleanup(func() {
		p.Close()
		f.wg.Wait()
		pool.Close()
		unsub()
	})
	return f
}

// open connects demo/client to echo-0:80 through the proxy's outbound
// path; ready gets what the proxy's dial returned.
func (f *deadPeerFixture) open(t *testing.T) (client net.Conn, ready <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Client, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Client.AsSlice()}, Timeout: 5 * time.Second}
	client, err = d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w := f.store.WorkloadByAddr(f.Client)
	rc := make(chan error, 1)
	f.wg.Go(func() {
		defer server.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.Proxy.Outbound(ctx, server, w, netip.AddrPortFrom(f.Echo, 80), "", func(err error) error { rc <- err; return nil })
	})
	return client, rc
}

// echo checks that a connection gets through, and reads its record.
func (f *deadPeerFixture) echo(t *testing.T) {
	t.Helper()
	c, ready := f.open(t)
	waitReady(t, ready)
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(c); err != nil || string(got) != "hi" {
		t.Errorf("echo = %q, %v; want \"hi\", nil", got, err)
	}
	c.Close()
	if rec := nextRec(t, f.Recs); rec.Err != nil {
		t.Errorf("record of a connection that got through: error = %v, want nil", rec.Err)
	}
}

// connectFailures is istio_tcp_connections_closed_total{reporter="source",
// response_flags="CONNECT"}.
func (f *deadPeerFixture) connectFailures(t *testing.T) float64 {
	t.Helper()
	mfs, err := f.Reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != telemetry.ConnectionsClosedName {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				switch {
				case l.GetName() == "reporter" && l.GetValue() != telemetry.ReporterSource,
					l.GetName() == "response_flags" && l.GetValue() != telemetry.FlagConnect:
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestOutboundDeadPeer: with the default limits, a connection sent over a
// pooled HBONE connection whose peer's 15008 became a black hole fails in
// seconds (before the probe it waited for the 15 s response timeout, past
// the 10 s this test gives it), with response_flags CONNECT and the dead
// connection named in the record, counted in the metrics; once the port
// is open again, the next connection gets through on a new HBONE
// connection.
func TestOutboundDeadPeer(t *testing.T) {
	f := newDeadPeerFixture(t)
	f.echo(t)

	f.Hole.Block()
	_, ready := f.open(t)
	select {
	case err := <-ready:
		if !errors.Is(err, hbone.ErrConnectionDead) {
			t.Errorf("Outbound ready(%v), want hbone.ErrConnectionDead", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Outbound over a black hole neither connected nor failed in 10s")
	}
	rec := nextRec(t, f.Recs)
	if rec.ResponseFlags != telemetry.FlagConnect || !errors.Is(rec.Err, hbone.ErrConnectionDead) {
		t.Errorf("record = response_flags %q, error %v; want %q, hbone.ErrConnectionDead", rec.ResponseFlags, rec.Err, telemetry.FlagConnect)
	}
	if got := f.connectFailures(t); got != 1 {
		t.Errorf("%s{reporter=source,response_flags=CONNECT} = %v, want 1", telemetry.ConnectionsClosedName, got)
	}
	checkHits(t, f.Hits, hbone.LimitPingTimeout, 1)

	f.Hole.Unblock()
	f.echo(t)
	if got := f.Hole.Accepted(); got != 2 {
		t.Errorf("HBONE connections accepted = %d, want 2 (the dead one was not replaced)", got)
	}
}

// TestOutboundClientGone: a client that gives up while its connection
// still waits for the upstream is named in the record. A reset ends the
// dial at once; a close (FIN, maybe a half-close) lets the dial go on, and
// its failure says the client had closed. Before the watch, the record
// held the dial's error alone.
func TestOutboundClientGone(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reset     bool
		wantCause error // besides *ClientGoneError
	}{
		{name: "close", reset: false, wantCause: hbone.ErrConnectionDead},
		{name: "reset", reset: true, wantCause: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newDeadPeerFixture(t)
			f.echo(t)
			f.Hole.Block()
			client, ready := f.open(t)
			time.Sleep(100 * time.Millisecond) // the CONNECT is out
			if tc.reset {
				client.(*net.TCPConn).SetLinger(0)
			}
			client.Close()
			select {
			case <-ready:
			case <-time.After(10 * time.Second):
				t.Fatal("Outbound neither connected nor failed in 10s")
			}
			rec := nextRec(t, f.Recs)
			var gone *ClientGoneError
			if !errors.As(rec.Err, &gone) || gone.Reset != tc.reset || !errors.Is(rec.Err, tc.wantCause) {
				t.Errorf("record error = %v, want a ClientGoneError (reset %v) wrapping %v", rec.Err, tc.reset, tc.wantCause)
			}
			if rec.ResponseFlags != telemetry.FlagConnect {
				t.Errorf("record response_flags = %q, want %q", rec.ResponseFlags, telemetry.FlagConnect)
			}
			if rec.Err != nil && !strings.Contains(rec.Err.Error(), "before the upstream connected") {
				t.Errorf("record error %q does not say the client left first", rec.Err)
			}
			if got := f.connectFailures(t); got != 1 {
				t.Errorf("%s{reporter=source,response_flags=CONNECT} = %v, want 1", telemetry.ConnectionsClosedName, got)
			}
		})
	}
}
