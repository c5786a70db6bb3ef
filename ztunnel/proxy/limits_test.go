package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// Each test of this file hits one of the proxy's limits (docs/security.md
// "Limits") with real connections on loopback and checks the documented
// refusal, the access log record and ztunnel_limit_hits_total.

// checkHits fails t unless limit was hit want times.
func checkHits(t *testing.T, hits *LimitHits, limit string, want float64) {
	t.Helper()
	if got := testutil.ToFloat64(hits.Counter(limit)); got != want {
		t.Errorf("%s{limit=%q} = %v, want %v", LimitHitsName, limit, got, want)
	}
}

// outboundFixture is a proxy with one local workload (client) and,
// outside the mesh, an application that accepts connections.
type outboundFixture struct {
	Client netip.Addr
	App    netip.AddrPort
	Proxy  *Proxy
	Hits   *LimitHits
	Recs   <-chan accesslog.Record
	Store  *state.Store
	wg     sync.WaitGroup
}

// newOutboundFixture starts the proxy with cfg; serveApp handles each
// connection to the application.
func newOutboundFixture(t *testing.T, cfg Config, serveApp func(net.Conn)) *outboundFixture {
	t.Helper()
	base := testAddrBase(t)
	f := &outboundFixture{Client: netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1}), Store: state.NewStore()}
	addWorkload(t, f.Store, "client", "demo", "client", f.Client)
	l, err := net.Listen("tcp", netip.AddrPortFrom(netip.AddrFrom4([4]byte{base[0], base[1], base[2], 50}), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	f.App = l.Addr().(*net.TCPAddr).AddrPort()
	var appWG sync.WaitGroup
	var appMu sync.Mutex
	var appConns []net.Conn
	appWG.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			appMu.Lock()
			appConns = append(appConns, c)
			appMu.Unlock()
			appWG.Go(func() { serveApp(c) })
		}
	})
	ca := identitytest.New(t, "cluster.local")
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	access := accesslog.New(slog.New(slog.DiscardHandler))
	recs, unsub := access.Subscribe(10)
	f.Recs = recs
	f.Hits = NewLimitHits(prometheus.NewRegistry())
	cfg.Store, cfg.Pool, cfg.AccessLog, cfg.Limits = f.Store, pool, access, f.Hits
	cfg.Metrics = telemetry.NewMetrics(prometheus.NewRegistry())
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.Proxy = p
	t.Cleanup(func() {
		p.Close()
		f.wg.Wait()
		l.Close()
		appMu.Lock()
		for _, c := range appConns {
			c.Close()
		}
		appMu.Unlock()
		appWG.Wait()
		pool.Close()
		unsub()
	})
	return f
}

// open connects as the client workload to the application through
// Outbound; it returns the client's end and a channel that receives
// Outbound's ready error (nothing if Outbound refused before dialing).
func (f *outboundFixture) open(t *testing.T) (net.Conn, <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Client, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Client.AsSlice()}, Timeout: 5 * time.Second}
	client, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w := f.Store.WorkloadByAddr(f.Client)
	ready := make(chan error, 1)
	f.wg.Go(func() {
		defer server.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.Proxy.Outbound(ctx, server, w, f.App, "", func(err error) error { ready <- err; return nil })
	})
	return client, ready
}

func nextRec(t *testing.T, recs <-chan accesslog.Record) accesslog.Record {
	t.Helper()
	select {
	case r := <-recs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no access log record within 10 s")
		return accesslog.Record{}
	}
}

func waitReady(t *testing.T, ready <-chan error) {
	t.Helper()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("Outbound ready(%v), want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Outbound never connected")
	}
}

func TestLimitConnsPerPod(t *testing.T) {
	f := newOutboundFixture(t, Config{MaxConnsPerPod: 1}, func(c net.Conn) { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() })
	first, ready := f.open(t)
	waitReady(t, ready)

	// The second connection of the pod is reset, never dialed.
	second, ready := f.open(t)
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read on a connection past MaxConnsPerPod = %v, want ECONNRESET", err)
	}
	select {
	case err := <-ready:
		t.Errorf("Outbound past MaxConnsPerPod dialed (ready(%v))", err)
	default:
	}
	rec := nextRec(t, f.Recs)
	if rec.ResponseFlags != FlagLimit || !errors.Is(rec.Err, ErrConnsPerPod) {
		t.Errorf("record of the refused connection: response_flags %q, error %v; want %q, %v", rec.ResponseFlags, rec.Err, FlagLimit, ErrConnsPerPod)
	}
	checkHits(t, f.Hits, LimitConnsPerPod, 1)

	// Once the first ends, the pod may connect again.
	first.Close()
	nextRec(t, f.Recs)
	for i := 0; ; i++ { // the record is written just before the count drops
		f.Proxy.limitMu.Lock()
		n := len(f.Proxy.podConns)
		f.Proxy.limitMu.Unlock()
		if n == 0 {
			break
		}
		if i == 1000 {
			t.Fatal("the first connection still counted 10 s after it ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	third, ready := f.open(t)
	waitReady(t, ready)
	third.Close()
	checkHits(t, f.Hits, LimitConnsPerPod, 1)
}

// TestLimitTCPUserTimeout: an application that stops reading is given
// up on after TCP_USER_TIMEOUT (ETIMEDOUT), and the hit is counted.
func TestLimitTCPUserTimeout(t *testing.T) {
	f := newOutboundFixture(t, Config{SocketOptions: hbone.SocketOptions{UserTimeout: 300 * time.Millisecond}}, func(c net.Conn) {
		c.(*net.TCPConn).SetReadBuffer(4096) // and never reads
	})
	client, ready := f.open(t)
	waitReady(t, ready)
	client.SetWriteDeadline(time.Now().Add(20 * time.Second))
	go io.Copy(client, zeros{}) // ends when the proxy resets or the test closes client
	rec := nextRec(t, f.Recs)
	if !errors.Is(rec.Err, syscall.ETIMEDOUT) {
		t.Errorf("record error = %v, want ETIMEDOUT", rec.Err)
	}
	checkHits(t, f.Hits, LimitTCPTimeout, 1)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// fullBacklog returns an address on a whose listener's accept queue is
// full: SYNs to it are dropped and connects time out.
func fullBacklog(t *testing.T, a netip.Addr) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: a.As4()}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(a, uint16(sa.(*unix.SockaddrInet4).Port))
	for range 16 {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the accept queue of a listener with backlog 0 did not fill in 16 connections")
	return addr
}

func TestLimitConnectTimeout(t *testing.T) {
	hits := NewLimitHits(prometheus.NewRegistry())
	f := newInboundFixture(t, Config{ConnectTimeout: 100 * time.Millisecond, Limits: hits})
	app := fullBacklog(t, f.Pod)
	_, err := f.connect(app)
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Errorf("CONNECT to an application that does not accept = %v, want 503", err)
	}
	checkHits(t, hits, LimitConnectTimeout, 1)
}

func TestLimitStreamIdle(t *testing.T) {
	hits := NewLimitHits(prometheus.NewRegistry())
	f := newInboundFixture(t, Config{StreamIdleTimeout: 300 * time.Millisecond, Limits: hits})
	recs, unsub := f.Proxy.cfg.AccessLog.Subscribe(10)
	defer unsub()
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() { l.Close(); wg.Wait() }()
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); io.Copy(c, c) })
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	idleDone := make(chan error, 1)
	go func() { idleDone <- f.Proxy.IdleLoop(ctx) }()
	defer func() { cancel(); <-idleDone }()

	app := l.Addr().(*net.TCPAddr).AddrPort()
	busy, err := f.connect(app)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := f.connect(app)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	buf := make([]byte, 4)
	// busy sends and reads back every 50 ms for 900 ms, three idle
	// timeouts: it stays open; idle is closed.
	for range 18 {
		busy.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("busy tunnel: Write() = %v", err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("busy tunnel: Read() = %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := idle.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("idle tunnel: Read() = %v, want the tunnel closed", err)
	}
	rec := nextRec(t, recs)
	if !errors.Is(rec.Err, ErrIdleTimeout) {
		t.Errorf("record of the idle tunnel: error %v, want %v", rec.Err, ErrIdleTimeout)
	}
	checkHits(t, hits, LimitStreamIdle, 1)
}
