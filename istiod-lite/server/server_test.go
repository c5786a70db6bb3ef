package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/istiod-lite/xds"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// controller-runtime's metadata-only informers (the CRD watch of
		// source/kube) wrap their watch in apimachinery's watch.Filter,
		// whose loop has no way out while blocked handing on an event
		// the stopped reflector no longer reads (TestRoutesInCluster
		// installs a CRD while istiod-lite runs).
		goleak.IgnoreTopFunction("k8s.io/apimachinery/pkg/watch.(*filteredWatch).loop"))
}

const meshYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
---
apiVersion: v1
kind: Secret
metadata:
  name: ztunnel-node-tokens
  namespace: istio-system
stringData:
  node-a: token-node-a
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: echo
  namespace: demo
spec:
  nodeName: node-a
  serviceAccountName: echo
  containers:
  - name: app
    image: echo
status:
  podIP: 10.1.0.5
`

// startLocal runs istiod-lite in local mode with a plaintext listener on
// loopback until the test ends.
func startLocal(t *testing.T) (s *Server, stateDir string) {
	t.Helper()
	dir, stateDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(meshYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{ConfigDir: dir, StateDir: stateDir, Addr: "127.0.0.1:0", PlaintextAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v", err)
		}
	})
	select {
	case <-s.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("istiod-lite did not load its configuration within 10s")
	}
	return s, stateDir
}

// dial connects to target with TLS against the mesh root (and cert, if
// set) or, when root is nil, in plaintext.
func dial(t *testing.T, target string, root []byte, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if root != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(root)
		cfg := &tls.Config{RootCAs: pool, ServerName: "istiod-lite.istio-system.svc", MinVersion: tls.VersionTLS12}
		if cert != nil {
			// Sent whatever CAs the server names, as an attacker would.
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// firstResponse opens an xDS stream (with the bearer token, if any),
// subscribes to addresses and returns the first answer.
func firstResponse(t *testing.T, conn *grpc.ClientConn, token string) (*discoveryv3.DeltaDiscoveryResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	err = s.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node:    &corev3.Node{Id: "ztunnel~127.0.0.1~ztunnel-node-a.istio-system~istio-system.svc.cluster.local"},
		TypeUrl: workloadapi.AddressTypeURL,
	})
	if err != nil && err.Error() != "EOF" {
		return nil, err
	}
	return s.Recv()
}

// meshCert obtains a workload certificate for demo/echo from the CA, as
// node-a's ztunnel would.
func meshCert(t *testing.T, s *Server) *tls.Certificate {
	t.Helper()
	id, err := identity.WorkloadID("cluster.local", "demo", "echo")
	if err != nil {
		t.Fatal(err)
	}
	key, csr, err := identity.NewKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	cl := &identity.CAClient{Conn: dial(t, s.Addr().String(), s.RootPEM(), nil), Impersonate: true,
		Token: func(context.Context) (string, error) { return "token-node-a", nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	chain, err := cl.RequestCertificate(ctx, id, csr, time.Hour)
	if err != nil {
		t.Fatalf("RequestCertificate(%s) = %v", id, err)
	}
	block, _ := pem.Decode([]byte(chain[0]))
	return &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// leafCert is a client certificate for id, self-signed when stateDir is
// "", otherwise signed with the root key istiod-lite keeps there.
func leafCert(t *testing.T, id, stateDir string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	parent, signer := tmpl, any(key)
	if stateDir != "" {
		parent, signer = readRoot(t, stateDir)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// readRoot reads the CA's root certificate and key from its state
// directory.
func readRoot(t *testing.T, stateDir string) (*x509.Certificate, any) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatalf("%s holds no PEM block", name)
		}
		return block.Bytes
	}
	root, err := x509.ParseCertificate(read("root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(read("ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return root, key
}

// TestXDSRequiresAuthentication: an xDS stream gets resources only with a
// node token or a mesh client certificate, on the TLS and the plaintext
// listener; anything else ends with Unauthenticated before any resource.
func TestXDSRequiresAuthentication(t *testing.T) {
	s, stateDir := startLocal(t)
	tlsAddr, plainAddr := s.Addr().String(), s.PlaintextAddr().String()
	mesh := meshCert(t, s)
	tests := []struct {
		name     string
		target   string
		tls      bool
		cert     *tls.Certificate
		token    string
		wantCode codes.Code // OK: resources arrive
		want     xds.Caller
	}{
		{name: "TLS without token or certificate", target: tlsAddr, tls: true, wantCode: codes.Unauthenticated},
		{name: "TLS with an unknown token", target: tlsAddr, tls: true, token: "token-node-z", wantCode: codes.Unauthenticated},
		{name: "TLS with a certificate from another root", target: tlsAddr, tls: true, cert: leafCert(t, "spiffe://cluster.local/ns/demo/sa/echo", ""), wantCode: codes.Unavailable},
		{name: "TLS with a certificate of another trust domain", target: tlsAddr, tls: true, cert: leafCert(t, "spiffe://other.domain/ns/demo/sa/echo", stateDir), wantCode: codes.Unauthenticated},
		{name: "TLS with a node token", target: tlsAddr, tls: true, token: "token-node-a", want: xds.Caller{Node: "node-a"}},
		{name: "TLS with a mesh certificate", target: tlsAddr, tls: true, cert: mesh, want: xds.Caller{Identity: "spiffe://cluster.local/ns/demo/sa/echo"}},
		{name: "TLS with a mesh certificate and an unknown token", target: tlsAddr, tls: true, cert: mesh, token: "nope", wantCode: codes.Unauthenticated},
		{name: "plaintext without token", target: plainAddr, wantCode: codes.Unauthenticated},
		{name: "plaintext with an unknown token", target: plainAddr, token: "token-node-z", wantCode: codes.Unauthenticated},
		{name: "plaintext with a node token", target: plainAddr, token: "token-node-a", want: xds.Caller{Node: "node-a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var root []byte
			if tc.tls {
				root = s.RootPEM()
			}
			resp, err := firstResponse(t, dial(t, tc.target, root, tc.cert), tc.token)
			switch {
			case tc.wantCode != codes.OK:
				if got := status.Code(err); got != tc.wantCode {
					t.Fatalf("first response = %d resources, %v; want code %v", len(resp.GetResources()), err, tc.wantCode)
				}
			default:
				if err != nil {
					t.Fatalf("first response: %v", err)
				}
				if len(resp.GetResources()) == 0 {
					t.Fatal("first response holds no resources, want the echo workload")
				}
				if !clientWith(s.XDS(), tc.want) {
					t.Errorf("Clients() = %+v, want one whose Caller is %+v", s.XDS().Clients(), tc.want)
				}
			}
		})
	}
}

// clientWith reports whether a stream of x authenticated as c was seen
// (streams close right after their first response; check while it may
// still be open, and accept it being gone only if the answer arrived).
func clientWith(x *xds.Server, c xds.Caller) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, ci := range x.Clients() {
			if ci.Caller == c {
				return true
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestPlaintextAddr: the plaintext listener is off by default and binds
// only to loopback.
func TestPlaintextAddr(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr bool
		wantOn  bool
	}{
		{addr: ""},
		{addr: "off"},
		{addr: "127.0.0.1:0", wantOn: true},
		{addr: "[::1]:0", wantOn: true},
		{addr: "localhost:0", wantOn: true},
		{addr: ":0", wantErr: true},
		{addr: "0.0.0.0:0", wantErr: true},
		{addr: "[::]:0", wantErr: true},
		{addr: "198.18.0.1:15010", wantErr: true},
		{addr: "istiod-lite:15010", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			s, err := New(Config{ConfigDir: t.TempDir(), StateDir: t.TempDir(), Addr: "127.0.0.1:0", PlaintextAddr: tc.addr})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "loopback") {
					t.Errorf("New(PlaintextAddr %q) error = %v, want one that says loopback", tc.addr, err)
				}
				if s != nil {
					stopUnstarted(t, s)
				}
				return
			}
			if err != nil {
				if tc.addr == "[::1]:0" && strings.Contains(err.Error(), "cannot assign") {
					t.Skip("no IPv6 loopback")
				}
				t.Fatalf("New(PlaintextAddr %q) = %v", tc.addr, err)
			}
			defer stopUnstarted(t, s)
			if on := s.PlaintextAddr() != nil; on != tc.wantOn {
				t.Errorf("New(PlaintextAddr %q).PlaintextAddr() = %v, want listening %v", tc.addr, s.PlaintextAddr(), tc.wantOn)
			}
		})
	}
}

// stopUnstarted releases what New holds: Start on a done context.
func stopUnstarted(t *testing.T, s *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Start(ctx); err != nil {
		t.Errorf("Start(done context) = %v", err)
	}
}
