package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves one connection on l, echoing it, and reports its peer.
func echo(t *testing.T, l net.Listener) <-chan netip.Addr {
	peer := make(chan netip.Addr, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			close(peer)
			return
		}
		defer c.Close()
		peer <- addrPort(c.RemoteAddr()).Addr()
		io.Copy(c, c)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return peer
}

func echoRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo = %q, %v, want %q", buf, err, msg)
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading to EOF: %v", err)
	}
}

func nextRecord(t *testing.T, recs <-chan accesslog.Record) accesslog.Record {
	t.Helper()
	select {
	case r := <-recs:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no access log record")
		return accesslog.Record{}
	}
}

// TestCapturedTraffic carries an unmodified application's traffic through
// the capture listeners in a real pod network namespace.
func TestCapturedTraffic(t *testing.T) {
	tp := capturetest.NewPair(t)
	if err := capture.Install(tp.Pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := capture.Remove(tp.Pod); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})

	store := state.NewStore()
	a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: "pod-uid", Name: "pod", Namespace: "ns", ServiceAccount: "sa", Node: "n1",
		Addresses:      [][]byte{tp.PodIP.AsSlice()},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Status:         workloadapi.WorkloadStatus_HEALTHY,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{{Name: "pod-uid", Resource: a}}, nil); err != nil {
		t.Fatal(err)
	}
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: func(context.Context, spiffeid.ID, []spiffeid.ID) (*tls.Config, error) {
		return nil, errors.New("no HBONE in this test")
	}})
	defer pool.Close()
	reg := prometheus.NewRegistry()
	access := accesslog.New(slog.New(slog.DiscardHandler))
	recs, unsub := access.Subscribe(10)
	defer unsub()
	dialer := &capture.Dialer{Netns: tp.Pod}
	p, err := New(Config{
		Store: store, Pool: pool, Metrics: telemetry.NewMetrics(reg), AccessLog: access,
		DialPod: func(ctx context.Context, pod, from netip.Addr, to netip.AddrPort) (net.Conn, error) {
			if pod != tp.PodIP {
				return nil, errors.New("not a local pod")
			}
			return dialer.Dial(ctx, from, to, from != pod)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	outL, err := capture.Listen(tp.Pod, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), capture.OutboundPort), false)
	if err != nil {
		t.Fatal(err)
	}
	inL, err := capture.Listen(tp.Pod, netip.AddrPortFrom(netip.IPv4Unspecified(), capture.InboundPlaintextPort), true)
	if err != nil {
		outL.Close()
		t.Fatal(err)
	}
	served := make(chan error, 2)
	go func() { served <- p.ServeOutboundCapture(outL, tp.PodIP) }()
	go func() { served <- p.ServePlaintextInbound(inL, tp.PodIP) }()
	defer func() {
		outL.Close()
		inL.Close()
		for range 2 {
			if err := <-served; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	}()

	t.Run("outbound to a destination outside the mesh", func(t *testing.T) {
		peer := echo(t, capturetest.ListenIn(t, tp.Server, "198.18.200.2:80"))
		c, err := capturetest.DialIn(tp.Pod, "198.18.200.2:80", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoRoundTrip(t, c, "hello out")
		if got := <-peer; got != tp.PodIP {
			t.Errorf("server sees %v, want the pod's %v", got, tp.PodIP)
		}
		r := nextRecord(t, recs)
		got := []any{r.Direction, r.SrcWorkload, r.DstAddr.String(), r.BytesSent, r.Err}
		want := []any{"outbound", "pod", "198.18.200.2:80", int64(len("hello out")), nil}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("record (-want +got):\n%s", diff)
		}
	})

	t.Run("plaintext inbound reaches the app from the client's address", func(t *testing.T) {
		peer := echo(t, capturetest.ListenIn(t, tp.Pod, "0.0.0.0:8080"))
		c, err := capturetest.DialIn(tp.Server, "198.18.200.1:8080", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoRoundTrip(t, c, "hello in")
		if got := <-peer; got != tp.ServerIP {
			t.Errorf("app sees %v, want the client's %v", got, tp.ServerIP)
		}
		r := nextRecord(t, recs)
		got := []any{r.Direction, r.SrcAddr.Addr().String(), r.DstWorkload, r.DstAddr.String(), r.SrcIdentity, r.BytesSent, r.Err}
		want := []any{"inbound", "198.18.200.2", "pod", "198.18.200.1:8080", "", int64(len("hello in")), nil}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("record (-want +got):\n%s", diff)
		}
		if n := countOpened(t, reg, map[string]string{"reporter": "destination", "connection_security_policy": "unknown", "destination_workload_namespace": "ns"}); n != 1 {
			t.Errorf("%s{reporter=destination,connection_security_policy=unknown} = %v, want 1", telemetry.ConnectionsOpenedName, n)
		}
	})

	t.Run("STRICT mTLS refuses plaintext", func(t *testing.T) {
		// What istiod-lite makes of a mesh-wide STRICT PeerAuthentication.
		strict, err := anypb.New(&security.Authorization{
			Name: "istio_converted_static_strict", Namespace: "istio-system",
			Scope: security.Scope_GLOBAL, Action: security.Action_DENY,
			Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
				NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}},
			}}}}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		const name = "istio-system/istio_converted_static_strict"
		if err := store.OnUpdate(workloadapi.AuthorizationTypeURL, []*adspb.Resource{{Name: name, Resource: strict}}, nil); err != nil {
			t.Fatal(err)
		}
		defer store.OnUpdate(workloadapi.AuthorizationTypeURL, nil, []string{name})
		peer := echo(t, capturetest.ListenIn(t, tp.Pod, "0.0.0.0:8081"))
		// The reset may come before or after the dial returns.
		if c, err := capturetest.DialIn(tp.Server, "198.18.200.1:8081", 2*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("read %d bytes through a plaintext connection STRICT mode should refuse", n)
			}
			c.Close()
		} else if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("dial = %v, want success or a reset", err)
		}
		r := nextRecord(t, recs)
		if !errors.Is(r.Err, ErrDenied) || r.ResponseFlags != "DENY" || r.Policy != name {
			t.Errorf("record = err %v, flags %q, policy %q; want ErrDenied, DENY, %s", r.Err, r.ResponseFlags, r.Policy, name)
		}
		select {
		case got := <-peer:
			t.Errorf("the app accepted a connection from %v", got)
		default:
		}
	})

	t.Run("the listener ports themselves are refused", func(t *testing.T) {
		c, err := capturetest.DialIn(tp.Server, "198.18.200.1:15006", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("read %d bytes from a connection to 15006, want it closed", n)
		}
		if r := nextRecord(t, recs); !errors.Is(r.Err, ErrIllegalPort) {
			t.Errorf("record error = %v, want ErrIllegalPort", r.Err)
		}
	})
}

func countOpened(t *testing.T, reg *prometheus.Registry, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != telemetry.ConnectionsOpenedName {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			n += m.GetCounter().GetValue()
		}
	}
	return n
}
