package hbone

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// sink reads everything from c into a 32 KiB buffer, then half-closes c.
func sink(c net.Conn) {
	buf := make([]byte, 32<<10)
	io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, buf)
	closeWrite(c)
}

// source writes n chunks to c, then half-closes c.
func source(c net.Conn, chunk []byte, n int) error {
	for range n {
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
	return closeWrite(c)
}

// BenchmarkTunnelThroughput measures bytes/s through one HBONE tunnel on
// loopback against a direct TCP connection, uploading (client writes) and
// downloading (server writes).
func BenchmarkTunnelThroughput(b *testing.B) {
	const chunkSize = 64 << 10
	chunk := make([]byte, chunkSize)

	type dialer func(b *testing.B, serverSide func(net.Conn)) net.Conn
	tcp := func(b *testing.B, serverSide func(net.Conn)) net.Conn {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := l.Accept()
			if err != nil {
				return
			}
			serverSide(c)
			c.Close()
		}()
		b.Cleanup(func() { l.Close(); <-done })
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	hbone := func(b *testing.B, serverSide func(net.Conn)) net.Conn {
		ca := identitytest.New(b, "cluster.local")
		srvID, cliID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
		srv := &Server{TLSConfig: ca.ServerTLS(b, srvID), Handler: HandlerFunc(func(_ context.Context, _ *Request, t *Tunnel) {
			c, err := t.Accept()
			if err == nil {
				serverSide(c)
			}
		})}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(l)
		pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(b, nil)})
		b.Cleanup(func() { pool.Close(); srv.Close() })
		c, err := pool.Dial(context.Background(), Target{
			Addr: l.Addr().(*net.TCPAddr).AddrPort(), Authority: "10.0.0.1:80", SourceID: cliID,
		})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	for _, d := range []struct {
		name string
		dial dialer
	}{{"tcp", tcp}, {"hbone", hbone}} {
		b.Run(d.name+"/upload", func(b *testing.B) {
			c := d.dial(b, sink)
			defer c.Close()
			b.SetBytes(chunkSize)
			b.ResetTimer()
			if err := source(c, chunk, b.N); err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, c) // the sink's EOF: everything arrived
		})
		b.Run(d.name+"/download", func(b *testing.B) {
			n := b.N
			c := d.dial(b, func(c net.Conn) { source(c, chunk, n); io.Copy(io.Discard, c) })
			defer c.Close()
			b.SetBytes(chunkSize)
			b.ResetTimer()
			sink(c)
		})
	}
}

// BenchmarkTunnelRequestResponse measures 1 KiB request/response round trips
// through HBONE tunnels on one pooled connection: one stream, and 8 streams
// in parallel (where writes of several streams can share a syscall).
func BenchmarkTunnelRequestResponse(b *testing.B) {
	const size = 1 << 10
	ca := identitytest.New(b, "cluster.local")
	srvID, cliID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	srv := &Server{TLSConfig: ca.ServerTLS(b, srvID), Handler: HandlerFunc(func(_ context.Context, _ *Request, t *Tunnel) {
		c, err := t.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				break
			}
			if _, err := c.Write(buf); err != nil {
				break
			}
		}
		c.Close()
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(b, nil)})
	b.Cleanup(func() { pool.Close(); srv.Close() })
	dial := func() net.Conn {
		c, err := pool.Dial(context.Background(), Target{
			Addr: l.Addr().(*net.TCPAddr).AddrPort(), Authority: "10.0.0.1:80", SourceID: cliID,
		})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	roundTrips := func(c net.Conn, n int) error {
		buf := make([]byte, size)
		for range n {
			if _, err := c.Write(buf); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
		}
		return nil
	}
	b.Run("1stream", func(b *testing.B) {
		c := dial()
		defer c.Close()
		b.ResetTimer()
		if err := roundTrips(c, b.N); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("8streams", func(b *testing.B) {
		const streams = 8
		conns := make([]net.Conn, streams)
		for i := range conns {
			conns[i] = dial()
			defer conns[i].Close()
		}
		b.ResetTimer()
		errs := make(chan error, streams)
		for i := range conns {
			go func() { errs <- roundTrips(conns[i], b.N/streams+1) }()
		}
		for range streams {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTunnelNewStream measures opening a tunnel on a pooled
// connection, reading one byte the server writes, and closing.
func BenchmarkTunnelNewStream(b *testing.B) {
	ca := identitytest.New(b, "cluster.local")
	srvID, cliID := ca.ID("/ns/b/sa/server"), ca.ID("/ns/a/sa/client")
	srv := &Server{TLSConfig: ca.ServerTLS(b, srvID), Handler: HandlerFunc(func(_ context.Context, _ *Request, t *Tunnel) {
		c, err := t.Accept()
		if err != nil {
			return
		}
		c.Write([]byte{1})
		c.CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	pool := NewPool(PoolConfig{TLSConfig: ca.PoolTLS(b, nil)})
	b.Cleanup(func() { pool.Close(); srv.Close() })
	target := Target{Addr: l.Addr().(*net.TCPAddr).AddrPort(), Authority: "10.0.0.1:80", SourceID: cliID}
	b.SetParallelism(8) // 16 workers on 2 CPUs, as the mesh benchmark
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 16)
		for pb.Next() {
			c, err := pool.Dial(context.Background(), target)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				b.Error(err)
			}
			c.CloseWrite()
			io.Copy(io.Discard, c)
			c.Close()
		}
	})
}

// BenchmarkRelayRequestResponse measures 1 KiB request/response round trips
// through the chain ztunnel carries: a TCP client, an outbound proxy that
// relays into a pooled HBONE tunnel ([Relay] on a [Conn] and a socket), an
// inbound HBONE server that relays to a TCP echo server. One connection,
// and 4 in parallel on one pooled HTTP/2 connection (as make bench's 1000
// rps load).
func BenchmarkRelayRequestResponse(b *testing.B) {
	const size = 1 << 10
	var (
		wg      sync.WaitGroup
		cleanup []func()
	)
	defer func() {
		for _, f := range cleanup {
			f()
		}
		wg.Wait()
	}()
	echo := heldEcho(b, &wg, &cleanup)
	addr := heldProxies(b, echo, &wg, &cleanup)
	roundTrips := func(c net.Conn, n int) error {
		buf := make([]byte, size)
		for range n {
			if _, err := c.Write(buf); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
		}
		return nil
	}
	// paced: one round trip per millisecond on one connection, as at
	// 1000 rps the proxies sleep between requests; reports the median
	// round trip.
	b.Run("paced", func(b *testing.B) {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if err := roundTrips(c, 1); err != nil {
			b.Fatal(err)
		}
		rtts := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
			t0 := time.Now()
			if err := roundTrips(c, 1); err != nil {
				b.Fatal(err)
			}
			rtts = append(rtts, time.Since(t0))
		}
		slices.Sort(rtts)
		b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
	})
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("%dconns", conns), func(b *testing.B) {
			cs := make([]net.Conn, conns)
			for i := range cs {
				c, err := net.Dial("tcp", addr.String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				if err := roundTrips(c, 1); err != nil {
					b.Fatal(err)
				}
				cs[i] = c
			}
			b.ResetTimer()
			errs := make(chan error, conns)
			for _, c := range cs {
				go func() { errs <- roundTrips(c, b.N/conns+1) }()
			}
			for range conns {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRelayThroughput measures an upload through ztunnel's chain (as
// BenchmarkRelayRequestResponse) to a server that discards it.
func BenchmarkRelayThroughput(b *testing.B) {
	const chunkSize = 128 << 10
	var (
		wg      sync.WaitGroup
		cleanup []func()
	)
	defer func() {
		for _, f := range cleanup {
			f()
		}
		wg.Wait()
	}()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cleanup = append(cleanup, func() { l.Close() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				io.Copy(io.Discard, c)
				c.Write([]byte{1})
				c.Close()
			})
		}
	})
	addr := heldProxies(b, l.Addr().(*net.TCPAddr).AddrPort(), &wg, &cleanup)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, chunkSize)
	b.SetBytes(chunkSize)
	b.ResetTimer()
	if err := source(c, chunk, b.N); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, chunk[:1]); err != nil {
		b.Fatal(err)
	}
}
