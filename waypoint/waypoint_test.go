package waypoint

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// signer is a CA that signs every CSR for the identity asked for.
type signer struct {
	ca  *identitytest.CA
	ids chan spiffeid.ID
}

func (s *signer) RequestCertificate(_ context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]string, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("no CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         csr.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, csr.PublicKey, s.ca.Key)
	if err != nil {
		return nil, err
	}
	s.ids <- id
	enc := func(der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return []string{enc(der), enc(s.ca.Cert.Raw)}, nil
}

// ads is a delta ADS server that answers the first request of each type
// with its resources.
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	resources map[string][]*discoveryv3.Resource
	nodes     chan string
	tokens    chan string
}

func (a *ads) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	a.tokens <- strings.Join(md.Get("authorization"), ",")
	answered := map[string]bool{}
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		if id := req.GetNode().GetId(); id != "" {
			a.nodes <- id
		}
		if answered[req.GetTypeUrl()] || req.GetResponseNonce() != "" {
			continue
		}
		answered[req.GetTypeUrl()] = true
		if err := s.Send(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: req.GetTypeUrl(), Nonce: req.GetTypeUrl(), Resources: a.resources[req.GetTypeUrl()]}); err != nil {
			return nil
		}
	}
}

func res(t *testing.T, name string, m proto.Message) *discoveryv3.Resource {
	t.Helper()
	any, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discoveryv3.Resource{Name: name, Version: "1", Resource: any}
}

func TestStartReadyAndDrain(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	vip := netip.MustParseAddr("127.0.9.1")
	srv := &ads{
		nodes:  make(chan string, 4),
		tokens: make(chan string, 4),
		resources: map[string][]*discoveryv3.Resource{
			workloadapi.AddressTypeURL: {res(t, "default/echo.default.svc.cluster.local", &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
				Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local",
				Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}},
				Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}},
				Waypoint: &workloadapi.GatewayAddress{
					Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: "wp.default.svc.cluster.local"}},
					HboneMtlsPort: 15008,
				},
			}}})},
			workloadapi.WaypointAuthorizationTypeURL: {res(t, "default/deny-all", &waypoint.Authorization{
				Name: "deny-all", Namespace: "default", Action: waypoint.Action_DENY,
				Targets: []*waypoint.Target{{Kind: &waypoint.Target_Gateway{Gateway: "default/wp"}}},
				Rules:   []*waypoint.Rule{{}},
			})},
		},
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gl)
	defer gs.Stop()

	sg := &signer{ca: ca, ids: make(chan spiffeid.ID, 4)}
	w, err := New(Config{
		Namespace: "default", Gateway: "wp", PodName: "wp-0", PodIP: netip.MustParseAddr("127.0.2.1"),
		XDSAddress: gl.Addr().String(), Token: "node-token", CA: sg,
		HBONEAddr: "127.0.2.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v, want nil after its context ended", err)
		}
	}()

	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("waypoint not ready within 10s")
	}
	if got, want := <-srv.nodes, "router~127.0.2.1~wp-0.default~default.svc.cluster.local"; got != want {
		t.Errorf("xDS node id = %q, want %q", got, want)
	}
	if got := <-srv.tokens; got != "Bearer node-token" {
		t.Errorf("xDS authorization = %q, want the bearer token", got)
	}
	if got, want := <-sg.ids, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/wp"); got != want {
		t.Errorf("certificate asked for %v, want %v", got, want)
	}
	resp, err := http.Get("http://" + w.Admin().ReadinessAddr().String() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz/ready = %d, want 200", resp.StatusCode)
	}

	// A request through the waypoint meets the policy from xDS.
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	defer pool.Close()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, err := pool.Dial(ctx, hbone.Target{
			Addr: w.HBONEAddr().(*net.TCPAddr).AddrPort(), Authority: netip.AddrPortFrom(vip, 80).String(),
			SourceID: ca.ID("/ns/default/sa/sleep"), DestIDs: []spiffeid.ID{w.ID()},
		})
		if err != nil {
			return nil, err
		}
		return c, nil
	}}
	defer tr.CloseIdleConnections()
	hresp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://echo.default.svc.cluster.local/")
	if err != nil {
		t.Fatalf("GET through the waypoint: %v", err)
	}
	body, _ := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	if hresp.StatusCode != http.StatusForbidden || string(body) != "RBAC: access denied" {
		t.Errorf("GET with a deny-all policy on the Gateway = %d %q, want 403 %q", hresp.StatusCode, body, "RBAC: access denied")
	}
	mresp, err := http.Get("http://" + w.Admin().MetricsAddr().String() + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), `istio_requests_total{`) || !strings.Contains(string(metrics), `response_code="403"`) {
		t.Errorf("/stats/prometheus has no istio_requests_total with response_code 403")
	}
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{name: "no gateway", cfg: Config{Namespace: "default", Token: "t"}},
		{name: "no namespace", cfg: Config{Gateway: "wp", Token: "t"}},
		{name: "no token", cfg: Config{Namespace: "default", Gateway: "wp"}},
		{name: "bad ca root", cfg: Config{Namespace: "default", Gateway: "wp", Token: "t", CARoot: []byte("nope")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Errorf("New(%+v) = nil error, want an error", tc.cfg)
			}
		})
	}
}
