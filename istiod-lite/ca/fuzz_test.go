package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// maxFuzzCSR bounds the CSR so that one input stays fast.
const maxFuzzCSR = 8 << 10

// FuzzCSR sends arbitrary bytes as the CSR of a CreateCertificate request
// (as PEM, or as DER wrapped in a CERTIFICATE REQUEST block when der is
// set), with any validity_duration, from node1's agent asking for sleepID,
// which has a pod on node1: the caller is allowed the identity, so only the
// CSR and the validity decide.
//
// Property: no panic, and either
//   - a refusal with codes.InvalidArgument and no response, exactly when
//     the CSR is not a PEM CERTIFICATE REQUEST, does not parse, has a bad
//     signature or a key other than ECDSA P-256/P-384 or RSA ≥ 2048 bits,
//     or the validity is negative; or
//   - a chain of the leaf and the root where the leaf verifies against the
//     root, carries the CSR's public key, has exactly sleepID as its only
//     SAN (whatever SANs the CSR asks for: the CA ignores them, as Istio's
//     does), is not a CA and cannot sign certificates (whatever extensions
//     the CSR asks for), and lives no longer than MaxTTL.
func FuzzCSR(f *testing.F) {
	for _, s := range fuzzCSRSeeds(f) {
		f.Add(s.csr, s.der, s.validity)
	}
	cfg := defaultConfig(f.TempDir())
	cfg.MaxTTL = 48 * time.Hour
	c, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Roots()[0])
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer node1-token"))

	f.Fuzz(func(t *testing.T, csr []byte, der bool, validity int64) {
		if len(csr) > maxFuzzCSR {
			t.Skip("input too large")
		}
		if der {
			csr = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})
		}
		req := &pb.IstioCertificateRequest{
			Csr:              string(csr),
			ValidityDuration: validity,
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
				ImpersonatedIdentityKey: structpb.NewStringValue(sleepID.String()),
			}},
		}
		resp, err := c.createCertificate(ctx, req)
		req509, why := acceptableCSR(csr)
		if why == "" && validity < 0 {
			why = "negative validity"
		}
		if err != nil {
			if code := status.Code(err); code != codes.InvalidArgument {
				t.Fatalf("createCertificate() error code %v (%v), want %v", code, err, codes.InvalidArgument)
			}
			if resp != nil {
				t.Fatalf("createCertificate() = %v with error %v, want no response", resp, err)
			}
			if why == "" {
				t.Fatalf("createCertificate() refused a good CSR: %v", err)
			}
			return
		}
		if why != "" {
			t.Fatalf("createCertificate() signed a CSR with %s, want InvalidArgument", why)
		}

		chain := resp.GetCertChain()
		if len(chain) != 2 || chain[1] != string(c.RootPEM()) {
			t.Fatalf("cert_chain has %d elements, want the leaf and the root", len(chain))
		}
		lb, rest := pem.Decode([]byte(chain[0]))
		if lb == nil || lb.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("leaf element %q, want one CERTIFICATE block", chain[0])
		}
		leaf, err := x509.ParseCertificate(lb.Bytes)
		if err != nil {
			t.Fatalf("leaf does not parse: %v", err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("leaf does not verify against the root: %v", err)
		}
		if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(req509.PublicKey) {
			t.Fatalf("leaf key %T differs from the CSR's %T", leaf.PublicKey, req509.PublicKey)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != sleepID.String() ||
			len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
			t.Fatalf("leaf SANs: URIs %v DNS %v IP %v email %v, want exactly %s", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, sleepID)
		}
		if leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
			t.Fatalf("leaf IsCA %v, KeyUsage %v: want a leaf that cannot sign", leaf.IsCA, leaf.KeyUsage)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > cfg.MaxTTL+Backdate+time.Second {
			t.Fatalf("leaf lives %v, want at most MaxTTL %v (+ backdate %v)", life, cfg.MaxTTL, Backdate)
		}
	})
}

// acceptableCSR parses a PEM CSR on its own and returns it, or why the CA
// must refuse it: not a CERTIFICATE REQUEST block, not a CSR, a signature
// that does not verify, or a key other than ECDSA P-256/P-384 or RSA of at
// least 2048 bits.
func acceptableCSR(csrPEM []byte) (*x509.CertificateRequest, string) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || (block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST") {
		return nil, "no PEM certificate request"
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "a parse error"
	}
	if csr.CheckSignature() != nil {
		return nil, "a bad signature"
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, "an unsupported curve"
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, "a short RSA key"
		}
	default:
		return nil, "an unsupported key type"
	}
	return csr, ""
}

type csrSeed struct {
	csr      []byte
	der      bool
	validity int64
}

// fuzzCSRSeeds returns CSRs the CA must sign (P-256, P-384, RSA-2048; with
// foreign, several and non-URI SANs; asking for CA:true and certSign; as NEW
// CERTIFICATE REQUEST) and ones it must refuse (garbage, bad signature,
// P-224, RSA-1024, Ed25519, a certificate instead of a CSR).
func fuzzCSRSeeds(f *testing.F) []csrSeed {
	f.Helper()
	mustKey := func(k crypto.Signer, err error) crypto.Signer {
		if err != nil {
			f.Fatal(err)
		}
		return k
	}
	p256 := mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	p384 := mustKey(ecdsa.GenerateKey(elliptic.P384(), rand.Reader))
	p224 := mustKey(ecdsa.GenerateKey(elliptic.P224(), rand.Reader))
	rsa2048 := mustKey(rsa.GenerateKey(rand.Reader, 2048))
	rsa1024 := mustKey(rsa.GenerateKey(rand.Reader, 1024))
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	derOf := func(tmpl *x509.CertificateRequest, key crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			f.Fatal(err)
		}
		return u
	}
	bc, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	if err != nil {
		f.Fatal(err)
	}
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // keyCertSign | cRLSign
	if err != nil {
		f.Fatal(err)
	}

	plain := derOf(&x509.CertificateRequest{}, p256)
	own := derOf(&x509.CertificateRequest{URIs: []*url.URL{sleepID.URL()}}, p256)
	tampered := bytes.Clone(own)
	tampered[len(tampered)-5] ^= 0xff
	self := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	cert, err := x509.CreateCertificate(rand.Reader, self, self, p256.Public(), p256)
	if err != nil {
		f.Fatal(err)
	}
	return []csrSeed{
		{csr: pemOf("CERTIFICATE REQUEST", own)},
		{csr: own, der: true, validity: 3600},
		{csr: pemOf("NEW CERTIFICATE REQUEST", plain), validity: 1 << 62},
		{csr: pemOf("CERTIFICATE REQUEST", own), validity: -1},
		{csr: pemOf("CERTIFICATE REQUEST", derOf(&x509.CertificateRequest{URIs: []*url.URL{echoID.URL()}}, p384))},
		{csr: derOf(&x509.CertificateRequest{
			Subject:        pkix.Name{CommonName: "root", Organization: []string{"evil"}},
			URIs:           []*url.URL{sleepID.URL(), echoID.URL(), uri("spiffe://other.example/ns/a/sa/b")},
			DNSNames:       []string{"evil.example"},
			IPAddresses:    []net.IP{net.IPv4(10, 0, 0, 1)},
			EmailAddresses: []string{"a@example.com"},
		}, rsa2048), der: true},
		{csr: derOf(&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: ku},
		}}, p256), der: true},
		{csr: tampered, der: true},
		{csr: derOf(&x509.CertificateRequest{}, p224), der: true},
		{csr: derOf(&x509.CertificateRequest{}, rsa1024), der: true},
		{csr: derOf(&x509.CertificateRequest{}, ed), der: true},
		{csr: pemOf("CERTIFICATE", cert)},
		{csr: cert, der: true},
		{csr: []byte("hello")},
		{csr: pemOf("CERTIFICATE REQUEST", []byte{0x30, 0x03, 0x02, 0x01, 0x00})},
	}
}
