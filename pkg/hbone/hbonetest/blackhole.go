// Package hbonetest holds test helpers for HBONE paths: a TCP proxy that
// turns into a black hole on demand, to test what pooled HBONE connections
// and the proxies using them do when a peer goes silent without a FIN or
// RST (a NetworkPolicy or firewall dropping port 15008), on loopback and
// without root.
package hbonetest

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// Blackhole is a TCP proxy on loopback in front of an HBONE server. Once
// block is called, the connections it carries stop forwarding in both
// directions: what each side writes is read and dropped, as behind a
// firewall that drops the packets of established connections (the
// kernels still acknowledge, so only the HTTP/2 layer can tell).
// Connections accepted after unblock forward again.
type Blackhole struct {
	l        net.Listener
	to       netip.AddrPort
	accepted atomic.Int32 // connections accepted

	mu      sync.Mutex
	blocked bool
	live    []*atomic.Bool // per connection: dropping
	conns   []net.Conn
	wg      sync.WaitGroup
}

func NewBlackhole(t testing.TB, at, to netip.AddrPort) *Blackhole {
	t.Helper()
	l, err := net.Listen("tcp", at.String())
	if err != nil {
		t.Fatal(err)
	}
	b := &Blackhole{l: l, to: to}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

// Addr is where the proxy listens.
func (b *Blackhole) Addr() netip.AddrPort { return b.l.Addr().(*net.TCPAddr).AddrPort() }

// Accepted returns how many connections the proxy accepted.
func (b *Blackhole) Accepted() int { return int(b.accepted.Load()) }

func (b *Blackhole) serve() {
	defer b.wg.Done()
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		b.accepted.Add(1)
		up, err := net.Dial("tcp", b.to.String())
		if err != nil {
			c.Close()
			continue
		}
		drop := new(atomic.Bool)
		b.mu.Lock()
		drop.Store(b.blocked)
		b.live = append(b.live, drop)
		b.conns = append(b.conns, c, up)
		b.mu.Unlock()
		b.wg.Add(2)
		go b.pipe(up, c, drop)
		go b.pipe(c, up, drop)
	}
}

// pipe copies from src to dst until src ends, dropping what it reads once
// drop is set.
func (b *Blackhole) pipe(dst, src net.Conn, drop *atomic.Bool) {
	defer b.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !drop.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if !drop.Load() {
		dst.(*net.TCPConn).CloseWrite()
	}
}

// Block makes every connection open now a black hole, and new ones too
// until unblock.
func (b *Blackhole) Block() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocked = true
	for _, d := range b.live {
		d.Store(true)
	}
}

// Unblock makes connections accepted from now on forward again.
func (b *Blackhole) Unblock() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocked = false
}

func (b *Blackhole) close() {
	b.l.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
