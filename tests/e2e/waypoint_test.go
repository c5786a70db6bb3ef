package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/harness"
)

// Waypoints end to end in local mode: istiod-lite on a config directory,
// ztunnels in SOCKS5 mode and waypoints in-process, the harness playing
// the deployer and the runtime (harness.StartWaypoint). Requests are real
// HTTP (net/http over the SOCKS5 dial) to HTTP echo apps that answer with
// what they received.

const (
	idClient = "spiffe://cluster.local/ns/demo/sa/client"
	idEcho   = "spiffe://cluster.local/ns/demo/sa/echo"
)

func spiffeID(s string) string {
	if s == "" || strings.HasPrefix(s, "spiffe://") {
		return s
	}
	return "spiffe://" + s
}

// wpMesh is a mesh with namespace demo (ambient): a client pod on node-a
// (ServiceAccount client); on node-b echo-0 (ServiceAccount echo, HTTP on
// 8080, gRPC on 9090) behind Service echo (80 → http, 9090 → grpc) and
// other-0 (ServiceAccount other, HTTP on 8080) behind Service other.
type wpMesh struct {
	*harness.Mesh
	client, echo0, other0 netip.Addr
	echoVIP, otherVIP     netip.Addr
	echo, other           *harness.HTTPEcho
	http                  *http.Client
}

func newWaypointMesh(t *testing.T) *wpMesh {
	t.Helper()
	m := harness.New(t, harness.Options{})
	w := &wpMesh{Mesh: m, client: m.PodIP(0, 0), echo0: m.PodIP(1, 0), other0: m.PodIP(1, 1), echoVIP: m.VIP(0), otherVIP: m.VIP(1)}
	w.echo = harness.StartHTTPEcho(t, "echo-0", netip.AddrPortFrom(w.echo0, 8080))
	w.other = harness.StartHTTPEcho(t, "other-0", netip.AddrPortFrom(w.other0, 8080))
	harness.StartGRPCHealth(t, netip.AddrPortFrom(w.echo0, 9090))
	w.http = harness.HTTPClient(w.client)
	t.Cleanup(w.http.CloseIdleConnections)
	w.labelNamespace(nil)
	m.Write("apps.yaml", strings.Join([]string{
		httpPod("client", "client", "node-a", w.client, "app: client"),
		httpPod("echo-0", "echo", "node-b", w.echo0, "app: echo"),
		httpPod("other-0", "other", "node-b", w.other0, "app: other"),
		fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  clusterIP: %s
  selector:
    app: echo
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: grpc
    port: 9090
    targetPort: grpc
    appProtocol: grpc
---
apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: demo
spec:
  clusterIP: %s
  selector:
    app: other
  ports:
  - name: http
    port: 80
    targetPort: http
`, w.echoVIP, w.otherVIP),
	}, "---\n"))
	// Meshed and direct before any waypoint.
	w.waitDirect(t, w.url(w.echoVIP, 80, "/ready"), idClient)
	w.waitDirect(t, w.url(w.otherVIP, 80, "/ready"), idClient)
	return w
}

// httpPod renders a pod of namespace demo with an http (8080) and a grpc
// (9090) container port.
func httpPod(name, sa, node string, ip netip.Addr, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: demo
  labels: {%s}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: app
    image: app
    ports:
    - name: http
      containerPort: 8080
    - name: grpc
      containerPort: 9090
status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "True"
`, name, labels, node, sa, ip)
}

// labelNamespace (re)writes namespace demo, ambient, with extra labels.
func (w *wpMesh) labelNamespace(extra map[string]string) {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n")
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range extra {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Fprintf(&b, "    %s: %q\n", k, extra[k])
	}
	w.Write("ns.yaml", b.String())
}

func (w *wpMesh) url(a netip.Addr, port uint16, path string) string {
	return "http://" + netip.AddrPortFrom(a, port).String() + path
}

// response is what the client got.
type response struct {
	status int
	body   string
	echo   harness.EchoReply
}

// do sends one GET from the client pod; X-Echo-Close makes the app end
// the connection with the request, so that the destination ztunnel logs
// one inbound record per request.
func (w *wpMesh) do(ctx context.Context, url string) (response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return response{}, err
	}
	req.Header.Set("X-Echo-Close", "1")
	resp, err := w.http.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return response{}, err
	}
	r := response{status: resp.StatusCode, body: string(b)}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r.echo); err != nil {
			return r, fmt.Errorf("decoding the echo reply %q: %w", b, err)
		}
	}
	return r, nil
}

func (w *wpMesh) get(t *testing.T, url string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := w.do(ctx, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

func (w *wpMesh) nodeB() *harness.Ztunnel { return w.Ztunnel("node-b") }

// inboundAt reports whether r is node-b's inbound record of a connection
// to the pod address dst.
func inboundTo(r accesslog.Record, dst netip.AddrPort) bool {
	return r.Direction == accesslog.Inbound && r.DstAddr == dst
}

// waitDirect polls until a GET to url is answered 200 and node-b's ztunnel
// logs an inbound record from peer for it; it fails the test after 10s.
func (w *wpMesh) waitDirect(t *testing.T, url, peer string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		harness.Drain(w.nodeB().Records)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := w.do(ctx, url)
		cancel()
		if err == nil && r.status == http.StatusOK {
			for _, rec := range harness.Collect(w.nodeB().Records, 200*time.Millisecond) {
				if rec.Direction == accesslog.Inbound && spiffeID(rec.SrcIdentity) == peer {
					return
				}
				last = fmt.Sprintf("inbound from %s", rec.SrcIdentity)
			}
		} else {
			last = fmt.Sprint(r.status, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s did not reach node-b's ztunnel from %s within 10s; last: %s", url, peer, last)
}

// waitVia polls until a GET to url is answered through wp (a request
// record with status 200); it fails the test after 10s.
func (w *wpMesh) waitVia(t *testing.T, wp *harness.Waypoint, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		harness.Drain(wp.Records)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := w.do(ctx, url)
		cancel()
		if err == nil && r.status == http.StatusOK {
			for _, rec := range harness.Collect(wp.Records, 200*time.Millisecond) {
				if rec.ResponseCode == http.StatusOK {
					return
				}
			}
			last = "answered without the waypoint"
		} else {
			last = fmt.Sprint(r.status, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s did not go through waypoint %s within 10s; last: %s", url, wp.Spec.Gateway, last)
}

// hop is what one request left behind: the waypoint's request records and
// node-b's inbound records (the destination ztunnel), collected after the
// answer.
type hop struct {
	resp      response
	waypoint  []accesslog.Record
	srcOut    []accesslog.Record // node-a's outbound records (the source ztunnel)
	dstInbnds []accesslog.Record
	appDelta  int64
}

// send sends one GET to url and collects the records it caused.
func (w *wpMesh) send(t *testing.T, wp *harness.Waypoint, app *harness.HTTPEcho, url string) hop {
	t.Helper()
	if wp != nil {
		harness.Drain(wp.Records)
	}
	harness.Drain(w.nodeB().Records)
	harness.Drain(w.Ztunnel("node-a").Records)
	before := app.Requests()
	h := hop{resp: w.get(t, url)}
	// Records are written when the request (waypoint) and the connection
	// (ztunnel) end; give them a moment.
	var wch <-chan accesslog.Record
	if wp != nil {
		wch = wp.Records
	}
	deadline := time.After(300 * time.Millisecond)
	for done := false; !done; {
		select {
		case r := <-wch:
			h.waypoint = append(h.waypoint, r)
		case r := <-w.nodeB().Records:
			if r.Direction == accesslog.Inbound {
				h.dstInbnds = append(h.dstInbnds, r)
			}
		case r := <-w.Ztunnel("node-a").Records:
			if r.Direction == accesslog.Outbound {
				h.srcOut = append(h.srcOut, r)
			}
		case <-deadline:
			done = true
		}
	}
	h.appDelta = app.Requests() - before
	return h
}

// TestWaypointService: a namespace labelled istio.io/use-waypoint sends its
// service traffic through the waypoint, once; the waypoint applies L7
// policy bound to the Service; pod-addressed traffic bypasses a service
// waypoint; removing the label goes direct again.
func TestWaypointService(t *testing.T) {
	w := newWaypointMesh(t)
	wp := w.StartWaypoint("node-a", "demo", "waypoint")
	idWaypoint := "spiffe://cluster.local/ns/demo/sa/waypoint"
	if got := wp.ID().String(); got != idWaypoint {
		t.Fatalf("waypoint identity = %s, want %s", got, idWaypoint)
	}
	w.labelNamespace(map[string]string{"istio.io/use-waypoint": "waypoint"})
	w.waitVia(t, wp, w.url(w.echoVIP, 80, "/ready"))

	t.Run("through the waypoint, once", func(t *testing.T) {
		for i := range 3 {
			path := fmt.Sprintf("/hello/%d?q=%d", i, i)
			h := w.send(t, wp, w.echo, w.url(w.echoVIP, 80, path))
			if h.resp.status != http.StatusOK || h.resp.echo.Name != "echo-0" || h.resp.echo.Path != path {
				t.Fatalf("GET %s = %d %q, want 200 from echo-0 with path %s", path, h.resp.status, h.resp.body, path)
			}
			if xff := h.resp.echo.Header.Get("X-Forwarded-For"); !strings.Contains(xff, w.client.String()) {
				t.Errorf("GET %s: the app saw x-forwarded-for %q, want the client %s in it", path, xff, w.client)
			}
			// Exactly one hop through the waypoint, one delivery.
			if len(h.waypoint) != 1 {
				t.Fatalf("GET %s: waypoint records = %d (%+v), want 1", path, len(h.waypoint), h.waypoint)
			}
			r := h.waypoint[0]
			if r.Method != http.MethodGet || r.Path != path || r.ResponseCode != http.StatusOK ||
				spiffeID(r.SrcIdentity) != idClient || r.DstService != "echo.demo.svc.cluster.local" ||
				r.UpstreamHost != netip.AddrPortFrom(w.echo0, 8080) {
				t.Errorf("GET %s: waypoint record = %s %s %d src %s service %s upstream %s, want GET %s 200 src %s service echo.demo.svc.cluster.local upstream %s",
					path, r.Method, r.Path, r.ResponseCode, r.SrcIdentity, r.DstService, r.UpstreamHost, path, idClient, netip.AddrPortFrom(w.echo0, 8080))
			}
			if len(h.dstInbnds) != 1 {
				t.Fatalf("GET %s: node-b inbound records = %d (%+v), want 1", path, len(h.dstInbnds), h.dstInbnds)
			}
			if in := h.dstInbnds[0]; spiffeID(in.SrcIdentity) != idWaypoint || in.DstAddr != netip.AddrPortFrom(w.echo0, 8080) {
				t.Errorf("GET %s: node-b inbound record from %s to %s, want from %s to %s", path, in.SrcIdentity, in.DstAddr, idWaypoint, netip.AddrPortFrom(w.echo0, 8080))
			}
			if h.appDelta != 1 {
				t.Errorf("GET %s: the app received %d requests, want 1", path, h.appDelta)
			}
			// The source ztunnel sent it to the waypoint.
			if len(h.srcOut) != 1 || spiffeID(h.srcOut[0].DstIdentity) != idWaypoint || h.srcOut[0].DstAddr != netip.AddrPortFrom(wp.Spec.PodIP, 15008) {
				t.Errorf("GET %s: node-a outbound records = %+v, want one to %s via %s", path, h.srcOut, idWaypoint, netip.AddrPortFrom(wp.Spec.PodIP, 15008))
			}
		}
	})

	// The waypoint closing a downstream HTTP connection after a complete
	// response is a clean end for the source ztunnel, and in local mode it
	// dials endpoints from its pod address.
	t.Run("clean close, from the waypoint pod's address", func(t *testing.T) {
		h := w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/clean"))
		if h.resp.status != http.StatusOK || len(h.srcOut) != 1 || len(h.dstInbnds) != 1 {
			t.Fatalf("GET /clean = %d with node-a outbound %+v and node-b inbound %+v, want 200 and one of each", h.resp.status, h.srcOut, h.dstInbnds)
		}
		if err := h.srcOut[0].Err; err != nil {
			t.Errorf("node-a outbound record to the waypoint: error %q, want none (the request completed)", err)
		}
		if got := h.dstInbnds[0].SrcAddr.Addr(); got != wp.Spec.PodIP {
			t.Errorf("node-b inbound record from address %s, want the waypoint pod's %s (in local mode every pod dials from its own address)", got, wp.Spec.PodIP)
		}
	})

	t.Run("gRPC through the waypoint", func(t *testing.T) {
		harness.Drain(wp.Records)
		target := netip.AddrPortFrom(w.echoVIP, 9090).String()
		conn, err := grpc.NewClient("passthrough:///"+target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return harness.Dial(ctx, w.client, addr)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("Health.Check through the waypoint: %v", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Health.Check = %v, want SERVING", resp.GetStatus())
		}
		r := wp.WaitRecord(t, 2*time.Second, func(r accesslog.Record) bool { return r.Method != "" })
		if r.Path != "/grpc.health.v1.Health/Check" || r.ResponseCode != http.StatusOK || r.Protocol != "HTTP/2.0" {
			t.Errorf("waypoint record = %s %s %s %d, want POST /grpc.health.v1.Health/Check HTTP/2.0 200", r.Method, r.Path, r.Protocol, r.ResponseCode)
		}
	})

	t.Run("L7 DENY bound to the Service", func(t *testing.T) {
		w.Write("policy.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: demo
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: echo
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin"]
`)
		deadline := time.Now().Add(10 * time.Second)
		var h hop
		for {
			h = w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/admin"))
			if h.resp.status == http.StatusForbidden || time.Now().After(deadline) {
				break
			}
		}
		if h.resp.status != http.StatusForbidden || strings.TrimSpace(h.resp.body) != "RBAC: access denied" {
			t.Fatalf("GET /admin = %d %q, want 403 \"RBAC: access denied\"", h.resp.status, h.resp.body)
		}
		if h.appDelta != 0 || len(h.dstInbnds) != 0 {
			t.Errorf("GET /admin reached the app (%d requests, %d inbound records), want it stopped at the waypoint", h.appDelta, len(h.dstInbnds))
		}
		if len(h.waypoint) != 1 || h.waypoint[0].ResponseCode != http.StatusForbidden || !strings.Contains(h.waypoint[0].Policy, "deny-admin") {
			t.Errorf("waypoint records for GET /admin = %+v, want one 403 decided by deny-admin", h.waypoint)
		}
		if h := w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/")); h.resp.status != http.StatusOK || h.appDelta != 1 {
			t.Errorf("GET / = %d (app got %d requests), want 200 through to the app", h.resp.status, h.appDelta)
		}
		if h := w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/admin/x")); h.resp.status != http.StatusOK {
			t.Errorf("GET /admin/x = %d, want 200 (paths: [/admin] is an exact match)", h.resp.status)
		}
	})

	t.Run("pod-addressed traffic bypasses a service waypoint", func(t *testing.T) {
		h := w.send(t, wp, w.echo, w.url(w.echo0, 8080, "/admin"))
		if h.resp.status != http.StatusOK || h.appDelta != 1 {
			t.Fatalf("GET pod/admin = %d %q, want 200 from the app", h.resp.status, h.resp.body)
		}
		if len(h.waypoint) != 0 {
			t.Errorf("waypoint records for pod-addressed traffic = %+v, want none", h.waypoint)
		}
		if len(h.dstInbnds) != 1 || spiffeID(h.dstInbnds[0].SrcIdentity) != idClient {
			t.Errorf("node-b inbound records = %+v, want one from %s", h.dstInbnds, idClient)
		}
	})

	t.Run("another Service of the namespace goes through it too", func(t *testing.T) {
		h := w.send(t, wp, w.other, w.url(w.otherVIP, 80, "/"))
		if h.resp.status != http.StatusOK || h.resp.echo.Name != "other-0" || len(h.waypoint) != 1 {
			t.Errorf("GET other/ = %d %q with %d waypoint records, want 200 from other-0 through the waypoint", h.resp.status, h.resp.body, len(h.waypoint))
		}
	})

	t.Run("removing the label goes direct again", func(t *testing.T) {
		w.labelNamespace(nil)
		w.waitDirect(t, w.url(w.echoVIP, 80, "/direct"), idClient)
		h := w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/admin"))
		if h.resp.status != http.StatusOK || len(h.waypoint) != 0 {
			t.Errorf("GET /admin without the label = %d with %d waypoint records, want 200 direct (the L7 policy is the waypoint's)", h.resp.status, len(h.waypoint))
		}
		if len(h.dstInbnds) != 1 || spiffeID(h.dstInbnds[0].SrcIdentity) != idClient {
			t.Errorf("node-b inbound records = %+v, want one from %s", h.dstInbnds, idClient)
		}
	})
}

// TestWaypointWorkload: a waypoint for workloads (istio.io/waypoint-for:
// workload) takes pod-addressed traffic; service-addressed traffic goes
// straight to the endpoint, as Istio's ztunnel does.
func TestWaypointWorkload(t *testing.T) {
	w := newWaypointMesh(t)
	wp := w.StartWaypoint("node-a", "demo", "wl", harness.WaypointFor("workload"))
	w.labelNamespace(map[string]string{"istio.io/use-waypoint": "wl"})
	w.waitVia(t, wp, w.url(w.echo0, 8080, "/ready"))

	h := w.send(t, wp, w.echo, w.url(w.echo0, 8080, "/pod"))
	if h.resp.status != http.StatusOK || len(h.waypoint) != 1 || h.waypoint[0].Path != "/pod" {
		t.Fatalf("GET pod/pod = %d with waypoint records %+v, want 200 through the waypoint", h.resp.status, h.waypoint)
	}
	if r := h.waypoint[0]; r.Authority != netip.AddrPortFrom(w.echo0, 8080).String() || r.UpstreamHost != netip.AddrPortFrom(w.echo0, 8080) {
		t.Errorf("waypoint record authority %s upstream %s, want both %s", r.Authority, r.UpstreamHost, netip.AddrPortFrom(w.echo0, 8080))
	}
	if len(h.dstInbnds) != 1 || spiffeID(h.dstInbnds[0].SrcIdentity) != "spiffe://cluster.local/ns/demo/sa/wl" || h.appDelta != 1 {
		t.Errorf("node-b inbound records = %+v (app got %d), want one from the waypoint", h.dstInbnds, h.appDelta)
	}

	h = w.send(t, wp, w.echo, w.url(w.echoVIP, 80, "/svc"))
	if h.resp.status != http.StatusOK || len(h.waypoint) != 0 {
		t.Errorf("GET svc/svc = %d with %d waypoint records, want 200 without the workload waypoint", h.resp.status, len(h.waypoint))
	}
	if len(h.dstInbnds) != 1 || spiffeID(h.dstInbnds[0].SrcIdentity) != idClient {
		t.Errorf("node-b inbound records = %+v, want one from %s", h.dstInbnds, idClient)
	}
}

// TestWaypointForServiceAccount: a waypoint for one ServiceAccount
// (istio.io/for-service-account, our extension) takes the traffic of that
// identity's workloads, service- and pod-addressed, and of no other.
func TestWaypointForServiceAccount(t *testing.T) {
	w := newWaypointMesh(t)
	wp := w.StartWaypoint("node-a", "demo", "echo-waypoint", harness.ForServiceAccount("echo"))
	w.waitVia(t, wp, w.url(w.echoVIP, 80, "/ready"))
	idWaypoint := "spiffe://cluster.local/ns/demo/sa/echo-waypoint"

	for _, tc := range []struct {
		name    string
		url     string
		app     *harness.HTTPEcho
		through bool
	}{
		{"echo service", w.url(w.echoVIP, 80, "/a"), w.echo, true},
		{"echo pod", w.url(w.echo0, 8080, "/b"), w.echo, true},
		{"other service", w.url(w.otherVIP, 80, "/c"), w.other, false},
		{"other pod", w.url(w.other0, 8080, "/d"), w.other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := w.send(t, wp, tc.app, tc.url)
			if h.resp.status != http.StatusOK || h.appDelta != 1 {
				t.Fatalf("GET %s = %d %q (app got %d), want 200 from %s", tc.url, h.resp.status, h.resp.body, h.appDelta, tc.app.Name)
			}
			wantPeer, wantRecords := idClient, 0
			if tc.through {
				wantPeer, wantRecords = idWaypoint, 1
			}
			if len(h.waypoint) != wantRecords {
				t.Errorf("GET %s: waypoint records = %d, want %d", tc.url, len(h.waypoint), wantRecords)
			}
			if len(h.dstInbnds) != 1 || spiffeID(h.dstInbnds[0].SrcIdentity) != wantPeer {
				t.Errorf("GET %s: node-b inbound records = %+v, want one from %s", tc.url, h.dstInbnds, wantPeer)
			}
		})
	}
}

// TestWaypointDown: once a service is bound to a waypoint, a waypoint that
// is down (stopped, its pod not Ready) fails the connection, as Istio does:
// traffic never silently goes direct. When the waypoint comes back, traffic
// flows through it again.
func TestWaypointDown(t *testing.T) {
	w := newWaypointMesh(t)
	w.StartWaypoint("node-a", "demo", "waypoint")
	w.labelNamespace(map[string]string{"istio.io/use-waypoint": "waypoint"})
	w.waitVia(t, w.Waypoint("demo", "waypoint"), w.url(w.echoVIP, 80, "/ready"))

	w.StopWaypoint("demo", "waypoint")
	// Wait for the pod's unreadiness to reach the ztunnels, then check
	// that requests keep failing and never reach the app.
	time.Sleep(500 * time.Millisecond)
	harness.Drain(w.nodeB().Records)
	before := w.echo.Requests()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := w.do(ctx, w.url(w.echoVIP, 80, fmt.Sprintf("/down/%d", i)))
		cancel()
		if err == nil {
			t.Errorf("GET /down/%d with the waypoint down = %d %q, want the connection to fail", i, r.status, r.body)
		}
	}
	if n := w.echo.Requests() - before; n != 0 {
		t.Errorf("the app received %d requests with the waypoint down, want 0", n)
	}
	for _, r := range harness.Collect(w.nodeB().Records, 200*time.Millisecond) {
		if r.Direction == accesslog.Inbound {
			t.Errorf("node-b inbound record with the waypoint down: %+v", r)
		}
	}

	wp := w.StartWaypoint("node-a", "demo", "waypoint")
	w.waitVia(t, wp, w.url(w.echoVIP, 80, "/back"))
}
