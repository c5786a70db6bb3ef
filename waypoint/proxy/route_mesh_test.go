package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	wp "github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// Routing through the whole test mesh: routes on the echo Service (bound
// to the waypoint) send its requests to backend Services whose pods
// (testPod, each with its own ztunnel) say who answered.

// testPod is a backend pod: an HTTP application that answers with its
// name and what it received, a TCP application that writes its name, and
// its ztunnel.
type testPod struct {
	name     string
	ip       netip.Addr
	httpPort uint16
	tcpPort  uint16
	hits     atomic.Int64
	status   atomic.Int32 // the HTTP answer's status; 0: 200
	reset    atomic.Bool  // close the connection without an answer
	reqs     chan podRequest
}

// podRequest is what a pod's application received, and its answer.
type podRequest struct {
	Pod, Method, Path, Host, Body string
	Header                        http.Header
}

func (m *mesh) startPod(t *testing.T, ip netip.Addr, name string) *testPod {
	t.Helper()
	pod := &testPod{name: name, ip: ip, reqs: make(chan podRequest, 16)}
	ln := listen(t, netip.AddrPortFrom(ip, 0).String())
	pod.httpPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pod.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		pr := podRequest{Pod: name, Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Body: string(body), Header: r.Header.Clone()}
		select {
		case pod.reqs <- pr:
		default: // nobody waits for it
		}
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}
		if pod.reset.Load() {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		w.Header().Set("X-Pod", name)
		if code := pod.status.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(pr)
	})}
	go srv.Serve(ln)
	m.closeFns = append(m.closeFns, func() { srv.Close() })

	tcpLn := listen(t, netip.AddrPortFrom(ip, 0).String())
	pod.tcpPort = uint16(tcpLn.Addr().(*net.TCPAddr).Port)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, name+"\n")
			})
		}
	})
	m.closeFns = append(m.closeFns, func() { tcpLn.Close(); wg.Wait() })

	zLn := listen(t, netip.AddrPortFrom(ip, m.hbonePort).String())
	m.serveZtunnel(t, zLn, nil)
	return pod
}

// addService adds Service name (port 80 HTTP, port 7000 TCP) with pods as
// its endpoints.
func (m *mesh) addService(t *testing.T, name string, vip netip.Addr, pods ...*testPod) {
	t.Helper()
	key := "default/" + name + ".default.svc.cluster.local"
	updated := []*adspb.Resource{resource(t, key, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: name, Namespace: "default", Hostname: name + ".default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: portHTTP}, {ServicePort: portTCP}},
	}}})}
	for _, p := range pods {
		updated = append(updated, resource(t, p.name, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: p.name, Name: p.name, Namespace: "default", ServiceAccount: "echo", WorkloadName: p.name, CanonicalName: p.name,
			Addresses: [][]byte{p.ip.AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
			Services: map[string]*workloadapi.PortList{key: {Ports: []*workloadapi.Port{
				{ServicePort: portHTTP, TargetPort: uint32(p.httpPort)},
				{ServicePort: portTCP, TargetPort: uint32(p.tcpPort)},
			}}},
		}}}))
	}
	if err := m.store.OnUpdate(workloadapi.AddressTypeURL, updated, nil); err != nil {
		t.Fatalf("store.OnUpdate() error = %v", err)
	}
}

// setRoutes puts routes on the echo Service.
func (m *mesh) setRoutes(http []*wp.HTTPRouteEntry, tcp ...*wp.TCPRouteEntry) {
	m.routes.Store(CompileRoutes([]*wp.Routes{{Service: "default/" + echoHost, Http: http, Tcp: tcp}}))
}

func backend(name string, weight uint32) *wp.Backend {
	return &wp.Backend{Service: "default/" + name + ".default.svc.cluster.local", Port: portHTTP, Weight: weight}
}

// routeMesh is the mesh with Services v1 and v2 of one pod each.
func routeMesh(t *testing.T) (m *mesh, v1, v2 *testPod) {
	m = newMesh(t)
	v1 = m.startPod(t, netip.MustParseAddr("127.0.3.11"), "v1")
	v2 = m.startPod(t, netip.MustParseAddr("127.0.3.12"), "v2")
	m.addService(t, "v1", netip.MustParseAddr("127.0.9.21"), v1)
	m.addService(t, "v2", netip.MustParseAddr("127.0.9.22"), v2)
	return m, v1, v2
}

var echoHTTP = netip.AddrPortFrom(echoVIP, portHTTP)

// do sends one request to the echo Service through the waypoint.
func do(t *testing.T, c *http.Client, method, path string, header http.Header, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url(echoHTTP, path), rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestRouteWeightedSplit(t *testing.T) {
	m, v1, v2 := routeMesh(t)
	never := m.startPod(t, netip.MustParseAddr("127.0.3.13"), "never")
	m.addService(t, "never", netip.MustParseAddr("127.0.9.23"), never)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/split", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Backends: []*wp.Backend{backend("v1", 90), backend("v2", 10), backend("never", 0)}}})
	c := m.client(t, echoHTTP, false)
	const n = 1000
	got := map[string]int{}
	for range n {
		resp, _ := do(t, c, http.MethodGet, "/split", nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /split = %d, want 200", resp.StatusCode)
		}
		got[resp.Header.Get("X-Pod")]++
	}
	// The figure: within ±3 % of 90/10 over 1,000 requests.
	if share := float64(got["v2"]) / n; share < 0.07 || share > 0.13 {
		t.Errorf("v2 took %d of %d requests (%.1f %%), want 10 %% ± 3", got["v2"], n, share*100)
	}
	if got["v1"]+got["v2"] != n {
		t.Errorf("answers by pod = %v, want only v1 and v2", got)
	}
	if h := never.hits.Load(); h != 0 {
		t.Errorf("the 0-weight backend got %d requests, want 0", h)
	}
	if v1.hits.Load() != int64(got["v1"]) || v2.hits.Load() != int64(got["v2"]) {
		t.Errorf("pods counted v1=%d v2=%d, answers said %v", v1.hits.Load(), v2.hits.Load(), got)
	}
	// destination_service is the backend's, as Istio's waypoint reports
	// the upstream cluster's service.
	wantMetric(t, m, "istio_requests_total", map[string]string{"destination_service": "v2.default.svc.cluster.local", "response_code": "200"}, float64(got["v2"]))
}

func TestRouteHeaderMatch(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{
		{Route: "default/canary", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/"), Headers: []*wp.HeaderMatch{{Name: "x-canary", Value: exact("true")}}}, Backends: []*wp.Backend{backend("v2", 1)}},
		{Route: "default/stable", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")}, Backends: []*wp.Backend{backend("v1", 1)}},
	})
	c := m.client(t, echoHTTP, false)
	logs, cancel := m.access.Subscribe(64)
	defer cancel()
	for i := range 20 {
		marked := i%2 == 0
		var h http.Header
		want := "v1"
		if marked {
			h, want = http.Header{"X-Canary": {"true"}}, "v2"
		}
		resp, _ := do(t, c, http.MethodGet, "/", h, "")
		if got := resp.Header.Get("X-Pod"); resp.StatusCode != http.StatusOK || got != want {
			t.Errorf("GET / (marked %v) = %d from %q, want 200 from %q", marked, resp.StatusCode, got, want)
		}
		rec := recv(t, logs, "access log record")
		wantRoute := "default/stable"
		if marked {
			wantRoute = "default/canary"
		}
		if rec.Route != wantRoute {
			t.Errorf("access log route = %q, want %q", rec.Route, wantRoute)
		}
	}
}

func TestRouteNoMatch(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/only", Port: portHTTP, Match: &wp.HTTPMatch{Path: exact("/only")}, Backends: []*wp.Backend{backend("v1", 1)}}})
	c := m.client(t, echoHTTP, false)
	if resp, _ := do(t, c, http.MethodGet, "/only", nil, ""); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Pod") != "v1" {
		t.Errorf("GET /only = %d from %q, want 200 from v1", resp.StatusCode, resp.Header.Get("X-Pod"))
	}
	if resp, _ := do(t, c, http.MethodGet, "/other", nil, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other = %d, want 404", resp.StatusCode)
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"response_code": "404", "response_flags": "NR"}, 1)
}

func TestRouteLocalAnswers(t *testing.T) {
	m, v1, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{
		{Route: "default/invalid", Port: portHTTP, Match: &wp.HTTPMatch{Path: exact("/invalid")}, Invalid: "unsupported filter", Backends: []*wp.Backend{backend("v1", 1)}},
		{Route: "default/zero", Port: portHTTP, Match: &wp.HTTPMatch{Path: exact("/zero")}, Backends: []*wp.Backend{backend("v1", 0)}},
		{Route: "default/none", Port: portHTTP, Match: &wp.HTTPMatch{Path: exact("/none")}},
		{Route: "default/badref", Port: portHTTP, Match: &wp.HTTPMatch{Path: exact("/badref")}, Backends: []*wp.Backend{{Weight: 1, Invalid: "BackendNotFound"}}},
		{Route: "default/redirect", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/old")}, Filters: []*wp.HTTPFilter{{Kind: &wp.HTTPFilter_RequestRedirect{RequestRedirect: &wp.RequestRedirect{
			Hostname: "example.org", StatusCode: 301, Path: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/new"}}}}}},
	})
	c := m.client(t, echoHTTP, false)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, path := range []string{"/invalid", "/zero", "/none", "/badref"} {
		if resp, _ := do(t, c, http.MethodGet, path, nil, ""); resp.StatusCode != http.StatusInternalServerError {
			t.Errorf("GET %s = %d, want 500", path, resp.StatusCode)
		}
	}
	resp, _ := do(t, c, http.MethodGet, "/old/page?x=1", nil, "")
	if got := resp.Header.Get("Location"); resp.StatusCode != http.StatusMovedPermanently || got != "http://example.org/new/page?x=1" {
		t.Errorf("GET /old/page?x=1 = %d Location %q, want 301 Location %q", resp.StatusCode, got, "http://example.org/new/page?x=1")
	}
	if h := v1.hits.Load(); h != 0 {
		t.Errorf("v1 got %d requests, want 0 (every answer is the waypoint's)", h)
	}
}

func TestRouteFilters(t *testing.T) {
	m, v1, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/rewrite", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/api")},
		Filters: []*wp.HTTPFilter{
			{Kind: &wp.HTTPFilter_UrlRewrite{UrlRewrite: &wp.URLRewrite{Hostname: "rewritten.example", Path: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/v2"}}}},
			{Kind: &wp.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &wp.HeaderModifier{
				Set: []*wp.Header{{Name: "X-Set", Value: "set"}}, Add: []*wp.Header{{Name: "X-Add", Value: "added"}}, Remove: []string{"X-Remove"}}}},
			{Kind: &wp.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: &wp.HeaderModifier{
				Set: []*wp.Header{{Name: "X-Answer", Value: "modified"}}, Remove: []string{"X-Pod"}}}},
		},
		Backends: []*wp.Backend{{Service: "default/v1.default.svc.cluster.local", Port: portHTTP, Weight: 1, Filters: []*wp.HTTPFilter{
			{Kind: &wp.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &wp.HeaderModifier{Set: []*wp.Header{{Name: "X-Backend", Value: "v1"}}}}},
		}}},
	}})
	c := m.client(t, echoHTTP, false)
	for _, h2 := range []bool{false, true} {
		if h2 {
			c = m.client(t, echoHTTP, true)
		}
		resp, _ := do(t, c, http.MethodGet, "/api/items?q=1", http.Header{"X-Set": {"old"}, "X-Add": {"first"}, "X-Remove": {"x"}}, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/items (h2 %v) = %d, want 200", h2, resp.StatusCode)
		}
		if got, want := resp.Header.Get("X-Answer"), "modified"; got != want {
			t.Errorf("answer's X-Answer (h2 %v) = %q, want %q", h2, got, want)
		}
		if got := resp.Header.Get("X-Pod"); got != "" {
			t.Errorf("answer's X-Pod (h2 %v) = %q, want removed", h2, got)
		}
		pr := recv(t, v1.reqs, "request at v1")
		if pr.Path != "/v2/items?q=1" || pr.Host != "rewritten.example" {
			t.Errorf("v1 got %s with Host %s (h2 %v), want /v2/items?q=1 with Host rewritten.example", pr.Path, pr.Host, h2)
		}
		for name, want := range map[string][]string{"X-Set": {"set"}, "X-Add": {"first", "added"}, "X-Backend": {"v1"}, "X-Remove": nil} {
			if got := pr.Header[name]; strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("v1 got %s: %q (h2 %v), want %q", name, got, h2, want)
			}
		}
	}
}

func TestRouteCORS(t *testing.T) {
	m, v1, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/cors", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Filters:  []*wp.HTTPFilter{{Kind: &wp.HTTPFilter_Cors{Cors: &wp.CORS{AllowOrigins: []string{"https://app.example"}, AllowMethods: []string{"GET", "POST"}, MaxAgeSeconds: 60}}}},
		Backends: []*wp.Backend{backend("v1", 1)}}})
	c := m.client(t, echoHTTP, false)
	resp, _ := do(t, c, http.MethodOptions, "/", http.Header{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"POST"}}, "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" || resp.Header.Get("Access-Control-Allow-Methods") != "GET, POST" {
		t.Errorf("preflight = %d %v, want 200 allowing https://app.example GET, POST", resp.StatusCode, resp.Header)
	}
	if h := v1.hits.Load(); h != 0 {
		t.Errorf("v1 got %d requests, want 0 (the waypoint answers preflights)", h)
	}
	resp, _ = do(t, c, http.MethodGet, "/", http.Header{"Origin": {"https://app.example"}}, "")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); resp.StatusCode != http.StatusOK || got != "https://app.example" {
		t.Errorf("GET with Origin = %d Access-Control-Allow-Origin %q, want 200 https://app.example", resp.StatusCode, got)
	}
	resp, _ = do(t, c, http.MethodGet, "/", http.Header{"Origin": {"https://evil.example"}}, "")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("GET with another Origin: Access-Control-Allow-Origin %q, want none", got)
	}
}

func TestRouteRetry(t *testing.T) {
	m := newMesh(t)
	bad := m.startPod(t, netip.MustParseAddr("127.0.3.13"), "bad")
	good := m.startPod(t, netip.MustParseAddr("127.0.3.14"), "good")
	bad.status.Store(http.StatusServiceUnavailable)
	m.addService(t, "flaky", netip.MustParseAddr("127.0.9.24"), bad, good)
	c := m.client(t, echoHTTP, false)
	entry := func(attempts uint32) []*wp.HTTPRouteEntry {
		return []*wp.HTTPRouteEntry{{Route: "default/flaky", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
			Backends: []*wp.Backend{backend("flaky", 1)}, Retry: &wp.Retry{Attempts: attempts, Codes: []uint32{503}, BackoffMs: 1}}}
	}
	count := func(body string) (ok, failed int) {
		for range 10 {
			resp, _ := do(t, c, http.MethodPost, "/retry", nil, body)
			switch resp.StatusCode {
			case http.StatusOK:
				ok++
			case http.StatusServiceUnavailable:
				failed++
			default:
				t.Fatalf("POST /retry = %d, want 200 or 503", resp.StatusCode)
			}
		}
		return ok, failed
	}
	m.setRoutes(entry(0))
	if _, failed := count("x"); failed == 0 {
		t.Fatalf("without retries: no 503 in 10 requests over a failing endpoint (the test shows nothing)")
	}
	m.setRoutes(entry(2))
	before := bad.hits.Load()
	if ok, failed := count("payload"); failed != 0 || ok != 10 {
		t.Errorf("with retries: %d ok, %d failed, want 10 ok", ok, failed)
	}
	if bad.hits.Load() == before {
		t.Errorf("the failing endpoint got no request: nothing was retried")
	}
	// The retried request carried its body.
	for {
		select {
		case pr := <-good.reqs:
			if pr.Body != "payload" && pr.Body != "x" {
				t.Errorf("good got body %q, want %q", pr.Body, "payload")
			}
			continue
		default:
		}
		break
	}
}

func TestRouteTimeout(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/slow", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Backends: []*wp.Backend{backend("v1", 1)}, RequestTimeoutMs: 200}})
	for _, h2 := range []bool{false, true} {
		c := m.client(t, echoHTTP, h2)
		start := time.Now()
		resp, body := do(t, c, http.MethodGet, "/slow", nil, "")
		if resp.StatusCode != http.StatusGatewayTimeout || body != upstreamTimeoutBody {
			t.Errorf("GET /slow (h2 %v) = %d %q, want 504 %q", h2, resp.StatusCode, body, upstreamTimeoutBody)
		}
		if d := time.Since(start); d >= 5*time.Second {
			t.Errorf("GET /slow (h2 %v) took %v: the answer was awaited, not timed out", h2, d)
		}
		if resp, _ := do(t, c, http.MethodGet, "/fast", nil, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /fast after a timeout (h2 %v) = %d, want 200", h2, resp.StatusCode)
		}
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"response_code": "504", "response_flags": "UT"}, 2)
}

func TestRouteBackendTimeoutRetried(t *testing.T) {
	m, v1, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/slow", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Backends: []*wp.Backend{backend("v1", 1)}, BackendRequestTimeoutMs: 100, RequestTimeoutMs: 3000, Retry: &wp.Retry{Attempts: 2, BackoffMs: 1}}})
	c := m.client(t, echoHTTP, false)
	resp, body := do(t, c, http.MethodGet, "/slow", nil, "")
	if resp.StatusCode != http.StatusGatewayTimeout || body != upstreamTimeoutBody {
		t.Errorf("GET /slow = %d %q, want 504 %q", resp.StatusCode, body, upstreamTimeoutBody)
	}
	if got := v1.hits.Load(); got != 3 {
		t.Errorf("v1 got %d tries, want 3 (the first and two retries)", got)
	}
}

func TestRouteMirror(t *testing.T) {
	m, v1, v2 := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/mirror", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Filters:  []*wp.HTTPFilter{{Kind: &wp.HTTPFilter_RequestMirror{RequestMirror: &wp.RequestMirror{Backend: backend("v2", 1), PerMillion: 1_000_000}}}},
		Backends: []*wp.Backend{backend("v1", 1)}}})
	c := m.client(t, echoHTTP, false)
	resp, _ := do(t, c, http.MethodPost, "/mirrored?a=b", nil, "copy me")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Pod") != "v1" {
		t.Fatalf("POST /mirrored = %d from %q, want 200 from v1", resp.StatusCode, resp.Header.Get("X-Pod"))
	}
	main := recv(t, v1.reqs, "request at v1")
	mirrored := recv(t, v2.reqs, "mirrored request at v2")
	if mirrored.Path != "/mirrored?a=b" || mirrored.Body != "copy me" || mirrored.Method != http.MethodPost || main.Body != "copy me" {
		t.Errorf("v1 got %s %s %q, mirror got %s %s %q, want POST /mirrored?a=b %q at both", main.Method, main.Path, main.Body, mirrored.Method, mirrored.Path, mirrored.Body, "copy me")
	}
}

func TestTCPRouteWeights(t *testing.T) {
	m, _, _ := routeMesh(t)
	m.setRoutes(nil, &wp.TCPRouteEntry{Route: "default/tcp", Port: portTCP, Backends: []*wp.Backend{
		{Service: "default/v1.default.svc.cluster.local", Port: portTCP, Weight: 1},
		{Service: "default/v2.default.svc.cluster.local", Port: portTCP, Weight: 1},
	}})
	got := map[string]int{}
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := m.dial(ctx, netip.AddrPortFrom(echoVIP, portTCP))
		if err != nil {
			cancel()
			t.Fatalf("dial: %v", err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "who\n") // not HTTP: carried as TCP
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		cancel()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		got[strings.TrimSpace(line)]++
	}
	if got["v1"] != 5 || got["v2"] != 5 {
		t.Errorf("TCP streams by pod = %v, want 5 each", got)
	}
}

func TestRoutesOnOtherPort(t *testing.T) {
	// Routes for another port only: port 80 is served as without routes,
	// by echo's own endpoint.
	m, v1, _ := routeMesh(t)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/r", Port: 8080, Match: &wp.HTTPMatch{Path: exact("/only")}, Backends: []*wp.Backend{backend("v1", 1)}}})
	c := m.client(t, echoHTTP, false)
	if code, _ := get(t, c, echoHTTP, "/x", nil); code != http.StatusOK {
		t.Errorf("GET /x = %d, want 200 from echo", code)
	}
	recv(t, m.appRequests, "request at echo")
	if h := v1.hits.Load(); h != 0 {
		t.Errorf("v1 got %d requests, want 0", h)
	}
}

func TestGRPCRoute(t *testing.T) {
	// A GRPCRoute as istiod-lite flattens it: the method's path. Check is
	// routed to echo's own gRPC port; Watch matches nothing: UNIMPLEMENTED.
	m := newMesh(t)
	svc := netip.AddrPortFrom(echoVIP, portGRPC)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/health", Kind: "GRPCRoute", Port: portGRPC,
		Match:    &wp.HTTPMatch{Path: exact("/grpc.health.v1.Health/Check")},
		Backends: []*wp.Backend{{Service: "default/" + echoHost, Port: portGRPC, Weight: 1}}}})
	cc, err := grpc.NewClient("passthrough:///"+echoHost+":9090",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.dial(ctx, svc) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check(echo) = %v, %v, want SERVING", resp, err)
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "echo"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Watch(echo) error = %v, want Unimplemented (no route)", err)
	}
}

func TestRouteRetryReset(t *testing.T) {
	// An endpoint that resets: GETs are retried on the next endpoint,
	// POSTs (which it may have processed) are not.
	m := newMesh(t)
	bad := m.startPod(t, netip.MustParseAddr("127.0.3.13"), "bad")
	good := m.startPod(t, netip.MustParseAddr("127.0.3.14"), "good")
	bad.reset.Store(true)
	m.addService(t, "flaky", netip.MustParseAddr("127.0.9.24"), bad, good)
	m.setRoutes([]*wp.HTTPRouteEntry{{Route: "default/flaky", Port: portHTTP, Match: &wp.HTTPMatch{Path: prefix("/")},
		Backends: []*wp.Backend{backend("flaky", 1)}, Retry: &wp.Retry{Attempts: 2, BackoffMs: 1}}})
	c := m.client(t, echoHTTP, false)
	for range 6 {
		if resp, _ := do(t, c, http.MethodGet, "/get", nil, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /get = %d, want 200 (retried after the reset)", resp.StatusCode)
		}
	}
	if bad.hits.Load() == 0 {
		t.Fatal("the resetting endpoint got no request: the test shows nothing")
	}
	failed := 0
	for range 6 {
		if resp, _ := do(t, c, http.MethodPost, "/post", nil, "body"); resp.StatusCode == http.StatusServiceUnavailable {
			failed++
		}
	}
	if failed == 0 {
		t.Errorf("POSTs: none failed, want the reset ones answered 503, not retried")
	}
}
