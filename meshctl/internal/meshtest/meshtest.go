// Package meshtest starts the local-mode mesh meshctl's tests run
// against: tests/harness with a demo namespace, a waypoint and a policy.
package meshtest

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/harness"
)

// OperatorToken is the meshctl token of the mesh's config directory
// (Secret istio-system/meshctl-tokens, user "operator").
const OperatorToken = "operator-token"

// Start starts a local-mode mesh (tests/harness: istiod-lite on a config
// directory, ztunnels on node-a and node-b, in-process on loopback) with
// namespace demo: client and stranger on node-a, echo-0 on node-b behind
// Service echo and, through waypoint demo/waypoint, Service echo-l7; the
// policy demo/allow-client lets only client and the waypoint reach echo, and
// the waypoint's L7 policy demo/deny-admin denies /admin on echo-l7.
// It returns meshctl's local-mode flags for it (with OperatorToken).
func Start(t *testing.T) (*harness.Mesh, []string) {
	t.Helper()
	m := harness.New(t, harness.Options{})
	client, stranger, echo := m.PodIP(0, 0), m.PodIP(0, 1), m.PodIP(1, 0)
	harness.StartHTTPEcho(t, "echo-0", netip.AddrPortFrom(echo, 8080))
	m.Write("demo.yaml", strings.Join([]string{
		"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n",
		Pod("client", "client", "node-a", client, "app: client"),
		Pod("stranger", "stranger", "node-a", stranger, "app: stranger"),
		Pod("echo-0", "echo", "node-b", echo, "app: echo"),
		Service("echo", m.VIP(0), ""),
		Service("echo-l7", m.VIP(1), "waypoint"),
		`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-client
  namespace: demo
spec:
  selector:
    matchLabels:
      app: echo
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client", "cluster.local/ns/demo/sa/waypoint"]
`,
		`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: demo
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: echo-l7
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin"]
`,
	}, "---\n"))
	m.Write("meshctl-tokens.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: meshctl-tokens\n  namespace: istio-system\nstringData:\n  operator: "+OperatorToken+"\n")
	wp := m.StartWaypoint("node-a", "demo", "waypoint")
	flags := []string{
		"--istiod", m.IstiodAddr(), "--istiod-token", OperatorToken,
		"--proxy-admin", "node-a=" + m.Ztunnel("node-a").Admin().AdminAddr().String(),
		"--proxy-admin", "node-b=" + m.Ztunnel("node-b").Admin().AdminAddr().String(),
		"--proxy-admin", "demo/waypoint=" + wp.Admin().AdminAddr().String(),
	}
	// Wait until node-a's ztunnel holds the waypoint binding of echo-l7.
	deadline := time.Now().Add(20 * time.Second)
	for {
		svc := m.Ztunnel("node-a").Store().ServiceByVIP(m.VIP(1))
		if svc != nil && svc.WaypointRef != nil {
			if wp, err := m.Ztunnel("node-a").Store().ServiceWaypoint(svc, m.VIP(1)); err == nil && wp != nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("node-a's ztunnel never bound echo-l7 to the waypoint")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m, flags
}

// Pod is the YAML of a running, ready pod of namespace demo.
func Pod(name, sa, node string, ip netip.Addr, labels string) string {
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
status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "True"
`, name, labels, node, sa, ip)
}

// Service is the YAML of a Service of namespace demo selecting app=echo
// (80 → 8080), through waypoint when it is not empty.
func Service(name string, vip netip.Addr, waypoint string) string {
	labels := ""
	if waypoint != "" {
		labels = "\n  labels:\n    istio.io/use-waypoint: " + waypoint
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: demo%s
spec:
  clusterIP: %s
  selector:
    app: echo
  ports:
  - port: 80
    targetPort: 8080
`, name, labels, vip)
}
