package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// liveMesh starts a local-mode mesh (tests/harness: istiod-lite on a config
// directory, ztunnels on node-a and node-b, in-process on loopback) with
// namespace demo: client and stranger on node-a, echo-0 on node-b behind
// Service echo and, through waypoint demo/waypoint, Service echo-l7; the
// policy demo/allow-client lets only client and the waypoint reach echo.
// It returns meshctl's local-mode flags for it.
func liveMesh(t *testing.T) (*harness.Mesh, []string) {
	t.Helper()
	m := harness.New(t, harness.Options{})
	client, stranger, echo := m.PodIP(0, 0), m.PodIP(0, 1), m.PodIP(1, 0)
	harness.StartHTTPEcho(t, "echo-0", netip.AddrPortFrom(echo, 8080))
	m.Write("demo.yaml", strings.Join([]string{
		"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n",
		livePod("client", "client", "node-a", client, "app: client"),
		livePod("stranger", "stranger", "node-a", stranger, "app: stranger"),
		livePod("echo-0", "echo", "node-b", echo, "app: echo"),
		liveService("echo", m.VIP(0), ""),
		liveService("echo-l7", m.VIP(1), "waypoint"),
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
	}, "---\n"))
	m.StartWaypoint("node-a", "demo", "waypoint")
	flags := []string{
		"--istiod", m.IstiodAddr(), "--istiod-token", m.Token("node-a"),
		"--proxy-admin", "node-a=" + m.Ztunnel("node-a").Admin().AdminAddr().String(),
		"--proxy-admin", "node-b=" + m.Ztunnel("node-b").Admin().AdminAddr().String(),
	}
	// Wait until node-a's ztunnel holds the waypoint binding of echo-l7.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _, _ := run(t, append(flags, "ztunnel-config", "service", "--node", "node-a")...)
		if regexp.MustCompile(`echo-l7\s+\S+\s+waypoint\s+1/1`).MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-a's ztunnel never bound echo-l7 to the waypoint:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m, flags
}

func livePod(name, sa, node string, ip netip.Addr, labels string) string {
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

func liveService(name string, vip netip.Addr, waypoint string) string {
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

// TestLiveLocalMesh runs the commands against a real local-mode mesh.
func TestLiveLocalMesh(t *testing.T) {
	m, flags := liveMesh(t)
	cmd := func(t *testing.T, args ...string) string {
		t.Helper()
		out, errOut, code := run(t, append(flags, args...)...)
		if code != 0 {
			t.Fatalf("meshctl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return out
	}

	t.Run("proxy-status lists both ztunnels and the waypoint, synced, with cert expiry", func(t *testing.T) {
		var out string
		want := []*regexp.Regexp{
			regexp.MustCompile(`ztunnel-node-a\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-\s+\d{4}-\d\d-\d\dT\S+ \(\d+h\d+m\)`),
			regexp.MustCompile(`ztunnel-node-b\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-\s+\d{4}-`),
			regexp.MustCompile(`waypoint-0\.demo\s+waypoint\s+SYNCED \(v\d+\)\s+-\s+SYNCED \(v\d+\)\s+-`),
		}
		// A proxy may not have ACKed the last push yet: wait for SYNCED.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			out = cmd(t, "proxy-status")
			ok := true
			for _, re := range want {
				ok = ok && re.MatchString(out)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("proxy-status =\n%s\nwant lines matching %v", out, want)
			}
		}
	})

	t.Run("proxy-status refuses an unknown token", func(t *testing.T) {
		_, errOut, code := run(t, "--istiod", m.IstiodAddr(), "--istiod-token", "not-a-token", "proxy-status")
		if code == 0 || !strings.Contains(errOut, "unknown bearer token") {
			t.Errorf("proxy-status with a wrong token = exit %d, %q; want an authentication error", code, errOut)
		}
	})

	t.Run("ztunnel-config workload shows node-b's view", func(t *testing.T) {
		out := cmd(t, "ztunnel-config", "workload", "--node", "node-b", "-n", "demo")
		re := regexp.MustCompile(fmt.Sprintf(`(?m)^demo\s+echo-0\s+%s\s+node-b\s+None\s+HBONE$`, regexp.QuoteMeta(m.PodIP(1, 0).String())))
		if !re.MatchString(out) {
			t.Errorf("ztunnel-config workload =\n%s\nwant a line matching %s", out, re)
		}
		if strings.Contains(out, "istio-system") {
			t.Errorf("-n demo shows other namespaces:\n%s", out)
		}
	})

	t.Run("ztunnel-config certificate shows the identities node-a holds", func(t *testing.T) {
		out := cmd(t, "ztunnel-config", "certificate", "--node", "node-a")
		if !regexp.MustCompile(`spiffe://cluster.local/ns/demo/sa/client\s+Leaf\s+Available\s+true`).MatchString(out) {
			t.Errorf("ztunnel-config certificate =\n%s\nwant client's valid certificate", out)
		}
	})

	t.Run("ztunnel-config log sets the level", func(t *testing.T) {
		if out := cmd(t, "ztunnel-config", "log", "--node", "node-b", "--level", "debug"); !strings.Contains(out, "current log level is debug") {
			t.Errorf("log --level debug = %q", out)
		}
		resp, err := http.Get("http://" + m.Ztunnel("node-b").Admin().AdminAddr().String() + "/logging")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "current log level is debug") {
			t.Errorf("node-b's /logging after log --level debug = %q", b)
		}
		cmd(t, "ztunnel-config", "log", "--node", "node-b", "--level", "info")
	})

	t.Run("explain names the waypoint, the label and the deciding policy", func(t *testing.T) {
		out := cmd(t, "explain", "demo/client", "echo-l7.demo:80", "--config-dir", m.Dir)
		for _, want := range []string{
			"opens HBONE to waypoint demo/waypoint-0",
			"why: label istio.io/use-waypoint=waypoint on Service demo/echo-l7",
			"waypoint demo/waypoint (pod demo/waypoint-0) on node node-a, L7",
			"terminates HBONE from spiffe://cluster.local/ns/demo/sa/waypoint",
			"decision: ALLOW (allowed by policy), decided by demo/allow-client",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("explain =\n%s\nwant it to contain %q", out, want)
			}
		}
		out = cmd(t, "explain", "demo/stranger", "echo.demo:80")
		if !strings.Contains(out, "decision: DENY (no allow policy matched)") {
			t.Errorf("explain stranger =\n%s\nwant a DENY", out)
		}
	})

	t.Run("explain agrees with the data path", func(t *testing.T) {
		// The stranger is denied and the client is allowed for real.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, tc := range []struct {
			src  netip.Addr
			want bool
		}{{m.PodIP(0, 0), true}, {m.PodIP(0, 1), false}} {
			c := harness.HTTPClient(tc.src)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(m.VIP(0), 80).String()+"/", nil)
			resp, err := c.Do(req)
			got := err == nil && resp.StatusCode == http.StatusOK
			if resp != nil {
				resp.Body.Close()
			}
			c.CloseIdleConnections()
			if got != tc.want {
				t.Errorf("GET echo from %s succeeded = %v (%v), want %v as explain says", tc.src, got, err, tc.want)
			}
		}
	})

	t.Run("check in local mode", func(t *testing.T) {
		out := cmd(t, "check")
		if !strings.Contains(out, "✔ istiod: istiod-lite at") || !strings.Contains(out, "all checks passed") {
			t.Errorf("check =\n%s", out)
		}
	})
}
