package e2e

// Waypoints in the network namespace topology (issue 10): unmodified
// clients in captured pods (a Go net/http client and curl, run inside the
// client pod's namespace) call a service whose namespace is labelled
// istio.io/use-waypoint; the request goes through a waypoint process in a
// pod of its own that nothing captures, on a third node, so that both of
// the waypoint's legs cross the underlay. They need root; they skip without
// it (and fail when CI=true).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
	"github.com/ambient-go/mesh/ztunnel/capture"
)

// nsWaypointMesh: namespace shop in ambient mode on three nodes; pod client
// on node-1, pod echo-0 on node-2 serving HTTP on 8080 behind service echo
// (198.18.100.10:80 → 8080), and the waypoint shop/waypoint on node-3.
type nsWaypointMesh struct {
	*cluster.Cluster
	client, echo *cluster.Pod
	app          *cluster.HTTPEcho
	wp           *cluster.Waypoint
	vip          netip.AddrPort
}

func newNSWaypointMesh(t *testing.T) *nsWaypointMesh {
	t.Helper()
	c := cluster.New(t, cluster.Options{Nodes: 3})
	c.Namespace("shop", ambient)
	c.HTTPService("shop", "echo", netns.VIP(0), map[string]string{"app": "echo"}, 80, 8080)
	m := &nsWaypointMesh{Cluster: c, vip: netip.AddrPortFrom(netns.VIP(0), 80)}
	var err error
	if m.client, err = c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client", Labels: map[string]string{"app": "client"}}); err != nil {
		t.Fatal(err)
	}
	if m.echo, err = c.Node(2).AddPod(cluster.PodSpec{Namespace: "shop", Name: "echo-0", Labels: map[string]string{"app": "echo"}}); err != nil {
		t.Fatal(err)
	}
	m.app = cluster.StartHTTPEcho(t, m.echo, 8080)
	if m.wp, err = c.Node(3).AddWaypoint(cluster.WaypointSpec{Namespace: "shop", Name: "waypoint"}); err != nil {
		t.Fatal(err)
	}
	return m
}

const echoHost = "echo.shop.svc.cluster.local"

func (m *nsWaypointMesh) echoAddr() netip.AddrPort { return netip.AddrPortFrom(m.echo.IP, 8080) }

// nsGoGet sends one GET from inside the pod with Go's net/http client (no
// keep-alive) and returns the status code and body.
func nsGoGet(ctx context.Context, p *cluster.Pod, target netip.AddrPort, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: p.Dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s", target, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// nsCurlGet runs curl inside the pod and returns the status code and body.
func nsCurlGet(ctx context.Context, curl string, p *cluster.Pod, target netip.AddrPort, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "5", "-w", "\n%{http_code}", fmt.Sprintf("http://%s%s", target, path))
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := p.Start(cmd); err != nil {
		return 0, "", err
	}
	if err := cmd.Wait(); err != nil {
		return 0, "", fmt.Errorf("curl: %w: %s", err, errb.String())
	}
	body, code, _ := strings.Cut(out.String(), "\n")
	n, err := strconv.Atoi(code)
	if err != nil {
		return 0, "", fmt.Errorf("curl: output %q", out.String())
	}
	return n, body, nil
}

// nsIsRequest matches the waypoint's access log record of a request for path.
func nsIsRequest(path string) func(cluster.Log) bool {
	return func(l cluster.Log) bool {
		return l.String("msg") == accesslog.RequestMessage && l.String(accesslog.KeyPath) == path
	}
}

func nsIsConn(direction string) func(cluster.Log) bool {
	return func(l cluster.Log) bool {
		return l.String("msg") == accesslog.Message && l.String(accesslog.KeyDirection) == direction
	}
}

func nsIsAnyConn(l cluster.Log) bool { return l.String("msg") == accesslog.Message }

// nsHops are the log positions of every process on the way, taken before a
// request, to look at what each logged for it.
type nsHops struct {
	z1, z2, z3 int
	wps        map[*cluster.Waypoint]int
}

func (h nsHops) all() []int {
	all := []int{h.z1, h.z2, h.z3}
	for _, n := range h.wps {
		all = append(all, n)
	}
	return all
}

// mark returns the log positions once the processes have been quiet for
// nsSettle (5s at most): a connection's record is written when it closes,
// just after the answer, so the records of earlier requests must be in
// before the next request's are counted.
func (m *nsWaypointMesh) mark() nsHops {
	pos := func() nsHops {
		h := nsHops{m.Node(1).Ztunnel().Mark(), m.Node(2).Ztunnel().Mark(), m.Node(3).Ztunnel().Mark(), map[*cluster.Waypoint]int{}}
		for _, w := range m.Waypoints() {
			h.wps[w] = w.Mark()
		}
		return h
	}
	last := pos()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(nsSettle)
		cur := pos()
		if slices.Equal(cur.all(), last.all()) {
			break
		}
		last = cur
	}
	return last
}

// nsWaitLog waits (10s at most) for a log line of p after from that match
// accepts.
func nsWaitLog(t *testing.T, p interface {
	WaitLog(context.Context, int, func(cluster.Log) bool) (cluster.Log, int, error)
}, from int, what string, match func(cluster.Log) bool) cluster.Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, _, err := p.WaitLog(ctx, from, match)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return l
}

// nsSettle lets records that a loop or a second hop would add arrive before
// they are counted: every record of the request itself has already been
// waited for.
const nsSettle = 200 * time.Millisecond

// checkThroughWaypoint checks what every hop logged for one request for
// path that went through the waypoint, from the marks h: the client's
// ztunnel sent one connection to the waypoint, the waypoint logged one
// request, the destination's ztunnel accepted one connection, from the
// waypoint's identity, the waypoint's own node's ztunnel saw nothing (its
// pod is not captured), and the app served one request, from the waypoint.
//
// service is the service addressed (its hostname), "" for pod-addressed
// traffic.
func (m *nsWaypointMesh) checkThroughWaypoint(t *testing.T, h nsHops, wp *cluster.Waypoint, service, path string, code int) {
	t.Helper()
	z1, z2, z3 := m.Node(1).Ztunnel(), m.Node(2).Ztunnel(), m.Node(3).Ztunnel()
	wpHBONE := netip.AddrPortFrom(wp.IP(), cluster.WaypointHBONEPort).String()

	out := nsWaitLog(t, z1, h.z1, "node-1's ztunnel: outbound record", nsIsConn(accesslog.Outbound))
	if got := out.String(accesslog.KeyDstIdentity); got != wp.ID() {
		t.Errorf("node-1's outbound record: dst.identity %q, want the waypoint's %q (%v)", got, wp.ID(), out)
	}
	if got := out.String(accesslog.KeyDstAddr); got != wpHBONE {
		t.Errorf("node-1's outbound record: dst.addr %q, want the waypoint pod's %s", got, wpHBONE)
	}
	if got := out.String(accesslog.KeyDstService); got != service {
		t.Errorf("node-1's outbound record: dst.service %q, want %q", got, service)
	}

	rec := nsWaitLog(t, wp, h.wps[wp], "waypoint: request record for "+path, nsIsRequest(path))
	if got, _ := rec.Int(accesslog.KeyResponseCode); int(got) != code {
		t.Errorf("waypoint's record: response_code %d, want %d (%v)", got, code, rec)
	}
	if got := rec.String(accesslog.KeySrcIdentity); got != clientID {
		t.Errorf("waypoint's record: src.identity %q, want the client's %q", got, clientID)
	}
	if got := rec.String(accesslog.KeyMethod); got != http.MethodGet {
		t.Errorf("waypoint's record: method %q, want GET", got)
	}
	if got := rec.String(accesslog.KeyDstService); got != service {
		t.Errorf("waypoint's record: dst.service %q, want %q", got, service)
	}

	var in cluster.Log
	if code == http.StatusOK {
		if got := rec.String(accesslog.KeyUpstreamHost); got != m.echoAddr().String() {
			t.Errorf("waypoint's record: upstream_host %q, want %s", got, m.echoAddr())
		}
		in = nsWaitLog(t, z2, h.z2, "node-2's ztunnel: inbound record", nsIsConn(accesslog.Inbound))
		if got := in.String(accesslog.KeySrcIdentity); got != wp.ID() {
			t.Errorf("node-2's inbound record: src.identity %q, want the waypoint's %q (%v)", got, wp.ID(), in)
		}
		if got := in.String(accesslog.KeyDstAddr); got != m.echoAddr().String() {
			t.Errorf("node-2's inbound record: dst.addr %q, want %s", got, m.echoAddr())
		}
		reqs := m.app.Requests(path)
		if len(reqs) != 1 {
			t.Errorf("the app served %d requests for %s, want 1", len(reqs), path)
		} else {
			if reqs[0].Remote != wp.IP() {
				t.Errorf("the app saw the request from %s, want the waypoint %s", reqs[0].Remote, wp.IP())
			}
			if !strings.Contains(reqs[0].XFF, m.client.IP.String()) {
				t.Errorf("the app saw X-Forwarded-For %q, want it to name the client %s", reqs[0].XFF, m.client.IP)
			}
		}
	}

	time.Sleep(nsSettle)
	// Exactly once at every hop: no loop, no second waypoint crossing.
	if n := z1.Count(h.z1, nsIsAnyConn); n != 1 {
		t.Errorf("node-1's ztunnel logged %d connections for one request, want 1", n)
	}
	for w, from := range h.wps {
		want := 0
		if w == wp {
			want = 1
		}
		if n := w.Count(from, nsIsRequest(path)); n != want {
			t.Errorf("waypoint %s logged %d records for %s, want %d", w.Spec.Name, n, path, want)
		}
	}
	wantIn := 0
	if code == http.StatusOK {
		wantIn = 1
	}
	if n := z2.Count(h.z2, nsIsAnyConn); n != wantIn {
		t.Errorf("node-2's ztunnel logged %d connections, want %d", n, wantIn)
	}
	if n := z3.Count(h.z3, nsIsAnyConn); n != 0 {
		t.Errorf("node-3's ztunnel (the waypoint's node) logged %d connections, want none: the waypoint's pod is not captured", n)
	}
}

// checkDirect checks that one request for path went directly from the
// client to echo-0, without the waypoint.
func (m *nsWaypointMesh) checkDirect(t *testing.T, h nsHops, path string) {
	t.Helper()
	z1, z2 := m.Node(1).Ztunnel(), m.Node(2).Ztunnel()
	out := nsWaitLog(t, z1, h.z1, "node-1's ztunnel: outbound record", nsIsConn(accesslog.Outbound))
	if got := out.String(accesslog.KeyDstIdentity); got != "spiffe://cluster.local/ns/shop/sa/echo-0" {
		t.Errorf("node-1's outbound record: dst.identity %q, want echo-0's (%v)", got, out)
	}
	in := nsWaitLog(t, z2, h.z2, "node-2's ztunnel: inbound record", nsIsConn(accesslog.Inbound))
	if got := in.String(accesslog.KeySrcIdentity); got != clientID {
		t.Errorf("node-2's inbound record: src.identity %q, want the client's %q", got, clientID)
	}
	if reqs := m.app.Requests(path); len(reqs) != 1 || reqs[0].Remote != m.client.IP {
		t.Errorf("the app served %v for %s, want one request from the client %s", reqs, path, m.client.IP)
	}
	time.Sleep(nsSettle)
	for w, from := range h.wps {
		if n := w.Count(from, func(l cluster.Log) bool { return l.String("msg") == accesslog.RequestMessage }); n != 0 {
			t.Errorf("waypoint %s logged %d requests for traffic that should bypass it", w.Spec.Name, n)
		}
	}
	if n := z2.Count(h.z2, nsIsAnyConn); n != 1 {
		t.Errorf("node-2's ztunnel logged %d connections, want 1", n)
	}
}

// nsWaypointRequests sums the waypoint's istio_requests_total samples (reporter
// waypoint) that carry every one of the labels.
func nsWaypointRequests(t *testing.T, wp *cluster.Waypoint, labels ...string) float64 {
	t.Helper()
	n, err := wp.Requests(t.Context(), labels...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func nsUniquePath(prefix string) string { return fmt.Sprintf("/%s-%d", prefix, time.Now().UnixNano()) }

func TestWaypointNetns(t *testing.T) {
	m := newNSWaypointMesh(t)
	curl := findCurl(t)
	ctx := t.Context()
	useWaypoint := maps.Clone(ambient)
	useWaypoint["istio.io/use-waypoint"] = "waypoint"

	t.Run("the waypoint's pod is not captured", func(t *testing.T) {
		installed := func(p *cluster.Pod) bool {
			t.Helper()
			f, err := os.Open(p.Path())
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ok, err := capture.Installed(f)
			if err != nil {
				t.Fatalf("capture.Installed(%s): %v", p.Key(), err)
			}
			return ok
		}
		if !installed(m.client) {
			t.Fatal("the client pod has no capture rules: the check below could not fail")
		}
		if installed(m.wp.Pod) {
			t.Errorf("the waypoint's pod %s has ztunnel's capture rules", m.wp.Pod.Key())
		}
		if rules := nsTProxyRules(t, m.wp.Pod); len(rules) > 0 {
			t.Errorf("the waypoint's pod has ztunnel's policy routing rules: %v", rules)
		}
		if n := m.Node(3).Ztunnel().Count(0, func(l cluster.Log) bool {
			return l.String("msg") == "pod captured" && l.String("pod") == m.wp.Pod.Key()
		}); n != 0 {
			t.Errorf("node-3's ztunnel captured the waypoint's pod %d times", n)
		}
	})

	t.Run("without use-waypoint, service traffic goes direct", func(t *testing.T) {
		path := nsUniquePath("direct")
		h := m.mark()
		code, body, err := nsGoGet(ctx, m.client, m.vip, path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
		}
		want(t, body, "echo-0", m.client.IP, path)
		m.checkDirect(t, h, path)
	})

	// Label the namespace, capturing the underlay until service traffic
	// goes through the waypoint: the first connections to and from the
	// waypoint are opened then (TLS handshakes on both legs).
	marker := fmt.Sprintf("WPMARKER%d", time.Now().UnixNano())
	firstFrames := m.CaptureUnderlay(t, func() {
		m.Namespace("shop", useWaypoint)
		eventually(t, 10*time.Second, "service traffic goes through the waypoint once the namespace uses it", func() error {
			path := nsUniquePath(marker)
			_, body, err := nsGoGet(ctx, m.client, m.vip, path)
			if err != nil {
				return err
			}
			if f := strings.Fields(body); len(f) != 3 || !strings.HasPrefix(f[1], m.wp.IP().String()+":") {
				return fmt.Errorf("answer %q, not from the waypoint %s", body, m.wp.IP())
			}
			return nil
		})
	})
	wpHBONE := netip.AddrPortFrom(m.wp.IP(), cluster.WaypointHBONEPort)
	echoHBONE := netip.AddrPortFrom(m.echo.IP, 15008)

	t.Run("the underlay carries only HBONE, on both of the waypoint's legs", func(t *testing.T) {
		cluster.AssertOnlyHBONE(t, firstFrames, marker)
		var toWaypoint, fromWaypoint int
		for _, s := range cluster.PodSegments(firstFrames) {
			switch {
			case s.Src.Addr() == m.client.IP && s.Dst == wpHBONE && cluster.IsTLSHandshake(s):
				toWaypoint++
			case s.Src.Addr() == m.wp.IP() && s.Dst == echoHBONE && cluster.IsTLSHandshake(s):
				fromWaypoint++
			}
		}
		if toWaypoint == 0 {
			t.Errorf("no TLS handshake from the client to the waypoint's %s on the underlay", wpHBONE)
		}
		if fromWaypoint == 0 {
			t.Errorf("no TLS handshake from the waypoint to echo-0's %s on the underlay", echoHBONE)
		}
	})

	t.Run("service traffic goes through the waypoint", func(t *testing.T) {
		before := nsWaypointRequests(t, m.wp, `response_code="200"`, `destination_service="echo.shop.svc.cluster.local"`)
		for _, client := range []string{"go", "curl"} {
			t.Run(client, func(t *testing.T) {
				path := nsUniquePath(client)
				h := m.mark()
				var code int
				var body string
				var err error
				if client == "go" {
					code, body, err = nsGoGet(ctx, m.client, m.vip, path)
				} else {
					code, body, err = nsCurlGet(ctx, curl, m.client, m.vip, path)
				}
				if err != nil || code != http.StatusOK {
					t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
				}
				want(t, body, "echo-0", m.wp.IP(), path)
				m.checkThroughWaypoint(t, h, m.wp, echoHost, path, http.StatusOK)
			})
		}
		after := nsWaypointRequests(t, m.wp, `response_code="200"`, `destination_service="echo.shop.svc.cluster.local"`)
		if after-before != 2 {
			t.Errorf("the waypoint's istio_requests_total{response_code=200,destination_service=echo} grew by %v, want 2", after-before)
		}
	})

	t.Run("a request through the waypoint crosses the underlay in HBONE only", func(t *testing.T) {
		path := nsUniquePath(marker)
		var code int
		var err error
		frames := m.CaptureUnderlay(t, func() {
			code, _, err = nsGoGet(ctx, m.client, m.vip, path)
		})
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d, %v", path, code, err)
		}
		if n := netns.Contains(frames, []byte(marker)); n > 0 {
			t.Errorf("the marker %q is in clear in %d frames on the underlay", marker, n)
		}
		var toWaypoint, fromWaypoint int
		for _, s := range cluster.PodSegments(frames) {
			switch {
			case s.Src.Port() != 15008 && s.Dst.Port() != 15008:
				t.Errorf("pod traffic on the underlay not to 15008: %v", s)
			case s.Src.Addr() == m.client.IP && s.Dst == wpHBONE:
				toWaypoint++
			case s.Src.Addr() == m.wp.IP() && s.Dst == echoHBONE:
				fromWaypoint++
			case s.Src.Addr() == m.client.IP && s.Dst.Addr() == m.echo.IP:
				t.Errorf("a segment from the client straight to echo-0 while the namespace uses the waypoint: %v", s)
			}
		}
		if toWaypoint == 0 || fromWaypoint == 0 {
			t.Errorf("segments client → waypoint %d, waypoint → echo-0 %d; want both legs on the underlay", toWaypoint, fromWaypoint)
		}
	})

	t.Run("pod-addressed traffic bypasses a service waypoint", func(t *testing.T) {
		path := nsUniquePath("by-pod")
		h := m.mark()
		code, body, err := nsGoGet(ctx, m.client, m.echoAddr(), path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
		}
		want(t, body, "echo-0", m.client.IP, path)
		m.checkDirect(t, h, path)
	})

	t.Run("an L7 DENY on /admin bound to the Service answers 403", func(t *testing.T) {
		m.Write("deny-admin.yaml", nsDenyAdmin)
		defer m.Remove("deny-admin.yaml")
		eventually(t, 10*time.Second, "the waypoint denies /admin", func() error {
			code, body, err := nsGoGet(ctx, m.client, m.vip, "/admin"+nsUniquePath("probe"))
			if err != nil {
				return err
			}
			if code != http.StatusForbidden {
				return fmt.Errorf("GET /admin = %d %q, want 403", code, body)
			}
			return nil
		})
		for _, client := range []string{"go", "curl"} {
			t.Run(client, func(t *testing.T) {
				get := func(path string) (int, string, error) {
					if client == "go" {
						return nsGoGet(ctx, m.client, m.vip, path)
					}
					return nsCurlGet(ctx, curl, m.client, m.vip, path)
				}
				h := m.mark()
				code, body, err := get("/admin")
				if err != nil || code != http.StatusForbidden || body != "RBAC: access denied" {
					t.Errorf("GET /admin = %d %q, %v; want 403 %q", code, body, err, "RBAC: access denied")
				}
				if err == nil {
					m.checkThroughWaypoint(t, h, m.wp, echoHost, "/admin", http.StatusForbidden)
					rec := nsWaitLog(t, m.wp, h.wps[m.wp], "waypoint: record of /admin", nsIsRequest("/admin"))
					if got := rec.String(accesslog.KeyPolicy); got != "shop/deny-admin" {
						t.Errorf("waypoint's record of the denied request: policy %q, want shop/deny-admin", got)
					}
				}
				path := nsUniquePath("allowed")
				h = m.mark()
				code, body, err = get(path)
				if err != nil || code != http.StatusOK {
					t.Fatalf("GET %s = %d %q, %v; want 200", path, code, body, err)
				}
				want(t, body, "echo-0", m.wp.IP(), path)
				m.checkThroughWaypoint(t, h, m.wp, echoHost, path, http.StatusOK)
			})
		}
		if n := len(m.app.Requests("/admin")); n != 0 {
			t.Errorf("the app served /admin %d times through a DENY", n)
		}
	})

	t.Run("removing the label goes direct again, without restarting a pod", func(t *testing.T) {
		h := m.mark()
		m.Namespace("shop", ambient)
		eventually(t, 10*time.Second, "service traffic goes direct once the namespace no longer uses the waypoint", func() error {
			path := nsUniquePath("unlabel")
			_, body, err := nsGoGet(ctx, m.client, m.vip, path)
			if err != nil {
				return err
			}
			if f := strings.Fields(body); len(f) != 3 || !strings.HasPrefix(f[1], m.client.IP.String()+":") {
				return fmt.Errorf("answer %q, not from the client %s", body, m.client.IP)
			}
			return nil
		})
		path := nsUniquePath("direct-again")
		h2 := m.mark()
		code, body, err := nsCurlGet(ctx, curl, m.client, m.vip, path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
		}
		want(t, body, "echo-0", m.client.IP, path)
		m.checkDirect(t, h2, path)
		for i, z := range []*cluster.Ztunnel{m.Node(1).Ztunnel(), m.Node(2).Ztunnel()} {
			if n := z.Count([]int{h.z1, h.z2}[i], func(l cluster.Log) bool {
				msg := l.String("msg")
				return msg == "pod captured" || msg == "pod uncaptured"
			}); n != 0 {
				t.Errorf("node-%d's ztunnel re-captured or released pods %d times on a use-waypoint change", i+1, n)
			}
		}
	})

	t.Run("pod-addressed traffic uses a workload waypoint", func(t *testing.T) {
		wl, err := m.Node(3).AddWaypoint(cluster.WaypointSpec{Namespace: "shop", Name: "wl-waypoint", For: "workload"})
		if err != nil {
			t.Fatal(err)
		}
		uses := maps.Clone(ambient)
		uses["istio.io/use-waypoint"] = wl.Spec.Name
		m.Namespace("shop", uses)
		defer m.Namespace("shop", ambient)
		eventually(t, 10*time.Second, "pod-addressed traffic goes through the workload waypoint", func() error {
			_, body, err := nsGoGet(ctx, m.client, m.echoAddr(), nsUniquePath("wl-probe"))
			if err != nil {
				return err
			}
			if f := strings.Fields(body); len(f) != 3 || !strings.HasPrefix(f[1], wl.IP().String()+":") {
				return fmt.Errorf("answer %q, not from the workload waypoint %s", body, wl.IP())
			}
			return nil
		})
		for _, client := range []string{"go", "curl"} {
			t.Run(client, func(t *testing.T) {
				path := nsUniquePath("by-pod-" + client)
				h := m.mark()
				var code int
				var body string
				var err error
				if client == "go" {
					code, body, err = nsGoGet(ctx, m.client, m.echoAddr(), path)
				} else {
					code, body, err = nsCurlGet(ctx, curl, m.client, m.echoAddr(), path)
				}
				if err != nil || code != http.StatusOK {
					t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
				}
				want(t, body, "echo-0", wl.IP(), path)
				m.checkThroughWaypoint(t, h, wl, "", path, http.StatusOK)
			})
		}
		// A workload waypoint serves no service traffic: addressed to the
		// service, the request goes to the endpoint directly (Istio's
		// ztunnel does not look at the endpoint's waypoint then).
		path := nsUniquePath("by-vip-wl")
		h := m.mark()
		code, body, err := nsGoGet(ctx, m.client, m.vip, path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
		}
		want(t, body, "echo-0", m.client.IP, path)
		m.checkDirect(t, h, path)
	})
}

const nsDenyAdmin = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: shop
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: echo
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/*"]
`

// nsTProxyRules returns the pod's policy routing rules on ztunnel's mark.
func nsTProxyRules(t *testing.T, p *cluster.Pod) []netlink.Rule {
	t.Helper()
	h, err := p.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netlink.Rule
	for _, r := range rules {
		if r.Table == capture.RouteTable || r.Mark == capture.TProxyMark {
			out = append(out, r)
		}
	}
	return out
}
