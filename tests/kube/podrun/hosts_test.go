package podrun

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The hosts refresher writes every pod the Runner knows, including one
// whose sandbox is not made yet (retried after a failed attempt) or was
// just released: such a pod is skipped, not a panic.
func TestWriteHostsWithoutSandbox(t *testing.T) {
	svcs := []serviceHosts{{Namespace: "demo", Name: "echo", Addrs: []string{"198.18.100.10"}}}
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "late"}}

	p := &pod{obj: obj}
	if err := p.writeHosts(svcs); err != nil {
		t.Errorf("writeHosts without a sandbox: %v, want nil (skipped)", err)
	}
	p.dir = t.TempDir() // makeSandbox made the directory, not the sandbox yet
	if err := p.writeHosts(svcs); err != nil {
		t.Errorf("writeHosts without a sandbox's IPs: %v, want nil (skipped)", err)
	}
	if _, err := os.Stat(filepath.Join(p.dir, "hosts")); !os.IsNotExist(err) {
		t.Errorf("writeHosts without a sandbox wrote %s (stat: %v)", filepath.Join(p.dir, "hosts"), err)
	}

	p.sb = Sandbox{IPs: []netip.Addr{netip.MustParseAddr("198.18.1.5")}}
	if err := p.writeHosts(svcs); err != nil {
		t.Fatalf("writeHosts: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(p.dir, "hosts"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"198.18.1.5", "198.18.100.10"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/etc/hosts =\n%s\nwant a line with %s", b, want)
		}
	}
}
