package e2e

// Routing at the waypoint in the network namespace topology (issue 12):
// istiod-lite in local mode reads an HTTPRoute from its config directory,
// translates it for the waypoint, and the waypoint applies it to requests
// that unmodified clients in captured pods (Go's net/http client and curl,
// run inside the client pod's namespace) send to the route's Service. They
// need root; they skip without it (and fail when CI=true).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// routeApp is the application of a backend pod: it answers
// "<pod> <client address> <Host> <path and query>", answers 503 to
// everything while fail is set, and holds a request for a path under /slow
// for routeSlow (or until the request goes away) before it answers.
type routeApp struct {
	name string
	fail atomic.Bool
	hits atomic.Int64

	mu   sync.Mutex
	seen map[string]int // requests by path
}

// routeSlow is how long routeApp holds a /slow request: well past the
// route's 1s request timeout.
const routeSlow = 5 * time.Second

func startRouteApp(t *testing.T, p *cluster.Pod, port int) *routeApp {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, uint16(port)).String())
	if err != nil {
		t.Fatalf("app in %s: %v", p.Key(), err)
	}
	a := &routeApp{name: p.Spec.Name, seen: map[string]int{}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.hits.Add(1)
			a.mu.Lock()
			a.seen[r.URL.Path]++
			a.mu.Unlock()
			if strings.HasPrefix(r.URL.Path, "/slow") {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(routeSlow):
				}
			}
			if a.fail.Load() {
				http.Error(w, a.name+" fails", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "%s %s %s %s", a.name, r.RemoteAddr, r.Host, r.URL.RequestURI())
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return a
}

func (a *routeApp) served(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path]
}

// routeMesh: namespace shop in ambient mode, using the waypoint
// shop/waypoint (node-3). The client is on node-1; on node-2, echo-v1-0
// (app=echo, version=v1) and echo-v2-0 (version=v2) behind the Services
// echo, echo-v1 and echo-v2, and flaky-0, flaky-1 behind flaky. Every
// Service is HTTP on port 80 → 8080.
type routeMesh struct {
	*cluster.Cluster
	client         *cluster.Pod
	wp             *cluster.Waypoint
	v1, v2         *routeApp
	flaky0, flaky1 *routeApp
	echo, flaky    netip.AddrPort
}

func newRouteMesh(t *testing.T) *routeMesh {
	t.Helper()
	c := cluster.New(t, cluster.Options{Nodes: 3})
	c.Namespace("shop", ambient)
	m := &routeMesh{Cluster: c, echo: netip.AddrPortFrom(netns.VIP(0), 80), flaky: netip.AddrPortFrom(netns.VIP(3), 80)}
	c.HTTPService("shop", "echo", netns.VIP(0), map[string]string{"app": "echo"}, 80, 8080)
	c.HTTPService("shop", "echo-v1", netns.VIP(1), map[string]string{"app": "echo", "version": "v1"}, 80, 8080)
	c.HTTPService("shop", "echo-v2", netns.VIP(2), map[string]string{"app": "echo", "version": "v2"}, 80, 8080)
	c.HTTPService("shop", "flaky", netns.VIP(3), map[string]string{"app": "flaky"}, 80, 8080)
	var err error
	if m.client, err = c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client", Labels: map[string]string{"app": "client"}}); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Node(2).AddPods([]cluster.PodSpec{
		{Namespace: "shop", Name: "echo-v1-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo", "version": "v1"}},
		{Namespace: "shop", Name: "echo-v2-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo", "version": "v2"}},
		{Namespace: "shop", Name: "flaky-0", ServiceAccount: "flaky", Labels: map[string]string{"app": "flaky"}},
		{Namespace: "shop", Name: "flaky-1", ServiceAccount: "flaky", Labels: map[string]string{"app": "flaky"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.v1, m.v2 = startRouteApp(t, pods[0], 8080), startRouteApp(t, pods[1], 8080)
	m.flaky0, m.flaky1 = startRouteApp(t, pods[2], 8080), startRouteApp(t, pods[3], 8080)
	if m.wp, err = c.Node(3).AddWaypoint(cluster.WaypointSpec{Namespace: "shop", Name: "waypoint"}); err != nil {
		t.Fatal(err)
	}
	uses := maps.Clone(ambient)
	uses["istio.io/use-waypoint"] = "waypoint"
	c.Namespace("shop", uses)
	return m
}

// routeYAML are the routes under test, as a user writes them: the file
// istiod-lite reads from its config directory.
const routeYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-routes
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - headers: [{name: x-canary, value: "true"}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: api.shop.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 1s}
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: flaky-retry
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: flaky, port: 80}
  rules:
  - matches: [{path: {type: PathPrefix, value: /once}}]
    retry: {attempts: 0}
    backendRefs: [{name: flaky, port: 80}]
  - retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: flaky, port: 80}]
`

// routeFile is routeYAML's file in the config directory.
const routeFile = "routes-shop.yaml"

// routeAnswer is one answer: its status and, for a 200 of routeApp, who
// answered and what it received.
type routeAnswer struct {
	code                   int
	pod, remote, host, uri string
	body                   string
}

// routeGet sends one GET with c (whose connections are the client pod's)
// and parses routeApp's answer.
func routeGet(ctx context.Context, c *http.Client, target netip.AddrPort, path string, header http.Header) (routeAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s", target, path), nil)
	if err != nil {
		return routeAnswer{}, err
	}
	maps.Copy(req.Header, header)
	resp, err := c.Do(req)
	if err != nil {
		return routeAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return routeAnswer{}, err
	}
	a := routeAnswer{code: resp.StatusCode, body: string(b)}
	if f := strings.Fields(a.body); resp.StatusCode == http.StatusOK && len(f) == 4 {
		a.pod, a.remote, a.host, a.uri = f[0], f[1], f[2], f[3]
	}
	return a, nil
}

// podClient is an HTTP client whose connections are opened inside the pod
// (so its ztunnel captures them), keeping up to idle of them open.
func podClient(p *cluster.Pod, idle int) *http.Client {
	tr := &http.Transport{DialContext: p.Dial, MaxIdleConnsPerHost: idle, DisableKeepAlives: idle == 0}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		// The redirect is looked at, not followed (curl follows it below).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// routeCurl runs curl with args inside the pod and returns what it wrote.
func routeCurl(ctx context.Context, curl string, p *cluster.Pod, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "10"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := p.Start(cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("curl %v: %w: %s", args, err, errb.String())
	}
	return out.String(), nil
}

// routesAccepted is nil once istiod-lite reports both routes Accepted with
// their references resolved.
func (m *routeMesh) routesAccepted() error {
	found := map[string]bool{}
	for _, st := range m.Istiod.RouteStatuses() {
		if st.Namespace != "shop" {
			continue
		}
		if r := st.Rejected(); len(r) > 0 {
			return fmt.Errorf("route %s: %v", st.Key(), r)
		}
		for _, p := range st.Parents {
			for _, c := range p.Conditions {
				if c.Type == "Accepted" && c.Status == metav1.ConditionTrue {
					found[st.Name] = true
				}
			}
		}
	}
	if !found["echo-routes"] || !found["flaky-retry"] {
		return fmt.Errorf("accepted routes %v, want echo-routes and flaky-retry", found)
	}
	return nil
}

// routeWait polls check every 50ms until it returns nil, or returns its
// last error after timeout.
func routeWait(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// routeRecord waits for the waypoint's record of a request for path after
// from.
func (m *routeMesh) routeRecord(t *testing.T, from int, path string) cluster.Log {
	t.Helper()
	return nsWaitLog(t, m.wp, from, "waypoint: request record for "+path, nsIsRequest(path))
}

func TestRouteNetns(t *testing.T) {
	m := newRouteMesh(t)
	curl := findCurl(t)
	ctx := t.Context()
	c := podClient(m.client, 0)
	defer c.CloseIdleConnections()

	// Service traffic goes through the waypoint (the app sees the
	// waypoint's address) before the routes are written...
	eventually(t, 10*time.Second, "service traffic goes through the waypoint", func() error {
		a, err := routeGet(ctx, c, m.echo, "/probe", nil)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(a.remote, m.wp.IP().String()+":") {
			return fmt.Errorf("answer %d %q, not through the waypoint %s", a.code, a.body, m.wp.IP())
		}
		return nil
	})
	// ...then the user writes them. A missing or refused route is an
	// error here, and every check below then fails on its own.
	m.Write(routeFile, routeYAML)
	if err := routeWait(10*time.Second, m.routesAccepted); err != nil {
		t.Errorf("istiod-lite's route status: %v", err)
	}
	if err := routeWait(10*time.Second, func() error {
		a, err := routeGet(ctx, c, m.echo, "/probe", http.Header{"X-Canary": {"true"}})
		if err != nil {
			return err
		}
		if a.pod != "echo-v2-0" {
			return fmt.Errorf("a marked request was answered %d %q", a.code, a.body)
		}
		return nil
	}); err != nil {
		t.Errorf("the waypoint does not apply the routes within 10s: %v", err)
	}

	t.Run("a 90/10 weighted split over 1,000 requests lands within 3%", func(t *testing.T) {
		const n, workers = 1000, 4
		kc := podClient(m.client, workers)
		defer kc.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		v1Before, v2Before := m.v1.hits.Load(), m.v2.hits.Load()
		var mu sync.Mutex
		byPod := map[string]int{}
		var errs []error
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := next.Add(1); i <= n && ctx.Err() == nil; i = next.Add(1) {
					a, err := routeGet(ctx, kc, m.echo, fmt.Sprintf("/split/%d", i), nil)
					mu.Lock()
					switch {
					case err != nil:
						errs = append(errs, err)
					case a.code != http.StatusOK:
						errs = append(errs, fmt.Errorf("GET /split/%d = %d %q", i, a.code, a.body))
					default:
						byPod[a.pod]++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d requests failed, the first: %v", len(errs), n, errs[0])
		}
		if byPod["echo-v1-0"]+byPod["echo-v2-0"] != n {
			t.Fatalf("answers by pod %v, want %d from echo-v1-0 and echo-v2-0", byPod, n)
		}
		share := float64(byPod["echo-v2-0"]) / n
		t.Logf("over %d requests: %v, echo-v2-0's share %.1f%% (weight 10%%)", n, byPod, 100*share)
		if share < 0.07 || share > 0.13 {
			t.Errorf("echo-v2-0 answered %.1f%% of %d requests, want 10%% ± 3%% (%v)", 100*share, n, byPod)
		}
		// What the pods served agrees with what the client was told.
		if got := m.v1.hits.Load() - v1Before; got != int64(byPod["echo-v1-0"]) {
			t.Errorf("echo-v1-0 served %d requests, the client counted %d", got, byPod["echo-v1-0"])
		}
		if got := m.v2.hits.Load() - v2Before; got != int64(byPod["echo-v2-0"]) {
			t.Errorf("echo-v2-0 served %d requests, the client counted %d", got, byPod["echo-v2-0"])
		}
	})

	t.Run("a header match sends only marked requests to v2", func(t *testing.T) {
		byPod := map[bool]map[string]int{true: {}, false: {}}
		for i := range 40 {
			marked := i%2 == 0
			h := http.Header{}
			if marked {
				h.Set("X-Canary", "true")
			} else if i%4 == 1 {
				h.Set("X-Canary", "false") // another value is not a match
			}
			path := fmt.Sprintf("/canary/%d", i)
			from := m.wp.Mark()
			a, err := routeGet(ctx, c, m.echo, path, h)
			if err != nil || a.code != http.StatusOK {
				t.Fatalf("GET %s (%v) = %d %q, %v", path, h, a.code, a.body, err)
			}
			byPod[marked][a.pod]++
			if i < 2 {
				rec := m.routeRecord(t, from, path)
				if got := rec.String(accesslog.KeyRoute); got != "shop/echo-routes" {
					t.Errorf("the waypoint's record of %s: route_name %q, want shop/echo-routes (%v)", path, got, rec)
				}
			}
		}
		if want := map[string]int{"echo-v2-0": 20}; !maps.Equal(byPod[true], want) {
			t.Errorf("marked requests answered by %v, want %v", byPod[true], want)
		}
		if want := map[string]int{"echo-v1-0": 20}; !maps.Equal(byPod[false], want) {
			t.Errorf("unmarked requests answered by %v, want %v", byPod[false], want)
		}
		// curl, marking with -H, sees the same.
		out, err := routeCurl(ctx, curl, m.client, "-H", "x-canary: true", fmt.Sprintf("http://%s/canary/curl", m.echo))
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(out); len(f) != 4 || f[0] != "echo-v2-0" {
			t.Errorf("curl -H 'x-canary: true' got %q, want an answer of echo-v2-0", out)
		}
	})

	t.Run("URLRewrite as curl sees it", func(t *testing.T) {
		out, err := routeCurl(ctx, curl, m.client, "-w", "\n%{http_code}", fmt.Sprintf("http://%s/api/users?id=7", m.echo))
		if err != nil {
			t.Fatal(err)
		}
		body, code, _ := strings.Cut(out, "\n")
		if code != "200" {
			t.Fatalf("curl /api/users?id=7: status %q (%q), want 200", code, body)
		}
		// The backend received the rewritten host and path, the query kept.
		f := strings.Fields(body)
		if len(f) != 4 || f[0] != "echo-v1-0" || f[2] != "api.shop.example" || f[3] != "/v2/users?id=7" {
			t.Errorf("curl /api/users?id=7 got %q, want echo-v1-0 to see Host api.shop.example and /v2/users?id=7", body)
		}
		if n := m.v1.served("/api/users"); n != 0 {
			t.Errorf("echo-v1-0 served the unrewritten /api/users %d times", n)
		}
	})

	t.Run("a redirect as curl sees it", func(t *testing.T) {
		url := fmt.Sprintf("http://%s/old/page?q=1", m.echo)
		out, err := routeCurl(ctx, curl, m.client, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("301 http://%s/new/page?q=1", m.echo.Addr()); out != want {
			t.Errorf("curl %s: %q, want %q", url, out, want)
		}
		// Followed, the new location is served by the default rule.
		out, err = routeCurl(ctx, curl, m.client, "-L", "--max-redirs", "3", url)
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(out); len(f) != 4 || f[0] != "echo-v1-0" || f[3] != "/new/page?q=1" {
			t.Errorf("curl -L %s got %q, want echo-v1-0's answer for /new/page?q=1", url, out)
		}
		if n := m.v1.served("/old/page") + m.v2.served("/old/page"); n != 0 {
			t.Errorf("a backend served the redirected /old/page %d times; the waypoint answers it", n)
		}
	})

	t.Run("a retry turns one failing endpoint's 503 into a 200", func(t *testing.T) {
		m.flaky1.fail.Store(true)
		defer m.flaky1.fail.Store(false)
		const n = 20
		// Without retries (attempts: 0), flaky-1's 503 reaches the client:
		// the endpoints take turns, so the failing one is tried.
		var failed int
		for i := range n {
			a, err := routeGet(ctx, c, m.flaky, fmt.Sprintf("/once/%d", i), nil)
			if err != nil {
				t.Fatal(err)
			}
			switch a.code {
			case http.StatusServiceUnavailable:
				failed++
			case http.StatusOK:
			default:
				t.Fatalf("GET /once/%d = %d %q", i, a.code, a.body)
			}
		}
		if failed == 0 {
			t.Fatalf("none of %d requests without retries failed: flaky-1 was never tried, the check below proves nothing", n)
		}
		// With retries, every request is answered 200 by flaky-0, although
		// flaky-1 answered some of them 503 first.
		bad0 := m.flaky1.hits.Load()
		answers := map[string]int{} // "<code> <pod>"
		for i := range n {
			path := fmt.Sprintf("/retry/%d", i)
			from := m.wp.Mark()
			a, err := routeGet(ctx, c, m.flaky, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			answers[fmt.Sprintf("%d %s", a.code, a.pod)]++
			if i == 0 {
				if rec := m.routeRecord(t, from, path); rec.String(accesslog.KeyRoute) != "shop/flaky-retry" {
					t.Errorf("the waypoint's record of %s: route_name %q, want shop/flaky-retry", path, rec.String(accesslog.KeyRoute))
				}
			}
		}
		if want := map[string]int{"200 flaky-0": n}; !maps.Equal(answers, want) {
			t.Errorf("with retries, %d requests were answered %v, want %v", n, answers, want)
		}
		tried := m.flaky1.hits.Load() - bad0
		t.Logf("without retries %d of %d answered 503; with retries all 200, flaky-1 answered 503 first %d times", failed, n, tried)
		if tried == 0 {
			t.Errorf("flaky-1 answered none of %d requests: no retry was needed", n)
		}
	})

	t.Run("a request timeout answers 504 in time", func(t *testing.T) {
		const timeout = time.Second // the route's timeouts.request
		path := "/slow/1"
		from := m.wp.Mark()
		start := time.Now()
		a, err := routeGet(ctx, c, m.echo, path, nil)
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if a.code != http.StatusGatewayTimeout {
			t.Errorf("GET %s = %d %q after %v, want 504", path, a.code, a.body, took)
		}
		// Not before the timeout, and well before the backend answers.
		if took < timeout-100*time.Millisecond || took >= routeSlow-time.Second {
			t.Errorf("GET %s answered after %v, want about the route's %v (the backend answers after %v)", path, took, timeout, routeSlow)
		}
		rec := m.routeRecord(t, from, path)
		if got, _ := rec.Int(accesslog.KeyResponseCode); got != http.StatusGatewayTimeout {
			t.Errorf("the waypoint's record of %s: response_code %d, want 504 (%v)", path, got, rec)
		}
		if n := m.v1.served(path); n != 1 {
			t.Errorf("echo-v1-0 received %s %d times, want once (the timeout cut it)", path, n)
		}
	})
}
