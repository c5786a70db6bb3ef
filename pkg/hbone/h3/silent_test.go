package h3

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// udpRelay forwards datagrams between clients and a server on loopback
// (one upstream socket per client address) until drop is set: then every
// datagram is dropped both ways, a path that went dead without a word.
type udpRelay struct {
	front  *net.UDPConn
	server *net.UDPAddr
	drop   atomic.Bool

	mu   sync.Mutex
	back map[netip.AddrPort]*net.UDPConn
	wg   sync.WaitGroup
}

func newUDPRelay(t *testing.T, server netip.AddrPort) *udpRelay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{front: front, server: net.UDPAddrFromAddrPort(server), back: map[netip.AddrPort]*net.UDPConn{}}
	r.wg.Add(1)
	go r.forward()
	t.Cleanup(func() {
		front.Close()
		r.mu.Lock()
		for _, b := range r.back {
			b.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *udpRelay) addr() netip.AddrPort { return r.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// forward carries the clients' datagrams to the server.
func (r *udpRelay) forward() {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, client, err := r.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if r.drop.Load() {
			continue
		}
		r.mu.Lock()
		b := r.back[client]
		if b == nil {
			if b, err = net.DialUDP("udp", nil, r.server); err != nil {
				r.mu.Unlock()
				return
			}
			r.back[client] = b
			r.wg.Add(1)
			go r.backward(b, client)
		}
		r.mu.Unlock()
		b.Write(buf[:n])
	}
}

// backward carries the server's datagrams on b back to client.
func (r *udpRelay) backward(b *net.UDPConn, client netip.AddrPort) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := b.Read(buf)
		if err != nil {
			return
		}
		if !r.drop.Load() {
			r.front.WriteToUDPAddrPort(buf[:n], client)
		}
	}
}

// TestSilentPeer: when the peer of a pooled connection goes silent (its
// UDP socket closed without a CONNECTION_CLOSE, as when its process was
// killed, or every datagram dropped), the next Dial on it fails with
// ErrPeerSilent within PeerTimeout (not at the caller's deadline) and the
// connection leaves the pool. A peer that is there but slow to answer
// (twice PeerTimeout) is not silent.
func TestSilentPeer(t *testing.T) {
	const peerTimeout = time.Second // ztunnel's; a loaded test machine still ACKs within it
	ms := newMesh(t, "cluster.local")
	for _, tc := range []struct {
		name string
		// silence makes the server at addr (whose socket is pc, behind
		// relay) silent; it returns the error the next Dial must wrap.
		silence func(pc net.PacketConn, relay *udpRelay) error
	}{
		{"server socket closed", func(pc net.PacketConn, _ *udpRelay) error { pc.Close(); return ErrPeerSilent }},
		{"datagrams dropped", func(_ net.PacketConn, r *udpRelay) error { r.drop.Store(true); return ErrPeerSilent }},
		{"server slow to answer", func(net.PacketConn, *udpRelay) error { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slow atomic.Bool
			h := HandlerFunc(func(ctx context.Context, req *hbone.Request, tu *Tunnel) {
				if slow.Load() {
					time.Sleep(2 * peerTimeout)
				}
				(&echo{}).ServeH3(ctx, req, tu)
			})
			s := &Server{TLSConfig: ms.serverTLS(serverID), Handler: h}
			pc, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), nil)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- s.Serve(pc) }()
			defer func() { s.Close(); <-done }()
			relay := newUDPRelay(t, pc.LocalAddr().(*net.UDPAddr).AddrPort())
			p := NewPool(PoolConfig{TLSConfig: ms.m.ClientTLSConfig, HandshakeTimeout: 5 * time.Second, PeerTimeout: peerTimeout})
			defer p.Close()

			c, err := p.Dial(ctxT(t), target(relay.addr(), serverID))
			if err != nil {
				t.Fatalf("first Dial() = %v", err)
			}
			c.Close()
			slow.Store(true)
			want := tc.silence(pc, relay)

			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			c, err = p.Dial(ctx, target(relay.addr(), serverID))
			if c != nil {
				c.Close()
			}
			if !errors.Is(err, want) || (want == nil) != (err == nil) {
				t.Fatalf("Dial() on the pooled connection = %v, want %v", err, want)
			}
			wantConns := 1
			if want != nil {
				wantConns = 0
			}
			if s := p.Stats(); s.Conns != wantConns {
				t.Errorf("Stats() after the Dial = %+v, want %d connections", s, wantConns)
			}
		})
	}
}

// TestSilentPeerOpenTunnel: a connection taken for dead because its path
// dropped every datagram for longer than PeerTimeout leaves the pool but
// is not cut: a tunnel open on it carries data again once the path is
// back, and the connection is closed when that last tunnel closes.
func TestSilentPeerOpenTunnel(t *testing.T) {
	ms := newMesh(t, "cluster.local")
	addr := serve(t, &Server{TLSConfig: ms.serverTLS(serverID), Handler: &echo{}})
	relay := newUDPRelay(t, addr)
	p := NewPool(PoolConfig{TLSConfig: ms.m.ClientTLSConfig, HandshakeTimeout: 5 * time.Second, PeerTimeout: time.Second})
	defer p.Close()
	open, err := p.Dial(ctxT(t), target(relay.addr(), serverID))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	p.mu.Lock()
	pc := p.conns[keyOf(&hbone.Target{Addr: relay.addr(), SourceID: clientID, DestIDs: []spiffeid.ID{serverID}})][0]
	p.mu.Unlock()

	relay.drop.Store(true)
	if _, err := p.Dial(ctxT(t), target(relay.addr(), serverID)); !errors.Is(err, ErrPeerSilent) {
		t.Fatalf("Dial() while the path drops everything = %v, want ErrPeerSilent", err)
	}
	relay.drop.Store(false)
	if s := p.Stats(); s.Conns != 0 {
		t.Errorf("Stats() = %+v, want the connection out of the pool", s)
	}
	open.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(open, "still there"); err != nil {
		t.Fatal(err)
	}
	open.CloseWrite()
	if b, err := io.ReadAll(open); err != nil || string(b) != "still there" {
		t.Fatalf("the open tunnel after the path came back: %q, %v; want the echo", b, err)
	}
	select {
	case <-pc.qc.Context().Done():
		t.Fatal("the connection ended with a tunnel open on it")
	default:
	}
	open.Close()
	select {
	case <-pc.qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Error("the connection out of the pool is still up 5 s after its last tunnel closed")
	}
}
