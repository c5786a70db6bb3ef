package identity

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// handshake connects a TLS client and server over loopback TCP and returns both ends (closed when the
// test ends) and their handshake errors.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (srv, cli *tls.Conn, srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	type result struct {
		conn *tls.Conn
		err  error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- result{err: err}
			return
		}
		tc := tls.Server(c, serverCfg)
		accepted <- result{conn: tc, err: tc.HandshakeContext(ctx)}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cli = tls.Client(raw, clientCfg)
	cliErr = cli.HandshakeContext(ctx)
	if cliErr == nil {
		// In TLS 1.3 the client finishes before the server has checked its certificate; read the server's
		// verdict (an alert, or nothing until the deadline).
		_ = cli.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := cli.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			cliErr = err
		}
		_ = cli.SetReadDeadline(time.Time{})
	}
	r := <-accepted
	srv, srvErr = r.conn, r.err
	t.Cleanup(func() {
		cli.Close()
		if srv != nil {
			srv.Close()
		}
	})
	return srv, cli, srvErr, cliErr
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func pickID(id spiffeid.ID) func(*tls.ClientHelloInfo) (spiffeid.ID, error) {
	return func(*tls.ClientHelloInfo) (spiffeid.ID, error) { return id, nil }
}

func TestTLSHandshake(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s})
	var sni []string
	serverCfg := m.ServerTLSConfig(func(hello *tls.ClientHelloInfo) (spiffeid.ID, error) {
		sni = append(sni, hello.ServerName)
		return echoID, nil
	})
	clientCfg, err := m.ClientTLSConfig(t.Context(), sleepID, []spiffeid.ID{echoID})
	if err != nil {
		t.Fatalf("ClientTLSConfig() error = %v", err)
	}
	srv, cli, srvErr, cliErr := handshake(t, serverCfg, clientCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: server error %v, client error %v", srvErr, cliErr)
	}
	cs, ss := cli.ConnectionState(), srv.ConnectionState()
	if got, err := PeerID(&cs); err != nil || got != echoID {
		t.Errorf("client PeerID() = %q, %v, want %q", got, err, echoID)
	}
	if got, err := PeerID(&ss); err != nil || got != sleepID {
		t.Errorf("server PeerID() = %q, %v, want %q", got, err, sleepID)
	}
	if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" || cs.DidResume {
		t.Errorf("connection version %x, ALPN %q, resumed %v; want TLS 1.3, h2, not resumed", cs.Version, cs.NegotiatedProtocol, cs.DidResume)
	}
	if len(sni) != 1 || sni[0] != "" {
		t.Errorf("server saw SNI %q, want one handshake without SNI", sni)
	}
	// Data flows both ways.
	go func() { _, _ = srv.Write([]byte("pong")) }()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(cli, buf); err != nil || string(buf) != "pong" {
		t.Errorf("client read %q, %v, want pong", buf, err)
	}
}

func TestTLSRejects(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s})
	foreignSigner := newTestSigner(t, "other.example")
	foreign := NewManager(ManagerConfig{Requester: foreignSigner})
	foreignID := spiffeid.RequireFromString("spiffe://other.example/ns/default/sa/sleep")
	foreignCert, err := foreign.Get(t.Context(), foreignID)
	if err != nil {
		t.Fatal(err)
	}
	// A second CA for the same trust domain, whose roots we do not hold.
	rogue := NewManager(ManagerConfig{Requester: newTestSigner(t, "cluster.local")})
	rogueCert, err := rogue.Get(t.Context(), sleepID)
	if err != nil {
		t.Fatal(err)
	}
	rawClient := func(cert *Certificate) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true,
			Certificates: []tls.Certificate{cert.TLS},
		}
	}
	mustClient := func(src spiffeid.ID, dst ...spiffeid.ID) *tls.Config {
		cfg, err := m.ClientTLSConfig(t.Context(), src, dst)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name          string
		server        *tls.Config
		client        *tls.Config
		wantServerErr bool
		wantClientErr bool
	}{
		{
			name:   "any identity of the trust domain when dst is empty",
			server: m.ServerTLSConfig(pickID(echoID)),
			client: mustClient(sleepID),
		},
		{
			name:   "dst lists the server among others",
			server: m.ServerTLSConfig(pickID(echoID)),
			client: mustClient(sleepID, spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/y"), echoID),
		},
		{
			name:          "server with an unexpected identity",
			server:        m.ServerTLSConfig(pickID(echoID)),
			client:        mustClient(sleepID, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/other")),
			wantClientErr: true, wantServerErr: true,
		},
		{
			name:          "client of another trust domain",
			server:        m.ServerTLSConfig(pickID(echoID)),
			client:        rawClient(foreignCert),
			wantServerErr: true, wantClientErr: true,
		},
		{
			name:          "client chained to another root",
			server:        m.ServerTLSConfig(pickID(echoID)),
			client:        rawClient(rogueCert),
			wantServerErr: true, wantClientErr: true,
		},
		{
			name:          "client without a certificate",
			server:        m.ServerTLSConfig(pickID(echoID)),
			client:        &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true},
			wantServerErr: true, wantClientErr: true,
		},
		{
			name:          "server chained to another root",
			server:        rogue.ServerTLSConfig(pickID(echoID)),
			client:        mustClient(sleepID),
			wantClientErr: true, wantServerErr: true,
		},
		{
			name:          "client offering TLS 1.2 only",
			server:        m.ServerTLSConfig(pickID(echoID)),
			client:        &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true, Certificates: []tls.Certificate{rogueCert.TLS}},
			wantServerErr: true, wantClientErr: true,
		},
		{
			name: "server cannot pick an identity",
			server: m.ServerTLSConfig(func(*tls.ClientHelloInfo) (spiffeid.ID, error) {
				return spiffeid.ID{}, io.ErrUnexpectedEOF
			}),
			client:        mustClient(sleepID),
			wantServerErr: true, wantClientErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, srvErr, cliErr := handshake(t, tt.server, tt.client)
			if (srvErr != nil) != tt.wantServerErr {
				t.Errorf("server handshake error = %v, want error %v", srvErr, tt.wantServerErr)
			}
			if (cliErr != nil) != tt.wantClientErr {
				t.Errorf("client handshake error = %v, want error %v", cliErr, tt.wantClientErr)
			}
		})
	}
}

func TestTLSRotationKeepsConnections(t *testing.T) {
	s := newTestSigner(t, "cluster.local")
	m := NewManager(ManagerConfig{Requester: s, TTL: 2 * time.Second})
	startManager(t, m)
	serverCfg := m.ServerTLSConfig(pickID(echoID))
	clientCfg, err := m.ClientTLSConfig(t.Context(), sleepID, []spiffeid.ID{echoID})
	if err != nil {
		t.Fatalf("ClientTLSConfig() error = %v", err)
	}
	srv, cli, srvErr, cliErr := handshake(t, serverCfg, clientCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: server error %v, client error %v", srvErr, cliErr)
	}
	cs := cli.ConnectionState()
	oldServerLeaf := cs.PeerCertificates[0]
	oldClientLeaf := srv.ConnectionState().PeerCertificates[0]

	// Wait until both certificates were rotated and the old ones have expired.
	eventually(t, 10*time.Second, "both certificates rotated", func() bool {
		n := 0
		for _, c := range m.Certificates() {
			if !c.Leaf.Equal(oldServerLeaf) && !c.Leaf.Equal(oldClientLeaf) {
				n++
			}
		}
		return n == 2
	})
	time.Sleep(time.Until(oldServerLeaf.NotAfter.Add(50 * time.Millisecond)))

	// The established connection still works both ways.
	go func() {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(srv, buf); err == nil {
			_, _ = srv.Write(buf)
		}
	}()
	if _, err := cli.Write([]byte("ping")); err != nil {
		t.Fatalf("write on the old connection: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(cli, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo on the old connection = %q, %v, want ping", buf, err)
	}

	// A new handshake uses the new certificates (the client config built before rotation still works).
	srv2, cli2, srvErr, cliErr := handshake(t, serverCfg, clientCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("second handshake: server error %v, client error %v", srvErr, cliErr)
	}
	if cli2.ConnectionState().PeerCertificates[0].Equal(oldServerLeaf) {
		t.Error("new connection presented the old server certificate")
	}
	if srv2.ConnectionState().PeerCertificates[0].Equal(oldClientLeaf) {
		t.Error("new connection presented the old client certificate")
	}
}
