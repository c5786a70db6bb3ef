package identitytest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSVID(t *testing.T) {
	ca := New(t, "cluster.local")
	id := ca.ID("/ns/demo/sa/echo")
	svid := ca.SVID(t, id)
	if got, want := svid.ID, spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo"); got != want {
		t.Errorf("SVID(%v).ID = %v, want %v", id, got, want)
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("SVID(%v) URI SANs = %v, want [%v]", id, leaf.URIs, id)
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("SVID(%v) is not signed by the CA: %v", id, err)
	}
	if other := ca.SVID(t, id).Certificates[0]; other.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("two SVIDs share serial %v", leaf.SerialNumber)
	}
}

// TestHandshake: ServerTLS and PoolTLS complete a TLS 1.3 h2 handshake over loopback between identities of
// one CA, and refuse a peer of another CA or an unexpected server ID.
func TestHandshake(t *testing.T) {
	ca := New(t, "cluster.local")
	other := New(t, "cluster.local")
	serverID, clientID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	tests := []struct {
		name    string
		client  *CA
		roots   *x509bundle.Bundle
		dst     []spiffeid.ID
		wantErr bool
	}{
		{name: "any member", client: ca},
		{name: "expected server", client: ca, dst: []spiffeid.ID{serverID}},
		{name: "unexpected server", client: ca, dst: []spiffeid.ID{ca.ID("/ns/b/sa/someone-else")}, wantErr: true},
		{name: "client of another CA", client: other, roots: ca.Bundle, wantErr: true},
		{name: "server of another CA", client: other, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.client.PoolTLS(t, tt.roots)(context.Background(), clientID, tt.dst)
			if err != nil {
				t.Fatalf("PoolTLS(): %v", err)
			}
			state, err := handshake(t, ca.ServerTLS(t, serverID), cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("handshake error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if state.Version != tls.VersionTLS13 || state.NegotiatedProtocol != "h2" {
				t.Errorf("handshake = version %#x ALPN %q, want TLS 1.3 and h2", state.Version, state.NegotiatedProtocol)
			}
		})
	}
}

// handshake runs a client handshake against a server on loopback and returns the client's view; an error
// from either side is returned.
func handshake(t *testing.T, server, client *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			srvErr <- err
			return
		}
		// TLS 1.3: the server's verdict on the client certificate reaches the client with its first read.
		_, err = tc.Write([]byte{1})
		srvErr <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", l.Addr().String(), client)
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if serr := <-srvErr; err == nil {
		err = serr
	}
	if err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}
