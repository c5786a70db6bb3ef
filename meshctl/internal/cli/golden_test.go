package cli

import (
	"bytes"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/ with the current output")

// fixedNow is the time of the golden outputs.
var fixedNow = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("output of %s differs from %s (-want +got):\n%s", name, path, diff)
	}
}

// serveDump serves testdata/configdump.json as a ztunnel's admin server
// does, and records what /logging was asked.
func serveDump(t *testing.T) (addr string, logging *[]string) {
	t.Helper()
	dump, err := os.ReadFile("testdata/configdump.json")
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) { w.Write(dump) })
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		calls = append(calls, r.Method+" "+r.URL.RawQuery)
		level := r.URL.Query().Get("level")
		if level == "" {
			level = "info"
		}
		w.Write([]byte("current log level is " + level + "\n"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), &calls
}

// run runs meshctl with args and returns its stdout, stderr and exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestGolden(t *testing.T) {
	defer func(c func() time.Time) { clock = c }(clock)
	clock = func() time.Time { return fixedNow }
	addr, _ := serveDump(t)
	wp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"identity": "spiffe://cluster.local/ns/demo/sa/waypoint", "waypointPolicies": ["demo/deny-admin", "demo/allow-get"]}`))
	}))
	defer wp.Close()
	wpDump, err := os.ReadFile("testdata/waypointdump.json")
	if err != nil {
		t.Fatal(err)
	}
	wp2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(wpDump) }))
	defer wp2.Close()
	local := []string{"--istiod", "127.0.0.1:1", "--proxy-admin", "node-a=" + addr}
	withWaypoint := []string{"--proxy-admin", "demo/waypoint=" + strings.TrimPrefix(wp.URL, "http://")}
	l7 := []string{"explain", "demo/client", "echo-l7.demo:80", "--config-dir", "testdata/config", "--proxy-admin", "demo/waypoint=" + strings.TrimPrefix(wp2.URL, "http://")}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ztunnel-config-all", []string{"ztunnel-config", "all"}},
		{"ztunnel-config-workload-ns", []string{"ztunnel-config", "workload", "-n", "legacy"}},
		{"ztunnel-config-service", []string{"ztunnel-config", "service", "--node", "node-a"}},
		{"ztunnel-config-policy-yaml", []string{"ztunnel-config", "policy", "-o", "yaml"}},
		{"ztunnel-config-certificate", []string{"ztunnel-config", "certificate"}},
		{"ztunnel-config-connections", []string{"ztunnel-config", "connections"}},
		{"ztunnel-config-connections-raw-ns", []string{"ztunnel-config", "connections", "--raw", "-n", "demo"}},
		{"ztunnel-config-log", []string{"ztunnel-config", "log", "--level", "access:debug"}},
		{"explain-waypoint", []string{"explain", "demo/client", "echo-l7.demo:80", "--config-dir", "testdata/config"}},
		{"explain-waypoint-no-labels", []string{"explain", "client.demo", "127.10.100.11:80"}},
		{"explain-direct", []string{"explain", "-n", "demo", "client", "echo.demo.svc.cluster.local:80"}},
		{"explain-denied", []string{"explain", "demo/stranger", "echo.demo:80"}},
		{"explain-not-in-mesh", []string{"explain", "legacy/old", "127.10.2.10:8080"}},
		{"explain-json", []string{"explain", "demo/client", "echo-l7.demo:80", "--config-dir", "testdata/config", "-o", "json"}},
		{"explain-waypoint-l7", append([]string{"explain", "demo/client", "echo-l7.demo:80", "--config-dir", "testdata/config"}, withWaypoint...)},
		// A waypoint that shows its policies: what each matches, and the
		// decision of a request as the waypoint's evaluator makes it.
		{"explain-l7-policies", l7},
		{"explain-l7-deny-path", append(slices.Clip(l7), "--path", "/admin/users?x=1")},
		{"explain-l7-allow-get", append(slices.Clip(l7), "--path", "/")},
		{"explain-l7-no-allow-post", append(slices.Clip(l7), "--method", "POST", "--path", "/")},
		{"explain-l7-allow-header", append(slices.Clip(l7), "--method", "POST", "--header", "x-user=alice", "--header", "Host=echo-l7")},
		{"explain-l7-dry-run", append(slices.Clip(l7), "--path", "/debug/pprof")},
		{"explain-l7-invalid-path", append(slices.Clip(l7), "--path", "/a%00b")},
		{"explain-l7-tcp", append(slices.Clip(l7), "--tcp")},
		{"explain-l7-json", append(slices.Clip(l7), "--path", "/admin", "--header", "x-user=alice", "-o", "json")},
		{"explain-l7-no-waypoint", []string{"explain", "demo/client", "echo.demo:80", "--path", "/admin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, append(local, tc.args...)...)
			if code != 0 {
				t.Fatalf("meshctl %s: exit %d: %s", strings.Join(tc.args, " "), code, errOut)
			}
			golden(t, tc.name, []byte(out))
		})
	}
}

func TestGoldenProxyStatus(t *testing.T) {
	exp := fixedNow.Add(23*time.Hour + 30*time.Minute)
	wpExp := fixedNow.Add(18 * time.Hour)
	acked := fixedNow.Add(-time.Minute)
	rows := []proxyRow{
		{Name: "ztunnel-node-a.istio-system", Type: "ztunnel", CertExpiry: &exp, Sync: []typeStatus{
			{Type: "type.googleapis.com/istio.workload.Address", Status: "SYNCED", Version: "7", LastUpdated: &acked},
			{Type: "type.googleapis.com/istio.security.Authorization", Status: "SYNCED", Version: "3", LastUpdated: &acked},
		}},
		{Name: "ztunnel-node-b.istio-system", Type: "ztunnel", Sync: []typeStatus{
			{Type: "type.googleapis.com/istio.workload.Address", Status: "STALE", Version: "6"},
			{Type: "type.googleapis.com/istio.security.Authorization", Status: "ERROR", Version: "2", Error: "bad policy"},
		}},
		{Name: "waypoint-0.demo", Type: "waypoint", CertExpiry: &wpExp, Sync: []typeStatus{
			{Type: "type.googleapis.com/istio.workload.Address", Status: "SYNCED", Version: "7"},
			{Type: "type.googleapis.com/ambientgo.waypoint.Authorization", Status: "NOT SENT"},
			{Type: "type.googleapis.com/ambientgo.waypoint.Routes", Status: "SYNCED", Version: "2"},
		}},
	}
	var b bytes.Buffer
	if err := renderProxyStatus(&b, rows, fixedNow); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status", b.Bytes())
}

func TestGoldenCheck(t *testing.T) {
	var b bytes.Buffer
	renderChecks(&b, []CheckResult{
		{OK: true, Check: "crds", Message: "authorizationpolicies.security.istio.io serves v1,v1beta1"},
		{OK: false, Check: "ztunnel", Message: "node node-b: no ready ztunnel pod (app=ztunnel in istio-system)"},
		{OK: true, Check: "ca-root", Message: "the root is valid until 2036-01-01T00:00:00Z (3652d)"},
	})
	golden(t, "check", b.Bytes())
}

// TestHelpExamples: every command documents itself with an example.
func TestHelpExamples(t *testing.T) {
	root := NewRoot(NewOptions(&bytes.Buffer{}, &bytes.Buffer{}))
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" || c.Hidden {
			return
		}
		n++
		if c.Example == "" {
			t.Errorf("meshctl %s has no example in --help", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if n < 10 {
		t.Errorf("walked %d commands, want every one (at least 10)", n)
	}
}
