package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	wp "github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Load balancing and outlier ejection through the whole test mesh (real
// HBONE to each pod's ztunnel): Service trio has three pods, one of which
// has nothing listening on its port, so that its ztunnel refuses the
// waypoint's CONNECT (503): a failure to connect.

// closedPort returns a port of ip on which nothing listens.
func closedPort(t *testing.T, ip netip.Addr) uint16 {
	t.Helper()
	ln := listen(t, netip.AddrPortFrom(ip, 0).String())
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	return port
}

// waitIdle waits (at most 5s) until no request is in flight at any
// endpoint, and reports the hosts that still have some.
func waitIdle(t *testing.T, b *balancer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !noneActive(activeByHost(b)) {
		if time.Now().After(deadline) {
			t.Errorf("requests in flight after every answer = %v, want none", activeByHost(b))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeadEndpointEjected(t *testing.T) {
	m := newMesh(t)
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	m.proxy.lb.now = clock.now // before any request
	live1 := m.startPod(t, netip.MustParseAddr("127.0.3.21"), "live1")
	live2 := m.startPod(t, netip.MustParseAddr("127.0.3.22"), "live2")
	dead := m.startPod(t, netip.MustParseAddr("127.0.3.23"), "dead")
	dead.httpPort = closedPort(t, dead.ip)
	m.addService(t, "trio", netip.MustParseAddr("127.0.9.31"), live1, live2, dead)
	route := func(retry *wp.Retry) {
		m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/trio", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
			Backends: []*wp.Backend{backend("trio", 1)}, Retry: retry}})
	}
	route(nil) // no retry: every connection failure shows
	c := m.client(t, echoHTTP, false)

	// Until ejected, the dead endpoint answers 503 (UF) when picked.
	failed := 0
	for i := 0; failed < consecutiveConnectFailures && i < 300; i++ {
		resp, body := do(t, c, http.MethodGet, "/", nil, "")
		switch {
		case resp.StatusCode == http.StatusOK:
		case resp.StatusCode == http.StatusServiceUnavailable && body == upstreamFailureBody:
			failed++
		default:
			t.Fatalf("GET / = %d %q, want 200 or 503 %q", resp.StatusCode, body, upstreamFailureBody)
		}
	}
	if failed != consecutiveConnectFailures {
		t.Fatalf("%d connection failures in 300 requests, want %d: the dead endpoint is not picked", failed, consecutiveConnectFailures)
	}
	if got := testutil.ToFloat64(m.proxy.lb.metrics.ejections); got != 1 {
		t.Fatalf("%s = %v after %d failures, want 1", OutlierEjectionsName, got, failed)
	}

	// Ejected: every request succeeds, on the live pods.
	before := live1.hits.Load() + live2.hits.Load()
	for range 100 {
		if resp, body := do(t, c, http.MethodGet, "/", nil, ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / with the dead endpoint ejected = %d %q, want 200", resp.StatusCode, body)
		}
	}
	if got := live1.hits.Load() + live2.hits.Load() - before; got != 100 {
		t.Errorf("live pods got %d of 100 requests, want all", got)
	}
	if live1.hits.Load() == 0 || live2.hits.Load() == 0 {
		t.Errorf("live pods got %d and %d requests, want both some", live1.hits.Load(), live2.hits.Load())
	}
	waitIdle(t, m.proxy.lb)

	// After the ejection time the dead endpoint is tried again; with a
	// retry (Istio's default policy) its failures are retried on another
	// endpoint, and every request still succeeds.
	clock.advance(baseEjectionTime)
	route(&wp.Retry{Attempts: 2, BackoffMs: 1})
	for range 30 {
		if resp, body := do(t, c, http.MethodGet, "/", nil, ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / with retries = %d %q, want 200", resp.StatusCode, body)
		}
	}
	if got := testutil.ToFloat64(m.proxy.lb.metrics.ejections); got != 2 {
		t.Errorf("%s = %v after the dead endpoint was tried again, want 2", OutlierEjectionsName, got)
	}

	waitIdle(t, m.proxy.lb)

	// A request the client gives up on (HTTP/2: its stream reset), and one
	// the route's timeout ends, release their endpoint too.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url(echoHTTP, "/slow"), nil)
	if resp, err := m.client(t, echoHTTP, true).Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("GET /slow answered %d, want the client to give up", resp.StatusCode)
	}
	cancel()
	waitIdle(t, m.proxy.lb)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/trio", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Backends: []*wp.Backend{backend("trio", 1)}, RequestTimeoutMs: 200}})
	if resp, _ := do(t, c, http.MethodGet, "/slow", nil, ""); resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("GET /slow with a 200ms route timeout = %d, want 504", resp.StatusCode)
	}
	waitIdle(t, m.proxy.lb)
	if d := time.Since(start); d >= 5*time.Second {
		t.Errorf("cancelled requests were released after %v: the endpoint's answer (5s) was awaited", d)
	}
}

func TestTCPStreamsBalanced(t *testing.T) {
	// TCP streams hold their endpoint while open and count connection
	// failures too: the dead endpoint is ejected, the rest succeed.
	m := newMesh(t)
	live := m.startPod(t, netip.MustParseAddr("127.0.3.24"), "live")
	dead := m.startPod(t, netip.MustParseAddr("127.0.3.25"), "dead")
	dead.tcpPort = closedPort(t, dead.ip)
	m.addService(t, "duo", netip.MustParseAddr("127.0.9.32"), live, dead)
	m.setRoutes(nil, &wp.TCPRouteEntry{Route: "default/tcp", Port: portTCP, Backends: []*wp.Backend{
		{Service: "default/duo.default.svc.cluster.local", Port: portTCP, Weight: 1}}})
	stream := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portTCP))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte("who\n"))
		buf := make([]byte, 64)
		n, _ := conn.Read(buf)
		return string(buf[:n])
	}
	failed := 0
	for i := 0; failed < consecutiveConnectFailures && i < 200; i++ {
		if stream() == "" {
			failed++
		}
	}
	if got := testutil.ToFloat64(m.proxy.lb.metrics.ejections); got != 1 || failed != consecutiveConnectFailures {
		t.Fatalf("after %d failed streams %s = %v, want %d failures and 1 ejection", failed, OutlierEjectionsName, got, consecutiveConnectFailures)
	}
	for range 20 {
		if got := stream(); got != "live\n" {
			t.Fatalf("stream with the dead endpoint ejected answered %q, want %q", got, "live\n")
		}
	}
	waitIdle(t, m.proxy.lb)
}
