package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo builds the binaries and runs the demo once, as `make demo` does,
// so that the README's first command keeps working: the L4 mesh and the
// waypoint of examples/local (a request through it, one denied by its L7
// policy).
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries")
	}
	if l, err := net.Listen("tcp", "127.10.0.1:15012"); err != nil {
		t.Skipf("the demo's address 127.10.0.1:15012 is taken (is a demo running?): %v", err)
	} else {
		l.Close()
	}
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/",
		"github.com/ambient-go/mesh/istiod-lite/cmd/istiod-lite",
		"github.com/ambient-go/mesh/ztunnel/cmd/ztunnel",
		"github.com/ambient-go/mesh/waypoint/cmd/waypoint",
		"github.com/ambient-go/mesh/tests/cmd/demo")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	demo := exec.CommandContext(ctx, filepath.Join(bin, "demo"), "-once",
		"-bin", bin, "-config", filepath.Join(root, "examples/local"), "-out", filepath.Join(t.TempDir(), "demo"))
	demo.Stderr = os.Stderr
	out, err := demo.Output()
	if err != nil {
		t.Fatalf("demo -once: %v\n%s", err, out)
	}
	for _, want := range []string{
		"hello from demo/echo-",
		"you are 127.10.1.10:",
		"[node-a] outbound spiffe://cluster.local/ns/demo/sa/client",
		"[node-b] inbound  spiffe://cluster.local/ns/demo/sa/client",
		"via HBONE",
		// The waypoint: started as its pod, Programmed, a request through
		// it (the destination sees its identity) and one denied by the L7
		// policy bound to echo-l7.
		"waypoint demo/waypoint is ready on pod 127.10.1.200",
		"[waypoint demo/waypoint] GET / -> 200 from spiffe://cluster.local/ns/demo/sa/client",
		"for echo-l7.demo.svc.cluster.local sent to 127.10.2.1",
		"-> spiffe://cluster.local/ns/demo/sa/waypoint (127.10.100.11:80) via HBONE 127.10.1.200:15008",
		"[node-b] inbound  spiffe://cluster.local/ns/demo/sa/waypoint",
		"[waypoint demo/waypoint] GET /admin -> 403 from spiffe://cluster.local/ns/demo/sa/client",
		"policy demo/deny-admin",
		"GET http://echo-l7.demo.svc.cluster.local:80/admin  -> 403 RBAC: access denied",
		// The HTTPRoute of route.yaml: the marked request goes to echo-v2.
		"GET http://echo-l7.demo.svc.cluster.local:80/ [x-canary: true] -> hello from demo/echo-v2-0",
		"for echo-v2.demo.svc.cluster.local sent to 127.10.2.12:8080 as spiffe://cluster.local/ns/demo/sa/echo route demo/echo-l7-canary",
		"all processes stopped",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "error") {
		t.Errorf("demo output reports an error:\n%s", out)
	}
}
