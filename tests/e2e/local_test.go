package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/tests/harness"
)

// pod renders a Pod scheduled on node with address ip.
func pod(ns, name, sa, node string, ip netip.Addr, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {%s}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: app
    image: app
    ports:
    - name: tcp-echo
      containerPort: 9000
status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "True"
`, name, ns, labels, node, sa, ip)
}

// demoMesh is a mesh with namespace "demo" in ambient mode, a client pod on
// node-a, two echo pods on node-b behind service "echo" (port 80 →
// tcp-echo, 9000), with their apps running.
type demoMesh struct {
	*harness.Mesh
	client, echo0, echo1 netip.Addr
	vip                  netip.Addr
	apps                 map[string]*harness.Echo
}

func newDemoMesh(t *testing.T, opts harness.Options) *demoMesh {
	m := harness.New(t, opts)
	d := &demoMesh{Mesh: m, client: m.PodIP(0, 0), echo0: m.PodIP(1, 0), echo1: m.PodIP(1, 1), vip: m.VIP(0), apps: map[string]*harness.Echo{}}
	d.apps["echo-0"] = harness.StartEcho(t, "echo-0", netip.AddrPortFrom(d.echo0, 9000))
	d.apps["echo-1"] = harness.StartEcho(t, "echo-1", netip.AddrPortFrom(d.echo1, 9000))
	m.Write("demo.yaml", strings.Join([]string{
		`apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
`,
		pod("demo", "client", "client", "node-a", d.client, "app: client"),
		pod("demo", "echo-0", "echo", "node-b", d.echo0, "app: echo"),
		pod("demo", "echo-1", "echo", "node-b", d.echo1, "app: echo"),
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
  - name: tcp
    port: 80
    targetPort: tcp-echo
`, d.vip),
	}, "---\n"))
	// Wait until the client reaches both echo pods through the mesh.
	for _, ip := range []netip.Addr{d.echo0, d.echo1} {
		waitMeshed(t, d, "node-b", d.client, netip.AddrPortFrom(ip, 9000), 5*time.Second)
	}
	return d
}

// waitReachable polls until a connection from src to target gets the echo
// hello, or fails the test after timeout.
func waitReachable(t *testing.T, src netip.Addr, target string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := harness.Dial(ctx, src, target)
		cancel()
		if err == nil {
			_, _, _, err = harness.Hello(c)
			c.Close()
			if err == nil {
				return time.Since(start)
			}
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not reachable from %s within %s: %v", target, src, timeout, last)
	return 0
}

// waitMeshed polls until a connection from src to the pod at target gets
// the echo hello through the mesh: node's ztunnel must have logged an
// inbound HBONE record for it (a pod unknown to the mesh would be reached
// directly, in passthrough). It returns how long that took.
func waitMeshed(t *testing.T, d *demoMesh, node string, src netip.Addr, target netip.AddrPort, timeout time.Duration) time.Duration {
	t.Helper()
	z := d.Ztunnel(node)
	start := time.Now()
	for time.Since(start) < timeout {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := harness.Dial(ctx, src, target.String())
		cancel()
		if err == nil {
			app := netip.MustParseAddrPort(c.LocalAddr().String())
			_, _, _, err = harness.Hello(c)
			c.Close()
			if err == nil {
				deadline := time.After(200 * time.Millisecond)
			records:
				for {
					select {
					case r := <-z.Records:
						if r.Direction == "inbound" && r.SrcAddr == app && r.DstAddr == target {
							return time.Since(start)
						}
					case <-deadline:
						break records
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not reachable through the mesh from %s within %s", target, src, timeout)
	return 0
}

func TestCrossNodeThroughBothZtunnels(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	clientID := "spiffe://cluster.local/ns/demo/sa/client"
	echoID := "spiffe://cluster.local/ns/demo/sa/echo"

	tests := []struct {
		name   string
		target string
	}{
		{"pod IP", netip.AddrPortFrom(d.echo0, 9000).String()},
		{"service VIP", netip.AddrPortFrom(d.vip, 80).String()},
		{"service hostname", "echo.demo.svc.cluster.local:80"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := harness.Dial(ctx, d.client, tc.target)
			if err != nil {
				t.Fatalf("Dial(%s) = %v", tc.target, err)
			}
			name, seen, r, err := harness.Hello(c)
			if err != nil {
				t.Fatal(err)
			}
			if seen.Addr() != d.client {
				t.Errorf("echo app saw client address %s, want the client pod's %s", seen.Addr(), d.client)
			}
			const msg = "ping through the mesh\n"
			io.WriteString(c, msg)
			c.CloseWrite()
			rest, err := io.ReadAll(r)
			if err != nil || string(rest) != msg {
				t.Errorf("echo = %q, %v; want %q", rest, err, msg)
			}
			c.Close()

			app := netip.MustParseAddrPort(c.LocalAddr().String())
			in := harness.WaitRecord(t, d.Ztunnel("node-b"), 5*time.Second, func(r accesslog.Record) bool {
				return r.Direction == "inbound" && r.SrcAddr == app
			})
			if in.DstWorkload != name {
				t.Errorf("inbound record names workload %q, the app answered as %q", in.DstWorkload, name)
			}
			if in.SrcIdentity != clientID || in.DstIdentity != echoID {
				t.Errorf("inbound record identities = %s → %s, want %s → %s", in.SrcIdentity, in.DstIdentity, clientID, echoID)
			}
			// Inbound, the bytes are the server's (as Istio logs them): it
			// received the message.
			if in.Err != nil || in.BytesRecv != int64(len(msg)) {
				t.Errorf("inbound record: err %v, bytes_recv %d, want nil, %d", in.Err, in.BytesRecv, len(msg))
			}
			out := harness.WaitRecord(t, d.Ztunnel("node-a"), 5*time.Second, func(r accesslog.Record) bool {
				return r.Direction == "outbound" && r.SrcAddr == app
			})
			if out.SrcIdentity != clientID || !out.DstHBONEAddr.IsValid() {
				t.Errorf("outbound record = %+v, want source %s over HBONE", out, clientID)
			}
		})
	}
}

func TestServiceRoundRobin(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	seen := map[string]int{}
	for range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := harness.Dial(ctx, d.client, netip.AddrPortFrom(d.vip, 80).String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		name, _, _, err := harness.Hello(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	if seen["echo-0"] != 3 || seen["echo-1"] != 3 {
		t.Errorf("six connections to the VIP went to %v, want 3 to each endpoint", seen)
	}
}

func TestPlaintextToHBONEPortRefused(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(d.echo0, 15008).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", netip.AddrPortFrom(d.echo0, 9000), netip.AddrPortFrom(d.echo0, 9000))
	b, _ := io.ReadAll(c)
	if strings.Contains(string(b), "200") || strings.Contains(string(b), "echo-0") {
		t.Errorf("plaintext CONNECT to 15008 answered %q; want the connection refused", b)
	}
	// The mesh still works for everybody else.
	waitReachable(t, d.client, netip.AddrPortFrom(d.echo0, 9000).String(), 2*time.Second)
}

// foreignCert is a self-signed certificate of another trust domain.
func foreignCert(t *testing.T) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://evil.example/ns/demo/sa/client")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"evil.example"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestForeignTrustDomainRefused(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	cfg := &tls.Config{
		Certificates:       []tls.Certificate{foreignCert(t)},
		InsecureSkipVerify: true, // we test the server's check, not ours
		NextProtos:         []string{"h2"},
		MinVersion:         tls.VersionTLS13,
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", netip.AddrPortFrom(d.echo0, 15008).String(), cfg)
	if err == nil {
		// TLS 1.3: the server's verdict on our certificate arrives with the
		// first read.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("a client certificate from another trust domain was accepted")
	}
	t.Logf("refused as expected: %v", err)
}

// meshClient returns an HBONE pool that presents the client pod's identity,
// with its certificate obtained from the CA as node-a's ztunnel would.
func meshClient(t *testing.T, d *demoMesh) (*hbone.Pool, spiffeid.ID) {
	conn, err := grpc.NewClient(d.IstiodAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	certs := identity.NewManager(identity.ManagerConfig{Requester: &identity.CAClient{
		Conn: conn, Impersonate: true,
		Token: func(context.Context) (string, error) { return d.Token("node-a"), nil },
	}})
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: certs.ClientTLSConfig})
	t.Cleanup(func() { pool.Close() })
	return pool, spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
}

func TestInboundRejections(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	pool, clientID := meshClient(t, d)
	echoID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo")
	tests := []struct {
		name      string
		authority netip.AddrPort
		want      int
	}{
		{"authority is another pod", netip.AddrPortFrom(d.echo1, 9000), http.StatusBadRequest},
		{"authority is not in the mesh", netip.MustParseAddrPort("127.0.0.1:9"), http.StatusBadRequest},
		{"nothing listens on the target port", netip.AddrPortFrom(d.echo0, 9999), http.StatusServiceUnavailable},
		{"target port is ztunnel's own", netip.AddrPortFrom(d.echo0, 15008), http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := pool.Dial(ctx, hbone.Target{
				Addr:      netip.AddrPortFrom(d.echo0, 15008),
				Authority: tc.authority.String(),
				SourceID:  clientID,
				DestIDs:   []spiffeid.ID{echoID},
			})
			var se *hbone.StatusError
			if !errors.As(err, &se) || se.Code != tc.want {
				if c != nil {
					c.Close()
				}
				t.Fatalf("CONNECT %s = %v; want status %d", tc.authority, err, tc.want)
			}
		})
	}
	// A valid CONNECT on the same pool still works.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pool.Dial(ctx, hbone.Target{
		Addr: netip.AddrPortFrom(d.echo0, 15008), Authority: netip.AddrPortFrom(d.echo0, 9000).String(),
		SourceID: clientID, DestIDs: []spiffeid.ID{echoID},
	})
	if err != nil {
		t.Fatalf("valid CONNECT after rejections: %v", err)
	}
	c.Close()
}

func TestCertificateOnlyForPodsOnOwnNode(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	conn, err := grpc.NewClient(d.IstiodAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := &identity.CAClient{Conn: conn, Impersonate: true,
		Token: func(context.Context) (string, error) { return d.Token("node-a"), nil }}
	tests := []struct {
		name string
		id   string
		want codes.Code
	}{
		{"pod on the node", "spiffe://cluster.local/ns/demo/sa/client", codes.OK},
		{"pod on another node", "spiffe://cluster.local/ns/demo/sa/echo", codes.PermissionDenied},
		{"no such pod", "spiffe://cluster.local/ns/kube-system/sa/admin", codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(tc.id)
			_, csr, err := identity.NewKeyAndCSR(id)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = client.RequestCertificate(ctx, id, csr, time.Hour)
			if got := status.Code(err); got != tc.want {
				t.Errorf("node-a asks for %s: %v (%v); want %v", tc.id, got, err, tc.want)
			}
		})
	}
}

// TestLongConnectionAcrossRotations streams through one tunnel while the
// certificates of both ends rotate several times.
func TestLongConnectionAcrossRotations(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 8s")
	}
	d := newDemoMesh(t, harness.Options{CertTTL: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := harness.Dial(ctx, d.client, netip.AddrPortFrom(d.echo0, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, r, err := harness.Hello(c)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		for _, cert := range d.Ztunnel("node-b").Certificates().Certificates() {
			return cert.Leaf.SerialNumber.String()
		}
		return ""
	}
	serials := map[string]bool{serial(): true}
	buf := make([]byte, 5)
	for i := 0; i < 40; i++ { // 8s: more than two lifetimes, four refreshes
		msg := fmt.Sprintf("%04d\n", i)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != msg {
			t.Fatalf("read %d = %q, %v; want %q", i, buf, err, msg)
		}
		serials[serial()] = true
		time.Sleep(200 * time.Millisecond)
	}
	if len(serials) < 3 {
		t.Errorf("saw %d certificates at node-b over 8s with a 3s TTL; want at least 3", len(serials))
	}
	// New connections use the rotated certificates.
	waitReachable(t, d.client, netip.AddrPortFrom(d.echo1, 9000).String(), 2*time.Second)
}

func TestIstiodDownThenBack(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := harness.Dial(ctx, d.client, netip.AddrPortFrom(d.echo0, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, r, err := harness.Hello(c)
	if err != nil {
		t.Fatal(err)
	}
	echo := func(msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != msg {
			t.Fatalf("established connection: read %q, %v; want %q", buf, err, msg)
		}
	}
	echo("before\n")

	d.StopIstiod()
	echo("while istiod-lite is down\n")
	// New connections work on the last configuration (round robin over the
	// service, so both pods, whose certificates are already held).
	for range 2 {
		waitReachable(t, d.client, netip.AddrPortFrom(d.vip, 80).String(), 2*time.Second)
	}

	// A pod added while istiod-lite is down arrives when it is back.
	newPod := d.PodIP(1, 2)
	harness.StartEcho(t, "echo-2", netip.AddrPortFrom(newPod, 9000))
	d.Write("late.yaml", pod("demo", "echo-2", "echo", "node-b", newPod, "app: late"))
	d.StartIstiod()
	waitMeshed(t, d, "node-b", d.client, netip.AddrPortFrom(newPod, 9000), 10*time.Second)
	echo("after\n")
}

func TestNewPodReachableWithinOneSecond(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	newPod := d.PodIP(1, 3)
	harness.StartEcho(t, "echo-3", netip.AddrPortFrom(newPod, 9000))
	d.Write("new.yaml", pod("demo", "echo-3", "echo", "node-b", newPod, "app: new"))
	took := waitMeshed(t, d, "node-b", d.client, netip.AddrPortFrom(newPod, 9000), time.Second)
	t.Logf("new pod reachable through the mesh %s after its file was written", took)
}

func TestBadYAMLKeepsLastGoodState(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	d.Write("demo.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [broken\n")
	time.Sleep(500 * time.Millisecond) // let the watcher see it
	waitReachable(t, d.client, netip.AddrPortFrom(d.echo0, 9000).String(), 2*time.Second)
	if errs := d.Istiod.Errors(); len(errs) == 0 || !strings.Contains(errs[0].Error(), "demo.yaml") {
		t.Errorf("istiod-lite errors = %v; want one naming demo.yaml", errs)
	}
}

func TestTelemetryAndAdmin(t *testing.T) {
	d := newDemoMesh(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := harness.Dial(ctx, d.client, "echo.demo.svc.cluster.local:80")
	if err != nil {
		t.Fatal(err)
	}
	harness.Hello(c)
	c.Close()
	zb := d.Ztunnel("node-b")
	harness.WaitRecord(t, zb, 5*time.Second, func(r accesslog.Record) bool {
		return r.Direction == "inbound" && r.DstService == "echo.demo.svc.cluster.local"
	})

	get := func(addr net.Addr, path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(zb.Admin().ReadinessAddr(), "/healthz/ready"); code != http.StatusOK {
		t.Errorf("/healthz/ready = %d, want 200", code)
	}
	_, metrics := get(zb.Admin().MetricsAddr(), "/metrics")
	for _, want := range []string{
		`istio_tcp_connections_opened_total{`,
		`reporter="destination"`,
		`destination_service="echo.demo.svc.cluster.local"`,
		`source_principal="spiffe://cluster.local/ns/demo/sa/client"`,
		`connection_security_policy="mutual_tls"`,
		`istio_tcp_received_bytes_total{`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	_, dump := get(zb.Admin().AdminAddr(), "/config_dump")
	for _, want := range []string{
		`"uid": "Kubernetes//Pod/demo/echo-0"`,
		`"` + d.echo0.String() + `"`,
		`"identity": "spiffe://cluster.local/ns/demo/sa/echo"`,
		`"hostname": "echo.demo.svc.cluster.local"`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("/config_dump lacks %s", want)
		}
	}
	resp, err := http.Post("http://"+zb.Admin().AdminAddr().String()+"/logging?level=debug", "", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("POST /logging?level=debug = %v, %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}
