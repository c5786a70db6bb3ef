package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN is the only application protocol HBONE negotiates.
const ALPN = "h2"

// baseTLSConfig holds what both sides share: TLS 1.3 only, ALPN h2, no resumption. Go does not let TLS 1.3
// cipher suites be configured; its defaults are AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (Istio
// offers only the two AES suites, and Go negotiates them with any Istio peer). Key exchange groups are Go's
// defaults (X25519MLKEM768, X25519, P-256, ...), which include those ztunnel offers.
func baseTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		SessionTicketsDisabled: true,
	}
}

// ServerTLSConfig returns a server configuration that, for each handshake, presents the certificate of the
// identity pick returns for the connection (the HBONE server presents the destination workload's own
// certificate), and requires a client certificate that chains to the roots of that same certificate with a
// SPIFFE ID in the same trust domain. The certificate is looked up per handshake, so new handshakes use a
// rotated certificate while established connections are untouched.
func (m *Manager) ServerTLSConfig(pick func(*tls.ClientHelloInfo) (spiffeid.ID, error)) *tls.Config {
	cfg := baseTLSConfig()
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		id, err := pick(hello)
		if err != nil {
			return nil, fmt.Errorf("identity: pick server identity: %w", err)
		}
		cert, err := m.Get(hello.Context(), id)
		if err != nil {
			return nil, err
		}
		conn := baseTLSConfig()
		conn.ClientAuth = tls.RequireAnyClientCert
		conn.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
		conn.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyPeer(raw, cert)
			return err
		}
		return conn, nil
	}
	// Reached only if a caller drops GetConfigForClient; refuse rather than serve unauthenticated.
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("identity: server config used without GetConfigForClient")
	}
	return cfg
}

// ClientTLSConfig returns a client configuration that presents src's certificate (fetched now through Get,
// and looked up again at each handshake so rotation is picked up) and accepts a server whose chain leads to
// src's roots and whose URI SAN is one of dst, or, if dst is empty, any ID in src's trust domain. It sends
// no SNI and does not resume sessions; verification is done by VerifyPeerCertificate (InsecureSkipVerify
// only turns off Go's hostname-based check).
func (m *Manager) ClientTLSConfig(ctx context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error) {
	initial, err := m.Get(ctx, src)
	if err != nil {
		return nil, err
	}
	dst = slices.Clone(dst)
	current := func() *Certificate {
		if c := m.cached(src); c != nil {
			return c
		}
		return initial
	}
	cfg := baseTLSConfig()
	cfg.InsecureSkipVerify = true
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, err := m.Get(cri.Context(), src)
		if err != nil {
			return nil, err
		}
		return &cert.TLS, nil
	}
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		id, err := verifyPeer(raw, current())
		if err != nil {
			return err
		}
		if len(dst) > 0 && !slices.Contains(dst, id) {
			return fmt.Errorf("identity: server identity %q is not one of the expected %v", id, dst)
		}
		return nil
	}
	return cfg, nil
}

// verifyPeer verifies a peer chain against the roots and trust domain of own and returns the peer's ID.
func verifyPeer(raw [][]byte, own *Certificate) (spiffeid.ID, error) {
	id, _, err := x509svid.ParseAndVerify(raw, own.bundle())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: verify peer certificate: %w", err)
	}
	if !id.MemberOf(own.ID.TrustDomain()) {
		return spiffeid.ID{}, fmt.Errorf("identity: peer %q is not in trust domain %q", id, own.ID.TrustDomain())
	}
	return id, nil
}

// PeerID returns the SPIFFE ID of the peer's leaf certificate, as verified by the configurations above.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("identity: peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: peer certificate: %w", err)
	}
	return id, nil
}
