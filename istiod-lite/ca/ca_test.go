package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	sleepID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	echoID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/echo")
)

// nodePods is an Authorizer backed by a node → identities table.
type nodePods map[string][]spiffeid.ID

func (n nodePods) IdentityOnNode(node string, id spiffeid.ID) bool {
	for _, got := range n[node] {
		if got == id {
			return true
		}
	}
	return false
}

// workloadOrNode authenticates workload tokens to their own identity and falls back to node tokens.
type workloadOrNode struct {
	workloads map[string]spiffeid.ID
	nodes     *TokenAuthenticator
}

func (a workloadOrNode) Authenticate(ctx context.Context) (*Caller, error) {
	tok, err := BearerToken(ctx)
	if err != nil {
		return nil, err
	}
	if id, ok := a.workloads[tok]; ok {
		return &Caller{Identity: id}, nil
	}
	return a.nodes.Authenticate(ctx)
}

// testEnv is a CA served on a real gRPC server on loopback.
type testEnv struct {
	ca     *CA
	conn   *grpc.ClientConn
	client pb.IstioCertificateServiceClient
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func defaultConfig(dir string) Config {
	return Config{
		StateDir: dir,
		Authenticator: workloadOrNode{
			workloads: map[string]spiffeid.ID{
				"sleep-token":   sleepID,
				"foreign-token": spiffeid.RequireFromString("spiffe://other.example/ns/default/sa/sleep"),
			},
			nodes: &TokenAuthenticator{Tokens: func() map[string]string {
				return map[string]string{"node1-token": "node1", "node2-token": "node2"}
			}},
		},
		Authorizer: nodePods{"node1": {sleepID}, "node2": {echoID}},
	}
}

func newTestEnv(t *testing.T, cfg Config) *testEnv {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	c.Register(s)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	return &testEnv{ca: c, conn: conn, client: pb.NewIstioCertificateServiceClient(conn), logs: logs}
}

type request struct {
	token        string
	impersonate  string
	csr          string
	validitySecs int64
}

func (e *testEnv) do(t *testing.T, r request) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if r.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.token)
	}
	req := &pb.IstioCertificateRequest{Csr: r.csr, ValidityDuration: r.validitySecs}
	if r.impersonate != "" {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(r.impersonate),
		}}
	}
	return e.client.CreateCertificate(ctx, req)
}

// newCSR returns a PEM CSR for a new P-256 key, with the given URI SANs.
func newCSR(t *testing.T, uris ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// tamperedCSR returns a CSR whose signature does not verify.
func tamperedCSR(t *testing.T) string {
	t.Helper()
	block, _ := pem.Decode([]byte(newCSR(t, sleepID.String())))
	der := bytes.Clone(block.Bytes)
	der[len(der)-5] ^= 0xff // inside the signature
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func parseLeaf(t *testing.T, resp *pb.IstioCertificateResponse) *x509.Certificate {
	t.Helper()
	if len(resp.GetCertChain()) != 2 {
		t.Fatalf("cert_chain has %d elements, want 2 (leaf, root)", len(resp.GetCertChain()))
	}
	block, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
	if block == nil {
		t.Fatal("leaf element holds no PEM")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func TestCreateCertificate(t *testing.T) {
	env := newTestEnv(t, defaultConfig(t.TempDir()))
	tests := []struct {
		name     string
		req      request
		wantCode codes.Code
		wantID   spiffeid.ID
	}{
		{name: "node impersonates an identity on its node", req: request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t, sleepID.String())}, wantID: sleepID},
		{name: "identity comes from impersonation, not the CSR", req: request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t, echoID.String())}, wantID: sleepID},
		{name: "CSR without SAN", req: request{token: "node2-token", impersonate: echoID.String(), csr: newCSR(t)}, wantID: echoID},
		{name: "workload asks for itself", req: request{token: "sleep-token", csr: newCSR(t, echoID.String())}, wantID: sleepID},
		{name: "identity not on the node", req: request{token: "node1-token", impersonate: echoID.String(), csr: newCSR(t)}, wantCode: codes.PermissionDenied},
		{name: "identity of another trust domain", req: request{token: "node1-token", impersonate: "spiffe://other.example/ns/default/sa/sleep", csr: newCSR(t)}, wantCode: codes.PermissionDenied},
		{name: "workload caller of another trust domain", req: request{token: "foreign-token", csr: newCSR(t)}, wantCode: codes.PermissionDenied},
		{name: "workload impersonating", req: request{token: "sleep-token", impersonate: sleepID.String(), csr: newCSR(t)}, wantCode: codes.PermissionDenied},
		{name: "node without impersonation", req: request{token: "node1-token", csr: newCSR(t)}, wantCode: codes.PermissionDenied},
		{name: "malformed impersonated identity", req: request{token: "node1-token", impersonate: "not a spiffe id", csr: newCSR(t)}, wantCode: codes.InvalidArgument},
		{name: "unknown token", req: request{token: "guess", impersonate: sleepID.String(), csr: newCSR(t)}, wantCode: codes.Unauthenticated},
		{name: "no token", req: request{impersonate: sleepID.String(), csr: newCSR(t)}, wantCode: codes.Unauthenticated},
		{name: "garbage CSR", req: request{token: "node1-token", impersonate: sleepID.String(), csr: "hello"}, wantCode: codes.InvalidArgument},
		{name: "CSR with a bad signature", req: request{token: "node1-token", impersonate: sleepID.String(), csr: tamperedCSR(t)}, wantCode: codes.InvalidArgument},
		{name: "negative validity", req: request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t), validitySecs: -1}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := env.do(t, tt.req)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("CreateCertificate() code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if err != nil {
				return
			}
			leaf := parseLeaf(t, resp)
			var uris []string
			for _, u := range leaf.URIs {
				uris = append(uris, u.String())
			}
			if diff := cmp.Diff([]string{tt.wantID.String()}, uris); diff != "" {
				t.Errorf("leaf URIs (-want +got):\n%s", diff)
			}
		})
	}
	if got := strings.Count(env.logs.String(), `"msg":"certificate issued"`); got != 4 {
		t.Errorf("logged %d issuances, want 4:\n%s", got, env.logs.String())
	}
}

func TestLeafFields(t *testing.T) {
	env := newTestEnv(t, defaultConfig(t.TempDir()))
	before := time.Now()
	resp, err := env.do(t, request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t, "spiffe://cluster.local/ns/x/sa/y"), validitySecs: 3600})
	if err != nil {
		t.Fatalf("CreateCertificate() error = %v", err)
	}
	leaf := parseLeaf(t, resp)

	if got := resp.GetCertChain()[1]; got != string(env.ca.RootPEM()) {
		t.Errorf("last chain element = %q, want the root PEM", got)
	}
	if len(leaf.Subject.Names) != 0 || leaf.Subject.String() != "" {
		t.Errorf("subject = %q, want empty", leaf.Subject)
	}
	var san *pkix.Extension
	for i, ext := range leaf.Extensions {
		if ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			san = &leaf.Extensions[i]
		}
	}
	if san == nil || !san.Critical {
		t.Errorf("SAN extension %+v, want a critical one", san)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleepID.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("SANs: URIs %v DNS %v IP %v email %v, want exactly %q", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, sleepID)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, want)
	}
	if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage); diff != "" {
		t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
	}
	if leaf.IsCA {
		t.Error("leaf IsCA = true, want false")
	}
	if got := before.Add(-Backdate).Sub(leaf.NotBefore); got < -2*time.Second || got > 2*time.Second {
		t.Errorf("NotBefore = %v, want about %v", leaf.NotBefore, before.Add(-Backdate))
	}
	if got := leaf.NotAfter.Sub(before); got < time.Hour-2*time.Second || got > time.Hour+2*time.Second {
		t.Errorf("NotAfter - now = %v, want about 1h", got)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v, want positive and at most 128 bits", leaf.SerialNumber)
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.ca.Roots()[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify against Roots(): %v", err)
	}

	// Two issuances get different serials.
	resp2, err := env.do(t, request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t)})
	if err != nil {
		t.Fatal(err)
	}
	if parseLeaf(t, resp2).SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two leaves share a serial number")
	}
}

func TestTTL(t *testing.T) {
	cfg := defaultConfig(t.TempDir())
	cfg.MaxTTL = 48 * time.Hour
	env := newTestEnv(t, cfg)
	tests := []struct {
		name     string
		validity int64
		want     time.Duration
	}{
		{name: "default when zero", validity: 0, want: DefaultTTL},
		{name: "as requested", validity: 600, want: 10 * time.Minute},
		{name: "capped at MaxTTL", validity: int64((90 * 24 * time.Hour).Seconds()), want: 48 * time.Hour},
		{name: "huge request capped", validity: 1 << 62, want: 48 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			resp, err := env.do(t, request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t), validitySecs: tt.validity})
			if err != nil {
				t.Fatalf("CreateCertificate() error = %v", err)
			}
			got := parseLeaf(t, resp).NotAfter.Sub(before)
			if got < tt.want-2*time.Second || got > tt.want+2*time.Second {
				t.Errorf("lifetime from now = %v, want about %v", got, tt.want)
			}
		})
	}
}

// writeRoot stores a root that expires at notAfter in dir, as New would.
func writeRoot(t *testing.T, dir string, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return root
}

func TestNotAfterCappedAtRootExpiry(t *testing.T) {
	dir := t.TempDir()
	root := writeRoot(t, dir, time.Now().Add(time.Hour).Truncate(time.Second))
	env := newTestEnv(t, defaultConfig(dir))
	resp, err := env.do(t, request{token: "node1-token", impersonate: sleepID.String(), csr: newCSR(t)})
	if err != nil {
		t.Fatalf("CreateCertificate() error = %v", err)
	}
	if got := parseLeaf(t, resp).NotAfter; !got.Equal(root.NotAfter) {
		t.Errorf("leaf NotAfter = %v, want the root's %v", got, root.NotAfter)
	}
}

func TestRootPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	cfg := defaultConfig(dir)
	first, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	second, err := New(cfg)
	if err != nil {
		t.Fatalf("second New() error = %v", err)
	}
	if !first.Roots()[0].Equal(second.Roots()[0]) || !bytes.Equal(first.RootPEM(), second.RootPEM()) {
		t.Error("second New() on the same dir made another root, want the stored one")
	}
	root := first.Roots()[0]
	if diff := cmp.Diff([]string{"cluster.local"}, root.Subject.Organization); diff != "" {
		t.Errorf("root O (-want +got):\n%s", diff)
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		t.Error("root is not a self-signed CA")
	}
	if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
	}
	if life := root.NotAfter.Sub(root.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("root lifetime %v, want 10 years", life)
	}
	keyInfo, err := os.Stat(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := keyInfo.Mode().Perm(); perm != 0o600 {
		t.Errorf("ca-key.pem mode %v, want 0600", perm)
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("ca-key.pem is not a PKCS#8 PEM block")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Errorf("ca-key.pem: %v", err)
	}

	t.Run("half a pair is refused", func(t *testing.T) {
		half := t.TempDir()
		if err := os.WriteFile(filepath.Join(half, "root-cert.pem"), first.RootPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := New(defaultConfig(half)); err == nil {
			t.Error("New() with only root-cert.pem = nil error, want error")
		}
	})
	t.Run("mismatched key is refused", func(t *testing.T) {
		other := t.TempDir()
		writeRoot(t, other, time.Now().Add(time.Hour))
		if err := os.WriteFile(filepath.Join(other, "root-cert.pem"), first.RootPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := New(defaultConfig(other)); err == nil {
			t.Error("New() with a key of another root = nil error, want error")
		}
	})
}

func TestNewValidates(t *testing.T) {
	good := defaultConfig(t.TempDir())
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{name: "no state dir", edit: func(c *Config) { c.StateDir = "" }},
		{name: "no authenticator", edit: func(c *Config) { c.Authenticator = nil }},
		{name: "no authorizer", edit: func(c *Config) { c.Authorizer = nil }},
		{name: "bad trust domain", edit: func(c *Config) { c.TrustDomain = "Not Valid" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			if _, err := New(cfg); err == nil {
				t.Error("New() = nil error, want error")
			}
		})
	}
}

func TestServingCertificate(t *testing.T) {
	c, err := New(defaultConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.ServingCertificate([]string{"istiod-lite.istio-system.svc"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatalf("ServingCertificate() error = %v", err)
	}
	leaf := cert.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/istio-system/sa/istiod-lite" {
		t.Errorf("URIs = %v, want the istiod-lite SPIFFE ID", leaf.URIs)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Roots()[0])
	for _, name := range []string{"istiod-lite.istio-system.svc", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate does not verify for %q: %v", name, err)
		}
	}
	if cert.PrivateKey == nil || len(cert.Certificate) != 1 {
		t.Errorf("tls.Certificate has key %v and %d certificates, want a key and 1", cert.PrivateKey != nil, len(cert.Certificate))
	}
}

func TestTokenAuthenticator(t *testing.T) {
	tokens := map[string]string{"t1": "node1"}
	var mu sync.Mutex
	a := &TokenAuthenticator{Tokens: func() map[string]string {
		mu.Lock()
		defer mu.Unlock()
		return tokens
	}}
	tests := []struct {
		name     string
		header   []string
		wantNode string
		wantErr  error
	}{
		{name: "bearer", header: []string{"Bearer t1"}, wantNode: "node1"},
		{name: "lowercase scheme", header: []string{"bearer t1"}, wantNode: "node1"},
		{name: "no header", wantErr: ErrNoToken},
		{name: "basic scheme", header: []string{"Basic t1"}, wantErr: ErrNoToken},
		{name: "empty token", header: []string{"Bearer "}, wantErr: ErrNoToken},
		{name: "unknown token", header: []string{"Bearer t2"}, wantErr: ErrBadToken},
		{name: "prefix of a token", header: []string{"Bearer t"}, wantErr: ErrBadToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.header != nil {
				ctx = metadata.NewIncomingContext(ctx, metadata.MD{"authorization": tt.header})
			}
			caller, err := a.Authenticate(ctx)
			if err != tt.wantErr {
				t.Fatalf("Authenticate() error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && (caller.Node != tt.wantNode || !caller.Identity.IsZero()) {
				t.Errorf("Authenticate() = %+v, want node %q", caller, tt.wantNode)
			}
		})
	}
	t.Run("tokens change at runtime", func(t *testing.T) {
		mu.Lock()
		tokens = map[string]string{"t2": "node2"}
		mu.Unlock()
		ctx := metadata.NewIncomingContext(t.Context(), metadata.MD{"authorization": {"Bearer t2"}})
		if caller, err := a.Authenticate(ctx); err != nil || caller.Node != "node2" {
			t.Errorf("Authenticate() after change = %+v, %v, want node2", caller, err)
		}
		ctx = metadata.NewIncomingContext(t.Context(), metadata.MD{"authorization": {"Bearer t1"}})
		if _, err := a.Authenticate(ctx); err != ErrBadToken {
			t.Errorf("Authenticate() with a removed token error = %v, want %v", err, ErrBadToken)
		}
	})
}
