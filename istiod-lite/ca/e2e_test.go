package ca

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestManagerAgainstCA runs the client side (identity.CAClient and identity.Manager, as ztunnel uses
// them) against this CA over real gRPC, and the certificates it obtains over real mutual TLS.
func TestManagerAgainstCA(t *testing.T) {
	env := newTestEnv(t, defaultConfig(t.TempDir()))
	node1 := identity.NewManager(identity.ManagerConfig{
		Requester: &identity.CAClient{
			Conn:        env.conn,
			Token:       func(context.Context) (string, error) { return "node1-token", nil },
			Impersonate: true,
			ClusterID:   "Kubernetes",
		},
		TTL: 2 * time.Second,
	})
	node2 := identity.NewManager(identity.ManagerConfig{
		Requester: &identity.CAClient{
			Conn:        env.conn,
			Token:       func(context.Context) (string, error) { return "node2-token", nil },
			Impersonate: true,
		},
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- node1.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start() = %v", err)
		}
	})

	sleep, err := node1.Get(t.Context(), sleepID)
	if err != nil {
		t.Fatalf("node1 Get(%q) error = %v", sleepID, err)
	}
	if len(sleep.Roots) != 1 || !sleep.Roots[0].Equal(env.ca.Roots()[0]) {
		t.Errorf("certificate roots are not the CA's root")
	}
	if _, err := node1.Get(t.Context(), echoID); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node1 Get(%q) (pod on node2) error = %v, want PermissionDenied", echoID, err)
	}

	// sleep on node1 connects to echo on node2 over HBONE-style mTLS.
	serverCfg := node2.ServerTLSConfig(func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return echoID, nil })
	clientCfg, err := node1.ClientTLSConfig(t.Context(), sleepID, []spiffeid.ID{echoID})
	if err != nil {
		t.Fatalf("ClientTLSConfig() error = %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		peer spiffeid.ID
		err  error
	}
	served := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- result{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, serverCfg)
		hctx, hcancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer hcancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			served <- result{err: err}
			return
		}
		cs := tc.ConnectionState()
		id, err := identity.PeerID(&cs)
		served <- result{peer: id, err: err}
		_, _ = tc.Write([]byte("ok"))
	}()
	raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cli := tls.Client(raw, clientCfg)
	_ = cli.SetDeadline(time.Now().Add(5 * time.Second))
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake error = %v", err)
	}
	buf := make([]byte, 2)
	if _, err := cli.Read(buf); err != nil {
		t.Fatalf("client read error = %v", err)
	}
	r := <-served
	if r.err != nil || r.peer != sleepID {
		t.Errorf("server saw peer %q, %v, want %q", r.peer, r.err, sleepID)
	}
	cs := cli.ConnectionState()
	if got, err := identity.PeerID(&cs); err != nil || got != echoID {
		t.Errorf("client saw peer %q, %v, want %q", got, err, echoID)
	}

	// With a 2s TTL the Manager renews sleep's certificate from the CA (whose notBefore is back-dated).
	deadline := time.Now().Add(10 * time.Second)
	for {
		certs := node1.Certificates()
		if len(certs) == 1 && certs[0].ID == sleepID && !certs[0].Leaf.Equal(sleep.Leaf) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("certificate was not renewed within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
