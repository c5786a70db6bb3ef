package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testEnv is an HBONE server on loopback and a pool dialing it.
type testEnv struct {
	ca       *identitytest.CA
	srv      *Server
	addr     netip.AddrPort
	serverID spiffeid.ID
	clientID spiffeid.ID
	pool     *Pool
}

func newTestEnv(t *testing.T, h Handler, poolOpts ...func(*PoolConfig)) *testEnv {
	t.Helper()
	e := &testEnv{ca: identitytest.New(t, "cluster.local")}
	e.serverID = e.ca.ID("/ns/b/sa/server")
	e.clientID = e.ca.ID("/ns/a/sa/client")
	e.srv = &Server{TLSConfig: e.ca.ServerTLS(t, e.serverID), Handler: h}
	e.addr = e.serve(t, e.srv)
	cfg := PoolConfig{TLSConfig: e.ca.PoolTLS(t, nil)}
	for _, o := range poolOpts {
		o(&cfg)
	}
	e.pool = NewPool(cfg)
	t.Cleanup(func() { e.pool.Close() })
	return e
}

// serve runs srv on a new loopback listener until the test ends.
func (e *testEnv) serve(t *testing.T, srv *Server) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return e.serveOn(t, srv, l)
}

// serveOn runs srv on l until the test ends.
func (e *testEnv) serveOn(t *testing.T, srv *Server, l net.Listener) netip.AddrPort {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func (e *testEnv) target(authority string) Target {
	return Target{Addr: e.addr, Authority: authority, SourceID: e.clientID, DestIDs: []spiffeid.ID{e.serverID}}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// relayHandler dials the authority and relays; 503 if the dial fails.
func relayHandler() Handler {
	return HandlerFunc(func(ctx context.Context, req *Request, t *Tunnel) {
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", req.Authority.String())
		if err != nil {
			t.Reject(http.StatusServiceUnavailable, err.Error())
			return
		}
		c, err := t.Accept()
		if err != nil {
			up.Close()
			return
		}
		Relay(c, up)
	})
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	return ap
}

func TestEchoThroughTunnel(t *testing.T) {
	echo := tcpEcho(t)
	reqs := make(chan *Request, 1)
	inner := relayHandler()
	e := newTestEnv(t, HandlerFunc(func(ctx context.Context, req *Request, tun *Tunnel) {
		reqs <- req
		inner.ServeHBONE(ctx, req, tun)
	}))
	tgt := e.target(echo.String())
	tgt.Header = http.Header{"Forwarded": {`for="127.0.0.9:4242"`}, "Baggage": {"k8s.namespace.name=a"}}
	c, err := e.pool.Dial(ctxT(t), tgt)
	if err != nil {
		t.Fatalf("Dial() error = %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello hbone")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll() error = %v", err)
	}
	if string(got) != "hello hbone" {
		t.Errorf("echo = %q, want %q", got, "hello hbone")
	}

	req := <-reqs
	ff, ok := req.ForwardedFor()
	type reqView struct {
		Authority, PeerID, LocalAddr, ForwardedFor, Baggage string
		ForwardedOK                                         bool
	}
	gotReq := reqView{req.Authority.String(), req.PeerID.String(), req.LocalAddr.String(), ff.String(), req.Header.Get("Baggage"), ok}
	wantReq := reqView{echo.String(), e.clientID.String(), e.addr.String(), "127.0.0.9:4242", "k8s.namespace.name=a", true}
	if diff := cmp.Diff(wantReq, gotReq); diff != "" {
		t.Errorf("Request mismatch (-want +got):\n%s", diff)
	}
	if got, want := c.RemoteAddr().String(), e.addr.String(); got != want {
		t.Errorf("RemoteAddr() = %v, want %v", got, want)
	}
}

func TestStatus(t *testing.T) {
	closed := closedPort(t)
	tests := []struct {
		name      string
		handler   Handler
		authority string
		want      int
		reason    string
	}{
		{"dial fails: 503", relayHandler(), closed.String(), 503, "connection refused"},
		{"policy deny: 401", HandlerFunc(func(_ context.Context, _ *Request, t *Tunnel) { t.Reject(401, "denied\r\nby policy") }), "10.0.0.1:80", 401, "denied  by policy"},
		{"no answer: 503", HandlerFunc(func(context.Context, *Request, *Tunnel) {}), "10.0.0.1:80", 503, "no response from handler"},
		{"handler panic: 500", HandlerFunc(func(context.Context, *Request, *Tunnel) { panic("boom") }), "10.0.0.1:80", 500, "handler panic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, tt.handler)
			c, err := e.pool.Dial(ctxT(t), e.target(tt.authority))
			if err == nil {
				c.Close()
				t.Fatalf("Dial() succeeded, want status %d", tt.want)
			}
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Dial() error = %v, want *StatusError", err)
			}
			if se.Code != tt.want || !strings.Contains(se.Reason, tt.reason) {
				t.Errorf("Dial() = %d %q, want %d containing %q", se.Code, se.Reason, tt.want, tt.reason)
			}
			// The connection stays usable.
			if got := e.pool.Stats(); got.Streams != 0 {
				t.Errorf("Stats().Streams = %d, want 0", got.Streams)
			}
		})
	}
}

func TestOKOnlyAfterAccept(t *testing.T) {
	release := make(chan struct{})
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		<-release
		c, err := tun.Accept()
		if err == nil {
			c.Write([]byte("hi"))
		}
	}))
	done := make(chan error, 1)
	var conn *Conn
	go func() {
		var err error
		conn, err = e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Dial() returned (%v) before the handler accepted", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Dial() error = %v", err)
	}
	defer conn.Close()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hi" {
		t.Errorf("ReadAll() = %q, %v; want %q, nil", got, err, "hi")
	}
}

// rawClient is a plain x/net/http2 client with a valid client certificate.
func (e *testEnv) rawClient(t *testing.T) *http2.ClientConn {
	t.Helper()
	cfg, _ := e.ca.PoolTLS(t, nil)(context.Background(), e.clientID, nil)
	tc, err := tls.Dial("tcp", e.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestBadRequests(t *testing.T) {
	e := newTestEnv(t, relayHandler())
	cc := e.rawClient(t)
	tests := []struct {
		name   string
		method string
		url    string
		host   string
	}{
		{"GET", http.MethodGet, "https://10.0.0.1:80/", "10.0.0.1:80"},
		{"POST", http.MethodPost, "https://10.0.0.1:80/x", "10.0.0.1:80"},
		{"CONNECT to a host name", http.MethodConnect, "", "example.com:80"},
		{"CONNECT without port", http.MethodConnect, "", "10.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &http.Request{Method: tt.method, Host: tt.host, Header: http.Header{}, URL: &url.URL{Host: tt.host}}
			if tt.url != "" {
				req.URL, _ = url.Parse(tt.url)
			}
			resp, err := cc.RoundTrip(req.WithContext(ctxT(t)))
			if err != nil {
				t.Fatalf("RoundTrip() error = %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", resp.StatusCode)
			}
		})
	}
}

// echoOnce dials a tunnel through e to echo and checks one round trip.
func echoOnce(t *testing.T, e *testEnv, echo netip.AddrPort) {
	t.Helper()
	c, err := e.pool.Dial(ctxT(t), e.target(echo.String()))
	if err != nil {
		t.Fatalf("Dial() error = %v", err)
	}
	defer c.Close()
	io.WriteString(c, "ping")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v; want %q", got, err, "ping")
	}
}

func TestPlaintextRefused(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler())
	// An open tunnel before the bad client.
	live, err := e.pool.Dial(ctxT(t), e.target(echo.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	tests := []struct{ name, data string }{
		{"http/1.1", "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n"},
		{"h2c preface", http2.ClientPreface},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tt.data)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("server kept the plaintext connection open")
			}
			if bytes.Contains(got, []byte("HTTP/")) {
				t.Errorf("server answered plaintext: %q", got)
			}
		})
	}
	// The open tunnel still works, and new ones too.
	io.WriteString(live, "still alive")
	live.CloseWrite()
	if got, err := io.ReadAll(live); err != nil || string(got) != "still alive" {
		t.Errorf("live tunnel echo = %q, %v", got, err)
	}
	echoOnce(t, e, echo)
}

func TestIdentityChecks(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler())
	t.Run("client cert from another CA", func(t *testing.T) {
		other := identitytest.New(t, "cluster.local")
		p := NewPool(PoolConfig{TLSConfig: other.PoolTLS(t, e.ca.Bundle)})
		defer p.Close()
		c, err := p.Dial(ctxT(t), e.target(echo.String()))
		if err == nil {
			c.Close()
			t.Fatal("Dial() with a foreign client certificate succeeded")
		}
		var se *StatusError
		if errors.As(err, &se) {
			t.Fatalf("Dial() error = %v, want a TLS failure", err)
		}
	})
	t.Run("server not in DestIDs", func(t *testing.T) {
		tgt := e.target(echo.String())
		tgt.DestIDs = []spiffeid.ID{e.ca.ID("/ns/b/sa/someone-else")}
		c, err := e.pool.Dial(ctxT(t), tgt)
		if err == nil {
			c.Close()
			t.Fatal("Dial() to an unexpected server identity succeeded")
		}
	})
	t.Run("server not in DestIDs, permissive TLS config", func(t *testing.T) {
		// The pool checks the SAN even if the TLS config would not.
		p := NewPool(PoolConfig{TLSConfig: func(ctx context.Context, src spiffeid.ID, _ []spiffeid.ID) (*tls.Config, error) {
			return e.ca.PoolTLS(t, nil)(ctx, src, nil)
		}})
		defer p.Close()
		tgt := e.target(echo.String())
		tgt.DestIDs = []spiffeid.ID{e.ca.ID("/ns/b/sa/someone-else")}
		c, err := p.Dial(ctxT(t), tgt)
		if err == nil {
			c.Close()
			t.Fatal("Dial() to an unexpected server identity succeeded")
		}
	})
	echoOnce(t, e, echo)
}

func TestHalfClose(t *testing.T) {
	type step func(t *testing.T, client, server *Conn)
	expectRead := func(t *testing.T, c *Conn, want string) {
		t.Helper()
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
			t.Fatalf("read = %q, %v; want %q", buf, err, want)
		}
	}
	expectEOF := func(t *testing.T, c *Conn) {
		t.Helper()
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read() = %d, %v; want 0, EOF", n, err)
		}
	}
	tests := []struct {
		name string
		run  step
	}{
		{"client closes write first", func(t *testing.T, client, server *Conn) {
			io.WriteString(client, "request")
			client.CloseWrite()
			expectRead(t, server, "request")
			expectEOF(t, server)
			io.WriteString(server, "response after EOF")
			server.CloseWrite()
			expectRead(t, client, "response after EOF")
			expectEOF(t, client)
		}},
		{"server closes write first", func(t *testing.T, client, server *Conn) {
			io.WriteString(server, "banner")
			server.CloseWrite()
			expectRead(t, client, "banner")
			expectEOF(t, client)
			io.WriteString(client, "client still writes")
			client.CloseWrite()
			expectRead(t, server, "client still writes")
			expectEOF(t, server)
		}},
		{"server closes after its response, client has not", func(t *testing.T, client, server *Conn) {
			// An HTTP server answering "Connection: close": the response,
			// then Close while the client's side is open. As a TCP close:
			// the client reads the response and EOF, and half-closing
			// afterwards is not an error (nothing is lost); only writing
			// more data fails.
			io.WriteString(client, "request")
			expectRead(t, server, "request")
			io.WriteString(server, "response")
			server.Close()
			expectRead(t, client, "response")
			expectEOF(t, client)
			waitFor(t, "the server's reset", func() bool {
				_, err := io.WriteString(client, "more")
				return err != nil
			})
			if err := client.CloseWrite(); err != nil {
				t.Errorf("client CloseWrite after the server's clean close = %v, want nil", err)
			}
		}},
		{"client closes after the whole response, server has not", func(t *testing.T, client, server *Conn) {
			// An HTTP client that read a complete response (known length)
			// and closes before the server's END_STREAM: the server's
			// pending half-close loses nothing and is not an error; only
			// writing more data fails.
			io.WriteString(client, "request")
			client.CloseWrite()
			expectRead(t, server, "request")
			expectEOF(t, server)
			io.WriteString(server, "response")
			expectRead(t, client, "response")
			client.Close()
			waitFor(t, "the client's reset", func() bool {
				_, err := io.WriteString(server, "more")
				return err != nil
			})
			if err := server.CloseWrite(); err != nil {
				t.Errorf("server CloseWrite after the client's close = %v, want nil", err)
			}
		}},
		{"write after CloseWrite fails", func(t *testing.T, client, server *Conn) {
			client.CloseWrite()
			if _, err := io.WriteString(client, "x"); err == nil {
				t.Errorf("client Write after CloseWrite succeeded")
			}
			server.CloseWrite()
			if _, err := io.WriteString(server, "x"); err == nil {
				t.Errorf("server Write after CloseWrite succeeded")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conns := make(chan *Conn)
			finished := make(chan struct{})
			e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
				c, err := tun.Accept()
				if err != nil {
					return
				}
				conns <- c
				<-finished
			}))
			defer close(finished)
			client, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			tt.run(t, client, <-conns)
		})
	}
}

func TestServerDeadline(t *testing.T) {
	errc := make(chan error, 1)
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			errc <- err
			return
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err = c.Read(make([]byte, 10))
		errc <- err
	}))
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read() after deadline = %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestStreamsPerConnection(t *testing.T) {
	e := newTestEnv(t, HandlerFunc(func(ctx context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, c) // until the client closes
	}))
	const n = 101
	conns := make([]*Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = e.pool.Dial(ctxT(t), e.target("10.0.0.1:80")) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Dial() #%d error = %v", i, err)
		}
	}
	if diff := cmp.Diff(PoolStats{Conns: 2, Streams: n}, e.pool.Stats()); diff != "" {
		t.Errorf("Stats() mismatch (-want +got):\n%s", diff)
	}
	for _, c := range conns {
		c.Close()
	}
	if diff := cmp.Diff(PoolStats{Conns: 2, Streams: 0}, e.pool.Stats()); diff != "" {
		t.Errorf("Stats() after Close mismatch (-want +got):\n%s", diff)
	}
	// Past the first connection's streams, Dial reuses a pooled connection.
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := e.pool.Stats().Conns; got != 2 {
		t.Errorf("Stats().Conns = %d, want 2", got)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestIdleConnectionsReleased(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler(), func(c *PoolConfig) { c.IdleTimeout = 100 * time.Millisecond })
	echoOnce(t, e, echo)
	waitFor(t, "the idle connection to be closed", func() bool { return e.pool.Stats().Conns == 0 })
	echoOnce(t, e, echo)
}

// freezer is a TCP proxy that can stop forwarding (a black-holed server).
type freezer struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target netip.AddrPort) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target.String(), thaw: make(chan struct{})}
	close(f.thaw)
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		l.Close()
		f.setFrozen(false)
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) addr() netip.AddrPort { return f.l.Addr().(*net.TCPAddr).AddrPort() }

func (f *freezer) setFrozen(frozen bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if frozen == f.frozen {
		return
	}
	f.frozen = frozen
	if frozen {
		f.thaw = make(chan struct{})
	} else {
		close(f.thaw)
	}
}

func (f *freezer) gate() {
	f.mu.Lock()
	thaw := f.thaw
	f.mu.Unlock()
	<-thaw
}

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, up)
		f.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer f.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				f.gate()
				if n > 0 {
					if _, werr := dst.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			dst.Close()
			src.Close()
		}
		f.wg.Add(2)
		go pipe(up, c)
		go pipe(c, up)
	}
}

func TestDeadServerDetectedByPing(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler(), func(c *PoolConfig) {
		c.PingInterval = 50 * time.Millisecond
		c.PingTimeout = 200 * time.Millisecond
	})
	f := newFreezer(t, e.addr)
	e.addr = f.addr()
	echoOnce(t, e, echo)
	if got := e.pool.Stats().Conns; got != 1 {
		t.Fatalf("Stats().Conns = %d, want 1", got)
	}
	f.setFrozen(true)
	waitFor(t, "the dead connection to be dropped", func() bool { return e.pool.Stats().Conns == 0 })
	f.setFrozen(false)
	echoOnce(t, e, echo)
}

// seeded returns n deterministic pseudo-random bytes as a reader.
func seeded(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n)
}

func TestLargeTransferBothWays(t *testing.T) {
	const size = 64 << 20
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler())
	c, err := e.pool.Dial(ctxT(t), e.target(echo.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.TeeReader(seeded(1, size), sent))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Errorf("echoed %d bytes with sha256 %x, want %d bytes with %x", n, got.Sum(nil), size, sent.Sum(nil))
	}
}

func TestShutdownDrains(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler())
	c, err := e.pool.Dial(ctxT(t), e.target(echo.String()))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctxT(t)) }()
	// The open tunnel keeps working while the server drains.
	io.WriteString(c, "draining")
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "draining" {
		t.Errorf("echo during shutdown = %q, %v", got, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown() = %v, want nil", err)
	}
	if _, err := e.pool.Dial(ctxT(t), e.target(echo.String())); err == nil {
		t.Errorf("Dial() after Shutdown succeeded")
	}
}

func TestShutdownTimeoutClosesTunnels(t *testing.T) {
	echo := tcpEcho(t)
	e := newTestEnv(t, relayHandler())
	c, err := e.pool.Dial(ctxT(t), e.target(echo.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown() = %v, want DeadlineExceeded", err)
	}
	if _, err := io.ReadAll(c); err == nil {
		t.Errorf("tunnel read ended cleanly, want an error after forced close")
	}
}

func TestForwardedFor(t *testing.T) {
	tests := []struct {
		name   string
		header []string
		want   string
		wantOK bool
	}{
		{"quoted", []string{`for="10.1.2.3:8080"`}, "10.1.2.3:8080", true},
		{"unquoted", []string{`for=10.1.2.3:8080`}, "10.1.2.3:8080", true},
		{"ipv6 bracketed", []string{`for="[2001:db8::1]:443"`}, "[2001:db8::1]:443", true},
		{"with host", []string{`for="10.1.2.3:80";host=svc.ns.svc.cluster.local`}, "10.1.2.3:80", true},
		{"host first, case", []string{`host=a.b;For="10.1.2.3:80"`}, "10.1.2.3:80", true},
		{"first hop wins", []string{`for="10.0.0.1:1", for="10.0.0.2:2"`}, "10.0.0.1:1", true},
		{"spaces", []string{` for = "10.1.2.3:80" `}, "10.1.2.3:80", true},
		{"ipv4-mapped", []string{`for="[::ffff:10.1.2.3]:80"`}, "10.1.2.3:80", true},
		{"absent", nil, "invalid AddrPort", false},
		{"no port", []string{`for="10.1.2.3"`}, "invalid AddrPort", false},
		{"obfuscated", []string{`for=_hidden`}, "invalid AddrPort", false},
		{"unknown", []string{`for=unknown`}, "invalid AddrPort", false},
		{"no for", []string{`host=a;proto=https`}, "invalid AddrPort", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Request{Header: http.Header{}}
			for _, v := range tt.header {
				r.Header.Add("Forwarded", v)
			}
			got, ok := r.ForwardedFor()
			if got.String() != tt.want || ok != tt.wantOK {
				t.Errorf("ForwardedFor(%q) = %v, %v; want %v, %v", tt.header, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// tcpPair returns two connected TCP conns.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func TestRelayHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	type result struct {
		aToB, bToA int64
		err        error
	}
	done := make(chan result, 1)
	go func() {
		x, y, err := Relay(a, b)
		done <- result{x, y, err}
	}()
	io.WriteString(client, "request")
	client.CloseWrite()
	got, err := io.ReadAll(server) // EOF arrives: Relay half-closed b
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	io.WriteString(server, "late response")
	server.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "late response" {
		t.Fatalf("client read %q, %v", got, err)
	}
	r := <-done
	if r != (result{7, 13, nil}) {
		t.Errorf("Relay() = %d, %d, %v; want 7, 13, nil", r.aToB, r.bToA, r.err)
	}
}

func TestRelayErrorClosesBoth(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Relay(a, b)
		done <- err
	}()
	io.WriteString(client, "x")
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatalf("server read: %v", err)
	}
	server.SetLinger(0)
	server.Close() // RST towards b

	// Relay must close the client's side: the client reads EOF (or a
	// reset), not its deadline.
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, client); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client side still open 10s after the upstream was reset: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("Relay() error = %v, want the upstream's reset (ECONNRESET)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Relay did not return after the upstream was reset")
	}
}

func TestClientSettings(t *testing.T) {
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		if c, err := tun.Accept(); err == nil {
			io.Copy(io.Discard, c)
		}
	}))
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	type settings struct{ StreamWindow, ConnWindow, MaxFrame int64 }
	var got settings
	e.srv.mu.Lock()
	for _, sc := range e.srv.conns {
		sc.mu.Lock()
		got = settings{sc.peerInitWindow, sc.out.n, sc.peerMaxFrame}
		sc.mu.Unlock()
	}
	e.srv.mu.Unlock()
	// x/net/http2 grants its connection buffer on top of the initial 65535.
	want := settings{StreamWindow: 4 << 20, ConnWindow: 16<<20 + 65535, MaxFrame: 1 << 20}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("client's HTTP/2 settings as the server sees them (-want +got):\n%s", diff)
	}
}

// TestReceiveBufferTrimmed: once drained, a stream's receive buffer does
// not keep the capacity a burst grew it to.
func TestReceiveBufferTrimmed(t *testing.T) {
	got := make(chan int, 1)
	e := newTestEnv(t, HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
		c, err := tun.Accept()
		if err != nil {
			return
		}
		st := c.s
		// Let the whole burst arrive before reading it.
		waitFor(t, "the burst to arrive", func() bool {
			st.c.mu.Lock()
			defer st.c.mu.Unlock()
			return st.buf.Len() == 1<<20
		})
		io.CopyN(io.Discard, c, 1<<20)
		st.c.mu.Lock()
		got <- st.buf.Cap()
		st.c.mu.Unlock()
		c.Write([]byte("done"))
	}))
	c, err := e.pool.Dial(ctxT(t), e.target("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if capacity := <-got; capacity > maxDrainedBuf {
		t.Errorf("drained receive buffer capacity = %d, want <= %d", capacity, maxDrainedBuf)
	}
}
