package server

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// startLocalWith is startLocal with cfg changed by opt, and a metrics
// listener on loopback.
func startLocalWith(t *testing.T, opt func(*Config)) *Server {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(meshYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{ConfigDir: dir, StateDir: t.TempDir(), Addr: "127.0.0.1:0", PlaintextAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0"}
	opt(&cfg)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v", err)
		}
	})
	select {
	case <-s.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("istiod-lite did not load its configuration within 10s")
	}
	return s
}

// scrapeLimit returns the line of istiod_limit_hits_total{limit} that
// /metrics serves ("" if none).
func scrapeLimit(t *testing.T, s *Server, limit string) string {
	t.Helper()
	resp, err := http.Get("http://" + s.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := LimitHitsName + `{limit="` + limit + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

func TestRateLimitCA(t *testing.T) {
	s := startLocalWith(t, func(c *Config) { c.RateLimits = RateLimits{CARate: 0.001, CABurst: 2} })
	conn := dial(t, s.PlaintextAddr().String(), nil, nil)
	id, err := identity.WorkloadID("cluster.local", "demo", "echo")
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := identity.NewKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	request := func(token string) error {
		cl := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return token, nil }}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := cl.RequestCertificate(ctx, id, csr, time.Hour)
		return err
	}
	for i := range 2 {
		if err := request("token-node-a"); err != nil {
			t.Fatalf("CreateCertificate #%d within the burst = %v", i+1, err)
		}
	}
	if err := request("token-node-a"); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("CreateCertificate past the burst = %v, want ResourceExhausted", err)
	}
	// An unauthenticated caller is refused as such, and has no bucket.
	if err := request("bad-token"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("CreateCertificate with a bad token = %v, want Unauthenticated", err)
	}
	if got, want := scrapeLimit(t, s, LimitCARequests), LimitHitsName+`{limit="ca_requests"} 1`; got != want {
		t.Errorf("/metrics: %q, want %q", got, want)
	}
}

func TestRateLimitXDS(t *testing.T) {
	s := startLocalWith(t, func(c *Config) { c.RateLimits = RateLimits{XDSRate: 0.001, XDSBurst: 3} })
	conn := dial(t, s.PlaintextAddr().String(), nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer token-node-a")
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)

	// Opening the stream takes a token, each request that is not an ACK
	// another: the third such request is past the burst of 3. ACKs, however
	// many, take none (a client that keeps up with pushes is never cut
	// off: make bench's control-plane figure lost 9 of 10 changes when
	// they did).
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DeltaDiscoveryRequest{
		Node:    &corev3.Node{Id: "ztunnel~127.0.0.1~ztunnel-node-a.istio-system~istio-system.svc.cluster.local"},
		TypeUrl: workloadapi.AddressTypeURL,
	}
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("first response = %v", err)
	}
	for range 10 { // ACKs: free
		st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: workloadapi.AddressTypeURL, ResponseNonce: resp.GetNonce()})
	}
	// A subscription change is charged: the third token. The stream is
	// still up after the ACKs, so it is answered.
	st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: workloadapi.AddressTypeURL, ResponseNonce: resp.GetNonce(), ResourceNamesSubscribe: []string{"a"}})
	if _, err := st.Recv(); err != nil {
		t.Fatalf("after 10 ACKs and a subscription within the burst: %v, want a response", err)
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: workloadapi.AddressTypeURL, ResponseNonce: resp.GetNonce(), ResourceNamesSubscribe: []string{"b"}})
	for range 20 { // bounded: the stream ends on the second subscription change
		if _, err = st.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("stream past the burst ended with %v, want ResourceExhausted", err)
	}
	// The bucket is empty: a new stream is refused at once.
	if _, err := firstResponse(t, conn, "token-node-a"); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("new stream past the burst = %v, want ResourceExhausted", err)
	}
	if got, want := scrapeLimit(t, s, LimitXDSRequests), LimitHitsName+`{limit="xds_requests"} 2`; got != want {
		t.Errorf("/metrics: %q, want %q", got, want)
	}
}
