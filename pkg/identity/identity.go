// Package identity holds the workload identities of the mesh: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, the keys and CSRs for them, a client of
// Istio's CA service (IstioCertificateService) that turns a CSR into a signed chain, and a Manager that keeps
// one certificate per identity fresh and builds the mutual TLS configurations HBONE uses.
//
// The TLS configurations follow Istio ambient: TLS 1.3 only, ALPN "h2", no SNI, no session resumption, the
// peer identified by the URI SAN of its leaf certificate and verified against the roots that came with our
// own certificate. Certificates are chosen per handshake, so rotation never disturbs established connections.
package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// WorkloadID returns the SPIFFE ID spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func WorkloadID(trustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: trust domain %q: %w", trustDomain, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: workload id for %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// ParseWorkloadID splits a workload ID into namespace and service account. It fails if the ID's path is not
// of the form /ns/<namespace>/sa/<service-account>.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	if id.IsZero() {
		return "", "", errors.New("identity: empty workload id")
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", "", fmt.Errorf("identity: %q is not a workload id of the form /ns/<ns>/sa/<sa>", id)
	}
	return parts[1], parts[3], nil
}

// NewKeyAndCSR makes an ECDSA P-256 key and a PEM-encoded certificate signing request for it whose only
// subject alternative name is the URI of id (and whose subject is empty, as Istio's are).
func NewKeyAndCSR(id spiffeid.ID) (*ecdsa.PrivateKey, []byte, error) {
	if id.IsZero() {
		return nil, nil, errors.New("identity: csr for an empty id")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{id.URL()},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: create csr: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Certificate is one identity's key and certificate chain.
type Certificate struct {
	ID         spiffeid.ID
	Leaf       *x509.Certificate
	Chain      []*x509.Certificate // leaf first, then intermediates (no root)
	Roots      []*x509.Certificate // trust anchors from the CA response (its last element)
	PrivateKey *ecdsa.PrivateKey
	TLS        tls.Certificate // ready for tls.Config: Certificate = chain DER, PrivateKey, Leaf
}

// bundle returns the roots of c as a go-spiffe bundle of c's trust domain.
func (c *Certificate) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.ID.TrustDomain(), c.Roots)
}

// NewCertificate builds a Certificate from a private key and a chain as Istio's CA returns it: the leaf
// first, then each intermediate as its own element, and the roots last (an element may hold several PEM
// certificates; only the first of each element but the last is read, and the last element is read whole).
// A response of one element is rejected. The leaf must carry the public key of key and exactly the SPIFFE ID
// id, and must chain to the roots.
func NewCertificate(id spiffeid.ID, key *ecdsa.PrivateKey, chainPEM []string) (*Certificate, error) {
	if len(chainPEM) < 2 {
		return nil, fmt.Errorf("identity: certificate chain of %d elements, want the leaf and the root at least", len(chainPEM))
	}
	var chain []*x509.Certificate
	for i, p := range chainPEM[:len(chainPEM)-1] {
		certs, err := parsePEMCerts([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("identity: chain element %d: %w", i, err)
		}
		chain = append(chain, certs[0])
	}
	roots, err := parsePEMCerts([]byte(chainPEM[len(chainPEM)-1]))
	if err != nil {
		return nil, fmt.Errorf("identity: root element: %w", err)
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("identity: leaf certificate does not match the private key")
	}
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("identity: leaf certificate: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("identity: leaf certificate is for %q, want %q", got, id)
	}
	c := &Certificate{ID: id, Leaf: leaf, Chain: chain, Roots: roots, PrivateKey: key}
	if _, _, err := x509svid.Verify(chain, c.bundle()); err != nil {
		return nil, fmt.Errorf("identity: verify issued chain: %w", err)
	}
	der := make([][]byte, len(chain))
	for i, cert := range chain {
		der[i] = cert.Raw
	}
	c.TLS = tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}
	return c, nil
}

// parsePEMCerts parses every CERTIFICATE block of b; it fails if there is none.
func parsePEMCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// CertificateInfo is what a proxy's /config_dump shows of one certificate
// it holds (ztunnel's and the waypoint's, read by meshctl).
type CertificateInfo struct {
	Identity  string    `json:"identity"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	Issuer    string    `json:"issuer"`
}

// Infos describes certs for a /config_dump; never nil.
func Infos(certs []*Certificate) []CertificateInfo {
	out := make([]CertificateInfo, 0, len(certs))
	for _, c := range certs {
		out = append(out, CertificateInfo{
			Identity:  c.ID.String(),
			Serial:    c.Leaf.SerialNumber.Text(16),
			NotBefore: c.Leaf.NotBefore,
			NotAfter:  c.Leaf.NotAfter,
			Issuer:    c.Leaf.Issuer.String(),
		})
	}
	return out
}
