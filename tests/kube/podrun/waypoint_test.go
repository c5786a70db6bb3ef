package podrun_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/images"
	"github.com/ambient-go/mesh/tests/kube"
	"github.com/ambient-go/mesh/tests/kube/podrun"
	"github.com/ambient-go/mesh/tests/netns"
)

// wpEchoSource is the program of the image ambient-go/echo:test: HTTP on
// :8080 answering every request "ok <remote address> <X-Forwarded-For>"
// and closing the connection after it, so that the ztunnel that carried
// it writes its record at once (a waypoint keeps an upstream connection
// open for the next request otherwise).
const wpEchoSource = `package main

import (
	"fmt"
	"net/http"
)

func main() {
	h := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "ok %s %s", r.RemoteAddr, r.Header.Get("X-Forwarded-For"))
	}
	if err := http.ListenAndServe(":8080", http.HandlerFunc(h)); err != nil {
		fmt.Println(err)
	}
}
`

// buildEchoImage builds ambient-go/echo:test from wpEchoSource and returns
// its images directory.
func buildEchoImage(t *testing.T) string {
	t.Helper()
	return buildGoImage(t, "echo", wpEchoSource)
}

// wpAnswer parses the echo app's answer: the address it saw the request
// from and the X-Forwarded-For header.
func wpAnswer(body string) (from netip.Addr, xff string, ok bool) {
	f := strings.Fields(body)
	if len(f) < 2 || f[0] != "ok" {
		return netip.Addr{}, "", false
	}
	ap, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return netip.Addr{}, "", false
	}
	if len(f) > 2 {
		xff = f[2]
	}
	return ap.Addr(), xff, true
}

// wpObjects are the ambient namespace wp: a client pod on node-1, a server
// pod on node-2 (the echo app on 8080), and the Service echo in front of
// the server (port 80, declared HTTP).
const wpObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: wp, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: wp}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: wp}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: wp, labels: {app: client}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: app, image: ambient-go/echo:test}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: wp, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: app
    image: ambient-go/echo:test
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: wp}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
`

// wpGateway is a waypoint for the namespace wp, as a user writes it.
const wpGateway = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: wp}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// wpDenyAdmin is an L7 policy bound to the Service's waypoint by its
// targetRefs.
const wpDenyAdmin = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: wp}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`

const (
	wpClientID   = "spiffe://cluster.local/ns/wp/sa/client"
	wpWaypointID = "spiffe://cluster.local/ns/wp/sa/waypoint"
	wpEchoHost   = "echo.wp.svc.cluster.local"
	wpGWLabel    = "gateway.networking.k8s.io/gateway-name"
	// wpWait bounds every wait for the mesh to follow a change; it covers
	// a ztunnel's lost xDS connection (TestDeployedUserStory's logWait).
	wpWait = 60 * time.Second
)

// wpStory holds what the steps of TestDeployedWaypoint share.
type wpStory struct {
	d         *deployed
	client    *netns.Pod
	serverIP  netip.Addr
	vip       netip.AddrPort
	ztunnelOn map[string]string // node -> ztunnel pod name
	wpPod     string            // the waypoint pod's name, once it runs
	wpIP      netip.Addr
}

// get sends GET path to the Service's VIP from inside the client pod's
// network namespace (as an application of the pod: capture is
// transparent), without keep-alive.
func (s *wpStory) get(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return s.client.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.vip.String()+path, nil)
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

// waypointRecord waits (timeout) for the waypoint's access-log record of
// a request for path after from.
func (s *wpStory) waypointRecord(from int, timeout time.Duration, path string) (map[string]any, bool) {
	return s.d.out.waitJSON(from, timeout, "wp", s.wpPod, "waypoint", func(m map[string]any) bool {
		return wpStr(m, "msg") == accesslog.RequestMessage && wpStr(m, accesslog.KeyPath) == path
	})
}

// serverInbound waits (timeout) for an inbound connection record of the
// server's ztunnel (node-2) from src after from.
func (s *wpStory) serverInbound(from int, timeout time.Duration, src netip.Addr) (map[string]any, bool) {
	return s.d.out.waitJSON(from, timeout, "istio-system", s.ztunnelOn["node-2"], "ztunnel", func(m map[string]any) bool {
		return wpStr(m, "msg") == accesslog.Message && wpStr(m, accesslog.KeyDirection) == accesslog.Inbound &&
			strings.HasPrefix(wpStr(m, accesslog.KeySrcAddr), src.String()+":")
	})
}

// request sends GET path (a path of its own) and returns the answer, the
// waypoint's record of it (nil if it logged none within 3 s, or no
// waypoint runs) and, if wantConn is valid, the server ztunnel's inbound
// record of a connection from wantConn (nil if none within 3 s).
func (s *wpStory) request(ctx context.Context, path string, wantConn netip.Addr) (code int, body string, rec, in map[string]any, err error) {
	from := s.d.out.mark()
	code, body, err = s.get(ctx, path)
	if err != nil {
		return 0, "", nil, nil, err
	}
	if wantConn.IsValid() {
		in, _ = s.serverInbound(from, 3*time.Second, wantConn)
	}
	if s.wpPod != "" {
		rec, _ = s.waypointRecord(from, 2*time.Second, path)
	}
	return code, body, rec, in, nil
}

// direct reports whether the echo app saw the request come from the
// client, not forwarded.
func (s *wpStory) direct(body string) bool {
	from, xff, ok := wpAnswer(body)
	return ok && from == s.client.IP && xff == ""
}

// viaWaypoint reports whether the echo app saw the request come from the
// waypoint pod, forwarded for the client.
func (s *wpStory) viaWaypoint(body string) bool {
	from, xff, ok := wpAnswer(body)
	return ok && s.wpIP.IsValid() && from == s.wpIP && strings.Contains(xff, s.client.IP.String())
}

func wpStr(m map[string]any, k string) string { s, _ := m[k].(string); return s }

// wpEventually calls f every 200 ms until it returns nil, for d at most.
func wpEventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wpJSONPath polls `kubectl get` with a JSONPath until ok accepts its
// output, for wpWait at most.
func wpJSONPath(t *testing.T, kc *kube.Cluster, what string, ok func(string) bool, args ...string) string {
	t.Helper()
	var last string
	wpEventually(t, wpWait, what, func() error {
		out, err := kc.Kubectl(t.Context(), args...)
		last = out
		if err != nil {
			return err
		}
		if !ok(out) {
			return fmt.Errorf("got %q", out)
		}
		return nil
	})
	return last
}

// wpCondition returns the condition typ of a JSON list of conditions
// (metav1.Condition's, or Istio's, whose observedGeneration is a string).
func wpCondition(conds, typ string) (status, reason string) {
	var cs []struct{ Type, Status, Reason string }
	if conds == "" || json.Unmarshal([]byte(conds), &cs) != nil {
		return "", ""
	}
	for _, c := range cs {
		if c.Type == typ {
			return c.Status, c.Reason
		}
	}
	return "", ""
}

// TestDeployedWaypoint is issue 10's kubectl story on what deploy/
// installed, the waypoint run by the harness kubelet from the waypoint
// image as every other mesh component: `kubectl apply` a Gateway of class
// istio-waypoint in an ambient namespace → istiod-lite (the leader) writes
// its ServiceAccount, Deployment and Service → the Deployment's pod runs
// from ambient-go/waypoint:dev (istiod-lite's --waypoint-image in
// deploy/) as the image's entrypoint with the Deployment's arguments
// expanded from the downward API, as uid 1337 without capabilities, with
// its projected token; Ready by its startup and readiness probes, not
// captured → the Gateway is
// Programmed with status.addresses; `kubectl label namespace
// istio.io/use-waypoint` binds the Service and a request from the client
// pod to its VIP goes through the waypoint (its access log records the
// request with the client's identity, the server's ztunnel records the
// connection from the waypoint's SPIFFE identity); an L7 DENY of /admin
// with targetRefs to the Service answers 403 on /admin while / answers
// 200; deleting it lets /admin through; removing the label sends the
// traffic direct again.
func TestDeployedWaypoint(t *testing.T) {
	netns.RequireRoot(t)
	d := startDeployed(t, buildEchoImage(t))
	d.rollout(t)
	kc := d.kc
	ctx := t.Context()
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	if _, err := kc.KubectlStdin(ctx, strings.NewReader(wpObjects), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	kc.MustKubectl(t, "wait", "-n", "wp", "--for=condition=Ready", "pod/client", "pod/server", "--timeout=60s")
	s := &wpStory{d: d, client: d.podNS(t, "wp", "client"), serverIP: d.podNS(t, "wp", "server").IP, ztunnelOn: map[string]string{}}
	zpods, err := kc.Clientset.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range zpods.Items {
		s.ztunnelOn[p.Spec.NodeName] = p.Name
	}
	svc, err := kc.Clientset.CoreV1().Services("wp").Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("Service wp/echo cluster IP %q: %v", svc.Spec.ClusterIP, err)
	}
	s.vip = netip.AddrPortFrom(vip, 80)
	// A pod of a real cluster has a default route to its node; the
	// topology's pods route only pods and the topology's VIP prefix. The
	// client gets a route for the API server's service range via its
	// node, which has none: only ztunnel's capture reaches a VIP, as in
	// the topology's own prefix.
	h, err := s.client.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	svcRange := netip.MustParsePrefix(kube.DefaultServiceCIDR)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: svcRange.Addr().AsSlice(), Mask: net.CIDRMask(svcRange.Bits(), 32)}, Gw: s.client.Node.Gateway.AsSlice()}); err != nil {
		t.Fatalf("route to the service range in the client pod: %v", err)
	}

	step("without a waypoint, the client reaches the Service directly with its own identity", func(t *testing.T) {
		wpEventually(t, wpWait, "a request to the VIP answered by the server, from the client", func() error {
			code, body, _, in, err := s.request(ctx, "/direct", s.client.IP)
			if err != nil {
				return err
			}
			if code != http.StatusOK || !s.direct(body) {
				return fmt.Errorf("GET /direct = %d %q, want 200 from the client", code, body)
			}
			if in == nil {
				return fmt.Errorf("the server's ztunnel logged no inbound connection from the client")
			}
			if id := wpStr(in, accesslog.KeySrcIdentity); id != wpClientID {
				return fmt.Errorf("the server's ztunnel logged src.identity %q, want %q", id, wpClientID)
			}
			return nil
		})
	})

	step("kubectl apply a Gateway: its ServiceAccount, Deployment and Service appear and the waypoint pod runs from its image", func(t *testing.T) {
		start := time.Now()
		if _, err := kc.KubectlStdin(ctx, strings.NewReader(wpGateway), "apply", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"serviceaccount", "deployment", "service"} {
			wpJSONPath(t, kc, kind+" wp/waypoint owned by the Gateway", func(out string) bool { return out == "Gateway/waypoint" },
				"-n", "wp", "get", kind, "waypoint", "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}")
		}
		ctxWait, cancel := context.WithTimeout(ctx, 2*time.Minute+10*time.Second)
		defer cancel()
		if _, err := kc.Kubectl(ctxWait, "-n", "wp", "wait", "--for=condition=Available", "deployment/waypoint", "--timeout=2m"); err != nil {
			t.Fatalf("the waypoint Deployment is not Available: %v", err)
		}
		t.Logf("Gateway applied → Deployment Available in %v", time.Since(start).Round(time.Millisecond))
		pods, err := kc.Clientset.CoreV1().Pods("wp").List(ctx, metav1.ListOptions{LabelSelector: wpGWLabel + "=waypoint"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 1 {
			t.Fatalf("%d waypoint pods, want 1", len(pods.Items))
		}
		pod := &pods.Items[0]
		s.wpPod = pod.Name
		s.wpIP = d.podNS(t, "wp", pod.Name).IP
		if pod.Status.PodIP != s.wpIP.String() {
			t.Errorf("waypoint pod status.podIP %q, want its sandbox's %s", pod.Status.PodIP, s.wpIP)
		}
		if !podReady(pod) {
			t.Errorf("the waypoint pod is not Ready: %+v", pod.Status.Conditions)
		}
		if got := pod.Labels["istio.io/dataplane-mode"]; got != "none" {
			t.Errorf("waypoint pod label istio.io/dataplane-mode = %q, want none", got)
		}
		// Run from the waypoint image that was built: the tag of
		// istiod-lite's --waypoint-image, the platform manifest's digest.
		built, ok := d.built["waypoint"]
		if !ok {
			t.Fatal("the waypoint image was not built")
		}
		digest, err := built.Images[podrun.Platform.OS+"-"+podrun.Platform.Architecture].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if len(pod.Status.ContainerStatuses) != 1 {
			t.Fatalf("waypoint pod container statuses %+v, want one", pod.Status.ContainerStatuses)
		}
		cs := pod.Status.ContainerStatuses[0]
		if cs.Image != "ambient-go/waypoint:dev" || !strings.HasSuffix(cs.ImageID, "@"+digest.String()) || cs.State.Running == nil || cs.RestartCount != 0 {
			t.Errorf("waypoint container: image %s, imageID %s, state %+v, restarts %d; want ambient-go/waypoint:dev, @%s, running, 0",
				cs.Image, cs.ImageID, cs.State, cs.RestartCount, digest)
		}
		// The process is the image's entrypoint with the Deployment's
		// arguments as a kubelet expands them (downward API variables),
		// as the non-root user 1337 without capabilities, and holds its
		// pod's projected token for the CA's audience.
		pids := procsInNetns(t, d.podNS(t, "wp", s.wpPod).NS.Path(), "waypoint")
		if len(pids) != 1 {
			t.Fatalf("%d waypoint processes in the waypoint pod's network namespace, want 1", len(pids))
		}
		proc := fmt.Sprintf("/proc/%d", pids[0])
		cmdline, err := os.ReadFile(proc + "/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		if args[0] != images.BinDir+"/waypoint" {
			t.Errorf("the waypoint runs %q, want the image's entrypoint %s/waypoint", args[0], images.BinDir)
		}
		for _, want := range []string{
			"--namespace=wp", "--gateway=waypoint", "--service-account=waypoint", "--pod-name=" + s.wpPod,
			"--pod-ip=" + s.wpIP.String(), "--xds-address=istiod-lite.istio-system.svc:15012",
			"--token-file=/var/run/secrets/tokens/istio-token", "--ca-root=/var/run/secrets/istio/root-cert.pem",
		} {
			if !slices.Contains(args, want) {
				t.Errorf("the waypoint's arguments %q lack %s", args, want)
			}
		}
		status, err := os.ReadFile(proc + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Uid:\t1337\t1337\t1337\t1337", "Gid:\t1337\t1337\t1337\t1337", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"} {
			if !strings.Contains(string(status), want+"\n") {
				t.Errorf("the waypoint process's status lacks %q:\n%s", want, status)
			}
		}
		token, err := os.ReadFile(proc + "/root/var/run/secrets/tokens/istio-token")
		if err != nil {
			t.Fatal(err)
		}
		if aud := jwtAudience(t, string(token)); !slices.Equal(aud, []string{"istio-ca"}) {
			t.Errorf("the waypoint's token audience %q, want [istio-ca]", aud)
		}
		if root, err := os.ReadFile(proc + "/root/var/run/secrets/istio/root-cert.pem"); err != nil || !strings.Contains(string(root), "BEGIN CERTIFICATE") {
			t.Errorf("the waypoint's mesh root: %q, %v; want the istio-ca-root-cert ConfigMap's certificate", root, err)
		}
		// Its pod is not captured (dataplane-mode none): its node's
		// ztunnel got the CNI ADD and let it be.
		if _, captured := s.d.out.waitJSON(0, 0, "istio-system", s.ztunnelOn[pod.Spec.NodeName], "ztunnel", func(m map[string]any) bool {
			return wpStr(m, "msg") == "pod captured" && wpStr(m, "pod") == "wp/"+s.wpPod
		}); captured {
			t.Errorf("the ztunnel of %s captured the waypoint pod", pod.Spec.NodeName)
		}
		if _, captured := s.d.out.waitJSON(0, 0, "istio-system", s.ztunnelOn["node-1"], "ztunnel", func(m map[string]any) bool {
			return wpStr(m, "msg") == "pod captured" && wpStr(m, "pod") == "wp/client"
		}); !captured {
			t.Error("node-1's ztunnel never logged the client captured: the check above could not fail")
		}

		// Programmed, with the waypoint Service's addresses.
		clusterIP := strings.TrimSpace(kc.MustKubectl(t, "-n", "wp", "get", "service", "waypoint", "-o", "jsonpath={.spec.clusterIP}"))
		want := "True|" + clusterIP + " waypoint.wp.svc.cluster.local"
		wpJSONPath(t, kc, "Gateway wp/waypoint Programmed with addresses", func(out string) bool { return out == want },
			"-n", "wp", "get", "gateway", "waypoint", "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status}|{.status.addresses[*].value}`)
		t.Logf("Gateway applied → Programmed with addresses in %v", time.Since(start).Round(time.Millisecond))
	})

	step("kubectl label namespace use-waypoint: the Service's traffic goes through the waypoint", func(t *testing.T) {
		start := time.Now()
		kc.MustKubectl(t, "label", "namespace", "wp", "istio.io/use-waypoint=waypoint")
		wpJSONPath(t, kc, "Service wp/echo istio.io/WaypointBound True", func(out string) bool {
			st, _ := wpCondition(out, "istio.io/WaypointBound")
			return st == "True"
		}, "-n", "wp", "get", "service", "echo", "-o", "jsonpath={.status.conditions}")
		n := 0
		wpEventually(t, wpWait, "a request through the waypoint", func() error {
			n++
			path := fmt.Sprintf("/through-%d", n)
			code, body, rec, _, err := s.request(ctx, path, netip.Addr{})
			if err != nil {
				return err
			}
			if code != http.StatusOK || !s.viaWaypoint(body) || rec == nil {
				return fmt.Errorf("GET %s = %d %q, waypoint record %v; want 200 through the waypoint", path, code, body, rec)
			}
			return nil
		})
		t.Logf("namespace labelled → traffic through the waypoint in %v", time.Since(start).Round(time.Millisecond))

		code, body, rec, in, err := s.request(ctx, "/via-waypoint", s.wpIP)
		if err != nil || code != http.StatusOK || !s.viaWaypoint(body) {
			t.Fatalf("GET /via-waypoint = %d %q, %v; want 200 from the waypoint %s for the client %s", code, body, err, s.wpIP, s.client.IP)
		}
		if rec == nil {
			t.Fatal("the waypoint logged no record of GET /via-waypoint")
		}
		for k, want := range map[string]string{
			accesslog.KeySrcIdentity:  wpClientID,
			accesslog.KeyDstService:   wpEchoHost,
			accesslog.KeyUpstreamHost: netip.AddrPortFrom(s.serverIP, 8080).String(),
		} {
			if got := wpStr(rec, k); got != want {
				t.Errorf("the waypoint's record: %s = %q, want %q (%v)", k, got, want, rec)
			}
		}
		if got, _ := rec[accesslog.KeyResponseCode].(float64); got != http.StatusOK {
			t.Errorf("the waypoint's record: response_code %v, want 200", rec[accesslog.KeyResponseCode])
		}
		if in == nil {
			t.Fatalf("the server's ztunnel logged no inbound connection from the waypoint %s", s.wpIP)
		}
		if got := wpStr(in, accesslog.KeySrcIdentity); got != wpWaypointID {
			t.Errorf("the server's ztunnel logged src.identity %q, want the waypoint's %q (%v)", got, wpWaypointID, in)
		}
	})

	step("kubectl apply an L7 DENY of /admin with targetRefs to the Service: /admin 403, / 200", func(t *testing.T) {
		start := time.Now()
		if _, err := kc.KubectlStdin(ctx, strings.NewReader(wpDenyAdmin), "apply", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		wpJSONPath(t, kc, "AuthorizationPolicy wp/deny-admin WaypointAccepted", func(out string) bool {
			st, reason := wpCondition(out, "WaypointAccepted")
			return st == "True" && reason == "Accepted"
		}, "-n", "wp", "get", "authorizationpolicies.security.istio.io", "deny-admin", "-o", "jsonpath={.status.conditions}")
		wpEventually(t, wpWait, "the waypoint denies /admin", func() error {
			code, body, err := s.get(ctx, "/admin")
			if err != nil {
				return err
			}
			if code != http.StatusForbidden {
				return fmt.Errorf("GET /admin = %d %q, want 403", code, body)
			}
			return nil
		})
		t.Logf("policy applied → /admin denied in %v", time.Since(start).Round(time.Millisecond))

		code, body, rec, _, err := s.request(ctx, "/admin", netip.Addr{})
		if err != nil || code != http.StatusForbidden || body != "RBAC: access denied" {
			t.Fatalf("GET /admin = %d %q, %v; want 403 %q", code, body, err, "RBAC: access denied")
		}
		if rec == nil {
			t.Fatal("the waypoint logged no record of the denied GET /admin")
		}
		if got := wpStr(rec, accesslog.KeyPolicy); got != "wp/deny-admin" {
			t.Errorf("the waypoint's record of the denied request: policy %q, want wp/deny-admin (%v)", got, rec)
		}
		code, body, rec, _, err = s.request(ctx, "/", netip.Addr{})
		if err != nil || code != http.StatusOK || !s.viaWaypoint(body) || rec == nil {
			t.Errorf("GET / = %d %q, %v, waypoint record %v; want 200 through the waypoint", code, body, err, rec)
		}
	})

	step("kubectl delete the policy: /admin 200", func(t *testing.T) {
		kc.MustKubectl(t, "-n", "wp", "delete", "authorizationpolicies.security.istio.io", "deny-admin")
		wpEventually(t, wpWait, "/admin allowed again", func() error {
			code, body, rec, _, err := s.request(ctx, "/admin", netip.Addr{})
			if err != nil {
				return err
			}
			if code != http.StatusOK || !s.viaWaypoint(body) || rec == nil {
				return fmt.Errorf("GET /admin = %d %q, waypoint record %v; want 200 through the waypoint", code, body, rec)
			}
			return nil
		})
	})

	step("kubectl label namespace use-waypoint-: direct again", func(t *testing.T) {
		kc.MustKubectl(t, "label", "namespace", "wp", "istio.io/use-waypoint-")
		wpJSONPath(t, kc, "Service wp/echo no longer WaypointBound", func(out string) bool {
			st, _ := wpCondition(out, "istio.io/WaypointBound")
			return st == ""
		}, "-n", "wp", "get", "service", "echo", "-o", "jsonpath={.status.conditions}")
		n := 0
		wpEventually(t, wpWait, "a request directly from the client", func() error {
			n++
			path := fmt.Sprintf("/direct-again-%d", n)
			code, body, rec, in, err := s.request(ctx, path, s.client.IP)
			if err != nil {
				return err
			}
			if code != http.StatusOK || !s.direct(body) || rec != nil || in == nil || wpStr(in, accesslog.KeySrcIdentity) != wpClientID {
				return fmt.Errorf("GET %s = %d %q, waypoint record %v, server's ztunnel record %v; want 200 directly from the client", path, code, body, rec, in)
			}
			return nil
		})
	})
}

// procsInNetns returns the processes named comm whose network namespace
// is the one at nsPath.
func procsInNetns(t *testing.T, nsPath, comm string) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, dir := range dirs {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, "ns", "net"), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, "comm")); err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(dir)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
