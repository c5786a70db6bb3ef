package hbone

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// testCA is a mesh root that issues ECDSA P-256 leaves with SPIFFE URI SANs.
type testCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	bundle *x509bundle.Bundle
}

var serial int64 = 1

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{Organization: []string{"hbone test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	trust := spiffeid.RequireTrustDomainFromString(td)
	return &testCA{td: trust, cert: cert, key: key, bundle: x509bundle.FromX509Authorities(trust, []*x509.Certificate{cert})}
}

func (ca *testCA) id(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(ca.td, path)
}

// svid issues a leaf for id.
func (ca *testCA) svid(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func hardenTLS(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = []string{"h2"}
	return c
}

// serverTLS: presents id, requires a client chained to ca's trust domain.
func (ca *testCA) serverTLS(t testing.TB, id spiffeid.ID) *tls.Config {
	return hardenTLS(tlsconfig.MTLSServerConfig(ca.svid(t, id), ca.bundle, tlsconfig.AuthorizeMemberOf(ca.td)))
}

// poolTLS returns a PoolConfig.TLSConfig issuing client certs from ca and
// trusting roots.
func (ca *testCA) poolTLS(t testing.TB, roots *x509bundle.Bundle) func(context.Context, spiffeid.ID, []spiffeid.ID) (*tls.Config, error) {
	if roots == nil {
		roots = ca.bundle
	}
	return func(_ context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error) {
		auth := tlsconfig.AuthorizeMemberOf(ca.td)
		if len(dst) > 0 {
			auth = tlsconfig.AuthorizeOneOf(dst...)
		}
		return hardenTLS(tlsconfig.MTLSClientConfig(ca.svid(t, src), roots, auth)), nil
	}
}

// tcpEcho runs a TCP echo server with half-close; it returns its address.
func tcpEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}
