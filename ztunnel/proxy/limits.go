package proxy

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
)

// This file holds the proxy's limits (docs/security.md "Limits"): outbound
// connections per source pod, the idle timeout of HBONE tunnels, and the
// socket options and timeouts of application connections. The HTTP/2
// and TLS limits are pkg/hbone's; every limit hit is counted in
// ztunnel_limit_hits_total{limit} (limits_metrics.go).

// Limits of the proxy, the label of ztunnel_limit_hits_total with the
// hbone.Limit... ones.
const (
	// LimitConnsPerPod: an outbound connection past
	// Config.MaxConnsPerPod of its source pod, reset.
	LimitConnsPerPod = "connections_per_pod"
	// LimitStreamIdle: a tunnel closed after Config.StreamIdleTimeout
	// without a byte either way.
	LimitStreamIdle = "stream_idle_timeout"
	// LimitConnectTimeout: a dial to an application (or, outbound, a
	// destination outside the mesh) not connected within
	// Config.ConnectTimeout.
	LimitConnectTimeout = "connect_timeout"
	// LimitTCPTimeout: a relayed connection ended by ETIMEDOUT: TCP
	// keepalive probes or, with Config.SocketOptions.UserTimeout,
	// unacknowledged data (TCP_USER_TIMEOUT).
	LimitTCPTimeout = "tcp_timeout"
)

// DefaultMaxConnsPerPod is Config.MaxConnsPerPod's default.
const DefaultMaxConnsPerPod = 10000

// FlagLimit is the response flag (access log and metrics) of a connection
// refused by a limit of the proxy.
const FlagLimit = "LIMIT"

// Errors of connections ended by a limit.
var (
	ErrConnsPerPod = errors.New("too many connections from this pod")
	ErrIdleTimeout = errors.New("tunnel idle timeout")
)

// podKey names the source pod of an outbound connection.
func podKey(w *state.Workload) string {
	if w.Uid != "" {
		return w.Uid
	}
	if len(w.Addrs) > 0 {
		return w.Addrs[0].String()
	}
	return w.Namespace + "/" + w.Name
}

// acquirePodConn counts one more outbound connection of w; false if that
// would pass Config.MaxConnsPerPod (nothing counted then).
func (p *Proxy) acquirePodConn(w *state.Workload) (string, bool) {
	if p.cfg.MaxConnsPerPod < 0 {
		return "", true
	}
	k := podKey(w)
	p.limitMu.Lock()
	defer p.limitMu.Unlock()
	if p.podConns[k] >= p.cfg.MaxConnsPerPod {
		return k, false
	}
	p.podConns[k]++
	return k, true
}

// releasePodConn uncounts a connection acquirePodConn counted.
func (p *Proxy) releasePodConn(k string) {
	if p.cfg.MaxConnsPerPod < 0 {
		return
	}
	p.limitMu.Lock()
	defer p.limitMu.Unlock()
	if p.podConns[k]--; p.podConns[k] <= 0 {
		delete(p.podConns, k)
	}
}

// reset closes c with a TCP RST (SO_LINGER 0): the application sees
// "connection reset", not a clean end of stream.
func reset(c net.Conn) {
	if ec, ok := c.(*earlyConn); ok {
		c = ec.Conn
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// applySocketOptions sets Config.SocketOptions on an application's
// connection.
func (p *Proxy) applySocketOptions(c net.Conn) {
	if ec, ok := c.(*earlyConn); ok {
		c = ec.Conn
	}
	if err := p.cfg.SocketOptions.Apply(c); err != nil {
		p.log.Debug("setting socket options", "error", err)
	}
}

// relayErr counts the limits that ended a relay: TCP keepalive or user
// timeout (ETIMEDOUT), and the idle timeout, whose error it returns.
func (p *Proxy) relayErr(tracked net.Conn, err error) error {
	if errors.Is(err, syscall.ETIMEDOUT) {
		p.cfg.Limits.Hit(LimitTCPTimeout)
	}
	if p.cfg.StreamIdleTimeout > 0 && p.takeIdleClosed(tracked) {
		return ErrIdleTimeout
	}
	return err
}

// dialTimedOut counts a dial to an application that timed out.
func (p *Proxy) dialTimedOut(ctx context.Context, err error) {
	var ne net.Error
	if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		p.cfg.Limits.Hit(LimitConnectTimeout)
	}
}

// activityConn is a tunnel whose traffic can be watched for idleness
// (*hbone.Conn).
type activityConn interface {
	net.Conn
	Activity() uint64
}

// idleSample is what IdleLoop last saw of a tunnel.
type idleSample struct {
	activity uint64
	since    time.Time // when activity last changed (or was first seen)
}

// IdleLoop closes the HBONE tunnels that carried no byte either way for
// Config.StreamIdleTimeout; their access log record says
// error="tunnel idle timeout". It runs until ctx is done. With no idle
// timeout (the default) it only waits.
func (p *Proxy) IdleLoop(ctx context.Context) error {
	d := p.cfg.StreamIdleTimeout
	if d <= 0 {
		<-ctx.Done()
		return nil
	}
	// A tunnel is closed between d and d + tick after its last byte.
	tick := min(max(d/4, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(tick)
	defer t.Stop()
	seen := map[net.Conn]idleSample{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.closeIdle(seen, p.now(), d)
		}
	}
}

// closeIdle closes the tracked tunnels whose activity did not change for
// d, updating seen.
func (p *Proxy) closeIdle(seen map[net.Conn]idleSample, now time.Time, d time.Duration) {
	p.mu.Lock()
	conns := make([]activityConn, 0, len(p.conns))
	for c := range p.conns {
		if ac, ok := c.(activityConn); ok {
			conns = append(conns, ac)
		}
	}
	p.mu.Unlock()
	live := make(map[net.Conn]bool, len(conns))
	for _, c := range conns {
		live[c] = true
		a := c.Activity()
		s, ok := seen[c]
		if !ok || s.activity != a {
			seen[c] = idleSample{activity: a, since: now}
			continue
		}
		if now.Sub(s.since) < d {
			continue
		}
		delete(seen, c)
		p.limitMu.Lock()
		p.idleClosed[c] = true
		p.limitMu.Unlock()
		p.cfg.Limits.Hit(LimitStreamIdle)
		p.log.Debug("closing idle tunnel", "local", c.LocalAddr().String(), "remote", c.RemoteAddr().String(), "idle", now.Sub(s.since))
		c.Close()
	}
	for c := range seen {
		if !live[c] {
			delete(seen, c)
		}
	}
	// A tunnel closed here just after its relay ended on its own is never
	// taken by relayErr: forget it once it is no longer tracked.
	p.limitMu.Lock()
	for c := range p.idleClosed {
		if !live[c] {
			delete(p.idleClosed, c)
		}
	}
	p.limitMu.Unlock()
}

// takeIdleClosed reports whether IdleLoop closed c, and forgets it.
func (p *Proxy) takeIdleClosed(c net.Conn) bool {
	p.limitMu.Lock()
	defer p.limitMu.Unlock()
	if !p.idleClosed[c] {
		return false
	}
	delete(p.idleClosed, c)
	return true
}
