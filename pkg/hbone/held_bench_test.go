package hbone

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// heldTunnels is the number of idle connections BenchmarkHeldTunnels holds.
const heldTunnels = 2000

// BenchmarkHeldTunnels measures the memory an idle, open tunnelled
// connection costs, as ztunnel carries it: an application's TCP connection
// to an outbound proxy, which dials an HBONE tunnel through a Pool and
// relays; an HBONE Server whose handler dials the destination over TCP,
// accepts and relays; an echo server as the destination. It reports the
// in-use heap and goroutine stacks per held connection, for the whole
// chain (B/conn) and, once the cost of the same connections held directly
// (application to echo) is subtracted, per proxy (B/conn/proxy: the mean of
// the outbound and inbound ends, what each ztunnel spends).
func BenchmarkHeldTunnels(b *testing.B) {
	for range b.N {
		direct := heldCost(b, heldTunnels, false)
		tunnelled := heldCost(b, heldTunnels, true)
		b.ReportMetric(tunnelled, "B/conn")
		b.ReportMetric((tunnelled-direct)/2, "B/conn/proxy")
		b.ReportMetric(direct, "B/conn-direct")
	}
}

// TestHeldTunnelMemory: an idle tunnelled connection costs each proxy at
// most 40 KB of heap and stacks (it cost 46-48 KB when both Relay
// directions held a 16 KiB buffer while waiting).
func TestHeldTunnelMemory(t *testing.T) {
	const n = 500
	direct := heldCost(t, n, false)
	perProxy := (heldCost(t, n, true) - direct) / 2
	t.Logf("%.0f B per held connection per proxy", perProxy)
	if perProxy > 40e3 {
		t.Errorf("held connection costs %.0f B per proxy, want <= 40000", perProxy)
	}
}

// heldCost holds n idle connections to an echo server, through
// two HBONE proxies if tunnel is set, and returns the growth of HeapInuse +
// StackInuse per connection.
func heldCost(b testing.TB, n int, tunnel bool) float64 {
	b.Helper()
	var (
		wg      sync.WaitGroup // relays and proxy goroutines
		cleanup []func()
	)
	defer func() {
		for _, f := range cleanup {
			f()
		}
		wg.Wait()
	}()
	echo := heldEcho(b, &wg, &cleanup)
	addr := echo
	if tunnel {
		addr = heldProxies(b, echo, &wg, &cleanup)
	}

	before := inUse()
	conns := make([]net.Conn, 0, n)
	cleanup = append(cleanup, func() {
		for _, c := range conns {
			c.Close()
		}
	})
	buf := make([]byte, 1)
	for range n {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		// One byte there and back: the whole chain is up.
		if _, err := c.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	after := inUse()
	return float64(after-before) / float64(n)
}

// inUse returns HeapInuse + StackInuse after a GC.
func inUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// heldEcho runs a TCP echo server that reads into a 1 KiB buffer.
func heldEcho(b testing.TB, wg *sync.WaitGroup, cleanup *[]func()) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	*cleanup = append(*cleanup, func() { l.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	*cleanup = append(*cleanup, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 1<<10)
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
				c.Close()
			})
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// heldProxies starts an inbound HBONE server relaying to the authority and
// an outbound TCP proxy tunnelling each connection to echo through a Pool;
// it returns the outbound proxy's address.
func heldProxies(b testing.TB, echo netip.AddrPort, wg *sync.WaitGroup, cleanup *[]func()) netip.AddrPort {
	ca := identitytest.New(b, "cluster.local")
	srvID, cliID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	srv := &Server{TLSConfig: ca.ServerTLS(b, srvID), Handler: HandlerFunc(func(ctx context.Context, req *Request, t *Tunnel) {
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", req.Authority.String())
		if err != nil {
			t.Reject(503, err.Error())
			return
		}
		c, err := t.Accept()
		if err != nil {
			up.Close()
			return
		}
		Relay(c, up)
	})}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	wg.Go(func() { srv.Serve(hl) })
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(b, nil)})
	*cleanup = append(*cleanup, func() { pool.Close(); srv.Close() })

	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	*cleanup = append(*cleanup, func() { ol.Close() })
	tgt := Target{Addr: hl.Addr().(*net.TCPAddr).AddrPort(), Authority: echo.String(), SourceID: cliID, DestIDs: []spiffeid.ID{srvID}}
	wg.Go(func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				up, err := pool.Dial(context.Background(), tgt)
				if err != nil {
					c.Close()
					return
				}
				Relay(c, up)
			})
		}
	})
	return ol.Addr().(*net.TCPAddr).AddrPort()
}
