package xds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 10 * time.Second

const testNodeID = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"

// testNode is what the client is configured with; wantNode is what the go-control-plane server decodes.
var (
	testNode = &adspb.Node{Id: testNodeID}
	wantNode = &corev3.Node{Id: testNodeID}
)

func TestNewClient(t *testing.T) {
	h := HandlerFunc(func(string, []*adspb.Resource, []string) error { return nil })
	valid := func() ClientConfig {
		return ClientConfig{Target: "127.0.0.1:1", Node: testNode, TypeURLs: []string{workloadapi.AddressTypeURL}, Handler: h}
	}
	tests := []struct {
		name    string
		mutate  func(*ClientConfig)
		wantErr bool
	}{
		{name: "valid", mutate: func(*ClientConfig) {}},
		{name: "no target", mutate: func(c *ClientConfig) { c.Target = "" }, wantErr: true},
		{name: "no node", mutate: func(c *ClientConfig) { c.Node = nil }, wantErr: true},
		{name: "node without id", mutate: func(c *ClientConfig) { c.Node = &adspb.Node{} }, wantErr: true},
		{name: "no types", mutate: func(c *ClientConfig) { c.TypeURLs = nil }, wantErr: true},
		{name: "duplicate type", mutate: func(c *ClientConfig) { c.TypeURLs = append(c.TypeURLs, c.TypeURLs[0]) }, wantErr: true},
		{name: "no handler", mutate: func(c *ClientConfig) { c.Handler = nil }, wantErr: true},
		{name: "negative backoff", mutate: func(c *ClientConfig) { c.MinBackoff = -1 }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.mutate(&cfg)
			_, err := NewClient(cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewClient() error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("NewClient() error = %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
}

// scriptedADS is a real gRPC ADS server whose streams are driven by the test.
type scriptedADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	streams chan discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	end     chan struct{} // each receive ends one stream
}

func (s *scriptedADS) DeltaAggregatedResources(ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	s.streams <- ss
	select {
	case <-s.end:
	case <-ss.Context().Done():
	}
	return errors.New("stream ended by test")
}

func startScripted(t *testing.T) (*scriptedADS, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedADS{
		streams: make(chan discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer),
		end:     make(chan struct{}),
	}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return s, lis.Addr().String()
}

func (s *scriptedADS) accept(t *testing.T) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer {
	t.Helper()
	select {
	case ss := <-s.streams:
		return ss
	case <-time.After(waitLimit):
		t.Fatal("no stream opened")
		return nil
	}
}

func recvRequest(t *testing.T, ss discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	req, err := ss.Recv()
	if err != nil {
		t.Fatalf("server Recv: %v", err)
	}
	return req
}

func resource(t *testing.T, typeURL, name, version string) *discoveryv3.Resource {
	t.Helper()
	a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: name}}})
	if err != nil {
		t.Fatal(err)
	}
	a.TypeUrl = typeURL
	return &discoveryv3.Resource{Name: name, Version: version, Resource: a}
}

// update is one OnUpdate call.
type update struct {
	TypeURL string
	Updated []string
	Removed []string
}

type recorder struct {
	mu      sync.Mutex
	updates []update
	fail    error
}

func (r *recorder) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := update{TypeURL: typeURL, Removed: removed}
	for _, res := range updated {
		u.Updated = append(u.Updated, res.GetName())
	}
	r.updates = append(r.updates, u)
	return r.fail
}

func (r *recorder) get() []update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]update(nil), r.updates...)
}

func (r *recorder) setFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = err
}

func TestClientProtocol(t *testing.T) {
	const addr, authz = workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL
	ads, target := startScripted(t)
	rec := &recorder{}
	c, err := NewClient(ClientConfig{
		Target: target, Node: testNode, TypeURLs: []string{addr, authz}, Handler: rec,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() { started <- c.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-started; err != nil {
			t.Errorf("Start() = %v, want nil", err)
		}
	}()

	ss := ads.accept(t)
	for _, typeURL := range []string{addr, authz} {
		want := &discoveryv3.DeltaDiscoveryRequest{Node: wantNode, TypeUrl: typeURL}
		if diff := cmp.Diff(want, recvRequest(t, ss), protocmp.Transform()); diff != "" {
			t.Errorf("first request for %s (-want +got):\n%s", typeURL, diff)
		}
	}
	if err := c.Start(ctx); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Start() = %v, want %v", err, ErrAlreadyRunning)
	}

	steps := []struct {
		name     string
		resp     *discoveryv3.DeltaDiscoveryResponse
		fail     error
		wantNack bool
		wantCall bool
	}{
		{
			name: "resource whose Any type differs is NACKed without calling the handler",
			resp: &discoveryv3.DeltaDiscoveryResponse{TypeUrl: addr, Nonce: "1",
				Resources: []*discoveryv3.Resource{resource(t, authz, "a", "v1")}},
			wantNack: true,
		},
		{
			name: "valid response is ACKed",
			resp: &discoveryv3.DeltaDiscoveryResponse{TypeUrl: addr, Nonce: "2",
				Resources: []*discoveryv3.Resource{resource(t, addr, "a", "v1"), resource(t, addr, "b", "v1")}},
			wantCall: true,
		},
		{
			name:     "handler error NACKs",
			resp:     &discoveryv3.DeltaDiscoveryResponse{TypeUrl: addr, Nonce: "3", RemovedResources: []string{"a"}},
			fail:     errors.New("rejected"),
			wantNack: true,
			wantCall: true,
		},
		{
			name:     "removal is ACKed",
			resp:     &discoveryv3.DeltaDiscoveryResponse{TypeUrl: addr, Nonce: "4", RemovedResources: []string{"b"}},
			wantCall: true,
		},
	}
	for _, step := range steps {
		rec.setFail(step.fail)
		calls := len(rec.get())
		if err := ss.Send(step.resp); err != nil {
			t.Fatalf("%s: Send: %v", step.name, err)
		}
		req := recvRequest(t, ss)
		if req.GetTypeUrl() != addr || req.GetResponseNonce() != step.resp.GetNonce() {
			t.Errorf("%s: got {type %q nonce %q}, want {%q %q}", step.name, req.GetTypeUrl(), req.GetResponseNonce(), addr, step.resp.GetNonce())
		}
		if gotNack := req.GetErrorDetail() != nil; gotNack != step.wantNack {
			t.Errorf("%s: NACK = %v (%v), want %v", step.name, gotNack, req.GetErrorDetail(), step.wantNack)
		}
		if gotCall := len(rec.get()) > calls; gotCall != step.wantCall {
			t.Errorf("%s: handler called = %v, want %v", step.name, gotCall, step.wantCall)
		}
	}
	select {
	case <-c.Synced():
		t.Fatal("Synced closed before the authorization type was answered")
	default:
	}
	if err := ss.Send(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: authz, Nonce: "5"}); err != nil {
		t.Fatal(err)
	}
	recvRequest(t, ss)
	select {
	case <-c.Synced():
	case <-time.After(waitLimit):
		t.Fatal("Synced not closed after every type was answered")
	}

	// The stream breaks; the client reconnects with the versions it ACKed: a (v1) stays because its removal
	// was NACKed, b was removed.
	ads.end <- struct{}{}
	ss = ads.accept(t)
	want := []*discoveryv3.DeltaDiscoveryRequest{
		{Node: wantNode, TypeUrl: addr, InitialResourceVersions: map[string]string{"a": "v1"}},
		{Node: wantNode, TypeUrl: authz},
	}
	for _, w := range want {
		if diff := cmp.Diff(w, recvRequest(t, ss), protocmp.Transform()); diff != "" {
			t.Errorf("request after reconnect (-want +got):\n%s", diff)
		}
	}
	wantUpdates := []update{
		{TypeURL: addr, Updated: []string{"a", "b"}},
		{TypeURL: addr, Removed: []string{"a"}},
		{TypeURL: addr, Removed: []string{"b"}},
		{TypeURL: authz},
	}
	if diff := cmp.Diff(wantUpdates, rec.get()); diff != "" {
		t.Errorf("handler calls (-want +got):\n%s", diff)
	}
}

// TestClientSendsToken: every stream carries `authorization: Bearer
// <token>`, asked for again on each reconnect, over a plaintext transport.
func TestClientSendsToken(t *testing.T) {
	ads, target := startScripted(t)
	var calls int
	var mu sync.Mutex
	c, err := NewClient(ClientConfig{
		Target: target, Node: testNode, TypeURLs: []string{workloadapi.AddressTypeURL},
		Handler: HandlerFunc(func(string, []*adspb.Resource, []string) error { return nil }),
		Token: func(context.Context) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			return fmt.Sprint("token-", calls), nil
		},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() { started <- c.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-started; err != nil {
			t.Errorf("Start() = %v, want nil", err)
		}
	}()
	for _, want := range []string{"Bearer token-1", "Bearer token-2"} {
		ss := ads.accept(t)
		md, _ := metadata.FromIncomingContext(ss.Context())
		if diff := cmp.Diff([]string{want}, md.Get("authorization")); diff != "" {
			t.Errorf("authorization metadata (-want +got):\n%s", diff)
		}
		ads.end <- struct{}{}
	}
}
