package logstream

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// collect runs Watch until it has n responses or returns, and returns
// what it got.
func collect(t *testing.T, s *Service, req *logsv1.WatchRequest, n int) []*logsv1.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []*logsv1.WatchResponse
	err := s.Watch(ctx, req, func(rs ...*logsv1.WatchResponse) error {
		for _, r := range rs {
			got = append(got, r)
			if len(got) == n {
				cancel()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	return got
}

func ports(rs []*logsv1.WatchResponse) []string {
	var out []string
	for _, r := range rs {
		switch {
		case r.GetRecord() != nil:
			out = append(out, r.GetRecord().GetSource().GetAddr())
		case r.GetLost() != nil:
			out = append(out, "lost")
		}
	}
	return out
}

func src(ports ...int) []string {
	var out []string
	for _, p := range ports {
		out = append(out, netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(p)).String())
	}
	return out
}

func TestWatchBacklog(t *testing.T) {
	ring := NewRing(8)
	for i := 1; i <= 10; i++ {
		ring.Add(rec(uint16(i)), 0)
	}
	s := NewService(Config{Ring: ring, Kind: logsv1.ProxyKind_ZTUNNEL, Name: "node-a"})
	for _, tc := range []struct {
		name string
		req  *logsv1.WatchRequest
		want []string
	}{
		{"every kept record", &logsv1.WatchRequest{}, src(3, 4, 5, 6, 7, 8, 9, 10)},
		{"last 3", &logsv1.WatchRequest{Last: 3}, src(8, 9, 10)},
		{"last 2 of no match", &logsv1.WatchRequest{Last: 2, Whitelist: []*logsv1.Filter{{Port: []uint32{80}}}}, nil},
		{"last 2 not blacklisted", &logsv1.WatchRequest{Last: 2, Blacklist: []*logsv1.Filter{{Ip: []string{"10.0.0.1"}}, {Direction: []logsv1.Direction{logsv1.Direction_OUTBOUND}}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ports(collect(t, s, tc.req, 100))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Watch(%v) (-want +got):\n%s", tc.req, diff)
			}
		})
	}
}

func TestWatchFollow(t *testing.T) {
	ring := NewRing(8)
	ring.Add(rec(1), 0)
	ring.Add(rec(2), 0)
	s := NewService(Config{Ring: ring, Name: "node-a"})
	done := make(chan []*logsv1.WatchResponse)
	go func() { done <- collect(t, s, &logsv1.WatchRequest{Last: 1, Follow: true}, 3) }()
	// Records added while (or before) the watch starts following are
	// never missed: wait until it is registered, then add.
	waitWatchers(t, ring, 1)
	ring.Add(rec(3), 0)
	ring.Add(rec(4), 0)
	got := ports(<-done)
	if diff := cmp.Diff(src(2, 3, 4), got); diff != "" {
		t.Errorf("Watch(last 1, follow) (-want +got):\n%s", diff)
	}
}

func waitWatchers(t *testing.T, r *Ring, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if w := r.waiters.Load(); w != nil && len(*w) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d followers after 5s", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A reader that stops reading never holds up Add; when it reads again it
// is told how many records it lost, and the metric counts them.
func TestWatchSlowReaderLoses(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	ring := NewRing(8)
	// No coalescing: the reader takes record 1 as soon as it is woken.
	s := NewService(Config{Ring: ring, Name: "node-a", Metrics: m, Coalesce: -1})
	release := make(chan struct{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []*logsv1.WatchResponse
	done := make(chan error)
	go func() {
		done <- s.Watch(ctx, &logsv1.WatchRequest{Follow: true}, func(rs ...*logsv1.WatchResponse) error {
			got = append(got, rs...)
			if len(got) == 1 {
				<-release // the reader stops reading
			}
			if len(got) >= 10 {
				cancel()
			}
			return nil
		})
	}()
	waitWatchers(t, ring, 1)
	ring.Add(rec(1), 0)
	// The first record is being sent and its reader is stuck; the data
	// path goes on (Add would block this test otherwise).
	for ring.Next() != 2 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	for i := 2; i <= 41; i++ {
		ring.Add(rec(uint16(i)), 0)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
	want := append(append(src(1), "lost"), src(34, 35, 36, 37, 38, 39, 40, 41)...)
	if diff := cmp.Diff(want, ports(got)); diff != "" {
		t.Errorf("responses (-want +got):\n%s", diff)
	}
	if lost := got[1].GetLost(); lost.GetCount() != 32 || lost.GetProxy() != "node-a" || lost.GetSource() != logsv1.Lost_PROXY {
		t.Errorf("lost = %v, want 32 records of node-a at the proxy", lost)
	}
	if got := testutil.ToFloat64(m.lost); got != 32 {
		t.Errorf("%s = %v, want 32", LostRecordsName, got)
	}
}

// The LogStream service over gRPC on loopback with mutual TLS: a client
// with a mesh certificate streams; one without is refused by TLS.
func TestServerMutualTLS(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	istiod := ca.ID("/ns/istio-system/sa/istiod-lite")
	proxy := ca.ID("/ns/istio-system/sa/ztunnel")
	serverTLS := tlsconfig.MTLSServerConfig(ca.SVID(t, proxy), ca.Bundle, tlsconfig.AuthorizeID(istiod))
	ring := NewRing(16)
	ring.Add(rec(1), 0)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
	(&Server{Service: NewService(Config{Ring: ring, Name: "node-a"})}).Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	defer g.Stop()

	dial := func(c *tls.Config) logsv1.LogStreamClient {
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(c)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return logsv1.NewLogStreamClient(conn)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	ok := dial(tlsconfig.MTLSClientConfig(ca.SVID(t, istiod), ca.Bundle, tlsconfig.AuthorizeID(proxy)))
	stream, err := ok.Watch(ctx, &logsv1.WatchRequest{Follow: true, Last: 10})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	ring.Add(rec(2), 0)
	second, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if diff := cmp.Diff(src(1, 2), ports([]*logsv1.WatchResponse{first, second})); diff != "" {
		t.Errorf("streamed (-want +got):\n%s", diff)
	}

	// Another mesh identity than istiod-lite's is refused.
	other := dial(tlsconfig.MTLSClientConfig(ca.SVID(t, ca.ID("/ns/demo/sa/client")), ca.Bundle, tlsconfig.AuthorizeID(proxy)))
	s2, err := other.Watch(ctx, &logsv1.WatchRequest{Last: 10})
	if err == nil {
		_, err = s2.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Watch as another identity: %v, want Unavailable (handshake refused)", err)
	}
}

// A follower woken by a stream of records reads and sends them in
// batches, not one wake-up and one send per record.
func TestWatchBatchesBursts(t *testing.T) {
	ring := NewRing(1024)
	s := NewService(Config{Ring: ring, Name: "node-a", Coalesce: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	const n = 20
	var sends, got int
	done := make(chan error)
	go func() {
		done <- s.Watch(ctx, &logsv1.WatchRequest{Follow: true}, func(rs ...*logsv1.WatchResponse) error {
			sends++
			got += len(rs)
			if got >= n {
				cancel()
			}
			return nil
		})
	}()
	waitWatchers(t, ring, 1)
	// A record every millisecond: without coalescing, each wakes the
	// follower on its own.
	for i := range n {
		ring.Add(rec(uint16(i)), 0)
		time.Sleep(time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got != n || sends > 5 {
		t.Errorf("%d records in %d sends, want %d in at most 5", got, sends, n)
	}
}
