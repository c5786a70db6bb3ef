package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		name                string
		td, ns, sa          string
		want                string
		wantErr             bool
		wantNS, wantSAParse string
	}{
		{name: "default", td: "cluster.local", ns: "default", sa: "sleep", want: "spiffe://cluster.local/ns/default/sa/sleep"},
		{name: "dashes", td: "example.org", ns: "istio-system", sa: "ztunnel", want: "spiffe://example.org/ns/istio-system/sa/ztunnel"},
		{name: "empty namespace", td: "cluster.local", ns: "", sa: "sleep", wantErr: true},
		{name: "bad trust domain", td: "Cluster Local", ns: "a", sa: "b", wantErr: true},
		{name: "slash in sa", td: "cluster.local", ns: "a", sa: "b/c", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := WorkloadID(tt.td, tt.ns, tt.sa)
			if (err != nil) != tt.wantErr {
				t.Fatalf("WorkloadID(%q, %q, %q) error = %v, want error %v", tt.td, tt.ns, tt.sa, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := id.String(); got != tt.want {
				t.Errorf("WorkloadID(%q, %q, %q) = %q, want %q", tt.td, tt.ns, tt.sa, got, tt.want)
			}
			ns, sa, err := ParseWorkloadID(id)
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Errorf("ParseWorkloadID(%q) = %q, %q, %v, want %q, %q, nil", id, ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
}

func TestParseWorkloadIDRejects(t *testing.T) {
	for _, s := range []string{
		"spiffe://cluster.local",
		"spiffe://cluster.local/ns/default",
		"spiffe://cluster.local/ns/default/sa",
		"spiffe://cluster.local/ns/default/sa/x/extra",
		"spiffe://cluster.local/namespace/default/sa/x",
		"spiffe://cluster.local/ns/default/serviceaccount/x",
	} {
		t.Run(s, func(t *testing.T) {
			id := spiffeid.RequireFromString(s)
			if ns, sa, err := ParseWorkloadID(id); err == nil {
				t.Errorf("ParseWorkloadID(%q) = %q, %q, nil, want error", s, ns, sa)
			}
		})
	}
	if _, _, err := ParseWorkloadID(spiffeid.ID{}); err == nil {
		t.Error("ParseWorkloadID(zero) = nil error, want error")
	}
}

func TestNewKeyAndCSR(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	key, csrPEM, err := NewKeyAndCSR(id)
	if err != nil {
		t.Fatalf("NewKeyAndCSR(%q) error = %v", id, err)
	}
	if key.Curve != elliptic.P256() {
		t.Errorf("key curve = %v, want P-256", key.Curve.Params().Name)
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("csr PEM = %q, want one CERTIFICATE REQUEST block", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatalf("ParseCertificateRequest: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("csr signature: %v", err)
	}
	var uris []string
	for _, u := range csr.URIs {
		uris = append(uris, u.String())
	}
	if diff := cmp.Diff([]string{id.String()}, uris); diff != "" {
		t.Errorf("csr URIs (-want +got):\n%s", diff)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Errorf("csr has other SANs: dns %v ip %v email %v", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if got := csr.Subject.String(); got != "" {
		t.Errorf("csr subject = %q, want empty", got)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		t.Errorf("csr public key does not match the private key")
	}
}

func TestNewCertificate(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := s.sign(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherLeaf, err := s.sign(other, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign := newTestSigner(t, "cluster.local")
	tests := []struct {
		name    string
		chain   []string
		wantErr bool
	}{
		{name: "leaf and root", chain: []string{leaf, s.rootPEM}},
		{name: "several roots in last element", chain: []string{leaf, foreign.rootPEM + s.rootPEM}},
		{name: "leaf element with extra certificates", chain: []string{leaf + s.rootPEM, s.rootPEM}},
		{name: "one element", chain: []string{leaf + s.rootPEM}, wantErr: true},
		{name: "empty", wantErr: true},
		{name: "other identity", chain: []string{otherLeaf, s.rootPEM}, wantErr: true},
		{name: "untrusted root", chain: []string{leaf, foreign.rootPEM}, wantErr: true},
		{name: "garbage", chain: []string{"nope", s.rootPEM}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewCertificate(id, key, tt.chain)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewCertificate() error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if c.ID != id || len(c.Chain) != 1 || c.Leaf != c.Chain[0] || c.TLS.Leaf != c.Leaf || len(c.TLS.Certificate) != 1 {
				t.Errorf("NewCertificate() = %+v, want a one-element chain for %q", c, id)
			}
			if !c.Roots[len(c.Roots)-1].Equal(s.root) {
				t.Errorf("NewCertificate() roots do not end with the signer's root")
			}
		})
	}

	t.Run("key mismatch", func(t *testing.T) {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewCertificate(id, other, []string{leaf, s.rootPEM}); err == nil {
			t.Error("NewCertificate() with another key = nil error, want error")
		}
	})
}
