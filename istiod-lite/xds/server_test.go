package xds_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambient-go/mesh/istiod-lite/xds"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	xdsclient "github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	addrType  = workloadapi.AddressTypeURL
	authzType = workloadapi.AuthorizationTypeURL
	waitLimit = 60 * time.Second
)

// workload returns an Address holding a Workload; gen distinguishes versions of the same uid.
func workload(uid string, gen int) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid:            uid,
		Name:           uid,
		Namespace:      "default",
		Addresses:      [][]byte{{10, byte(gen >> 8), byte(gen), 1}},
		ServiceAccount: fmt.Sprintf("sa-%d", gen),
	}}}
}

// workloads returns n workloads named w0..w(n-1) at generation 0.
func workloads(n int) map[string]*workloadapi.Address {
	out := make(map[string]*workloadapi.Address, n)
	for i := range n {
		uid := fmt.Sprintf("w%d", i)
		out[uid] = workload(uid, 0)
	}
	return out
}

func messages(in map[string]*workloadapi.Address) map[string]proto.Message {
	out := make(map[string]proto.Message, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serve runs srv on a real gRPC server listening on addr and returns the address it listens on.
func serve(t testing.TB, srv *xds.Server, addr string) (*grpc.Server, string) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // a just-closed port may take a moment to be free again
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return g, lis.Addr().String()
}

// store is a Handler that applies Addresses, counts what it received and can reject updates.
type store struct {
	mu        sync.Mutex
	state     map[string]map[string]*workloadapi.Address
	versions  map[string]string // name → version of Address resources
	responses int
	received  int // resources received
	removed   int // removals received
	badTypes  []string
	reject    func(typeURL string, updated []*adspb.Resource) error
	decode    bool          // unmarshal resources into state (off for large fan-out tests)
	updates   chan struct{} // signalled after every response
}

func newStore() *store {
	return &store{state: map[string]map[string]*workloadapi.Address{}, versions: map[string]string{}, decode: true, updates: make(chan struct{}, 1)}
}

func (s *store) OnUpdate(typeURL string, updated []*adspb.Resource, removed []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		select {
		case s.updates <- struct{}{}:
		default:
		}
	}()
	s.responses++
	s.received += len(updated)
	s.removed += len(removed)
	for _, r := range updated {
		if r.GetResource().GetTypeUrl() != typeURL {
			s.badTypes = append(s.badTypes, r.GetResource().GetTypeUrl())
		}
	}
	if s.reject != nil {
		if err := s.reject(typeURL, updated); err != nil {
			return err
		}
	}
	if typeURL != addrType {
		return nil
	}
	m := s.state[typeURL]
	if m == nil {
		m = map[string]*workloadapi.Address{}
		s.state[typeURL] = m
	}
	for _, r := range updated {
		s.versions[r.GetName()] = r.GetVersion()
		if !s.decode {
			continue
		}
		a := &workloadapi.Address{}
		if err := r.GetResource().UnmarshalTo(a); err != nil {
			return fmt.Errorf("decode %s: %w", r.GetName(), err)
		}
		m[r.GetName()] = a
	}
	for _, name := range removed {
		delete(m, name)
		delete(s.versions, name)
	}
	return nil
}

type counts struct{ Responses, Received, Removed int }

func (s *store) counts() counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return counts{s.responses, s.received, s.removed}
}

func (s *store) addresses() map[string]*workloadapi.Address {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*workloadapi.Address{}
	for k, v := range s.state[addrType] {
		out[k] = v
	}
	return out
}

func (s *store) version(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.versions[name]
}

// startClient runs a client until the test ends.
func startClient(t testing.TB, target string, h xdsclient.Handler, types ...string) *xdsclient.Client {
	t.Helper()
	return startClientWith(t, target, h, nil, types...)
}

// startClientWith is startClient with a bearer token (nil: none).
func startClientWith(t testing.TB, target string, h xdsclient.Handler, token func() (string, error), types ...string) *xdsclient.Client {
	t.Helper()
	var tok func(context.Context) (string, error)
	if token != nil {
		tok = func(context.Context) (string, error) { return token() }
	}
	c, err := xdsclient.NewClient(xdsclient.ClientConfig{
		Token:      tok,
		Target:     target,
		Node:       &adspb.Node{Id: "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"},
		TypeURLs:   types,
		Handler:    h,
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v, want nil", err)
		}
	})
	return c
}

func waitSynced(t testing.TB, c *xdsclient.Client) {
	t.Helper()
	select {
	case <-c.Synced():
	case <-time.After(waitLimit):
		t.Fatalf("client not synced after %v", waitLimit)
	}
}

// eventually polls cond until it holds, within waitLimit.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %v", what, waitLimit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func diffAddresses(want, got map[string]*workloadapi.Address) string {
	return cmp.Diff(want, got, protocmp.Transform())
}

func TestInitialSync(t *testing.T) {
	tests := []struct {
		name      string
		addresses map[string]*workloadapi.Address
		authz     map[string]proto.Message
	}{
		{name: "empty", addresses: map[string]*workloadapi.Address{}},
		{name: "non-empty", addresses: workloads(5), authz: map[string]proto.Message{
			"default/allow": &security.Authorization{Name: "allow", Namespace: "default"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := xds.NewServer(xds.ServerConfig{})
			srv.Set(addrType, messages(tt.addresses))
			srv.Set(authzType, tt.authz)
			_, addr := serve(t, srv, "127.0.0.1:0")
			st := newStore()
			c := startClient(t, addr, st, addrType, authzType)
			waitSynced(t, c)

			if diff := diffAddresses(tt.addresses, st.addresses()); diff != "" {
				t.Errorf("client addresses (-want +got):\n%s", diff)
			}
			want := counts{Responses: 2, Received: len(tt.addresses) + len(tt.authz)}
			if diff := cmp.Diff(want, st.counts()); diff != "" {
				t.Errorf("client counts (-want +got):\n%s", diff)
			}
			if len(st.badTypes) > 0 {
				t.Errorf("resources with Any type URL unlike the response's: %v", st.badTypes)
			}
			if !c.Connected() {
				t.Errorf("Connected() = false after sync, want true")
			}
		})
	}
}

func TestIncrementalUpdateAndRemoval(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	want := workloads(3)
	srv.Set(addrType, messages(want))
	_, addr := serve(t, srv, "127.0.0.1:0")
	st := newStore()
	waitSynced(t, startClient(t, addr, st, addrType))
	before := st.counts()

	want["w0"] = workload("w0", 1) // changed
	delete(want, "w1")             // removed
	want["w3"] = workload("w3", 0) // added
	srv.Set(addrType, messages(want))
	eventually(t, "update reaches client", func() bool { return diffAddresses(want, st.addresses()) == "" })

	got := st.counts()
	if diff := cmp.Diff(counts{Responses: 1, Received: 2, Removed: 1},
		counts{got.Responses - before.Responses, got.Received - before.Received, got.Removed - before.Removed}); diff != "" {
		t.Errorf("delta sent for the update (-want +got):\n%s", diff)
	}

	// An identical Set pushes nothing.
	pushes := srv.Stats().Pushes
	srv.Set(addrType, messages(want))
	if got := srv.Stats().Pushes; got != pushes {
		t.Errorf("Stats().Pushes after an identical Set = %d, want %d", got, pushes)
	}
}

func TestReconnectSendsOnlyDifferences(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	want := workloads(100)
	srv.Set(addrType, messages(want))
	g, addr := serve(t, srv, "127.0.0.1:0")
	st := newStore()
	c := startClient(t, addr, st, addrType)
	waitSynced(t, c)
	if got := st.counts().Received; got != 100 {
		t.Fatalf("initial sync received %d resources, want 100", got)
	}

	t.Run("same server restarted with changes", func(t *testing.T) {
		g.Stop()
		eventually(t, "client notices the disconnect", func() bool { return !c.Connected() })
		// The client keeps its state while the server is away.
		if diff := diffAddresses(want, st.addresses()); diff != "" {
			t.Errorf("client state while disconnected (-want +got):\n%s", diff)
		}
		want["w0"] = workload("w0", 1)
		want["w1"] = workload("w1", 1)
		delete(want, "w2")
		want["w100"] = workload("w100", 0)
		srv.Set(addrType, messages(want))
		before := st.counts()

		serve(t, srv, addr)
		eventually(t, "client resyncs", func() bool { return diffAddresses(want, st.addresses()) == "" })
		got := st.counts()
		if diff := cmp.Diff(counts{Responses: 1, Received: 3, Removed: 1},
			counts{got.Responses - before.Responses, got.Received - before.Received, got.Removed - before.Removed}); diff != "" {
			t.Errorf("resync after reconnect (-want +got):\n%s", diff)
		}
	})

	t.Run("new server with the same state", func(t *testing.T) {
		// The previous subtest's gRPC server stopped when it ended; a fresh Server (a restarted istiod-lite)
		// holding the same resources answers with nothing to change.
		fresh := xds.NewServer(xds.ServerConfig{})
		fresh.Set(addrType, messages(want))
		before := st.counts()
		serve(t, fresh, addr)
		eventually(t, "client answered by the fresh server", func() bool { return st.counts().Responses > before.Responses })
		got := st.counts()
		if diff := cmp.Diff(counts{Responses: 1}, counts{got.Responses - before.Responses, got.Received - before.Received, got.Removed - before.Removed}); diff != "" {
			t.Errorf("resync with a fresh server (-want +got):\n%s", diff)
		}
		if diff := diffAddresses(want, st.addresses()); diff != "" {
			t.Errorf("client state (-want +got):\n%s", diff)
		}
	})
}

func TestNackKeepsState(t *testing.T) {
	logs := &syncBuffer{}
	srv := xds.NewServer(xds.ServerConfig{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	want := workloads(2)
	srv.Set(addrType, messages(want))
	_, addr := serve(t, srv, "127.0.0.1:0")
	st := newStore()
	st.reject = func(_ string, updated []*adspb.Resource) error {
		for _, r := range updated {
			if r.GetName() == "bad" {
				return errors.New("workload bad is not acceptable")
			}
		}
		return nil
	}
	waitSynced(t, startClient(t, addr, st, addrType))

	next := workloads(2)
	next["w0"] = workload("w0", 7)
	next["bad"] = workload("bad", 0)
	srv.Set(addrType, messages(next))
	eventually(t, "server counts the nack", func() bool { return srv.Stats().Nacks == 1 })
	if diff := diffAddresses(want, st.addresses()); diff != "" {
		t.Errorf("client state after NACK (-want +got):\n%s", diff)
	}
	if got := logs.String(); !strings.Contains(got, "xds nack") || !strings.Contains(got, "workload bad is not acceptable") {
		t.Errorf("server log = %q, want a warning with the NACK's error detail", got)
	}

	// A later good update is accepted.
	delete(next, "bad")
	srv.Set(addrType, messages(next))
	eventually(t, "fixed update reaches client", func() bool { return diffAddresses(next, st.addresses()) == "" })
}

func TestClientStartedBeforeServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()

	st := newStore()
	c := startClient(t, addr, st, addrType)
	time.Sleep(200 * time.Millisecond) // let the client fail a few times
	select {
	case <-c.Synced():
		t.Fatal("client synced without a server")
	default:
	}

	srv := xds.NewServer(xds.ServerConfig{})
	want := workloads(3)
	srv.Set(addrType, messages(want))
	serve(t, srv, addr)
	waitSynced(t, c)
	if diff := diffAddresses(want, st.addresses()); diff != "" {
		t.Errorf("client addresses (-want +got):\n%s", diff)
	}
	eventually(t, "server lists the client", func() bool { return len(srv.Clients()) == 1 })
	got := srv.Clients()[0]
	if diff := cmp.Diff(xds.ClientInfo{
		NodeID: "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
		Types:  []string{addrType},
	}, got, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".ConnectedAt" }, cmp.Ignore())); diff != "" {
		t.Errorf("Clients()[0] (-want +got):\n%s", diff)
	}
}

// blockingHandler blocks responses of one type until released.
type blockingHandler struct {
	block   string
	release chan struct{}
}

func (h *blockingHandler) OnUpdate(typeURL string, _ []*adspb.Resource, _ []string) error {
	if typeURL == h.block {
		<-h.release
	}
	return nil
}

func TestSyncedAfterEveryType(t *testing.T) {
	const unknownType = "type.googleapis.com/example.Unknown"
	srv := xds.NewServer(xds.ServerConfig{})
	srv.Set(addrType, messages(workloads(1)))
	_, addr := serve(t, srv, "127.0.0.1:0")
	h := &blockingHandler{block: unknownType, release: make(chan struct{})}
	c := startClient(t, addr, h, addrType, authzType, unknownType)

	eventually(t, "client connected", c.Connected)
	select {
	case <-c.Synced():
		t.Fatal("Synced closed before the last type was handled")
	case <-time.After(100 * time.Millisecond):
	}
	close(h.release) // an unknown type still gets an (empty) answer
	waitSynced(t, c)
}

// rawStream opens a DeltaAggregatedResources stream without the client package.
func rawStream(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		conn.Close()
	})
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func names(resp *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, r := range resp.GetResources() {
		out = append(out, r.GetName())
	}
	return out
}

func TestExplicitSubscription(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	srv.Set(addrType, messages(workloads(3)))
	_, addr := serve(t, srv, "127.0.0.1:0")
	s := rawStream(t, addr)
	node := &corev3.Node{Id: "ztunnel~10.0.0.2~z.istio-system~istio-system.svc.cluster.local"}

	recv := func() *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatalf("Send ack: %v", err)
		}
		return resp
	}
	steps := []struct {
		name        string
		req         *discoveryv3.DeltaDiscoveryRequest
		set         map[string]*workloadapi.Address
		wantNames   []string
		wantRemoved []string
	}{
		{
			name:      "first request names one resource",
			req:       &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: addrType, ResourceNamesSubscribe: []string{"w1"}},
			wantNames: []string{"w1"},
		},
		{
			name:        "subscribe to one more and one missing",
			req:         &discoveryv3.DeltaDiscoveryRequest{TypeUrl: addrType, ResourceNamesSubscribe: []string{"w2", "nope"}},
			wantNames:   []string{"w2"},
			wantRemoved: []string{"nope"},
		},
		{
			name:      "changes to unsubscribed resources are not pushed",
			set:       map[string]*workloadapi.Address{"w0": workload("w0", 1), "w1": workload("w1", 1), "w2": workload("w2", 0)},
			wantNames: []string{"w1"},
		},
		{
			name:      "unsubscribe one and subscribe another",
			req:       &discoveryv3.DeltaDiscoveryRequest{TypeUrl: addrType, ResourceNamesSubscribe: []string{"w0"}, ResourceNamesUnsubscribe: []string{"w1"}},
			wantNames: []string{"w0"},
		},
		{
			name:        "unsubscribed resource is no longer pushed",
			set:         map[string]*workloadapi.Address{"w0": workload("w0", 2), "w1": workload("w1", 2)},
			wantNames:   []string{"w0"},
			wantRemoved: []string{"w2"},
		},
	}
	for _, step := range steps {
		if step.req != nil {
			if err := s.Send(step.req); err != nil {
				t.Fatalf("%s: Send: %v", step.name, err)
			}
		}
		if step.set != nil {
			srv.Set(addrType, messages(step.set))
		}
		resp := recv()
		if diff := cmp.Diff(step.wantNames, names(resp)); diff != "" {
			t.Errorf("%s: resources (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(step.wantRemoved, resp.GetRemovedResources()); diff != "" {
			t.Errorf("%s: removed (-want +got):\n%s", step.name, diff)
		}
	}
}

func TestStateOfTheWorldUnimplemented(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	_, addr := serve(t, srv, "127.0.0.1:0")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(context.Background())
	if err == nil {
		_, err = s.Recv()
	}
	if got := status.Code(err); got != codes.Unimplemented {
		t.Errorf("StreamAggregatedResources: code %v (%v), want %v", got, err, codes.Unimplemented)
	}
}

// fanOut is n synced clients of one server holding size workloads.
type fanOut struct {
	srv     *xds.Server
	state   map[string]*workloadapi.Address
	stores  []*store
	clients []*xdsclient.Client
}

func newFanOut(t testing.TB, n, size int) *fanOut {
	f := &fanOut{srv: xds.NewServer(xds.ServerConfig{}), state: workloads(size)}
	f.srv.Set(addrType, messages(f.state))
	_, addr := serve(t, f.srv, "127.0.0.1:0")
	for range n {
		st := newStore()
		st.decode = false
		f.stores = append(f.stores, st)
		f.clients = append(f.clients, startClient(t, addr, st, addrType))
	}
	for _, c := range f.clients {
		waitSynced(t, c)
	}
	return f
}

// change sets a new generation of w0 and waits until every client holds it.
func (f *fanOut) change(t testing.TB, gen int) {
	f.state["w0"] = workload("w0", gen)
	f.srv.Set(addrType, messages(f.state))
	want := f.srv.Version(addrType, "w0")
	timeout := time.After(waitLimit)
	for _, st := range f.stores {
		for st.version("w0") != want {
			select {
			case <-st.updates:
			case <-timeout:
				t.Fatalf("change not received by every client after %v", waitLimit)
			}
		}
	}
}

func TestFanOut(t *testing.T) {
	clients, size := 100, 10000
	if testing.Short() {
		clients, size = 10, 1000
	}
	f := newFanOut(t, clients, size)
	for i, st := range f.stores {
		if got := st.counts().Received; got != size {
			t.Fatalf("client %d received %d resources in its initial sync, want %d", i, got, size)
		}
	}
	f.change(t, 1)
	for i, st := range f.stores {
		if got := st.counts().Received; got != size+1 {
			t.Errorf("client %d received %d resources, want %d (one change)", i, got, size+1)
		}
	}
}

func BenchmarkFanOut(b *testing.B) {
	f := newFanOut(b, 100, 10000)
	b.ResetTimer()
	for i := range b.N {
		f.change(b, i+1)
	}
}

// BenchmarkSet measures a Set of 10,000 workloads in which one changed, with no stream connected.
func BenchmarkSet(b *testing.B) {
	srv := xds.NewServer(xds.ServerConfig{})
	state := workloads(10000)
	srv.Set(addrType, messages(state))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		state["w0"] = workload("w0", i+1)
		srv.Set(addrType, messages(state))
	}
}

// TestSharedInitialState checks the full state encoded once for new
// streams: every new client gets the state current when it subscribes, also
// after changes, and a resource handed over again as the same message is
// not pushed.
func TestSharedInitialState(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	want := workloads(50)
	srv.Set(addrType, messages(want))
	_, addr := serve(t, srv, "127.0.0.1:0")
	var stores []*store
	for gen := range 3 {
		for range 3 {
			st := newStore()
			waitSynced(t, startClient(t, addr, st, addrType))
			if diff := diffAddresses(want, st.addresses()); diff != "" {
				t.Fatalf("generation %d: new client's state (-want +got):\n%s", gen, diff)
			}
			stores = append(stores, st)
		}
		want["w0"] = workload("w0", gen+1)
		srv.Set(addrType, messages(want))
		for _, st := range stores {
			eventually(t, "change reaches every client", func() bool { return diffAddresses(want, st.addresses()) == "" })
		}
	}
	pushes := srv.Stats().Pushes
	srv.Set(addrType, messages(want)) // the same messages
	if got := srv.Stats().Pushes; got != pushes {
		t.Errorf("Stats().Pushes after a Set of the same messages = %d, want %d", got, pushes)
	}
}

// TestStreamEndedByServerIsLogged: a stream the server ends itself (here a
// request it refuses; likewise a push it cannot send on a connection that
// is gone) is logged with its node and error, as one whose client closed
// it is. Such ends were silent, which hid where node-2's xDS stream went
// in the kube user story (tests/kube/podrun).
func TestStreamEndedByServerIsLogged(t *testing.T) {
	logs := &syncBuffer{}
	srv := xds.NewServer(xds.ServerConfig{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	_, addr := serve(t, srv, "127.0.0.1:0")
	s := rawStream(t, addr)
	const node = "ztunnel~10.0.0.3~refused.istio-system~istio-system.svc.cluster.local"
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Recv after a request without type_url = %v, want InvalidArgument", err)
	}
	eventually(t, "the server logs the stream's end", func() bool {
		got := logs.String()
		return strings.Contains(got, `msg="xds stream ended"`) && strings.Contains(got, node) && strings.Contains(got, "type_url")
	})
}
