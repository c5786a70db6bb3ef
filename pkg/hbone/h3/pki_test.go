package h3

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// signer is a real CA behind pkg/identity's Manager: it signs each CSR's
// key into a leaf for the requested ID, as istiod-lite's CA does.
type signer struct{ ca *identitytest.CA }

func (s signer) RequestCertificate(_ context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]string, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("no csr")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-2 * time.Minute),
		NotAfter:     time.Now().Add(ttl),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, csr.PublicKey, s.ca.Key)
	if err != nil {
		return nil, err
	}
	return []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Cert.Raw})),
	}, nil
}

// mesh is one trust domain's CA and an identity.Manager issuing from it.
type mesh struct {
	ca *identitytest.CA
	m  *identity.Manager
}

func newMesh(t *testing.T, td string) *mesh {
	ca := identitytest.New(t, td)
	return &mesh{ca: ca, m: identity.NewManager(identity.ManagerConfig{Requester: signer{ca}})}
}

// serverTLS presents id's certificate, as ztunnel's HBONE server does for
// the destination workload.
func (ms *mesh) serverTLS(id spiffeid.ID) *tls.Config {
	return ms.m.ServerTLSConfig(func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id, nil })
}
