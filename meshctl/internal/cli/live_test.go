package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/meshctl/internal/meshtest"
	"github.com/ambient-go/mesh/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLiveLocalMesh runs the commands against a real local-mode mesh.
func TestLiveLocalMesh(t *testing.T) {
	m, flags := meshtest.Start(t)
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
			regexp.MustCompile(`ztunnel-node-a\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-\s+-\s+\d{4}-\d\d-\d\dT\S+ \(\d+h\d+m\)`),
			regexp.MustCompile(`ztunnel-node-b\.istio-system\s+ztunnel\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+-\s+-\s+\d{4}-`),
			// The waypoint's expiry comes from its admin server, named by
			// its Gateway (demo/waypoint) while the row names its pod.
			// Its routes (none here) are synced too: ztunnels do not
			// subscribe to them.
			regexp.MustCompile(`waypoint-0\.demo\s+waypoint\s+SYNCED \(v\d+\)\s+-\s+SYNCED \(v\d+\)\s+SYNCED \(v\d+\)\s+\d{4}-\d\d-\d\dT\S+ \(\d+h\d+m\)`),
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

	t.Run("proxy-status over istiod-lite's TLS port", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "root-cert.pem")
		if err := os.WriteFile(root, m.Istiod.RootPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := run(t, "--istiod", m.Istiod.Addr().String(), "--istiod-ca", root, "--istiod-token", meshtest.OperatorToken, "proxy-status", "--certs=false")
		if code != 0 || !strings.Contains(out, "ztunnel-node-b.istio-system") {
			t.Errorf("proxy-status over TLS = exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("proxy-status refuses unknown tokens and node tokens", func(t *testing.T) {
		for _, token := range []string{"not-a-token", m.Token("node-a")} {
			_, errOut, code := run(t, "--istiod", m.IstiodAddr(), "--istiod-token", token, "proxy-status")
			if code == 0 || !strings.Contains(errOut, "unknown bearer token") {
				t.Errorf("proxy-status with token %q = exit %d, %q; want an authentication error", token, code, errOut)
			}
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
			"L7 policies: demo/deny-admin (DENY, Service demo/echo-l7.demo.svc.cluster.local)",
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

	t.Run("explain decides a request at the waypoint as the waypoint does", func(t *testing.T) {
		// demo/deny-admin (path /admin, DENY) is bound to echo-l7: explain
		// reads it from the waypoint's admin server and decides with the
		// waypoint's evaluator; real requests through the waypoint get the
		// same answers.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, tc := range []struct {
			path       string
			wantLines  []string
			wantStatus int
		}{
			{"/admin", []string{
				"to demo/echo-0 (" + m.PodIP(1, 0).String() + ":8080, node node-b): DENY",
				"L7 policies: demo/deny-admin (DENY, Service demo/echo-l7.demo.svc.cluster.local)",
				"demo/deny-admin matches to paths=/admin",
				"request: GET /admin, host echo-l7.demo",
				"decision: DENY 403 (denied by policy), decided by demo/deny-admin",
			}, http.StatusForbidden},
			{"/", []string{
				"to demo/echo-0 (" + m.PodIP(1, 0).String() + ":8080, node node-b): ALLOW",
				"request: GET /, host echo-l7.demo",
				"decision: ALLOW (no policy)",
			}, http.StatusOK},
		} {
			out := cmd(t, "explain", "demo/client", "echo-l7.demo:80", "--path", tc.path)
			for _, want := range tc.wantLines {
				if !strings.Contains(out, want) {
					t.Errorf("explain --path %s =\n%s\nwant it to contain %q", tc.path, out, want)
				}
			}
			c := harness.HTTPClient(m.PodIP(0, 0))
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(m.VIP(1), 80).String()+tc.path, nil)
			req.Host = "echo-l7.demo"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("GET %s through the waypoint: %v", tc.path, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.CloseIdleConnections()
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("GET %s through the waypoint = %d, want %d as explain says", tc.path, resp.StatusCode, tc.wantStatus)
			}
		}
		// Without a request, explain says the decision depends on it.
		out := cmd(t, "explain", "demo/client", "echo-l7.demo:80")
		if want := "decision: depends on the request"; !strings.Contains(out, want) {
			t.Errorf("explain without a request =\n%s\nwant it to contain %q", out, want)
		}
	})

	t.Run("ztunnel-config connections lists an open connection at both ends", func(t *testing.T) {
		// A kept-alive HTTP connection from client to Service echo (no
		// waypoint): node-a carries it outbound, node-b inbound.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := harness.Dial(ctx, m.PodIP(0, 0), netip.AddrPortFrom(m.VIP(0), 80).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		outbound := regexp.MustCompile(`(?m)^client\.demo\s+Outbound\s+client\.demo:\d+\s+echo-0\.demo:15008\s+echo-0\.demo:8080\s+HBONE$`)
		inbound := regexp.MustCompile(fmt.Sprintf(`(?m)^echo-0\.demo\s+Inbound\s+%s:8080\s+%s:\d+\s+echo\.demo\.svc\.cluster\.local\s+HBONE$`,
			regexp.QuoteMeta(m.PodIP(1, 0).String()), regexp.QuoteMeta(m.PodIP(0, 0).String())))
		if out := cmd(t, "ztunnel-config", "connections", "--node", "node-a"); !outbound.MatchString(out) {
			t.Errorf("node-a's connections =\n%s\nwant a line matching %s", out, outbound)
		}
		if out := cmd(t, "ztunnel-config", "connections", "--node", "node-b", "-n", "demo", "--raw"); !inbound.MatchString(out) {
			t.Errorf("node-b's connections =\n%s\nwant a line matching %s", out, inbound)
		}
		// Closed, it leaves both lists.
		conn.Close()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			a := cmd(t, "ztunnel-config", "connections", "--node", "node-a")
			b := cmd(t, "ztunnel-config", "connections", "--node", "node-b", "--raw")
			if !outbound.MatchString(a) && !inbound.MatchString(b) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the closed connection is still listed:\n%s\n%s", a, b)
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
