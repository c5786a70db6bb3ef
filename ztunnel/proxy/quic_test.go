package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/h3"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// quicMesh is two proxies on loopback: the source ztunnel of client (.1)
// and the destination ztunnel of echo (.10), whose HBONE server listens on
// TCP .10:15008 and, unless noUDP, on UDP .10:15008 (HBONE over QUIC),
// with an echo application on .10:8080. The source dials in mode prefer.
type quicMesh struct {
	CA               *identitytest.CA
	Store            *state.Store
	Src, Dst         *Proxy
	Client, Echo     netip.Addr
	ClientID, EchoID spiffeid.ID
	DstRecs          <-chan accesslog.Record
	QUICPool         *h3.Pool
	HBONEPool        *hbone.Pool
	App              netip.AddrPort
	handshakeTimeout time.Duration
	tcpServer        *hbone.Server
	quicServer       *h3.Server
	quicSocket       net.PacketConn // the destination's UDP 15008; nil if noUDP
	closers          []func()
}

func newQUICMesh(t *testing.T, noUDP bool) *quicMesh {
	t.Helper()
	base := testAddrBase(t)
	m := &quicMesh{
		Client: netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1}),
		Echo:   netip.AddrFrom4([4]byte{base[0], base[1], base[2], 10}),
	}
	m.CA = identitytest.New(t, "cluster.local")
	m.ClientID, m.EchoID = m.CA.ID("/ns/demo/sa/client"), m.CA.ID("/ns/demo/sa/echo")
	m.Store = state.NewStore()
	addWorkload(t, m.Store, "client", "demo", "client", m.Client)
	addWorkload(t, m.Store, "echo", "demo", "echo", m.Echo)

	newProxy := func(q QUICConfig, pool *hbone.Pool) *Proxy {
		p, err := New(Config{
			Store: m.Store, Pool: pool, QUIC: q,
			Metrics:   telemetry.NewMetrics(prometheus.NewRegistry()),
			AccessLog: accesslog.New(slog.New(slog.DiscardHandler)),
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	m.HBONEPool = hbone.NewPool(hbone.PoolConfig{TLSConfig: m.CA.PoolTLS(t, nil)})
	m.QUICPool = h3.NewPool(h3.PoolConfig{TLSConfig: m.CA.PoolTLS(t, nil), HandshakeTimeout: 500 * time.Millisecond})
	m.Src = newProxy(QUICConfig{Mode: QUICPrefer, Pool: m.QUICPool, Registerer: prometheus.NewRegistry()}, m.HBONEPool)
	m.Dst = newProxy(QUICConfig{Mode: QUICOn, Registerer: prometheus.NewRegistry()}, hbone.NewPool(hbone.PoolConfig{TLSConfig: m.CA.PoolTLS(t, nil)}))
	recs, unsub := m.Dst.cfg.AccessLog.Subscribe(16)
	m.DstRecs = recs

	hboneAt := netip.AddrPortFrom(m.Echo, hbone.Port)
	l, err := net.Listen("tcp", hboneAt.String())
	if err != nil {
		t.Fatal(err)
	}
	m.tcpServer = &hbone.Server{TLSConfig: m.CA.ServerTLS(t, m.EchoID), Handler: m.Dst}
	tcpDone := make(chan error, 1)
	go func() { tcpDone <- m.tcpServer.Serve(l) }()
	quicDone := make(chan error, 1)
	m.quicServer = &h3.Server{TLSConfig: m.CA.ServerTLS(t, m.EchoID), Handler: m.Dst}
	if noUDP {
		quicDone <- nil
	} else {
		pc, err := h3.ListenUDP(hboneAt, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.quicSocket = pc
		go func() { quicDone <- m.quicServer.Serve(pc) }()
	}
	m.App = echoApp(t, netip.AddrPortFrom(m.Echo, 8080))
	t.Cleanup(func() {
		unsub()
		m.HBONEPool.Close()
		m.QUICPool.Close()
		m.tcpServer.Close()
		m.quicServer.Close()
		<-tcpDone
		<-quicDone
		m.Src.Close()
		m.Dst.Close()
	})
	return m
}

// echoApp is an application echoing with half-close at addr.
func echoApp(t *testing.T, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return addr
}

// roundTrip carries one client connection of the source workload to
// target through the source proxy and returns what came back.
func (m *quicMesh) roundTrip(t *testing.T, target netip.AddrPort, msg string) (string, error) {
	t.Helper()
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
		m.Src.Outbound(ctx, c, m.Store.WorkloadByAddr(m.Client), target, "", nil)
		c.Close()
	}()
	defer func() { <-done }()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, msg); err != nil {
		return "", err
	}
	client.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(client)
	return string(b), err
}

func count(t *testing.T, c prometheus.Counter) int {
	t.Helper()
	return int(testutil.ToFloat64(c))
}

// TestQUICTunnel: with the source in mode prefer and a destination that
// serves UDP 15008, the connection goes over QUIC end to end; the
// destination's access log record and both ends' transport metrics say so.
func TestQUICTunnel(t *testing.T) {
	m := newQUICMesh(t, false)
	msg := strings.Repeat("over quic ", 1000)
	got, err := m.roundTrip(t, m.App, msg)
	if err != nil || got != msg {
		t.Fatalf("roundTrip() = %d bytes, %v; want the %d bytes sent back", len(got), err, len(msg))
	}
	rec := <-m.DstRecs
	if rec.Transport != TransportQUIC || rec.Err != nil || rec.SrcIdentity != m.ClientID.String() || rec.DstIdentity != m.EchoID.String() {
		t.Errorf("destination record = transport %q, err %v, src.identity %q, dst.identity %q; want quic, nil, %v, %v",
			rec.Transport, rec.Err, rec.SrcIdentity, rec.DstIdentity, m.ClientID, m.EchoID)
	}
	want := map[string]int{"src outbound quic": 1, "src outbound tcp": 0, "dst inbound quic": 1, "dst inbound tcp": 0}
	got2 := map[string]int{
		"src outbound quic": count(t, m.Src.quic.metrics.tunnels.WithLabelValues("outbound", TransportQUIC)),
		"src outbound tcp":  count(t, m.Src.quic.metrics.tunnels.WithLabelValues("outbound", TransportTCP)),
		"dst inbound quic":  count(t, m.Dst.quic.metrics.tunnels.WithLabelValues("inbound", TransportQUIC)),
		"dst inbound tcp":   count(t, m.Dst.quic.metrics.tunnels.WithLabelValues("inbound", TransportTCP)),
	}
	if diff := cmp.Diff(want, got2); diff != "" {
		t.Errorf("tunnels by transport (-want +got):\n%s", diff)
	}
}

// TestQUICFallback: a destination that does not serve UDP 15008 (Istio's
// ztunnel) is reached over TCP after the QUIC handshake timeout, and the
// next connection goes over TCP at once: the failure is remembered.
func TestQUICFallback(t *testing.T) {
	m := newQUICMesh(t, true)
	for i, reason := range []string{"failed", "remembered"} {
		start := time.Now()
		got, err := m.roundTrip(t, m.App, "hello")
		if err != nil || got != "hello" {
			t.Fatalf("connection %d: roundTrip() = %q, %v; want hello", i, got, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("connection %d took %v, want within a connect timeout", i, d)
		}
		rec := <-m.DstRecs
		if rec.Transport != TransportTCP {
			t.Errorf("connection %d: destination record transport = %q, want tcp", i, rec.Transport)
		}
		if n := count(t, m.Src.quic.metrics.fallbacks.WithLabelValues(reason)); n != 1 {
			t.Errorf("connection %d: %s{reason=%q} = %d, want 1", i, FallbacksName, reason, n)
		}
	}
	if n := count(t, m.Src.quic.metrics.tunnels.WithLabelValues("outbound", TransportTCP)); n != 2 {
		t.Errorf("%s{outbound,tcp} = %d, want 2", TunnelsName, n)
	}
}

// TestQUICSilentPeer: a pooled QUIC connection whose peer went silent (its
// UDP socket closed without a CONNECTION_CLOSE: the ztunnel was killed, or
// its UDP is dropped) does not fail the next connection: the tunnel is
// dialed over TCP within a connect timeout, the failure is remembered like
// a failed handshake, and the next connection goes over TCP at once.
func TestQUICSilentPeer(t *testing.T) {
	m := newQUICMesh(t, false)
	if got, err := m.roundTrip(t, m.App, "first"); err != nil || got != "first" {
		t.Fatalf("first roundTrip() = %q, %v; want first", got, err)
	}
	if rec := <-m.DstRecs; rec.Transport != TransportQUIC {
		t.Fatalf("first connection went over %q, want quic", rec.Transport)
	}
	if s := m.QUICPool.Stats(); s.Conns != 1 {
		t.Fatalf("QUIC pool stats = %+v, want 1 pooled connection", s)
	}
	m.quicSocket.Close() // silent: no CONNECTION_CLOSE leaves

	for i, reason := range []string{"silent", "remembered"} {
		start := time.Now()
		got, err := m.roundTrip(t, m.App, "hello")
		if err != nil || got != "hello" {
			t.Fatalf("connection %d after the peer went silent: roundTrip() = %q, %v; want hello", i, got, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("connection %d took %v, want within a connect timeout", i, d)
		}
		if rec := <-m.DstRecs; rec.Transport != TransportTCP {
			t.Errorf("connection %d: destination record transport = %q, want tcp", i, rec.Transport)
		}
		if n := count(t, m.Src.quic.metrics.fallbacks.WithLabelValues(reason)); n != 1 {
			t.Errorf("connection %d: %s{reason=%q} = %d, want 1", i, FallbacksName, reason, n)
		}
	}
	if s := m.QUICPool.Stats(); s.Conns != 0 {
		t.Errorf("QUIC pool stats = %+v, want the dead connection evicted", s)
	}
}

// TestQUICInboundAnswers: the destination answers a CONNECT over QUIC as
// it answers one over TCP: 400 for an authority that is not the pod or a
// reserved port, 503 when the application does not answer, 401 when a
// policy denies, 200 otherwise.
func TestQUICInboundAnswers(t *testing.T) {
	m := newQUICMesh(t, false)
	deny, err := anypb.New(&security.Authorization{
		Name: "deny-8081", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{DestinationPorts: []uint32{8081}}}}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Store.OnUpdate(workloadapi.AuthorizationTypeURL, []*adspb.Resource{{Name: "demo/deny-8081", Resource: deny}}, nil); err != nil {
		t.Fatal(err)
	}
	other := netip.AddrFrom4([4]byte{127, 0, 0, 99})
	tests := []struct {
		name      string
		authority netip.AddrPort
		want      int
	}{
		{"tunnel", m.App, http.StatusOK},
		{"authority of another address", netip.AddrPortFrom(other, 8080), http.StatusBadRequest},
		{"reserved port", netip.AddrPortFrom(m.Echo, 15001), http.StatusBadRequest},
		{"application not listening", netip.AddrPortFrom(m.Echo, 9), http.StatusServiceUnavailable},
		{"denied by policy", netip.AddrPortFrom(m.Echo, 8081), http.StatusUnauthorized},
	}
	type dialer func(ctx context.Context, tg hbone.Target) (net.Conn, error)
	transports := map[string]dialer{
		TransportTCP: func(ctx context.Context, tg hbone.Target) (net.Conn, error) {
			c, err := m.HBONEPool.Dial(ctx, tg)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		TransportQUIC: func(ctx context.Context, tg hbone.Target) (net.Conn, error) {
			c, err := m.QUICPool.Dial(ctx, tg)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
	}
	for _, tc := range tests {
		got := map[string]int{}
		for name, dial := range transports {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			c, err := dial(ctx, hbone.Target{
				Addr: netip.AddrPortFrom(m.Echo, hbone.Port), Authority: tc.authority.String(),
				SourceID: m.ClientID, DestIDs: []spiffeid.ID{m.EchoID},
			})
			cancel()
			var se *hbone.StatusError
			switch {
			case err == nil:
				got[name] = http.StatusOK
				c.Close()
			case errors.As(err, &se):
				got[name] = se.Code
			default:
				t.Fatalf("%s over %s: Dial() = %v", tc.name, name, err)
			}
		}
		want := map[string]int{TransportTCP: tc.want, TransportQUIC: tc.want}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: status by transport (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestQUICNamespaces: with prefer limited to other namespaces, the source
// dials over TCP without trying QUIC (no fallback is counted).
func TestQUICNamespaces(t *testing.T) {
	m := newQUICMesh(t, false)
	m.Src.quic.cfg.Namespaces = []string{"other"}
	if got, err := m.roundTrip(t, m.App, "hello"); err != nil || got != "hello" {
		t.Fatalf("roundTrip() = %q, %v; want hello", got, err)
	}
	if rec := <-m.DstRecs; rec.Transport != TransportTCP {
		t.Errorf("destination record transport = %q, want tcp", rec.Transport)
	}
	if n := count(t, m.Src.quic.metrics.fallbacks.WithLabelValues("failed")); n != 0 {
		t.Errorf("%s{failed} = %d, want 0: QUIC was tried", FallbacksName, n)
	}
}

// TestQUICEligible: only tunnels to the target's own ztunnel, of sources
// in the namespaces (if any), try QUIC in mode prefer.
func TestQUICEligible(t *testing.T) {
	pod, wp := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.9")
	direct := hbone.Target{Addr: netip.AddrPortFrom(pod, 15008), Authority: "10.0.0.2:8080"}
	viaWaypoint := hbone.Target{Addr: netip.AddrPortFrom(wp, 15008), Authority: "10.96.0.1:80"}
	src := &state.Workload{Workload: &workloadapi.Workload{Namespace: "shop"}}
	for _, tc := range []struct {
		name string
		cfg  QUICConfig
		t    hbone.Target
		want bool
	}{
		{"prefer, to the pod's ztunnel", QUICConfig{Mode: QUICPrefer}, direct, true},
		{"prefer, to a waypoint", QUICConfig{Mode: QUICPrefer}, viaWaypoint, false},
		{"on", QUICConfig{Mode: QUICOn}, direct, false},
		{"off", QUICConfig{}, direct, false},
		{"prefer, source namespace listed", QUICConfig{Mode: QUICPrefer, Namespaces: []string{"shop"}}, direct, true},
		{"prefer, source namespace not listed", QUICConfig{Mode: QUICPrefer, Namespaces: []string{"other"}}, direct, false},
	} {
		q := &quicState{cfg: tc.cfg}
		if got := q.eligible(src, &tc.t); got != tc.want {
			t.Errorf("%s: eligible() = %v, want %v", tc.name, got, tc.want)
		}
	}
}
