// Package identitytest is a throwaway mesh CA for tests: an ECDSA P-256 root for one SPIFFE trust domain
// that issues real leaf certificates (X.509-SVIDs with a spiffe:// URI SAN) and builds the mutual-TLS
// configurations HBONE uses (TLS 1.3, ALPN h2) with go-spiffe's tlsconfig. It lets tests of pkg/hbone,
// ztunnel and the waypoint run real handshakes without istiod-lite or pkg/identity's certificate manager.
//
// Keys are generated per CA and per leaf and live only in memory; failures end the test through
// testing.TB. It is never for production: nothing here rotates, revokes or protects a key.
package identitytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a mesh root for one trust domain. Its fields are read-only after New.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate  // the self-signed root
	Key         *ecdsa.PrivateKey  // the root's key
	Bundle      *x509bundle.Bundle // Cert as the trust domain's only authority
}

// serial numbers certificates uniquely across all CAs of a test binary.
var serial atomic.Int64

// New returns a CA for trustDomain (such as "cluster.local") whose root is valid from an hour ago for a day.
func New(t testing.TB, trustDomain string) *CA {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		t.Fatalf("identitytest: trust domain %q: %v", trustDomain, err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{Organization: []string{"identitytest " + td.Name()}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	cert := create(t, tmpl, tmpl, key, key)
	return &CA{TrustDomain: td, Cert: cert, Key: key, Bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert})}
}

// ID returns the SPIFFE ID with path (such as "/ns/demo/sa/echo") in the CA's trust domain.
func (ca *CA) ID(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(ca.TrustDomain, path)
}

// SVID issues a leaf for id with a fresh key, valid from an hour ago for a day, for both client and server
// authentication.
func (ca *CA) SVID(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	cert := create(t, tmpl, ca.Cert, key, ca.Key)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// ServerTLS returns an HBONE server configuration that presents a new leaf for id and requires a client
// certificate chained to the CA with an ID in its trust domain.
func (ca *CA) ServerTLS(t testing.TB, id spiffeid.ID) *tls.Config {
	t.Helper()
	return forHBONE(tlsconfig.MTLSServerConfig(ca.SVID(t, id), ca.Bundle, tlsconfig.AuthorizeMemberOf(ca.TrustDomain)))
}

// PoolTLS returns a function of the shape of hbone.PoolConfig.TLSConfig: for each dial it issues a new
// client leaf for src and accepts a server chained to roots (the CA's own bundle if roots is nil) whose ID
// is one of dst, or, if dst is empty, any ID in the CA's trust domain.
func (ca *CA) PoolTLS(t testing.TB, roots *x509bundle.Bundle) func(ctx context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error) {
	if roots == nil {
		roots = ca.Bundle
	}
	return func(_ context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error) {
		auth := tlsconfig.AuthorizeMemberOf(ca.TrustDomain)
		if len(dst) > 0 {
			auth = tlsconfig.AuthorizeOneOf(dst...)
		}
		return forHBONE(tlsconfig.MTLSClientConfig(ca.SVID(t, src), roots, auth)), nil
	}
}

// forHBONE restricts c to what HBONE negotiates: TLS 1.3 and ALPN h2.
func forHBONE(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = []string{"h2"}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("identitytest: generate key: %v", err)
	}
	return key
}

func create(t testing.TB, tmpl, parent *x509.Certificate, key, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatalf("identitytest: create certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("identitytest: parse certificate: %v", err)
	}
	return cert
}
