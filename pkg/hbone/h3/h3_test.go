package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/pkg/hbone"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/client")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/server")
	otherID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/other")
)

// echo accepts every CONNECT and echoes the stream, half-closing after
// the client's FIN. It records the requests it saw.
type echo struct {
	reqs chan *hbone.Request
}

func (e *echo) ServeH3(ctx context.Context, req *hbone.Request, t *Tunnel) {
	select {
	case e.reqs <- req:
	default:
	}
	c, err := t.Accept()
	if err != nil {
		return
	}
	io.Copy(c, c)
	c.CloseWrite()
}

// serve runs s on a UDP socket of 127.0.0.1 until the test ends; it
// returns the socket's address.
func serve(t *testing.T, s *Server) netip.AddrPort {
	t.Helper()
	pc, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func newPool(t *testing.T, ms *mesh) *Pool {
	p := NewPool(PoolConfig{TLSConfig: ms.m.ClientTLSConfig, HandshakeTimeout: 3 * time.Second})
	t.Cleanup(func() { p.Close() })
	return p
}

func target(addr netip.AddrPort, dst ...spiffeid.ID) hbone.Target {
	return hbone.Target{
		Addr:      addr,
		Authority: "10.0.0.2:8080",
		SourceID:  clientID,
		DestIDs:   dst,
		Header:    http.Header{"Forwarded": {`for="10.0.0.1:40000"`}},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestConnectEcho: a CONNECT over HTTP/3 with pkg/identity's certificates
// reaches the handler with the request hbone's TCP server would build,
// bytes go both ways, and half-close travels as the stream's FIN.
func TestConnectEcho(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	e := &echo{reqs: make(chan *hbone.Request, 1)}
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: e})
	p := newPool(t, ms)

	c, err := p.Dial(ctxT(t), target(addr, serverID))
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer c.Close()
	req := <-e.reqs
	got := struct {
		Authority, PeerID, Forwarded, LocalAddr string
	}{req.Authority.String(), req.PeerID.String(), req.Header.Get("Forwarded"), req.LocalAddr.String()}
	want := got
	want.Authority, want.PeerID, want.Forwarded, want.LocalAddr = "10.0.0.2:8080", clientID.String(), `for="10.0.0.1:40000"`, addr.String()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	if req.RemoteAddr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("RemoteAddr = %v, want 127.0.0.1:*", req.RemoteAddr)
	}

	msg := strings.Repeat("hello over quic ", 20000) // 320 KB: many packets
	go func() {
		io.WriteString(c, msg)
		c.CloseWrite()
	}()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll() = %v", err)
	}
	if string(b) != msg {
		t.Errorf("echoed %d bytes, want %d", len(b), len(msg))
	}
}

// TestReject: the handler's answers reach the client as hbone's
// StatusError, with the reason; a handler that does not answer is a 503.
func TestReject(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	var code atomic.Int32
	h := HandlerFunc(func(ctx context.Context, req *hbone.Request, t *Tunnel) {
		if c := int(code.Load()); c != 0 {
			t.Reject(c, "because")
		}
	})
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: h})
	p := newPool(t, ms)
	for _, tc := range []struct {
		name string
		code int
		want hbone.StatusError
	}{
		{"bad request", http.StatusBadRequest, hbone.StatusError{Code: 400, Reason: "because"}},
		{"denied", http.StatusUnauthorized, hbone.StatusError{Code: 401, Reason: "because"}},
		{"dial failed", http.StatusServiceUnavailable, hbone.StatusError{Code: 503, Reason: "because"}},
		{"no answer", 0, hbone.StatusError{Code: 503, Reason: "no response from handler"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code.Store(int32(tc.code))
			_, err := p.Dial(ctxT(t), target(addr, serverID))
			var se *hbone.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Dial() = %v, want a StatusError", err)
			}
			if diff := cmp.Diff(tc.want, *se); diff != "" {
				t.Errorf("Dial() status (-want +got):\n%s", diff)
			}
		})
	}
	if s := p.Stats(); s.Conns != 1 || s.Streams != 0 {
		t.Errorf("Stats() = %+v, want one connection and no streams", s)
	}
}

// TestRefused: what HBONE over TCP refuses is refused over QUIC: a client
// of a foreign trust domain, a client without a certificate, a server
// whose identity is not the destination's. The handler never runs.
func TestRefused(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	foreign := newMesh(t, "evil.example")
	var called atomic.Bool
	h := HandlerFunc(func(ctx context.Context, req *hbone.Request, t *Tunnel) {
		called.Store(true)
		t.Reject(http.StatusServiceUnavailable, "test")
	})
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: h})

	for _, tc := range []struct {
		name string
		pool PoolConfig
		tgt  hbone.Target
	}{
		{
			name: "foreign trust domain",
			pool: PoolConfig{TLSConfig: foreign.m.ClientTLSConfig},
			tgt: func() hbone.Target {
				tg := target(addr)
				tg.SourceID = spiffeid.RequireFromString("spiffe://evil.example/ns/a/sa/client")
				return tg
			}(),
		},
		{
			name: "no client certificate",
			pool: PoolConfig{TLSConfig: func(ctx context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error) {
				c, err := ms.m.ClientTLSConfig(ctx, src, dst)
				if err != nil {
					return nil, err
				}
				c = c.Clone()
				c.GetClientCertificate = nil
				return c, nil
			}},
			tgt: target(addr, serverID),
		},
		{
			name: "wrong SAN",
			pool: PoolConfig{TLSConfig: ms.m.ClientTLSConfig},
			tgt:  target(addr, otherID),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.pool.HandshakeTimeout = 3 * time.Second
			p := NewPool(tc.pool)
			defer p.Close()
			c, err := p.Dial(ctxT(t), tc.tgt)
			if err == nil {
				c.Close()
				t.Fatal("Dial() succeeded, want refused")
			}
			if !errors.Is(err, ErrHandshake) {
				t.Errorf("Dial() = %v, want ErrHandshake (refused before any CONNECT)", err)
			}
			if called.Load() {
				t.Error("the handler ran")
			}
		})
	}
}

// TestPooling: tunnels of one key share a QUIC connection; another source
// identity gets its own.
func TestPooling(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: &echo{}})
	p := newPool(t, ms)
	var conns []*Conn
	for _, src := range []spiffeid.ID{clientID, clientID, otherID} {
		tg := target(addr, serverID)
		tg.SourceID = src
		c, err := p.Dial(ctxT(t), tg)
		if err != nil {
			t.Fatalf("Dial(%v) = %v", src, err)
		}
		conns = append(conns, c)
	}
	if diff := cmp.Diff(PoolStats{Conns: 2, Streams: 3}, p.Stats()); diff != "" {
		t.Errorf("Stats() (-want +got):\n%s", diff)
	}
	for _, c := range conns {
		c.Close()
	}
	if diff := cmp.Diff(PoolStats{Conns: 2, Streams: 0}, p.Stats()); diff != "" {
		t.Errorf("Stats() after Close (-want +got):\n%s", diff)
	}
}

// TestIdleTimeout: a connection without streams is closed after the idle
// timeout and the next Dial opens a new one.
func TestIdleTimeout(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: &echo{}})
	p := NewPool(PoolConfig{TLSConfig: ms.m.ClientTLSConfig, IdleTimeout: 50 * time.Millisecond})
	defer p.Close()
	c, err := p.Dial(ctxT(t), target(addr, serverID))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Conns != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Stats() = %+v 5 s after the last stream closed, want no connection", p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReset: a tunnel closed before its end half-closed is a stream reset
// with H3_CONNECT_ERROR, which the peer reads as an error, not EOF.
func TestReset(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	h := HandlerFunc(func(ctx context.Context, req *hbone.Request, t *Tunnel) {
		c, err := t.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1)) // the client read the 200 and "x"
		c.Close()                       // an upstream reset
	})
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: h})
	p := newPool(t, ms)
	c, err := p.Dial(ctxT(t), target(addr, serverID))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("y"))
	_, err = io.ReadAll(c)
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != ErrCodeConnect || !se.Remote {
		t.Errorf("ReadAll() = %v, want the peer's stream reset with H3_CONNECT_ERROR", err)
	}
}

// TestHandshakeTimeout: a UDP port that answers nothing fails the dial
// within the handshake timeout (the fallback to TCP depends on it).
func TestHandshakeTimeout(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	p := NewPool(PoolConfig{TLSConfig: ms.m.ClientTLSConfig, HandshakeTimeout: 300 * time.Millisecond})
	defer p.Close()
	start := time.Now()
	_, err = p.Dial(ctxT(t), target(silent.LocalAddr().(*net.UDPAddr).AddrPort(), serverID))
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("Dial() to a silent port = %v, want ErrHandshake", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Dial() failed after %v, want about the 300 ms handshake timeout", d)
	}
}

// TestShutdownDrains: Shutdown lets an open tunnel finish (it still
// carries data), and returns once it has.
func TestShutdownDrains(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	s := &Server{TLSConfig: ms.serverTLS(serverID), Handler: &echo{}}
	addr := serve(t, s)
	p := newPool(t, ms)
	c, err := p.Dial(ctxT(t), target(addr, serverID))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond) // Shutdown has begun
	select {
	case err := <-shut:
		t.Fatalf("Shutdown() = %v with a tunnel open, want it to wait", err)
	default:
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "still there"); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "still there" {
		t.Fatalf("tunnel during Shutdown: %q, %v; want the echo", b, err)
	}
	c.Close()
	p.Close() // the client goes away, as ztunnels do after GOAWAY
	if err := <-shut; err != nil {
		t.Errorf("Shutdown() = %v, want nil", err)
	}
}
