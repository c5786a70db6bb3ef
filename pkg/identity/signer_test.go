package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testSigner is a small real CA for tests: it signs the CSR's key into a leaf for the requested id with
// its own root, as Istio's CA would, and can be told to fail or to block.
type testSigner struct {
	td      spiffeid.TrustDomain
	rootKey *ecdsa.PrivateKey
	root    *x509.Certificate
	rootPEM string

	mu       sync.Mutex
	failures int           // the next this many requests fail
	gate     chan struct{} // if non-nil, requests wait for it to close
	requests []time.Time   // when each request arrived
	ttls     []time.Duration
}

func newTestSigner(t *testing.T, trustDomain string) *testSigner {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{trustDomain}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{
		td:      spiffeid.RequireTrustDomainFromString(trustDomain),
		rootKey: key,
		root:    root,
		rootPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}
}

func (s *testSigner) failNext(n int) {
	s.mu.Lock()
	s.failures = n
	s.mu.Unlock()
}

func (s *testSigner) requestTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.requests...)
}

var errSignerDown = errors.New("test signer down")

func (s *testSigner) RequestCertificate(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]string, error) {
	s.mu.Lock()
	s.requests = append(s.requests, time.Now())
	s.ttls = append(s.ttls, ttl)
	gate := s.gate
	fail := s.failures > 0
	if fail {
		s.failures--
	}
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, errSignerDown
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("no csr")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	leaf, err := s.sign(id, csr.PublicKey, ttl)
	if err != nil {
		return nil, err
	}
	return []string{leaf, s.rootPEM}, nil
}

// sign issues a leaf for id and pub, valid from now for ttl.
func (s *testSigner) sign(id spiffeid.ID, pub any, ttl time.Duration) (string, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now,
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.root, pub, s.rootKey)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}
