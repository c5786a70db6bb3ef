package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/h3"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/proxy"
)

// quicNode is HBONE over QUIC in a ztunnel (Config.QUIC): in modes on and
// prefer, one UDP socket on port 15008 of every local pod address (in-pod:
// inside the pod's netns), served by one h3.Server whose handler is the
// proxy's; in mode prefer, an h3.Pool whose client sockets are opened per
// source pod (in-pod: inside its netns). A nil *quicNode is mode off:
// every method does nothing.
type quicNode struct {
	z      *Ztunnel
	log    *slog.Logger
	server *h3.Server
	pool   *h3.Pool // nil in mode on

	mu      sync.Mutex
	sockets map[netip.Addr]*net.UDPConn // by pod address
	waits   map[netip.Addr]*quicWait    // waits for a socket an old ztunnel holds
	wg      sync.WaitGroup
}

// newQUIC builds z's QUIC side for mode and returns the proxy's QUIC
// configuration; mode off returns a nil node.
func (z *Ztunnel) newQUIC(reg prometheus.Registerer, log *slog.Logger) (*quicNode, proxy.QUICConfig, error) {
	mode, err := proxy.ParseQUICMode(z.cfg.QUIC)
	if err != nil {
		return nil, proxy.QUICConfig{}, err
	}
	pcfg := proxy.QUICConfig{Mode: mode, Hold: z.cfg.QUICHold, Namespaces: z.cfg.QUICNamespaces, Registerer: reg}
	if mode == proxy.QUICOff {
		return nil, pcfg, nil
	}
	q := &quicNode{z: z, log: log.With("component", "quic"), sockets: map[netip.Addr]*net.UDPConn{}, waits: map[netip.Addr]*quicWait{}}
	q.server = &h3.Server{
		TLSConfig: z.certs.ServerTLSConfig(z.serverIdentity),
		Handler: h3.HandlerFunc(func(ctx context.Context, req *hbone.Request, t *h3.Tunnel) {
			z.proxy.ServeH3(ctx, req, t)
		}),
		Logger: log,
	}
	if mode == proxy.QUICPrefer {
		timeout := z.cfg.QUICTimeout
		if timeout <= 0 {
			timeout = proxy.DefaultQUICTimeout
		}
		q.pool = h3.NewPool(h3.PoolConfig{
			TLSConfig:        z.certs.ClientTLSConfig,
			ListenPacket:     q.clientSocket,
			HandshakeTimeout: timeout,
			Logger:           log,
		})
		pcfg.Pool = q.pool
	}
	q.log.Info("hbone over quic", "mode", mode)
	return q, pcfg, nil
}

// clientSocket opens the UDP socket of the source pod src: in-pod, inside
// its netns, from its address.
func (q *quicNode) clientSocket(_ context.Context, src netip.Addr) (net.PacketConn, error) {
	if d, ok := q.z.dp.(*inpod); ok {
		ns := d.podNetns(src)
		if ns == nil {
			return nil, fmt.Errorf("pod %s is not captured by this ztunnel", src)
		}
		c, err := capture.ListenUDP(ns, netip.AddrPortFrom(src, 0))
		if err != nil {
			return nil, err
		}
		q.sizeBuffers(c)
		return c, nil
	}
	return h3.ListenUDP(netip.AddrPortFrom(src, 0), q.log)
}

func (q *quicNode) sizeBuffers(c *net.UDPConn) {
	if _, _, err := h3.SizeBuffers(c); err != nil {
		q.log.Info("udp buffers smaller than quic-go asks", "addr", c.LocalAddr().String(), "reason", err)
	}
}

// listen opens UDP 15008 on the pod address a (inside ns when not nil)
// and serves HBONE over QUIC on it until release(a). A failure is logged:
// the pod is still served over TCP.
func (q *quicNode) listen(ns *os.File, a netip.Addr) {
	if q == nil {
		return
	}
	at := netip.AddrPortFrom(a, q.z.cfg.HBONEPort)
	var c *net.UDPConn
	var err error
	if ns != nil {
		c, err = capture.ListenUDP(ns, at)
		if err == nil {
			q.sizeBuffers(c)
		}
	} else {
		c, err = h3.ListenUDP(at, q.log)
	}
	if errors.Is(err, syscall.EADDRINUSE) && ns != nil {
		// The ztunnel this one takes over from still serves it
		// (handover.go): UDP is not shared, so that its QUIC tunnels
		// drain instead of being rehashed to this socket.
		q.waitFor(ns, a)
		return
	}
	if err != nil {
		q.log.Warn("no hbone over quic for pod: udp listen failed", "addr", at.String(), "error", err)
		return
	}
	q.serve(a, c)
}

// quicWaitPoll and quicWaitMax bound waitFor.
const (
	quicWaitPoll = 200 * time.Millisecond
	quicWaitMax  = time.Minute
)

// quicWait is one waitFor: close stop to end it, then done is closed.
type quicWait struct{ stop, done chan struct{} }

// waitFor opens UDP 15008 of pod address a inside ns once the ztunnel
// that holds it exits (at most quicWaitMax), unless release or shutdown
// stop the wait first. Until then the pod is served over TCP only.
func (q *quicNode) waitFor(ns *os.File, a netip.Addr) {
	at := netip.AddrPortFrom(a, q.z.cfg.HBONEPort)
	q.stopWait(a)
	w := &quicWait{stop: make(chan struct{}), done: make(chan struct{})}
	q.mu.Lock()
	q.waits[a] = w
	q.mu.Unlock()
	q.log.Info("udp 15008 held by the previous ztunnel; serving quic once it exits", "addr", at.String())
	go func() {
		defer close(w.done)
		tick := time.NewTicker(quicWaitPoll)
		defer tick.Stop()
		deadline := time.Now().Add(quicWaitMax)
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			c, err := capture.ListenUDP(ns, at)
			if errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline) {
				continue
			}
			if err != nil {
				q.log.Warn("no hbone over quic for pod: udp listen failed", "addr", at.String(), "error", err)
				return
			}
			q.sizeBuffers(c)
			q.mu.Lock()
			if q.waits[a] != w { // released meanwhile
				q.mu.Unlock()
				c.Close()
				return
			}
			delete(q.waits, a)
			q.serveLocked(a, c)
			q.mu.Unlock()
			q.log.Info("serving quic after the previous ztunnel exited", "addr", at.String())
			return
		}
	}()
}

// stopWait stops the wait for a's socket, if any.
func (q *quicNode) stopWait(a netip.Addr) {
	q.mu.Lock()
	w := q.waits[a]
	delete(q.waits, a)
	q.mu.Unlock()
	if w != nil {
		close(w.stop)
		<-w.done
	}
}

// serve serves HBONE over QUIC on c, pod address a's socket, until
// release(a).
func (q *quicNode) serve(a netip.Addr, c *net.UDPConn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.serveLocked(a, c)
}

// serveLocked is serve with q.mu held.
func (q *quicNode) serveLocked(a netip.Addr, c *net.UDPConn) {
	at := c.LocalAddr().String()
	if old := q.sockets[a]; old != nil {
		old.Close()
	}
	q.sockets[a] = c
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		if err := q.server.Serve(c); err != nil && !errors.Is(err, net.ErrClosed) {
			q.log.Warn("quic listener stopped", "addr", at, "error", err)
		}
	}()
}

// release closes the UDP socket of pod address a (and so its QUIC
// connections) and the pool's connections from it.
func (q *quicNode) release(a netip.Addr) {
	if q == nil {
		return
	}
	q.stopWait(a)
	q.mu.Lock()
	c := q.sockets[a]
	delete(q.sockets, a)
	q.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if q.pool != nil {
		q.pool.CloseFrom(a)
	}
}

// shutdown stops serving (GOAWAY, then waits for tunnels until ctx is
// done).
func (q *quicNode) shutdown(ctx context.Context) {
	if q == nil {
		return
	}
	q.mu.Lock()
	var waits []netip.Addr
	for a := range q.waits {
		waits = append(waits, a)
	}
	q.mu.Unlock()
	for _, a := range waits {
		q.stopWait(a)
	}
	q.server.Shutdown(ctx)
	q.wg.Wait()
}

// close closes the pool, after the proxy drained.
func (q *quicNode) close() {
	if q != nil && q.pool != nil {
		q.pool.Close()
	}
}
