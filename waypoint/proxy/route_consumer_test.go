package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	wp "github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Consumer routes (GEP-1294): entries with a consumer namespace apply only
// to clients of that namespace, instead of the producer entries, port by
// port.

func TestSourceNamespace(t *testing.T) {
	tests := []struct {
		id   string
		want string
	}{
		{id: "spiffe://cluster.local/ns/shop/sa/buyer", want: "shop"},
		{id: "spiffe://cluster.local/ns/default/sa/sleep", want: "default"},
		{id: "spiffe://cluster.local/ns/shop", want: ""},
		{id: "spiffe://cluster.local/workload/shop", want: ""},
		{id: "spiffe://cluster.local", want: ""},
		{id: "", want: ""},
	}
	for _, tt := range tests {
		var id spiffeid.ID
		if tt.id != "" {
			id = spiffeid.RequireFromString(tt.id)
		}
		if got := sourceNamespace(id); got != tt.want {
			t.Errorf("sourceNamespace(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
}

// consumerRoutes: producer routes on port 80; shop's consumer routes on
// port 80 (only /shop); web's on port 9090 only.
func consumerRoutes() *serviceRoutes {
	rt := CompileRoutes([]*wp.Routes{{Service: "default/a",
		Http: []*wp.HTTPRouteEntry{
			{Route: "default/producer", Port: 80, Match: &wp.HTTPMatch{Path: prefix("/")}},
			{Route: "shop/only", Port: 80, Match: &wp.HTTPMatch{Path: exact("/shop")}, ConsumerNamespace: "shop"},
			{Route: "web/grpc", Port: 9090, Match: &wp.HTTPMatch{Path: prefix("/")}, ConsumerNamespace: "web"},
		},
		Tcp: []*wp.TCPRouteEntry{
			{Route: "default/tcp", Port: 7000},
			{Route: "shop/tcp", Port: 7000, ConsumerNamespace: "shop"},
			{Route: "web/tcp", Port: 7001, ConsumerNamespace: "web"},
		},
	}})
	return rt.services["default/a"]
}

func TestRouteHTTPConsumer(t *testing.T) {
	sr := consumerRoutes()
	tests := []struct {
		name       string
		src        string // the client's SPIFFE ID
		target     string
		port       uint16
		wantRoute  string
		wantRouted bool
	}{
		{name: "a producer-namespace client: producer routes", src: "spiffe://cluster.local/ns/default/sa/sleep", target: "/shop", port: 80, wantRoute: "default/producer", wantRouted: true},
		{name: "a client of a third namespace: producer routes", src: "spiffe://cluster.local/ns/other/sa/x", target: "/shop", port: 80, wantRoute: "default/producer", wantRouted: true},
		{name: "a consumer-namespace client: its consumer route", src: "spiffe://cluster.local/ns/shop/sa/buyer", target: "/shop", port: 80, wantRoute: "shop/only", wantRouted: true},
		{name: "a consumer route replaces the producer routes: no fall through", src: "spiffe://cluster.local/ns/shop/sa/buyer", target: "/elsewhere", port: 80, wantRoute: "", wantRouted: true},
		{name: "consumer routes of another port leave this port to the producer routes", src: "spiffe://cluster.local/ns/web/sa/site", target: "/", port: 80, wantRoute: "default/producer", wantRouted: true},
		{name: "a consumer route's own port", src: "spiffe://cluster.local/ns/web/sa/site", target: "/", port: 9090, wantRoute: "web/grpc", wantRouted: true},
		{name: "a port only a consumer routes is not routed for others", src: "spiffe://cluster.local/ns/default/sa/sleep", target: "/", port: 9090, wantRoute: "", wantRouted: false},
		{name: "a peer that is not a workload identity: producer routes", src: "spiffe://cluster.local/gateway", target: "/shop", port: 80, wantRoute: "default/producer", wantRouted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := spiffeid.RequireFromString(tt.src)
			hr, routed := sr.httpFor(src, tt.port).routeHTTP(newRequestView(httptest.NewRequest(http.MethodGet, tt.target, nil)), tt.port)
			got := ""
			if hr != nil {
				got = hr.name
			}
			if got != tt.wantRoute || routed != tt.wantRouted {
				t.Errorf("httpFor(%s, %d).routeHTTP(%s) = %q, %v, want %q, %v", tt.src, tt.port, tt.target, got, routed, tt.wantRoute, tt.wantRouted)
			}
		})
	}
}

func TestRouteTCPConsumer(t *testing.T) {
	sr := consumerRoutes()
	tests := []struct {
		src  string
		port uint16
		want string
	}{
		{src: "spiffe://cluster.local/ns/default/sa/sleep", port: 7000, want: "default/tcp"},
		{src: "spiffe://cluster.local/ns/shop/sa/buyer", port: 7000, want: "shop/tcp"},
		{src: "spiffe://cluster.local/ns/web/sa/site", port: 7000, want: "default/tcp"},
		{src: "spiffe://cluster.local/ns/web/sa/site", port: 7001, want: "web/tcp"},
		{src: "spiffe://cluster.local/ns/default/sa/sleep", port: 7001, want: ""},
	}
	for _, tt := range tests {
		got := ""
		if tr := sr.routeTCPFor(spiffeid.RequireFromString(tt.src), tt.port); tr != nil {
			got = tr.name
		}
		if got != tt.want {
			t.Errorf("routeTCPFor(%s, %d) = %q, want %q", tt.src, tt.port, got, tt.want)
		}
	}
}

// The choice of a consumer group allocates nothing (the namespace is a
// substring of the identity's path, the map lookup takes it as is).
func TestRouteConsumerAllocs(t *testing.T) {
	sr := consumerRoutes()
	src := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/buyer")
	r := httptest.NewRequest(http.MethodGet, "/shop", nil)
	var hr *httpRoute
	allocs := testing.AllocsPerRun(100, func() {
		var v requestView
		v.init(r)
		hr, _ = sr.httpFor(src, 80).routeHTTP(&v, 80)
	})
	if hr == nil || hr.name != "shop/only" {
		t.Fatalf("routeHTTP = %v, want shop/only", hr)
	}
	if allocs != 0 {
		t.Errorf("consumer route decision: %v allocations, want 0", allocs)
	}
}

// dialAs opens a tunnel to the waypoint as the client pod would, with
// the identity src.
func (m *mesh) dialAs(ctx context.Context, src spiffeid.ID, authority netip.AddrPort) (net.Conn, error) {
	return m.srcPool.Dial(ctx, hbone.Target{
		Addr:       m.waypointAddr,
		Authority:  authority.String(),
		SourceID:   src,
		DestIDs:    []spiffeid.ID{m.waypointID},
		SourceAddr: clientIP,
	})
}

// clientAs is m.client for a client of identity src (HTTP/1.1).
func (m *mesh) clientAs(t *testing.T, src spiffeid.ID, authority netip.AddrPort) *http.Client {
	t.Helper()
	var protos http.Protocols
	protos.SetHTTP1(true)
	tr := &http.Transport{
		Protocols:   &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return m.dialAs(ctx, src, authority) },
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// MeshConsumerRoute of the Gateway API conformance suite, at the
// waypoint: a consumer route of namespace shop sets a response header for
// shop's clients only; the producer route sends everyone else to v1.
func TestRouteConsumerMesh(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{
		{Route: "default/producer", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")}, Backends: []*wp.Backend{backend("v1", 1)}},
		{Route: "shop/add-header", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")}, ConsumerNamespace: "shop",
			Filters: []*wp.HTTPFilter{{Kind: &wp.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: &wp.HeaderModifier{
				Set: []*wp.Header{{Name: "X-Header-Set", Value: "set"}}}}}},
			Backends: []*wp.Backend{backend("v2", 1)}},
	})
	tests := []struct {
		name       string
		src        spiffeid.ID
		wantPod    string
		wantHeader string
	}{
		{name: "a client of the consumer route's namespace", src: m.ca.ID("/ns/shop/sa/buyer"), wantPod: "v2", wantHeader: "set"},
		{name: "a client of the Service's namespace", src: m.clientID, wantPod: "v1"},
		{name: "a client of a third namespace", src: m.ca.ID("/ns/other/sa/x"), wantPod: "v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := m.clientAs(t, tt.src, echoHTTP)
			resp, _ := do(t, c, http.MethodGet, "/", nil, "")
			if got, gotHeader := resp.Header.Get("X-Pod"), resp.Header.Get("X-Header-Set"); resp.StatusCode != http.StatusOK || got != tt.wantPod || gotHeader != tt.wantHeader {
				t.Errorf("GET / as %v = %d from %q, X-Header-Set %q; want 200 from %q, X-Header-Set %q",
					tt.src, resp.StatusCode, got, gotHeader, tt.wantPod, tt.wantHeader)
			}
		})
	}
}

// A consumer TCPRoute picks the backend of its namespace's streams only.
func TestTCPRouteConsumerMesh(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes(nil,
		&wp.TCPRouteEntry{Route: "default/tcp", Port: portTCP, Backends: []*wp.Backend{{Service: "default/v1.default.svc.cluster.local", Port: portTCP, Weight: 1}}},
		&wp.TCPRouteEntry{Route: "shop/tcp", Port: portTCP, ConsumerNamespace: "shop", Backends: []*wp.Backend{{Service: "default/v2.default.svc.cluster.local", Port: portTCP, Weight: 1}}},
	)
	for _, tt := range []struct {
		src  spiffeid.ID
		want string
	}{
		{src: m.ca.ID("/ns/shop/sa/buyer"), want: "v2"},
		{src: m.clientID, want: "v1"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := m.dialAs(ctx, tt.src, netip.AddrPortFrom(echoVIP, portTCP))
		if err != nil {
			cancel()
			t.Fatalf("dial as %v: %v", tt.src, err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "who\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		cancel()
		if err != nil || line != tt.want+"\n" {
			t.Errorf("TCP stream as %v answered %q, %v; want %q", tt.src, line, err, tt.want+"\n")
		}
	}
}
