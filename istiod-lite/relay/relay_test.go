package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/istiod-lite/ca"
	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a relay served over TLS on loopback, with node tokens, as
// istiod-lite serves it.
type fixture struct {
	t      *testing.T
	relay  *Relay
	addr   string
	client *tls.Config
}

var nodeTokens = map[string]string{"token-a": "node-a", "token-b": "node-b"}

func newFixture(t *testing.T, az Authorizer, cfg Config) *fixture {
	t.Helper()
	mesh := identitytest.New(t, "cluster.local")
	istiod := mesh.ID("/ns/istio-system/sa/istiod-lite")
	cfg.Authorizer = az
	cfg.AuthenticateProxy = func(ctx context.Context) (ProxyCaller, error) {
		tok, err := ca.BearerToken(ctx)
		if err != nil {
			return ProxyCaller{}, err
		}
		if n, ok := nodeTokens[tok]; ok {
			return ProxyCaller{Node: n}, nil
		}
		return ProxyCaller{}, errors.New("unknown token")
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svid := mesh.SVID(t, istiod)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(svid))))
	r.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(l) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return &fixture{t: t, relay: r, addr: l.Addr().String(), client: tlsconfig.TLSClientConfig(mesh.Bundle, tlsconfig.AuthorizeID(istiod))}
}

func (f *fixture) conn() *grpc.ClientConn {
	c, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(f.client)))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// proxy is a ztunnel's log service and agent, connected to the relay.
type proxy struct {
	ring  *logstream.Ring
	agent *logstream.Agent
	stop  func()
}

func (f *fixture) startProxy(node, token string, ringSize int) *proxy {
	f.t.Helper()
	ring := logstream.NewRing(ringSize)
	svc := logstream.NewService(logstream.Config{Ring: ring, Kind: logsv1.ProxyKind_ZTUNNEL, Name: node})
	a, err := logstream.NewAgent(logstream.AgentConfig{
		Conn: f.conn(), Service: svc, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Token: func(context.Context) (string, error) { return token, nil },
	})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Start(ctx) }()
	p := &proxy{ring: ring, agent: a}
	p.stop = func() { cancel(); <-done }
	f.t.Cleanup(p.stop)
	return p
}

// waitProxies waits until the relay knows exactly these instances.
func (f *fixture) waitProxies(ps ...*proxy) {
	f.t.Helper()
	want := []string{}
	for _, p := range ps {
		want = append(want, p.agent.Instance())
	}
	slices.Sort(want)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []string
		for _, p := range f.relay.Proxies() {
			got = append(got, p.Instance)
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("relay proxies = %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) watch(ctx context.Context, token string, req *logsv1.WatchRequest) grpc.ServerStreamingClient[logsv1.WatchResponse] {
	f.t.Helper()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	s, err := logsv1.NewLogStreamClient(f.conn()).Watch(ctx, req)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// record of ns/pod at port (its identifying mark in these tests).
func record(ns string, port uint16) *accesslog.Record {
	return &accesslog.Record{
		Direction: accesslog.Inbound, SrcNamespace: ns, DstNamespace: ns, DstWorkload: "echo",
		SrcAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
	}
}

// describe names a response: "node-a:1" for a record of node-a at port 1.
func describe(r *logsv1.WatchResponse) string {
	switch {
	case r.GetRecord() != nil:
		ap := netip.MustParseAddrPort(r.GetRecord().GetSource().GetAddr())
		return r.GetRecord().GetProxy() + ":" + itoa(int(ap.Port()))
	case r.GetLost() != nil:
		return "lost " + r.GetLost().GetProxy()
	case r.GetProxyStatus() != nil:
		return r.GetProxyStatus().GetState().String() + " " + r.GetProxyStatus().GetProxy()
	}
	return "?"
}

func itoa(n int) string {
	return string(rune('0'+n/100%10)) + string(rune('0'+n/10%10)) + string(rune('0'+n%10))
}

func recv(t *testing.T, s grpc.ServerStreamingClient[logsv1.WatchResponse], n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv after %v: %v", out, err)
		}
		out = append(out, describe(r))
	}
	return out
}

var allUsers = &TokenAuthorizer{Tokens: func() map[string]string { return map[string]string{"admin": "reader-token"} }}

// Records of two proxies arrive merged in time order, live ones too.
func TestRelayMergesByTime(t *testing.T) {
	f := newFixture(t, allUsers, Config{Window: 300 * time.Millisecond})
	a := f.startProxy("node-a", "token-a", 64)
	b := f.startProxy("node-b", "token-b", 64)
	f.waitProxies(a, b)
	var want []string
	for i := 1; i <= 6; i++ {
		p, name := a, "node-a"
		if i%2 == 0 {
			p, name = b, "node-b"
		}
		p.ring.Add(record("demo", uint16(i)), 0)
		want = append(want, name+":"+itoa(i))
		time.Sleep(2 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	s := f.watch(ctx, "reader-token", &logsv1.WatchRequest{Follow: true, Last: 100})
	got := recv(t, s, 6)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("backlog (-want +got):\n%s", diff)
	}
	// Live records, in time order whatever proxy logged them.
	want = nil
	for i := 7; i <= 12; i++ {
		p, name := b, "node-b"
		if i%3 == 0 {
			p, name = a, "node-a"
		}
		p.ring.Add(record("demo", uint16(i)), 0)
		want = append(want, name+":"+itoa(i))
		time.Sleep(2 * time.Millisecond)
	}
	got = recv(t, s, 6)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("followed (-want +got):\n%s", diff)
	}
}

// Without follow, the relay returns the newest Last records of all the
// proxies together and ends.
func TestRelayLastWithoutFollow(t *testing.T) {
	f := newFixture(t, allUsers, Config{})
	a := f.startProxy("node-a", "token-a", 64)
	b := f.startProxy("node-b", "token-b", 64)
	f.waitProxies(a, b)
	for i := 1; i <= 6; i++ {
		p := a
		if i%2 == 0 {
			p = b
		}
		p.ring.Add(record("demo", uint16(i)), 0)
		time.Sleep(2 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	s := f.watch(ctx, "reader-token", &logsv1.WatchRequest{Last: 3})
	var got []string
	for {
		r, err := s.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Recv: %v", err)
			}
			break
		}
		got = append(got, describe(r))
	}
	if diff := cmp.Diff([]string{"node-b:004", "node-a:005", "node-b:006"}, got); diff != "" {
		t.Errorf("last 3 (-want +got):\n%s", diff)
	}
}

// A proxy that restarts (a new instance) rejoins the stream of a watch
// that follows.
func TestRelayFollowsRestartedProxy(t *testing.T) {
	f := newFixture(t, allUsers, Config{Window: 100 * time.Millisecond})
	a := f.startProxy("node-a", "token-a", 64)
	b := f.startProxy("node-b", "token-b", 64)
	f.waitProxies(a, b)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	s := f.watch(ctx, "reader-token", &logsv1.WatchRequest{Follow: true, Last: 100})
	b.ring.Add(record("demo", 1), 0)
	if diff := cmp.Diff([]string{"node-b:001"}, recv(t, s, 1)); diff != "" {
		t.Fatalf("before the restart (-want +got):\n%s", diff)
	}
	b.stop()
	if diff := cmp.Diff([]string{"DISCONNECTED node-b"}, recv(t, s, 1)); diff != "" {
		t.Fatalf("after the stop (-want +got):\n%s", diff)
	}
	b2 := f.startProxy("node-b", "token-b", 64)
	b2.ring.Add(record("demo", 2), 0) // logged before it reconnected
	if diff := cmp.Diff([]string{"CONNECTED node-b", "node-b:002"}, recv(t, s, 2)); diff != "" {
		t.Fatalf("after the restart (-want +got):\n%s", diff)
	}
	b2.ring.Add(record("demo", 3), 0)
	a.ring.Add(record("demo", 4), 0)
	if diff := cmp.Diff([]string{"node-b:003", "node-a:004"}, recv(t, s, 2)); diff != "" {
		t.Errorf("live after the restart (-want +got):\n%s", diff)
	}
}

// A ztunnel may speak only for its own node.
func TestRelayRefusesProxyClaimingAnotherNode(t *testing.T) {
	f := newFixture(t, allUsers, Config{})
	for _, tc := range []struct {
		name, token string
		hello       *logsv1.ProxyMessage_Hello
		want        codes.Code
	}{
		{"another node", "token-a", &logsv1.ProxyMessage_Hello{Kind: logsv1.ProxyKind_ZTUNNEL, Name: "node-b"}, codes.PermissionDenied},
		{"no token", "", &logsv1.ProxyMessage_Hello{Kind: logsv1.ProxyKind_ZTUNNEL, Name: "node-a"}, codes.Unauthenticated},
		{"bad token", "token-x", &logsv1.ProxyMessage_Hello{Kind: logsv1.ProxyKind_ZTUNNEL, Name: "node-a"}, codes.Unauthenticated},
		{"waypoint without namespace", "token-a", &logsv1.ProxyMessage_Hello{Kind: logsv1.ProxyKind_WAYPOINT, Name: "waypoint"}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if tc.token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
			}
			s, err := logsv1.NewLogRelayClient(f.conn()).Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			s.Send(&logsv1.ProxyMessage{Hello: tc.hello})
			_, err = s.Recv()
			if status.Code(err) != tc.want {
				t.Errorf("Connect as %v with %q: %v, want %v", tc.hello, tc.token, err, tc.want)
			}
		})
	}
	if ps := f.relay.Proxies(); len(ps) != 0 {
		t.Errorf("relay proxies = %v, want none", ps)
	}
}

// namespaceAuthorizer lets its one user read namespace a only (what
// KubeAuthorizer derives from SubjectAccessReviews; tests/kube checks it
// against a real API server).
type namespaceAuthorizer struct{}

func (namespaceAuthorizer) Authorize(ctx context.Context, ns []string) (*Access, error) {
	if _, err := ca.BearerToken(ctx); err != nil {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}
	for _, n := range ns {
		if n != "a" {
			return nil, status.Errorf(codes.PermissionDenied, "namespace %s", n)
		}
	}
	return &Access{User: "alice", Namespaces: []string{"a"}}, nil
}

// A caller sees only namespaces it may read; asking for another is
// PermissionDenied.
func TestRelayRestrictsNamespaces(t *testing.T) {
	f := newFixture(t, namespaceAuthorizer{}, Config{Window: 50 * time.Millisecond})
	a := f.startProxy("node-a", "token-a", 64)
	f.waitProxies(a)
	a.ring.Add(record("b", 1), 0)
	a.ring.Add(record("a", 2), 0)
	a.ring.Add(record("b", 3), 0)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	// No namespace asked: a's only.
	s := f.watch(ctx, "alice-token", &logsv1.WatchRequest{Follow: true, Last: 100})
	a.ring.Add(record("b", 4), 0)
	a.ring.Add(record("a", 5), 0)
	if diff := cmp.Diff([]string{"node-a:002", "node-a:005"}, recv(t, s, 2)); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		name  string
		token string
		req   *logsv1.WatchRequest
		want  codes.Code
	}{
		{"namespace b", "alice-token", &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Namespace: []string{"b"}}}}, codes.PermissionDenied},
		{"a or b", "alice-token", &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Namespace: []string{"a"}}, {SourceNamespace: []string{"b"}}}}, codes.PermissionDenied},
		{"no token", "", &logsv1.WatchRequest{}, codes.Unauthenticated},
		{"bad filter", "alice-token", &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{HttpPath: []string{"("}}}}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.watch(ctx, tc.token, tc.req).Recv()
			if status.Code(err) != tc.want {
				t.Errorf("Watch(%v): %v, want %v", tc.req, err, tc.want)
			}
		})
	}
}

// A caller that stops reading slows nobody: the proxy's ring moves on and
// the caller is told how many records it lost.
func TestRelaySlowCallerIsToldWhatItLost(t *testing.T) {
	f := newFixture(t, allUsers, Config{Window: time.Millisecond, MaxBuffered: 16})
	a := f.startProxy("node-a", "token-a", 64)
	f.waitProxies(a)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	a.ring.Add(record("demo", 1), 0)
	s := f.watch(ctx, "reader-token", &logsv1.WatchRequest{Follow: true, Last: 1})
	recv(t, s, 1) // the proxy follows; now the caller stops reading
	const n = 100000
	start := time.Now()
	for i := range n {
		a.ring.Add(record("demo", uint16(i%1000)), 0)
	}
	t.Logf("%d records logged in %v while the caller did not read", n, time.Since(start))
	var records, lost uint64
	for records+lost < n {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv after %d records, %d lost: %v", records, lost, err)
		}
		switch {
		case r.GetRecord() != nil:
			records++
		case r.GetLost() != nil:
			lost += r.GetLost().GetCount()
		}
	}
	if lost == 0 || records+lost != n {
		t.Errorf("records %d + lost %d, want %d with some lost", records, lost, n)
	}
}

// A proxy joining while more watches follow than its command queue holds
// is asked by every one of them.
func TestRelayProxyJoinsManyFollowers(t *testing.T) {
	f := newFixture(t, allUsers, Config{Window: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const watchers = 100 // more than proxyConn.cmds holds
	var streams []grpc.ServerStreamingClient[logsv1.WatchResponse]
	for range watchers {
		streams = append(streams, f.watch(ctx, "reader-token", &logsv1.WatchRequest{Follow: true}))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.relay.mu.Lock()
		n := len(f.relay.watches)
		f.relay.mu.Unlock()
		if n == watchers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d watches registered, want %d", n, watchers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	a := f.startProxy("node-a", "token-a", 64)
	f.waitProxies(a)
	a.ring.Add(record("demo", 1), 0)
	for i, s := range streams {
		if diff := cmp.Diff([]string{"CONNECTED node-a", "node-a:001"}, recv(t, s, 2)); diff != "" {
			t.Fatalf("watch %d (-want +got):\n%s", i, diff)
		}
	}
}
