package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambient-go/mesh/pkg/identity"
)

// istioClientTLS is the TLS that Istio's ztunnel uses towards istiod
// (istio/ztunnel src/tls/control.rs and lib.rs): rustls, TLS 1.3 only
// unless TLS12_ENABLED, ALPN h2 (hyper-rustls with http2), the roots of
// ./var/run/secrets/istio/root-cert.pem, and the host of XDS_ADDRESS /
// CA_ADDRESS (default https://istiod.istio-system.svc:15012) as the name
// to verify.
func istioClientTLS(root []byte, serverName string) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}
}

// TestDropInForIstiod: a client that dials istiod-lite as Istio's ztunnel
// dials istiod (name istiod.istio-system.svc, TLS 1.3, ALPN h2, the mesh
// root) completes the handshake, gets addresses over delta xDS and a
// certificate from the CA; a name the certificate does not carry fails.
func TestDropInForIstiod(t *testing.T) {
	s, _ := startLocal(t)
	addr := s.Addr().String()
	for _, tc := range []struct {
		serverName string
		wantErr    bool
	}{
		{serverName: "istiod.istio-system.svc"},
		{serverName: "istiod.istio-system.svc.cluster.local"},
		{serverName: "istiod-lite.istio-system.svc"},
		{serverName: "istiod.other.svc", wantErr: true},
	} {
		t.Run(tc.serverName, func(t *testing.T) {
			cfg := istioClientTLS(s.RootPEM(), tc.serverName)
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", addr)
			if tc.wantErr {
				if err == nil {
					c.Close()
					t.Fatalf("TLS handshake as %s succeeded, want a name mismatch", tc.serverName)
				}
				return
			}
			if err != nil {
				t.Fatalf("TLS handshake as %s: %v", tc.serverName, err)
			}
			st := c.(*tls.Conn).ConnectionState()
			c.Close()
			if st.NegotiatedProtocol != "h2" || st.Version != tls.VersionTLS13 {
				t.Errorf("negotiated ALPN %q, version %x; want h2, TLS 1.3", st.NegotiatedProtocol, st.Version)
			}
			leaf := st.PeerCertificates[0]
			var serverAuth bool
			for _, u := range leaf.ExtKeyUsage {
				serverAuth = serverAuth || u == x509.ExtKeyUsageServerAuth
			}
			if !serverAuth {
				t.Errorf("serving certificate's extended key usage %v lacks serverAuth (webpki requires it)", leaf.ExtKeyUsage)
			}

			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			resp, err := firstResponse(t, conn, "token-node-a")
			if err != nil {
				t.Fatalf("delta xDS as %s: %v", tc.serverName, err)
			}
			if len(resp.GetResources()) == 0 {
				t.Errorf("delta xDS as %s: no resources, want the mesh's addresses", tc.serverName)
			}
			id, _ := identity.WorkloadID("cluster.local", "demo", "echo")
			_, csr, err := identity.NewKeyAndCSR(id)
			if err != nil {
				t.Fatal(err)
			}
			ca := &identity.CAClient{Conn: conn, Impersonate: true, Token: func(context.Context) (string, error) { return "token-node-a", nil }}
			if chain, err := ca.RequestCertificate(ctx, id, csr, time.Hour); err != nil || len(chain) == 0 {
				t.Errorf("CreateCertificate as %s = %d certificates, %v; want a chain", tc.serverName, len(chain), err)
			}
		})
	}
}
