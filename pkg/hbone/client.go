package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"

	"github.com/ambient-go/mesh/pkg/hbone/internal/dialgroup"
)

// Target says where and as whom to open a tunnel.
type Target struct {
	Addr       netip.AddrPort // where the HBONE server listens (port 15008)
	Authority  string         // :authority, the real target ip:port
	SourceID   spiffeid.ID    // identity we present
	DestIDs    []spiffeid.ID  // identities the server may present; empty: any the TLS config accepts
	SourceAddr netip.Addr     // local address to bind to; zero: any
	Header     http.Header    // extra request headers (forwarded, baggage, traceparent)
}

// PoolConfig configures a [Pool].
type PoolConfig struct {
	// TLSConfig returns the client mTLS config presenting src and verifying
	// that the server is one of dst. Required.
	TLSConfig func(ctx context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error)
	// Dialer opens the TCP connection. Default: a net.Dialer bound to
	// laddr when it is not empty. Its context carries DialTimeout.
	Dialer func(ctx context.Context, network, laddr, raddr string) (net.Conn, error)
	// DialTimeout bounds the TCP connect to an HBONE server. Default 10 s
	// (Istio's ztunnel's).
	DialTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake. Default 10 s.
	HandshakeTimeout time.Duration
	// ResponseTimeout bounds the wait for the answer to a CONNECT (the
	// server answers once it has dialed the application). Default 15 s.
	ResponseTimeout time.Duration
	// MaxHeaderListSize is SETTINGS_MAX_HEADER_LIST_SIZE: a response with
	// a larger header list is discarded and its stream reset. Default
	// 64 KiB.
	MaxHeaderListSize uint32
	// SocketOptions are set on every connection dialed (keepalive 180 s
	// by default; see SocketOptions).
	SocketOptions SocketOptions
	// OnLimit, if not nil, is called with a Limit... constant each time a
	// limit is hit. It may be called with locks held: it must be quick
	// and not call back into the pool.
	OnLimit func(limit string)
	// MaxStreamsPerConn is the number of concurrent streams past which a new
	// connection is opened. Default 100.
	MaxStreamsPerConn int
	// IdleTimeout closes connections without streams for this long. Default 5 min.
	IdleTimeout time.Duration
	// PingInterval: an HTTP/2 PING is sent after this long without frames
	// from the server. Default 10 s.
	PingInterval time.Duration
	// PingTimeout closes a connection whose PING is not answered. Default 20 s.
	PingTimeout time.Duration
	// ProbeTimeout: a CONNECT sent on a connection that read nothing for
	// a third of it carries a PING, and the connection is closed as dead
	// (its streams fail with ErrConnectionDead) when nothing at all
	// arrives for this long after. It finds a peer behind a black hole
	// (HBONE port dropped) in seconds, before a client gives up, where
	// ResponseTimeout and PingTimeout take 15 s and 20 s. Default 3 s;
	// negative: no probe.
	ProbeTimeout time.Duration
	// Logger; default discards.
	Logger *slog.Logger
}

// PoolStats counts the pool's connections and open streams.
type PoolStats struct {
	Conns   int
	Streams int
}

// Pool opens HBONE tunnels over shared HTTP/2 connections, keyed by
// {source identity, destination identities, destination address, source address}.
type Pool struct {
	cfg PoolConfig
	log *slog.Logger

	mu    sync.Mutex
	conns map[poolKey][]*poolConn
	dials dialgroup.Group[poolKey]
}

type poolKey struct {
	src     string
	dst     string // sorted, space separated
	addr    netip.AddrPort
	srcAddr netip.Addr
}

type poolConn struct {
	key     poolKey
	cc      *clientConn
	tc      *tls.Conn
	streams int // guarded by Pool.mu
}

// NewPool returns a pool. It panics if cfg.TLSConfig is nil.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.TLSConfig == nil {
		panic("hbone: PoolConfig.TLSConfig is required")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 10 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 20 * time.Second
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = handshakeTimeout
	}
	if cfg.ResponseTimeout <= 0 {
		cfg.ResponseTimeout = DefaultResponseTimeout
	}
	if cfg.MaxHeaderListSize == 0 {
		cfg.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if cfg.Dialer == nil {
		cfg.Dialer = defaultDial
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		cfg:   cfg,
		log:   log.With("component", "hbone-pool"),
		conns: make(map[poolKey][]*poolConn),
	}
}

func defaultDial(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	var d net.Dialer // the context carries PoolConfig.DialTimeout
	if laddr != "" {
		a, err := net.ResolveTCPAddr(network, laddr)
		if err != nil {
			return nil, err
		}
		d.LocalAddr = a
		// The port is picked at connect, not searched among the
		// TIME_WAIT sockets of the address at bind.
		d.Control = BindAddressNoPort
	}
	return d.DialContext(ctx, network, raddr)
}

func keyOf(t *Target) poolKey {
	dst := make([]string, len(t.DestIDs))
	for i, id := range t.DestIDs {
		dst[i] = id.String()
	}
	slices.Sort(dst)
	return poolKey{
		src:     t.SourceID.String(),
		dst:     strings.Join(slices.Compact(dst), " "),
		addr:    t.Addr,
		srcAddr: t.SourceAddr,
	}
}

// Dial opens a CONNECT stream to t. It returns once the server answered
// 200; any other status is returned as a *StatusError. ctx bounds the dial
// and the wait for the answer, not the life of the returned Conn.
func (p *Pool) Dial(ctx context.Context, t Target) (*Conn, error) {
	if _, err := netip.ParseAddrPort(t.Authority); err != nil {
		return nil, fmt.Errorf("hbone: authority %q is not ip:port: %w", t.Authority, err)
	}
	key := keyOf(&t)
	const attempts = 3 // only for streams the server did not process
	var err error
	for range attempts {
		var pc *poolConn
		pc, err = p.getConn(ctx, key, &t)
		if err != nil {
			return nil, err
		}
		var c *Conn
		c, err = p.roundTrip(ctx, pc, &t)
		if err == nil {
			return c, nil
		}
		p.release(pc)
		if !retryable(err) || ctx.Err() != nil {
			return nil, err
		}
		p.log.Debug("retrying CONNECT on another connection", "error", err)
	}
	return nil, err
}

// retryable reports whether err says the server did not process the stream.
func retryable(err error) bool { return errors.Is(err, errUnprocessed) }

// getConn returns a connection with a stream reserved for the caller,
// dialing one if none has room. Concurrent callers share one dial.
func (p *Pool) getConn(ctx context.Context, key poolKey, t *Target) (*poolConn, error) {
	return dialgroup.Get(ctx, &p.dials, &p.mu, (*poolDialer)(p), key, *t) // a copy: a *Target would escape
}

// poolDialer is the Pool as dialgroup.Get uses it.
type poolDialer Pool

// Reserve: under Pool.mu.
func (d *poolDialer) Reserve(key poolKey) *poolConn { return (*Pool)(d).reserveLocked(key) }

func (d *poolDialer) Dial(ctx context.Context, key poolKey, t Target) (*poolConn, error) {
	p := (*Pool)(d)
	p.mu.Lock()
	for _, pc := range p.conns[key] {
		if pc.streams >= p.cfg.MaxStreamsPerConn {
			onLimit(p.cfg.OnLimit, LimitPoolStreams)
			break
		}
	}
	p.mu.Unlock()
	return p.dialConn(ctx, key, &t)
}

// Add: under Pool.mu.
func (d *poolDialer) Add(key poolKey, pc *poolConn) { d.conns[key] = append(d.conns[key], pc) }

func (d *poolDialer) Discard(pc *poolConn) { pc.cc.Close() }

// reserveLocked reserves a stream on a pooled connection with room.
func (p *Pool) reserveLocked(key poolKey) *poolConn {
	for _, pc := range p.conns[key] {
		if pc.streams >= p.cfg.MaxStreamsPerConn {
			continue
		}
		if !pc.cc.reserve() {
			// Full at the server's limit, or closing: if closing, forget it.
			if pc.cc.closing() {
				p.removeLocked(pc)
				return p.reserveLocked(key)
			}
			continue
		}
		pc.streams++
		return pc
	}
	return nil
}

func (p *Pool) removeLocked(pc *poolConn) {
	conns := p.conns[pc.key]
	if i := slices.Index(conns, pc); i >= 0 {
		conns = slices.Delete(conns, i, i+1)
	}
	if len(conns) == 0 {
		delete(p.conns, pc.key)
	} else {
		p.conns[pc.key] = conns
	}
}

// release returns a stream reservation.
func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	pc.streams--
	p.mu.Unlock()
}

// dialConn opens TCP, runs the TLS handshake and starts an HTTP/2 client connection.
func (p *Pool) dialConn(ctx context.Context, key poolKey, t *Target) (*poolConn, error) {
	laddr := ""
	if t.SourceAddr.IsValid() {
		laddr = netip.AddrPortFrom(t.SourceAddr, 0).String()
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	raw, err := p.cfg.Dialer(dctx, "tcp", laddr, t.Addr.String())
	if timedOut(ctx, dctx, err) {
		onLimit(p.cfg.OnLimit, LimitConnectTimeout)
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %v: %w", t.Addr, err)
	}
	if err := p.cfg.SocketOptions.Apply(raw); err != nil {
		p.log.Debug("setting socket options", "addr", t.Addr.String(), "error", err)
	}
	cfg, err := p.cfg.TLSConfig(ctx, t.SourceID, t.DestIDs)
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: tls config: %w", err)
	}
	if !slices.Contains(cfg.NextProtos, http2.NextProtoTLS) {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{http2.NextProtoTLS}
	}
	cfg = oneRecordPerWrite(cfg)
	rc := newRawConn(raw)
	tc := tls.Client(rc, cfg)
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	if timedOut(ctx, hctx, err) {
		onLimit(p.cfg.OnLimit, LimitHandshakeTimeout)
	}
	cancel()
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: tls handshake with %v: %w", t.Addr, err)
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != http2.NextProtoTLS {
		tc.Close()
		return nil, fmt.Errorf("hbone: %v did not negotiate h2", t.Addr)
	}
	if err := checkPeer(&state, t.DestIDs); err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: %v: %w", t.Addr, err)
	}
	rc.startBuffering()
	pc := &poolConn{key: key, tc: tc}
	cc, err := newClientConn(tc, tlsWriter{tc, rc}, clientConnConfig{
		pingInterval:      p.cfg.PingInterval,
		pingTimeout:       p.cfg.PingTimeout,
		idleTimeout:       p.cfg.IdleTimeout,
		responseTimeout:   p.cfg.ResponseTimeout,
		probeTimeout:      max(p.cfg.ProbeTimeout, 0),
		handshakeTimeout:  p.cfg.HandshakeTimeout,
		maxHeaderListSize: p.cfg.MaxHeaderListSize,
		onClose:           func() { p.forget(pc) },
		onLimit:           p.cfg.OnLimit,
	})
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: http2 client conn: %w", err)
	}
	pc.cc = cc
	p.log.Debug("connection opened", "addr", t.Addr.String(), "src", t.SourceID.String())
	return pc, nil
}

// checkPeer checks that the server's identity is one of want (any if empty).
// The TLS config already verified the chain; this is defence in depth.
func checkPeer(cs *tls.ConnectionState, want []spiffeid.ID) error {
	if len(want) == 0 {
		return nil
	}
	id, err := PeerIDFromState(cs)
	if err != nil {
		return err
	}
	if !slices.Contains(want, id) {
		return fmt.Errorf("hbone: server identity %v is not one of %v", id, want)
	}
	return nil
}

// forget drops a connection whose network connection closed.
func (p *Pool) forget(pc *poolConn) {
	p.mu.Lock()
	p.removeLocked(pc)
	p.mu.Unlock()
}

// roundTrip sends the CONNECT on pc and waits for the answer.
func (p *Pool) roundTrip(ctx context.Context, pc *poolConn, t *Target) (*Conn, error) {
	st, err := pc.cc.open(ctx, t.Authority, t.Header)
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %v: %w", t.Authority, t.Addr, err)
	}
	st.release = sync.OnceFunc(func() { p.release(pc) })
	return &Conn{s: st, local: pc.tc.LocalAddr(), remote: pc.tc.RemoteAddr()}, nil
}

// Close closes every connection. Dial fails afterwards; open streams end.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.dials.Close(ErrPoolClosed)
	var all []*poolConn
	for _, conns := range p.conns {
		all = append(all, conns...)
	}
	p.conns = make(map[poolKey][]*poolConn)
	p.mu.Unlock()
	for _, pc := range all {
		pc.cc.Close()
	}
	return nil
}

// Stats returns the number of pooled connections and open streams.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s PoolStats
	for _, conns := range p.conns {
		s.Conns += len(conns)
		for _, pc := range conns {
			s.Streams += pc.streams
		}
	}
	return s
}
