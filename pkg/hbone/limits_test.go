//go:build linux

package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// Each test of this file hits one limit of docs/security.md "Limits" with
// real mTLS and HTTP/2 on loopback, and checks the documented refusal and
// that OnLimit was told (ztunnel's ztunnel_limit_hits_total).

// limitCounts records OnLimit calls.
type limitCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *limitCounts) hit(limit string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	l.n[limit]++
}

func (l *limitCounts) get() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for k, v := range l.n {
		out[k] = v
	}
	return out
}

// check fails t unless the counts are want.
func (l *limitCounts) check(t *testing.T, want map[string]int) {
	t.Helper()
	if diff := cmp.Diff(want, l.get()); diff != "" {
		t.Errorf("OnLimit calls mismatch (-want +got):\n%s", diff)
	}
}

// limitServer starts srv (TLSConfig and Handler filled in if empty) and
// returns a confEnv for raw clients.
func limitServer(t *testing.T, srv *Server) *confEnv {
	t.Helper()
	ca := identitytest.New(t, "cluster.local")
	if srv.TLSConfig == nil {
		srv.TLSConfig = ca.ServerTLS(t, ca.ID("/ns/b/sa/server"))
	}
	if srv.Handler == nil {
		srv.Handler = holdHandler()
	}
	e := &confEnv{ca: ca, srv: srv}
	e.addr = confServe(t, srv)
	return e
}

func (e *confEnv) pool(t *testing.T, opts ...func(*PoolConfig)) *Pool {
	cfg := PoolConfig{TLSConfig: e.ca.PoolTLS(t, nil)}
	for _, o := range opts {
		o(&cfg)
	}
	p := NewPool(cfg)
	t.Cleanup(func() { p.Close() })
	return p
}

func (e *confEnv) target() Target {
	return Target{Addr: e.addr, Authority: "10.0.0.1:80", SourceID: e.ca.ID("/ns/a/sa/client")}
}

func TestLimitServerStreams(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{MaxConcurrentStreams: 2, OnLimit: hits.hit})
	p := e.dialRaw(t)
	p.connect(1, false)
	if got := p.status(1); got != "200" {
		t.Fatalf("stream 1 :status = %q, want 200", got)
	}
	p.connect(3, false)
	if got := p.status(3); got != "200" {
		t.Fatalf("stream 3 :status = %q, want 200", got)
	}
	p.connect(5, false)
	p.collect(wantStreamErr(5, http2.ErrCodeRefusedStream)).streamErr(t, 5, http2.ErrCodeRefusedStream)
	hits.check(t, map[string]int{LimitServerStreams: 1})
}

func TestLimitPoolStreams(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{})
	pool := e.pool(t, func(c *PoolConfig) { c.MaxStreamsPerConn = 2; c.OnLimit = hits.hit })
	for range 3 {
		c, err := pool.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if diff := cmp.Diff(PoolStats{Conns: 2, Streams: 3}, pool.Stats()); diff != "" {
		t.Errorf("Stats() mismatch (-want +got):\n%s", diff)
	}
	hits.check(t, map[string]int{LimitPoolStreams: 1})
}

func TestLimitHeaderListServer(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{MaxHeaderListSize: 1024, OnLimit: hits.hit})
	p := e.dialRaw(t)
	// Fields of 400 bytes each, 1.6 KiB in all: the stream is answered
	// 431 (RFC 9113 §10.5.1).
	big := strings.Repeat("a", 400)
	p.connect(1, false, "x-a", big, "x-b", big, "x-c", big, "x-d", big)
	if got := p.status(1); got != "431" {
		t.Errorf("CONNECT with a 1.6 KiB header list: :status = %q, want 431", got)
	}
	// Only the stream ended: the connection still serves.
	p.connect(3, false, "baggage", "k=v")
	if got := p.status(3); got != "200" {
		t.Errorf("next CONNECT :status = %q, want 200", got)
	}
	hits.check(t, map[string]int{LimitHeaderList: 1})

	// One field larger than the whole limit cannot even be decoded (x/net's
	// hpack decoder refuses the string): a connection error.
	p = e.dialRaw(t)
	p.connect(1, false, "x-a", strings.Repeat("a", 2048))
	p.collect(wantConnErr(http2.ErrCodeCompression)).connErr(t, http2.ErrCodeCompression)
}

func TestLimitHeaderListClient(t *testing.T) {
	var hits limitCounts
	f := newFakeH2(t, []http2.Setting{}, func(_ int, p *rawH2) error {
		id, err := p.awaitConnect()
		if err != nil {
			return err
		}
		p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
			BlockFragment: p.block(":status", "200", "x-a", strings.Repeat("a", 400), "x-b", strings.Repeat("b", 400), "x-c", strings.Repeat("c", 400))})
		if err := p.bw.Flush(); err != nil {
			return err
		}
		o := p.awaitEnd(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
		if got, want := o.rst[id], http2.ErrCodeCancel; got != want {
			return errors.New("client did not reset the stream with CANCEL: " + o.String())
		}
		return nil
	})
	pool := f.pool(t, func(c *PoolConfig) { c.MaxHeaderListSize = 1024; c.OnLimit = hits.hit })
	c, err := pool.Dial(ctxT(t), f.target())
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, ErrHeaderListTooLarge) {
		t.Errorf("Dial() error = %v, want ErrHeaderListTooLarge", err)
	}
	if err := f.result(t); err != nil {
		t.Error(err)
	}
	hits.check(t, map[string]int{LimitHeaderList: 1})
}

// silentListener accepts TCP connections and never writes; it returns
// its address.
func silentListener(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// closedWithin dials addr, writes nothing and waits up to 10 s for the
// server to close the connection; it returns how long that took.
func closedWithin(t *testing.T, addr netip.AddrPort) time.Duration {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server did not close the connection within 10 s")
	}
	return time.Since(start)
}

func TestLimitHandshakeTimeoutServer(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{HandshakeTimeout: 100 * time.Millisecond, OnLimit: hits.hit})
	closedWithin(t, e.addr)
	waitFor(t, "OnLimit", func() bool { return hits.get()[LimitHandshakeTimeout] == 1 })
	hits.check(t, map[string]int{LimitHandshakeTimeout: 1})
}

func TestLimitHandshakeTimeoutClient(t *testing.T) {
	var hits limitCounts
	addr := silentListener(t)
	ca := identitytest.New(t, "cluster.local")
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(t, nil), HandshakeTimeout: 100 * time.Millisecond, OnLimit: hits.hit})
	defer pool.Close()
	_, err := pool.Dial(ctxT(t), Target{Addr: addr, Authority: "10.0.0.1:80", SourceID: ca.ID("/ns/a/sa/client")})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial() to a silent server error = %v, want context.DeadlineExceeded", err)
	}
	hits.check(t, map[string]int{LimitHandshakeTimeout: 1})
}

func TestLimitPendingHandshakes(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{MaxPendingHandshakes: 1, OnLimit: hits.hit})
	first, err := net.Dial("tcp", e.addr.String()) // silent: stays in its handshake
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// The first may not be accepted yet when the second arrives: retry a
	// few times until one is refused.
	for i := 0; i < 50 && hits.get()[LimitPendingHandshakes] == 0; i++ {
		if d := closedWithin(t, e.addr); d > 5*time.Second {
			t.Fatalf("a connection past MaxPendingHandshakes was closed after %v, want at once", d)
		}
	}
	hits.check(t, map[string]int{LimitPendingHandshakes: 1})
}

func TestLimitResponseTimeout(t *testing.T) {
	var hits limitCounts
	answer := make(chan struct{})
	e := limitServer(t, &Server{Handler: HandlerFunc(func(ctx context.Context, _ *Request, tun *Tunnel) {
		select { // no answer until the client gave up
		case <-ctx.Done():
		case <-answer:
		}
	})})
	defer close(answer)
	pool := e.pool(t, func(c *PoolConfig) { c.ResponseTimeout = 100 * time.Millisecond; c.OnLimit = hits.hit })
	_, err := pool.Dial(ctxT(t), e.target())
	if !errors.Is(err, ErrResponseTimeout) {
		t.Errorf("Dial() error = %v, want ErrResponseTimeout", err)
	}
	hits.check(t, map[string]int{LimitResponseTimeout: 1})
}

// fullBacklog returns the address of a listener whose accept queue is
// full: the kernel drops the SYNs of further connections, which then
// never connect.
func fullBacklog(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4(sa.(*unix.SockaddrInet4).Addr), uint16(sa.(*unix.SockaddrInet4).Port))
	for range 16 {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			return addr // this one was dropped: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the accept queue of a listener with backlog 0 did not fill in 16 connections")
	return addr
}

func TestLimitConnectTimeout(t *testing.T) {
	var hits limitCounts
	addr := fullBacklog(t)
	ca := identitytest.New(t, "cluster.local")
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(t, nil), DialTimeout: 100 * time.Millisecond, OnLimit: hits.hit})
	defer pool.Close()
	_, err := pool.Dial(ctxT(t), Target{Addr: addr, Authority: "10.0.0.1:80", SourceID: ca.ID("/ns/a/sa/client")})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Dial() to a full accept queue error = %v, want a timeout", err)
	}
	hits.check(t, map[string]int{LimitConnectTimeout: 1})
}

func getsockopt(t *testing.T, c net.Conn, opt int) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, opt) })
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestSocketOptions: the pool's sockets get keepalive
// 180 s / 180 s / 9 by default, as Istio's ztunnel, and TCP_USER_TIMEOUT
// when set.
func TestSocketOptions(t *testing.T) {
	type opts struct{ Idle, Interval, Count, UserTimeoutMS int }
	tests := []struct {
		name string
		in   SocketOptions
		want opts
	}{
		{"default", SocketOptions{}, opts{180, 180, 9, 0}},
		{"set", SocketOptions{KeepAliveIdle: time.Minute, KeepAliveInterval: 10 * time.Second, KeepAliveCount: 3, UserTimeout: 90 * time.Second}, opts{60, 10, 3, 90000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := limitServer(t, &Server{SocketOptions: tt.in, Handler: HandlerFunc(func(_ context.Context, req *Request, tun *Tunnel) { tun.Reject(http.StatusUnauthorized, "") })})
			var dialed net.Conn
			pool := e.pool(t, func(c *PoolConfig) {
				c.SocketOptions = tt.in
				c.Dialer = func(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
					var d net.Dialer
					c, err := d.DialContext(ctx, network, raddr)
					dialed = c
					return c, err
				}
			})
			pool.Dial(ctxT(t), e.target())
			if dialed == nil {
				t.Fatal("the pool dialed nothing")
			}
			got := opts{getsockopt(t, dialed, unix.TCP_KEEPIDLE), getsockopt(t, dialed, unix.TCP_KEEPINTVL), getsockopt(t, dialed, unix.TCP_KEEPCNT), getsockopt(t, dialed, unix.TCP_USER_TIMEOUT)}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("dialed socket options mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUserTimeout: with TCP_USER_TIMEOUT, a connection whose peer stops
// reading (its window stays closed) ends with ETIMEDOUT.
func TestUserTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := l.Accept() // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.(*net.TCPConn).SetReadBuffer(4096)
	c.(*net.TCPConn).SetWriteBuffer(4096)
	if err := (SocketOptions{UserTimeout: 300 * time.Millisecond}).Apply(c); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err = io.Copy(c, zeros{})
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("writing to a peer that does not read = %v, want ETIMEDOUT", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
