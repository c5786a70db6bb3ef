// Package ca is istiod-lite's certificate authority. It serves Istio's
// istio.v1.auth.IstioCertificateService/CreateCertificate: a caller authenticated by a bearer token sends a
// CSR and gets back a SPIFFE leaf certificate signed by a self-signed root (leaf first, root last). The
// identity in the certificate comes from the caller's token, or, for a node agent such as ztunnel, from the
// ImpersonatedIdentity metadata when that identity has a pod on the agent's node; never from the CSR.
//
// The root key and certificate are created in Config.StateDir on first start and reused afterwards.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of Config.
const (
	DefaultTrustDomain = "cluster.local"
	DefaultTTL         = 24 * time.Hour
	DefaultMaxTTL      = 7 * 24 * time.Hour
	// RootValidity is the lifetime of a newly created root.
	RootValidity = 10 * 365 * 24 * time.Hour
	// Backdate is how far before now a leaf's notBefore is set, to tolerate clock skew (as Istio does).
	Backdate = 2 * time.Minute

	rootKeyFile  = "ca-key.pem"
	rootCertFile = "root-cert.pem"
)

// Config configures a CA.
type Config struct {
	// StateDir holds the root key (ca-key.pem, PKCS#8) and certificate (root-cert.pem), created on first
	// start and reused later. Required.
	StateDir string
	// TrustDomain of the identities issued. Default "cluster.local".
	TrustDomain string
	// DefaultTTL is the lifetime of a leaf when the request's validity_duration is 0. Default 24h.
	DefaultTTL time.Duration
	// MaxTTL caps the lifetime requested. Default 7 days.
	MaxTTL time.Duration
	// Authenticator establishes who sent a request. Required.
	Authenticator Authenticator
	// Authorizer says which identities a node may impersonate. Required.
	Authorizer Authorizer
	// Logger receives one info record per certificate issued. Nil discards.
	Logger *slog.Logger
}

// CA signs workload certificates with its root.
type CA struct {
	cfg     Config
	td      spiffeid.TrustDomain
	log     *slog.Logger
	key     crypto.Signer
	root    *x509.Certificate
	rootPEM []byte
}

// New loads the root from cfg.StateDir, creating it if the directory holds none, and returns a CA.
func New(cfg Config) (*CA, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("ca: StateDir is required")
	}
	if cfg.Authenticator == nil || cfg.Authorizer == nil {
		return nil, errors.New("ca: Authenticator and Authorizer are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = DefaultTrustDomain
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	cfg.DefaultTTL = min(cfg.DefaultTTL, cfg.MaxTTL)
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain %q: %w", cfg.TrustDomain, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CA{cfg: cfg, td: td, log: log.With("component", "ca")}
	if err := c.loadOrCreateRoot(); err != nil {
		return nil, err
	}
	return c, nil
}

// loadOrCreateRoot reads the root from StateDir, or creates and stores one if neither file exists.
func (c *CA) loadOrCreateRoot() error {
	keyPath := filepath.Join(c.cfg.StateDir, rootKeyFile)
	certPath := filepath.Join(c.cfg.StateDir, rootCertFile)
	keyPEM, keyErr := os.ReadFile(keyPath)
	certPEM, certErr := os.ReadFile(certPath)
	switch {
	case keyErr == nil && certErr == nil:
		return c.setRoot(keyPEM, certPEM)
	case errors.Is(keyErr, fs.ErrNotExist) && errors.Is(certErr, fs.ErrNotExist):
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return fmt.Errorf("ca: read root key: %w", keyErr)
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return fmt.Errorf("ca: read root certificate: %w", certErr)
	default:
		return fmt.Errorf("ca: %s holds only one of %s and %s", c.cfg.StateDir, rootKeyFile, rootCertFile)
	}

	keyPEM, certPEM, err := c.newRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("ca: create state dir: %w", err)
	}
	// The certificate is written last: its presence marks a complete pair.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("ca: write root key: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return fmt.Errorf("ca: write root certificate: %w", err)
	}
	c.log.Info("created root certificate", "dir", c.cfg.StateDir, "trust_domain", c.td.Name())
	return c.setRoot(keyPEM, certPEM)
}

// newRoot makes a self-signed ECDSA P-256 root for the trust domain, valid for RootValidity.
func (c *CA) newRoot() (keyPEM, certPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{c.td.Name()}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(RootValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: marshal root key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// setRoot parses and checks a root key and certificate.
func (c *CA) setRoot(keyPEM, certPEM []byte) error {
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return fmt.Errorf("ca: %s holds no PEM block", rootKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return fmt.Errorf("ca: parse root key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return fmt.Errorf("ca: root key of type %T cannot sign", k)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return fmt.Errorf("ca: %s holds no PEM certificate", rootCertFile)
	}
	root, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("ca: parse root certificate: %w", err)
	}
	if !root.IsCA {
		return errors.New("ca: root certificate is not a CA")
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(root.PublicKey) {
		return errors.New("ca: root key does not match the root certificate")
	}
	if now := time.Now(); now.After(root.NotAfter) {
		return fmt.Errorf("ca: root certificate expired at %v", root.NotAfter)
	}
	c.key, c.root = key, root
	c.rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	return nil
}

// Roots returns the trust anchors of the mesh.
func (c *CA) Roots() []*x509.Certificate { return []*x509.Certificate{c.root} }

// RootPEM returns the root certificate in PEM.
func (c *CA) RootPEM() []byte { return append([]byte(nil), c.rootPEM...) }

// TrustDomain returns the trust domain the CA issues identities in.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// ServingCertificate issues a TLS certificate for istiod-lite's own gRPC server, with the SPIFFE ID
// spiffe://<td>/ns/istio-system/sa/istiod-lite and the DNS names and IPs given, valid for ttl (0 means
// DefaultTTL; capped at MaxTTL). The chain holds the leaf only; clients trust Roots. Callers renew it as
// they like (for instance through tls.Config.GetCertificate).
func (c *CA) ServingCertificate(dnsNames []string, ips []net.IP, ttl time.Duration) (tls.Certificate, error) {
	id, err := spiffeid.FromSegments(c.td, "ns", "istio-system", "sa", "istiod-lite")
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: serving identity: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: generate serving key: %w", err)
	}
	leaf, err := c.sign(id, &key.PublicKey, c.ttl(ttl), func(t *x509.Certificate) {
		t.DNSNames = dnsNames
		t.IPAddresses = ips
	})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// ttl returns the lifetime for a requested ttl: DefaultTTL when zero, capped at MaxTTL.
func (c *CA) ttl(requested time.Duration) time.Duration {
	if requested <= 0 {
		return c.cfg.DefaultTTL
	}
	return min(requested, c.cfg.MaxTTL)
}

// sign issues a leaf for id and pub as Istio does: empty subject, critical SAN extension with the SPIFFE
// URI, digitalSignature|keyEncipherment, serverAuth+clientAuth, notBefore Backdate ago, notAfter now+ttl
// capped at the root's expiry, a random 128-bit serial. edit may add to the template.
func (c *CA) sign(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration, edit func(*x509.Certificate)) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.root.NotAfter) {
		notAfter = c.root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-Backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if edit != nil {
		edit(tmpl)
	}
	// With an empty subject, crypto/x509 marks the SAN extension critical (RFC 5280 4.2.1.6).
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse issued certificate: %w", err)
	}
	return leaf, nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			return nil, fmt.Errorf("ca: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// writeFileAtomic writes data to a temporary file next to path and renames it into place.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
