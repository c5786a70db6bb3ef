package kubectl

// Cluster mode's waypoint with real traffic (issue 10), driven with
// kubectl: a real API server (tests/kube), istiod-lite in cluster mode in
// the underlay namespace, one ztunnel per node in in-pod mode, and the
// waypoint pod that the Deployment istiod-lite wrote run by the harness
// kubelet in a pod namespace of its own (cluster.Node.RunWaypointPod: the
// waypoint binary with the pod spec's arguments, environment, projected
// token and root certificate). An unmodified client pod calls the Service's
// VIP; labels, policies and the Gateway are changed with kubectl only.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// wpNetnsZtunnel3 is the pod node-3's ztunnel token is bound to (with
// ztunnelPods for node-1 and node-2).
const wpNetnsZtunnel3 = `
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-node-3, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node-3
  serviceAccountName: ztunnel
  containers: [{name: istio-proxy, image: ambient-go/ztunnel:test}]
`

// wpNetnsDemo is the ambient namespace demo: the client pod on node-1, the
// echo pod on node-2 serving HTTP on 8080 behind the Service echo (port 80,
// declared HTTP). The waypoint will run on node-3.
const wpNetnsDemo = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: app, image: ambient-go/app:test}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node-2
  serviceAccountName: echo
  containers: [{name: app, image: ambient-go/app:test}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
`

const (
	wpNetnsClientID   = "spiffe://cluster.local/ns/demo/sa/client"
	wpNetnsEchoID     = "spiffe://cluster.local/ns/demo/sa/echo"
	wpNetnsWaypointID = "spiffe://cluster.local/ns/demo/sa/waypoint"
	wpNetnsEchoHost   = "echo.demo.svc.cluster.local"
	gatewayNameLabel  = "gateway.networking.k8s.io/gateway-name"
)

// wpRuntime is the runtime of netns_test.go, plus the pods of waypoint
// Deployments, which it runs with cluster.Node.RunWaypointPod and stops
// when the API server deletes them.
type wpRuntime struct {
	*runtime

	mu        sync.Mutex
	waypoints map[string]*cluster.Waypoint // by pod namespace/name
	stopped   map[string]error             // waypoints StopPod deleted, and how that went
}

func (r *wpRuntime) runPod(ctx context.Context, pod *corev1.Pod) ([]netip.Addr, error) {
	if pod.Labels[gatewayNameLabel] == "" {
		return r.runtime.runPod(ctx, pod)
	}
	i, err := r.node(pod.Spec.NodeName)
	if err != nil {
		return nil, err
	}
	mesh, kc := r.mesh.Load(), r.kc.Load()
	if mesh == nil || kc == nil {
		return nil, errors.New("the mesh is not running yet")
	}
	w, err := mesh.Node(i).RunWaypointPod(ctx, kc, pod)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.waypoints[w.Pod.Key()] = w
	r.mu.Unlock()
	return []netip.Addr{w.IP()}, nil
}

func (r *wpRuntime) stopPod(ctx context.Context, pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	r.mu.Lock()
	w := r.waypoints[key]
	delete(r.waypoints, key)
	r.mu.Unlock()
	if w == nil {
		r.runtime.stopPod(ctx, pod)
		return
	}
	err := w.Delete()
	r.mu.Lock()
	r.stopped[key] = err
	r.mu.Unlock()
}

// waypoint waits (waitTimeout) for the runtime to run the waypoint pod key.
func (r *wpRuntime) waypoint(t *testing.T, key string) *cluster.Waypoint {
	t.Helper()
	for deadline := time.Now().Add(waitTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r.mu.Lock()
		w := r.waypoints[key]
		r.mu.Unlock()
		if w != nil {
			return w
		}
	}
	t.Fatalf("the runtime did not run waypoint pod %s within %v", key, waitTimeout)
	return nil
}

// wpGet sends one GET from inside the pod with Go's net/http client (a
// plain socket: capture is transparent), without keep-alive.
func wpGet(ctx context.Context, p *cluster.Pod, target netip.AddrPort, path string) (int, string, error) {
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

// answeredFrom is the address the echo app saw in an answer.
func answeredFrom(body string) netip.Addr {
	f := strings.Fields(body)
	if len(f) != 3 {
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(f[1])
	return ap.Addr()
}

func wpUnique(prefix string) string { return fmt.Sprintf("/%s-%d", prefix, time.Now().UnixNano()) }

func isConn(direction string) func(cluster.Log) bool {
	return func(l cluster.Log) bool {
		return l.String("msg") == accesslog.Message && l.String(accesslog.KeyDirection) == direction
	}
}

func isAnyConn(l cluster.Log) bool { return l.String("msg") == accesslog.Message }

func isRequest(path string) func(cluster.Log) bool {
	return func(l cluster.Log) bool {
		return l.String("msg") == accesslog.RequestMessage && l.String(accesslog.KeyPath) == path
	}
}

type logWaiter interface {
	WaitLog(context.Context, int, func(cluster.Log) bool) (cluster.Log, int, error)
}

func waitLogLine(t *testing.T, p logWaiter, from int, what string, match func(cluster.Log) bool) cluster.Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, _, err := p.WaitLog(ctx, from, match)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return l
}

// kubectlWait runs a kubectl command that waits (its own --timeout), with
// a context a little longer.
func kubectlWait(t *testing.T, kc *kube.Cluster, timeout time.Duration, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout+10*time.Second)
	defer cancel()
	if _, err := kc.Kubectl(ctx, append(args, "--timeout="+timeout.String())...); err != nil {
		t.Fatal(err)
	}
}

// settle lets records that a loop or a second hop would add arrive before
// they are counted.
const settle = 200 * time.Millisecond

// wpNetnsMesh holds what the steps of the test share.
type wpNetnsMesh struct {
	client, echo *cluster.Pod
	app          *cluster.HTTPEcho
	vip          netip.AddrPort
	z1, z2, z3   *cluster.Ztunnel
	wp           *cluster.Waypoint // while it runs
	wpKey        string            // its pod's namespace/name
	echoHop      string            // the echo app's pod address:port
}

// hops are the log positions of every process on the way.
type hops struct{ z1, z2, z3, wp int }

// mark returns the log positions once the processes have been quiet for
// settle (5s at most): a connection's record is written when it closes,
// just after the answer.
func (m *wpNetnsMesh) mark() hops {
	pos := func() hops {
		h := hops{m.z1.Mark(), m.z2.Mark(), m.z3.Mark(), -1}
		if m.wp != nil {
			h.wp = m.wp.Mark()
		}
		return h
	}
	last := pos()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(settle)
		cur := pos()
		if cur == last {
			break
		}
		last = cur
	}
	return last
}

// checkThroughWaypoint checks what every hop logged for one request for
// path through the waypoint: node-1's ztunnel sent one connection to the
// waypoint, the waypoint logged one request (code), node-2's ztunnel
// accepted one connection from the waypoint's identity (when allowed),
// node-3's ztunnel (the waypoint's node) saw nothing, and the app served
// the request from the waypoint.
func (m *wpNetnsMesh) checkThroughWaypoint(t *testing.T, h hops, path string, code int) cluster.Log {
	t.Helper()
	wp := m.wp
	out := waitLogLine(t, m.z1, h.z1, "node-1's ztunnel: outbound record", isConn(accesslog.Outbound))
	if got := out.String(accesslog.KeyDstIdentity); got != wpNetnsWaypointID {
		t.Errorf("node-1's outbound record: dst.identity %q, want the waypoint's %q (%v)", got, wpNetnsWaypointID, out)
	}
	if got, want := out.String(accesslog.KeyDstAddr), netip.AddrPortFrom(wp.IP(), cluster.WaypointHBONEPort).String(); got != want {
		t.Errorf("node-1's outbound record: dst.addr %q, want the waypoint pod's %s", got, want)
	}
	rec := waitLogLine(t, wp, h.wp, "waypoint: request record for "+path, isRequest(path))
	if got, _ := rec.Int(accesslog.KeyResponseCode); int(got) != code {
		t.Errorf("waypoint's record: response_code %d, want %d (%v)", got, code, rec)
	}
	if got := rec.String(accesslog.KeySrcIdentity); got != wpNetnsClientID {
		t.Errorf("waypoint's record: src.identity %q, want the client's %q", got, wpNetnsClientID)
	}
	if got := rec.String(accesslog.KeyDstService); got != wpNetnsEchoHost {
		t.Errorf("waypoint's record: dst.service %q, want %q", got, wpNetnsEchoHost)
	}
	wantIn := 0
	if code == http.StatusOK {
		wantIn = 1
		if got := rec.String(accesslog.KeyUpstreamHost); got != m.echoHop {
			t.Errorf("waypoint's record: upstream_host %q, want %s", got, m.echoHop)
		}
		in := waitLogLine(t, m.z2, h.z2, "node-2's ztunnel: inbound record", isConn(accesslog.Inbound))
		if got := in.String(accesslog.KeySrcIdentity); got != wpNetnsWaypointID {
			t.Errorf("node-2's inbound record: src.identity %q, want the waypoint's %q (%v)", got, wpNetnsWaypointID, in)
		}
		if got := in.String(accesslog.KeyDstAddr); got != m.echoHop {
			t.Errorf("node-2's inbound record: dst.addr %q, want %s", got, m.echoHop)
		}
		if reqs := m.app.Requests(path); len(reqs) != 1 || reqs[0].Remote != wp.IP() || !strings.Contains(reqs[0].XFF, m.client.IP.String()) {
			t.Errorf("the app served %+v for %s, want one request from the waypoint %s forwarded for the client %s", reqs, path, wp.IP(), m.client.IP)
		}
	}
	time.Sleep(settle)
	if n := m.z1.Count(h.z1, isAnyConn); n != 1 {
		t.Errorf("node-1's ztunnel logged %d connections for one request, want 1", n)
	}
	if n := wp.Count(h.wp, isRequest(path)); n != 1 {
		t.Errorf("the waypoint logged %d records for %s, want 1", n, path)
	}
	if n := m.z2.Count(h.z2, isAnyConn); n != wantIn {
		t.Errorf("node-2's ztunnel logged %d connections, want %d", n, wantIn)
	}
	if n := m.z3.Count(h.z3, isAnyConn); n != 0 {
		t.Errorf("node-3's ztunnel (the waypoint's node) logged %d connections, want none: the waypoint's pod is not captured", n)
	}
	return rec
}

// checkDirect checks that one request for path went from the client to
// the echo pod directly, without the waypoint (wp, if still running, logged
// no request).
func (m *wpNetnsMesh) checkDirect(t *testing.T, h hops, path string) {
	t.Helper()
	out := waitLogLine(t, m.z1, h.z1, "node-1's ztunnel: outbound record", isConn(accesslog.Outbound))
	if got := out.String(accesslog.KeyDstIdentity); got != wpNetnsEchoID {
		t.Errorf("node-1's outbound record: dst.identity %q, want echo's %q (%v)", got, wpNetnsEchoID, out)
	}
	in := waitLogLine(t, m.z2, h.z2, "node-2's ztunnel: inbound record", isConn(accesslog.Inbound))
	if got := in.String(accesslog.KeySrcIdentity); got != wpNetnsClientID {
		t.Errorf("node-2's inbound record: src.identity %q, want the client's %q", got, wpNetnsClientID)
	}
	if reqs := m.app.Requests(path); len(reqs) != 1 || reqs[0].Remote != m.client.IP {
		t.Errorf("the app served %+v for %s, want one request from the client %s", reqs, path, m.client.IP)
	}
	time.Sleep(settle)
	if m.wp != nil && h.wp >= 0 {
		if n := m.wp.Count(h.wp, func(l cluster.Log) bool { return l.String("msg") == accesslog.RequestMessage }); n != 0 {
			t.Errorf("the waypoint logged %d requests for traffic that should bypass it", n)
		}
	}
	if n := m.z2.Count(h.z2, isAnyConn); n != 1 {
		t.Errorf("node-2's ztunnel logged %d connections, want 1", n)
	}
}

// waitAnswerFrom sends requests (every 100 ms, d at most) until the app
// answers one having seen it from `from`, and returns how long it took.
func (m *wpNetnsMesh) waitAnswerFrom(t *testing.T, d time.Duration, what string, from netip.Addr) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, d, what, func() error {
		code, body, err := wpGet(t.Context(), m.client, m.vip, wpUnique("probe"))
		if err != nil {
			return err
		}
		if code != http.StatusOK || answeredFrom(body) != from {
			return fmt.Errorf("answer %d %q, want 200 seen from %s", code, body, from)
		}
		return nil
	})
	return time.Since(start)
}

// waypointRequests sums the waypoint's istio_requests_total samples (reporter
// waypoint) that carry every one of the labels.
func waypointRequests(t *testing.T, wp *cluster.Waypoint, labels ...string) float64 {
	t.Helper()
	n, err := wp.Requests(t.Context(), labels...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tokenClaims decodes the claims of a JWT without verifying it (the API
// server did, when the CA reviewed it).
func tokenClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWT", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token payload: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatalf("token payload: %v", err)
	}
	return claims
}

// flagValue returns the value of --name=value in a NUL-separated
// /proc/<pid>/cmdline (the last one wins, as for the binary's flags).
func flagValue(cmdline []byte, name string) string {
	var v string
	for _, a := range strings.Split(string(cmdline), "\x00") {
		if s, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			v = s
		}
	}
	return v
}

func TestKubectlWaypointNetns(t *testing.T) {
	netns.RequireRoot(t)
	crds, err := kube.CRDDir()
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	rt := &wpRuntime{runtime: &runtime{pods: map[string]*cluster.Pod{}}, waypoints: map[string]*cluster.Waypoint{}, stopped: map[string]error{}}
	kc := kube.Start(t, kube.Config{
		// The harness scheduler places pods without a node round-robin
		// from the first node listed; every pod here names its node but
		// the waypoint's, which lands on node-3: both of its legs cross
		// the underlay.
		Nodes: []kube.Node{{Name: "node-3", IP: netns.NodeIP(3)}, {Name: "node-1", IP: netns.NodeIP(1)}, {Name: "node-2", IP: netns.NodeIP(2)}},
		// Service VIPs in the topology's VIP prefix, which pods route to
		// their node (where only ztunnel's capture can reach them).
		ServiceCIDR: netns.VIPPrefix.String(),
		CRDDirs:     []string{crds},
		RunPod:      rt.runPod,
		StopPod:     rt.stopPod,
		Log:         log.With("component", "harness"),
	})
	rt.kc.Store(kc)
	apply(t, kc, ztunnelPods)
	apply(t, kc, wpNetnsZtunnel3)
	tokens := map[string]string{}
	for _, node := range []string{"node-1", "node-2", "node-3"} {
		tokens[node] = strings.TrimSpace(kc.MustKubectl(t, "create", "token", "ztunnel", "-n", "istio-system",
			"--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-"+node, "--audience", "istio-ca"))
	}
	mesh := cluster.New(t, cluster.Options{Nodes: 3, Kube: kc.REST, Tokens: tokens})
	rt.mesh.Store(mesh)

	apply(t, kc, wpNetnsDemo)
	kc.MustKubectl(t, "wait", "-n", "demo", "--for=condition=Ready", "pod/client", "pod/echo", "--timeout=30s")
	m := &wpNetnsMesh{client: rt.pod(t, "demo/client"), echo: rt.pod(t, "demo/echo")}
	m.z1, m.z2, m.z3 = mesh.Node(1).Ztunnel(), mesh.Node(2).Ztunnel(), mesh.Node(3).Ztunnel()
	m.app = cluster.StartHTTPEcho(t, m.echo, 8080)
	m.echoHop = netip.AddrPortFrom(m.echo.IP, 8080).String()
	vip, err := netip.ParseAddr(strings.TrimSpace(kc.MustKubectl(t, "-n", "demo", "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}")))
	if err != nil || !netns.VIPPrefix.Contains(vip) {
		t.Fatalf("Service demo/echo cluster IP %v (%v), want one in %s", vip, err, netns.VIPPrefix)
	}
	m.vip = netip.AddrPortFrom(vip, 80)
	ctx := t.Context()
	timings := map[string]time.Duration{}
	defer func() {
		for _, k := range slices.Sorted(maps.Keys(timings)) {
			t.Logf("timing: %s: %v", k, timings[k].Round(time.Millisecond))
		}
	}()
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("without a waypoint, service traffic goes direct", func(t *testing.T) {
		m.waitAnswerFrom(t, 15*time.Second, "the client reaches the Service directly", m.client.IP)
		path := wpUnique("direct")
		h := m.mark()
		if code, body, err := wpGet(ctx, m.client, m.vip, path); err != nil || code != http.StatusOK || answeredFrom(body) != m.client.IP {
			t.Fatalf("GET %s = %d %q, %v; want 200 seen from the client", path, code, body, err)
		}
		m.checkDirect(t, h, path)
	})

	step("kubectl apply a Gateway: the harness runs the pod of the Deployment istiod-lite wrote", func(t *testing.T) {
		start := time.Now()
		apply(t, kc, waypointGateway)
		waitKubectl(t, kc, "Deployment demo/waypoint", func() bool {
			_, err := kc.Kubectl(ctx, "-n", "demo", "get", "deployment", "waypoint")
			return err == nil
		})
		kubectlWait(t, kc, 60*time.Second, "-n", "demo", "wait", "--for=condition=Available", "deployment/waypoint")
		kubectlWait(t, kc, 30*time.Second, "-n", "demo", "wait", "--for=condition=Ready", "pod", "-l", gatewayNameLabel+"=waypoint")
		timings["Gateway applied → Deployment Available, pod Ready"] = time.Since(start)

		out := strings.Fields(kc.MustKubectl(t, "-n", "demo", "get", "pods", "-l", gatewayNameLabel+"=waypoint", "-o",
			"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{end}"))
		if len(out) != 3 {
			t.Fatalf("waypoint pods (name node IP) = %q, want one", out)
		}
		m.wpKey = "demo/" + out[0]
		m.wp = rt.waypoint(t, m.wpKey)
		if out[1] != "node-3" || m.wp.Pod.NodeOf().Name != "node-3" {
			t.Errorf("the waypoint pod is bound to %s and runs on %s, want node-3", out[1], m.wp.Pod.NodeOf().Name)
		}
		if out[2] != m.wp.IP().String() {
			t.Errorf("the waypoint pod's status.podIP = %s, want its sandbox's %s", out[2], m.wp.IP())
		}

		// The process runs with the Deployment's arguments: istiod-lite
		// wrote its underlay address, the pod's own values came from the
		// downward API, and the token is the pod's projected token.
		dep := kc.MustKubectl(t, "-n", "demo", "get", "deployment", "waypoint", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
		if want := `--xds-address=` + mesh.IstiodAddr().String(); !strings.Contains(dep, want) {
			t.Errorf("Deployment args %s, want %s", dep, want)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.wp.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		for flag, want := range map[string]string{
			"namespace": "demo", "gateway": "waypoint", "service-account": "waypoint", "pod-name": out[0], "pod-ip": m.wp.IP().String(),
			"xds-address": mesh.IstiodAddr().String(), "hbone-addr": ":15008",
		} {
			if got := flagValue(cmdline, flag); got != want {
				t.Errorf("the waypoint runs with --%s=%q, want %q", flag, got, want)
			}
		}
		root, err := os.ReadFile(flagValue(cmdline, "ca-root"))
		if err != nil || !strings.Contains(string(root), "BEGIN CERTIFICATE") {
			t.Errorf("--ca-root holds %q, %v; want the mesh root of the istio-ca-root-cert ConfigMap", root, err)
		}
		token, err := os.ReadFile(flagValue(cmdline, "token-file"))
		if err != nil {
			t.Fatalf("--token-file: %v", err)
		}
		claims := tokenClaims(t, string(token))
		k8s, _ := claims["kubernetes.io"].(map[string]any)
		pod, _ := k8s["pod"].(map[string]any)
		sa, _ := k8s["serviceaccount"].(map[string]any)
		if aud := fmt.Sprint(claims["aud"]); aud != "[istio-ca]" || pod["name"] != out[0] || sa["name"] != "waypoint" {
			t.Errorf("the waypoint's token: aud %s, pod %v, service account %v; want [istio-ca], %s, waypoint", aud, pod["name"], sa["name"], out[0])
		}

		// The Gateway is Programmed with the waypoint Service's addresses.
		clusterIP := strings.TrimSpace(kc.MustKubectl(t, "-n", "demo", "get", "service", "waypoint", "-o", "jsonpath={.spec.clusterIP}"))
		want := "True|" + clusterIP + " waypoint.demo.svc.cluster.local"
		var last string
		waitKubectlOr(t, "Gateway demo/waypoint Programmed with addresses", func() bool {
			last, _ = kc.Kubectl(ctx, "-n", "demo", "get", "gateway", "waypoint", "-o",
				`jsonpath={.status.conditions[?(@.type=="Programmed")].status}|{.status.addresses[*].value}`)
			return last == want
		}, func() string { return last })
		timings["Gateway applied → Programmed with addresses"] = time.Since(start)

		// Its pod is not captured.
		if n := m.z1.Count(0, func(l cluster.Log) bool {
			return l.String("msg") == "pod captured" && l.String("pod") == m.client.Key()
		}); n == 0 {
			t.Error("node-1's ztunnel never logged the client captured: the next check could not fail")
		}
		if n := m.z3.Count(0, func(l cluster.Log) bool { return l.String("msg") == "pod captured" && l.String("pod") == m.wpKey }); n != 0 {
			t.Errorf("node-3's ztunnel captured the waypoint pod %d times", n)
		}
	})

	step("kubectl label namespace use-waypoint: the Service is bound and its traffic goes through the waypoint", func(t *testing.T) {
		start := time.Now()
		kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/use-waypoint=waypoint")
		waitServiceBound(t, kc, "echo", "True", "WaypointAccepted")
		timings["namespace labelled → Service WaypointBound"] = time.Since(start)
		m.waitAnswerFrom(t, 15*time.Second, "service traffic through the waypoint", m.wp.IP())
		timings["namespace labelled → traffic through the waypoint"] = time.Since(start)
	})

	step("a request to the Service VIP goes through the waypoint, in HBONE only on the underlay", func(t *testing.T) {
		before := waypointRequests(t, m.wp, `response_code="200"`, `destination_service="`+wpNetnsEchoHost+`"`, `source_principal="`+wpNetnsClientID+`"`)
		marker := fmt.Sprintf("WPMARKER%d", time.Now().UnixNano())
		path := "/" + marker
		h := m.mark()
		var code int
		var body string
		var err error
		frames := mesh.CaptureUnderlay(t, func() { code, body, err = wpGet(ctx, m.client, m.vip, path) })
		if err != nil || code != http.StatusOK || answeredFrom(body) != m.wp.IP() {
			t.Fatalf("GET %s = %d %q, %v; want 200 seen from the waypoint %s", path, code, body, err, m.wp.IP())
		}
		m.checkThroughWaypoint(t, h, path, http.StatusOK)

		if n := netns.Contains(frames, []byte(marker)); n > 0 {
			t.Errorf("the marker %q is in clear in %d frames on the underlay", marker, n)
		}
		wpHBONE := netip.AddrPortFrom(m.wp.IP(), cluster.WaypointHBONEPort)
		echoHBONE := netip.AddrPortFrom(m.echo.IP, 15008)
		var toWaypoint, fromWaypoint int
		for _, s := range cluster.PodSegments(frames) {
			switch {
			case s.Src.Addr() == m.client.IP && s.Dst == wpHBONE, s.Src == wpHBONE && s.Dst.Addr() == m.client.IP:
				toWaypoint++
			case s.Src.Addr() == m.wp.IP() && s.Dst == echoHBONE, s.Src == echoHBONE && s.Dst.Addr() == m.wp.IP():
				fromWaypoint++
			default:
				t.Errorf("pod traffic on the underlay that is not one of the waypoint's HBONE legs: %v", s)
			}
		}
		if toWaypoint == 0 || fromWaypoint == 0 {
			t.Errorf("segments client ↔ waypoint:15008 %d, waypoint ↔ echo:15008 %d; want both legs on the underlay", toWaypoint, fromWaypoint)
		}
		after := waypointRequests(t, m.wp, `response_code="200"`, `destination_service="`+wpNetnsEchoHost+`"`, `source_principal="`+wpNetnsClientID+`"`)
		if after-before != 1 {
			t.Errorf("the waypoint's istio_requests_total{response_code=200, destination_service=echo, source_principal=client} grew by %v, want 1", after-before)
		}
	})

	step("kubectl apply an L7 DENY on /admin with targetRefs to the Service: 403 on /admin, / works", func(t *testing.T) {
		start := time.Now()
		apply(t, kc, l7DenyAdmin)
		waitPolicyCondition(t, kc, "deny-admin", "WaypointAccepted", func(cond map[string]any) bool {
			return cond["status"] == "True" && cond["reason"] == "Accepted"
		})
		timings["policy applied → WaypointAccepted"] = time.Since(start)
		eventually(t, 15*time.Second, "the waypoint denies /admin", func() error {
			code, body, err := wpGet(ctx, m.client, m.vip, "/admin")
			if err != nil {
				return err
			}
			if code != http.StatusForbidden {
				return fmt.Errorf("GET /admin = %d %q, want 403", code, body)
			}
			return nil
		})
		timings["policy applied → 403 on /admin"] = time.Since(start)

		served := len(m.app.Requests("/admin"))
		h := m.mark()
		code, body, err := wpGet(ctx, m.client, m.vip, "/admin")
		if err != nil || code != http.StatusForbidden || body != "RBAC: access denied" {
			t.Fatalf("GET /admin = %d %q, %v; want 403 %q", code, body, err, "RBAC: access denied")
		}
		rec := m.checkThroughWaypoint(t, h, "/admin", http.StatusForbidden)
		if got := rec.String(accesslog.KeyPolicy); got != "demo/deny-admin" {
			t.Errorf("the waypoint's record of the denied request: policy %q, want demo/deny-admin", got)
		}
		if n := len(m.app.Requests("/admin")) - served; n != 0 {
			t.Errorf("the app served /admin %d times through the DENY", n)
		}

		code, body, err = wpGet(ctx, m.client, m.vip, "/")
		if err != nil || code != http.StatusOK || answeredFrom(body) != m.wp.IP() {
			t.Errorf("GET / = %d %q, %v; want 200 through the waypoint %s", code, body, err, m.wp.IP())
		}
		path := wpUnique("allowed")
		h = m.mark()
		if code, body, err := wpGet(ctx, m.client, m.vip, path); err != nil || code != http.StatusOK {
			t.Fatalf("GET %s = %d %q, %v; want 200", path, code, body, err)
		}
		m.checkThroughWaypoint(t, h, path, http.StatusOK)
	})

	step("kubectl delete the policy: /admin works again", func(t *testing.T) {
		start := time.Now()
		kc.MustKubectl(t, "-n", "demo", "delete", "authorizationpolicies.security.istio.io", "deny-admin")
		eventually(t, 15*time.Second, "/admin allowed again", func() error {
			code, body, err := wpGet(ctx, m.client, m.vip, "/admin")
			if err != nil {
				return err
			}
			if code != http.StatusOK || answeredFrom(body) != m.wp.IP() {
				return fmt.Errorf("GET /admin = %d %q, want 200 through the waypoint", code, body)
			}
			return nil
		})
		timings["policy deleted → /admin allowed"] = time.Since(start)
	})

	step("kubectl label namespace use-waypoint-: the Service is unbound and its traffic goes direct", func(t *testing.T) {
		start := time.Now()
		kc.MustKubectl(t, "label", "namespace", "demo", "istio.io/use-waypoint-")
		waitServiceBound(t, kc, "echo", "", "") // the condition goes
		m.waitAnswerFrom(t, 15*time.Second, "service traffic goes direct", m.client.IP)
		timings["label removed → traffic direct"] = time.Since(start)
		path := wpUnique("direct-again")
		h := m.mark()
		if code, body, err := wpGet(ctx, m.client, m.vip, path); err != nil || code != http.StatusOK || answeredFrom(body) != m.client.IP {
			t.Fatalf("GET %s = %d %q, %v; want 200 seen from the client", path, code, body, err)
		}
		m.checkDirect(t, h, path)
	})

	step("kubectl delete gateway: its objects are garbage-collected, the harness stops the waypoint, traffic still flows", func(t *testing.T) {
		wp := m.wp
		start := time.Now()
		kc.MustKubectl(t, "-n", "demo", "delete", "gateway", "waypoint")
		for _, kind := range []string{"deployment", "service", "serviceaccount"} {
			waitKubectl(t, kc, kind+" demo/waypoint deleted by the garbage collector", func() bool {
				_, err := kc.Kubectl(ctx, "-n", "demo", "get", kind, "waypoint")
				return err != nil && strings.Contains(err.Error(), "NotFound")
			})
		}
		waitKubectl(t, kc, "the waypoint's pods gone", func() bool {
			out, err := kc.Kubectl(ctx, "-n", "demo", "get", "pods", "-l", gatewayNameLabel+"=waypoint", "-o", "name")
			return err == nil && strings.TrimSpace(out) == ""
		})
		select {
		case <-wp.Done():
		case <-time.After(waitTimeout):
			t.Fatalf("the waypoint process still runs %v after its pod was deleted", waitTimeout)
		}
		timings["Gateway deleted → objects gone, waypoint stopped"] = time.Since(start)
		rt.mu.Lock()
		stopErr, stopped := rt.stopped[m.wpKey]
		rt.mu.Unlock()
		if !stopped {
			t.Errorf("the waypoint exited without the harness stopping pod %s", m.wpKey)
		} else if stopErr != nil {
			t.Errorf("stopping the waypoint pod: %v", stopErr)
		}
		if _, err := os.Stat(wp.Pod.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the waypoint pod's namespace %s: %v, want it removed", wp.Pod.Path(), err)
		}
		eventually(t, 10*time.Second, "node-3's ztunnel forgets the waypoint pod", func() error {
			if ok, err := m.z3.HasWorkload(ctx, wp.IP()); ok || err != nil {
				return fmt.Errorf("still known (%v)", err)
			}
			return nil
		})

		m.wp = nil
		path := wpUnique("after-delete")
		h := m.mark()
		if code, body, err := wpGet(ctx, m.client, m.vip, path); err != nil || code != http.StatusOK || answeredFrom(body) != m.client.IP {
			t.Fatalf("GET %s = %d %q, %v; want 200 seen from the client", path, code, body, err)
		}
		m.checkDirect(t, h, path)
	})
}
