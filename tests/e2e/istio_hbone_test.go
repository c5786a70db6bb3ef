package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/tests/harness"
	"github.com/ambient-go/mesh/tests/kube"
)

// TestIstioHBONEClient runs Istio's own HBONE client
// (istio.io/istio/pkg/hbone: HTTP/2 CONNECT over x/net's Transport, built
// from the pinned istio/istio by make istio-binaries as istio-hbone)
// against an echo pod's ztunnel, with QUIC off and on: a ztunnel that also
// serves HBONE over QUIC answers a peer that speaks only HTTP/2 exactly as
// before (issue 16: Istio's HBONE clients work unchanged).
func TestIstioHBONEClient(t *testing.T) {
	bin := istioHBONE(t)
	for _, quic := range []string{"off", "on"} {
		t.Run("quic "+quic, func(t *testing.T) {
			d := newDemoMesh(t, harness.Options{QUIC: quic})
			chain, key, root := clientCertFiles(t, d)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin,
				"-proxy", netip.AddrPortFrom(d.echo0, 15008).String(),
				"-target", netip.AddrPortFrom(d.echo0, 9000).String(),
				"-cert", chain, "-key", key, "-ca", root,
				"-server-id", "spiffe://cluster.local/ns/demo/sa/echo",
				"-send", "ping")
			var stderr strings.Builder // Istio's log lines
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("istio-hbone: %v\n%s%s", err, out, stderr.String())
			}
			// Istio's log lines ("<time>\tinfo\thbone\t...") come first, on
			// stdout too; the tunnel's bytes are the last two lines.
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if n := len(lines); n < 2 || !strings.HasPrefix(lines[n-2], "echo-0 ") || lines[n-1] != "ping" {
				t.Fatalf("istio-hbone printed %q, want the echo's hello and ping", out)
			}
		})
	}
}

// istioHBONE returns the istio-hbone binary built by make istio-binaries.
func istioHBONE(t *testing.T) string {
	t.Helper()
	dir, err := kube.IstioAssetsDir()
	if err == nil {
		bin := filepath.Join(dir, "istio-hbone")
		if fi, err := os.Stat(bin); err == nil && fi.Mode()&0o111 != 0 {
			return bin
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("Istio's HBONE client not built (make istio-binaries): %v", err)
	}
	t.Skipf("Istio's HBONE client not built (run make istio-binaries): %v", err)
	return ""
}

// clientCertFiles writes the demo client's certificate chain, key and the
// mesh root, obtained from istiod-lite's CA as node-a's ztunnel would.
func clientCertFiles(t *testing.T, d *demoMesh) (chain, key, root string) {
	t.Helper()
	conn, err := grpc.NewClient(d.IstiodAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca := &identity.CAClient{Conn: conn, Impersonate: true,
		Token: func(context.Context) (string, error) { return d.Token("node-a"), nil }}
	id, err := identity.WorkloadID("cluster.local", "demo", "client")
	if err != nil {
		t.Fatal(err)
	}
	k, csr, err := identity.NewKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	certs, err := ca.RequestCertificate(ctx, id, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	chain, key, root = filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "root.pem")
	for f, b := range map[string][]byte{
		chain: []byte(strings.Join(certs, "")),
		key:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		root:  d.Istiod.RootPEM(),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return chain, key, root
}
