package proxy

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// testAddrBase returns a random 127.X.Y.0 base for one test's addresses,
// away from the ranges the in-process mesh harness uses (127.30-229).
func testAddrBase(t testing.TB) [3]byte {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return [3]byte{127, 230 + b[0]%25, b[1]}
}

// inboundFixture is a proxy with one local workload (demo/echo at Pod)
// behind a real HBONE server, and a client pool presenting demo/client.
type inboundFixture struct {
	Pod      netip.Addr
	Server   netip.AddrPort // the HBONE listener on Pod
	Proxy    *Proxy
	Pool     *hbone.Pool
	ClientID spiffeid.ID
	EchoID   spiffeid.ID
}

func addWorkload(t testing.TB, store *state.Store, uid, ns, sa string, addr netip.Addr) {
	t.Helper()
	a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: ns, ServiceAccount: sa, Node: "n1",
		Addresses:      [][]byte{addr.AsSlice()},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Status:         workloadapi.WorkloadStatus_HEALTHY,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{{Name: uid, Resource: a}}, nil); err != nil {
		t.Fatal(err)
	}
}

func newInboundFixture(t *testing.T, cfg Config) *inboundFixture {
	t.Helper()
	base := testAddrBase(t)
	f := &inboundFixture{
		Pod: netip.AddrFrom4([4]byte{base[0], base[1], base[2], 10}),
	}
	ca := identitytest.New(t, "cluster.local")
	f.ClientID, f.EchoID = ca.ID("/ns/demo/sa/client"), ca.ID("/ns/demo/sa/echo")
	store := state.NewStore()
	addWorkload(t, store, "echo", "demo", "echo", f.Pod)
	cfg.Store = store
	f.Pool = hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	cfg.Pool = f.Pool
	cfg.Metrics = telemetry.NewMetrics(prometheus.NewRegistry())
	cfg.AccessLog = accesslog.New(slog.New(slog.DiscardHandler))
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.Proxy = p
	srv := &hbone.Server{
		TLSConfig: ca.ServerTLS(t, f.EchoID),
		Handler:   p,
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	f.Server = l.Addr().(*net.TCPAddr).AddrPort()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		f.Pool.Close()
		srv.Close()
		<-served
		p.Close()
	})
	return f
}

// connect opens a tunnel to authority through the fixture's HBONE server.
func (f *inboundFixture) connect(authority netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.Pool.Dial(ctx, hbone.Target{
		Addr:      f.Server,
		Authority: authority.String(),
		SourceID:  f.ClientID,
		DestIDs:   []spiffeid.ID{f.EchoID},
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}
