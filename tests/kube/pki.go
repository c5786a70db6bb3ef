package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// kubeletPKI is the trust between the API server and the harness kubelets,
// as kubeadm sets it up: one CA signs the kubelets' serving certificate
// (which the API server checks, --kubelet-certificate-authority) and the
// API server's kubelet client certificate (which the kubelets require,
// --kubelet-client-certificate).
type kubeletPKI struct {
	caFile, clientCertFile, clientKeyFile string
	serving                               tls.Certificate
	clientCAs                             *x509.CertPool
}

// newKubeletPKI writes the CA and the API server's client pair into dir.
func newKubeletPKI(dir string) (*kubeletPKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "harness-kubelet-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leaf := func(serial int64, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(7*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		return der, key, err
	}
	servingDER, servingKey, err := leaf(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "harness-kubelet"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
	})
	if err != nil {
		return nil, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	clientDER, clientKey, err := leaf(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}
	p := &kubeletPKI{
		caFile:         filepath.Join(dir, "kubelet-ca.crt"),
		clientCertFile: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		clientKeyFile:  filepath.Join(dir, "apiserver-kubelet-client.key"),
		serving:        tls.Certificate{Certificate: [][]byte{servingDER}, PrivateKey: servingKey},
		clientCAs:      x509.NewCertPool(),
	}
	p.clientCAs.AddCert(ca)
	clientKeyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		return nil, err
	}
	for file, block := range map[string]*pem.Block{
		p.caFile:         {Type: "CERTIFICATE", Bytes: caDER},
		p.clientCertFile: {Type: "CERTIFICATE", Bytes: clientDER},
		p.clientKeyFile:  {Type: "EC PRIVATE KEY", Bytes: clientKeyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// serverTLS is the kubelets' TLS configuration: the serving certificate,
// and a client certificate of the CA required (only the API server has
// one). HTTP/1.1 only: the streaming upgrades need it.
func (p *kubeletPKI) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.serving},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.clientCAs,
		NextProtos:   []string{"http/1.1"},
	}
}
