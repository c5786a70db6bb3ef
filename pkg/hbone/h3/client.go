package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/internal/dialgroup"
)

// PoolConfig configures a [Pool].
type PoolConfig struct {
	// TLSConfig returns the client mTLS config presenting src and verifying
	// that the server is one of dst: hbone.PoolConfig's, whose ALPN is
	// changed to h3. Required.
	TLSConfig func(ctx context.Context, src spiffeid.ID, dst []spiffeid.ID) (*tls.Config, error)
	// ListenPacket opens the UDP socket the connections from the local
	// address src go out of (one per source address, kept until Close or
	// CloseFrom). Default: net.ListenUDP on src (any address if src is
	// zero), port 0, with SizeBuffers.
	ListenPacket func(ctx context.Context, src netip.Addr) (net.PacketConn, error)
	// MaxStreamsPerConn is the number of concurrent streams past which a
	// new connection is opened. Default 100.
	MaxStreamsPerConn int
	// IdleTimeout closes connections without streams for this long.
	// Default 5 min. Keep-alives (every 10 s; a connection without a
	// packet for 20 s is dead) are QUIC's own.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the QUIC handshake, within the Dial
	// context's deadline. Default 10 s.
	HandshakeTimeout time.Duration
	// PeerTimeout is how long the peer of a pooled connection may stay
	// silent (not one packet, not even the ACK of the CONNECT) after a
	// CONNECT was sent on it: past it, the connection is taken for dead
	// (the peer was killed, or its UDP is dropped, and no CONNECTION_CLOSE
	// came): it leaves the pool (and is closed once its open tunnels
	// ended), and Dial fails with an error wrapping ErrPeerSilent. Default
	// HandshakeTimeout.
	PeerTimeout time.Duration
	// ResponseTimeout bounds the wait for the answer to a CONNECT from a
	// peer that is not silent (it answers once it has dialed the
	// application), within the Dial context's deadline. Default 15 s, as
	// hbone.PoolConfig's.
	ResponseTimeout time.Duration
	// Logger; default discards.
	Logger *slog.Logger
}

// Pool opens HBONE tunnels over shared QUIC connections, keyed like
// hbone.Pool by {source identity, destination identities, destination
// address, source address}.
type Pool struct {
	cfg PoolConfig
	log *slog.Logger
	h3  *http3.Transport // only builds client connections

	mu         sync.Mutex
	transports map[netip.Addr]*quic.Transport
	conns      map[poolKey][]*poolConn
	dials      dialgroup.Group[poolKey]
	wg         sync.WaitGroup // one watcher per connection
}

type poolKey struct {
	src     string
	dst     string // sorted, space separated
	addr    netip.AddrPort
	srcAddr netip.Addr
}

type poolConn struct {
	key       poolKey
	qc        *quic.Conn
	cc        *http3.ClientConn
	streams   int // under Pool.mu
	idleSince time.Time
	idle      *time.Timer
	gone      bool // removed from the pool
}

// PoolStats counts the pool's connections and open streams.
type PoolStats struct {
	Conns   int
	Streams int
}

// NewPool returns a pool. It panics if cfg.TLSConfig is nil.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.TLSConfig == nil {
		panic("h3: PoolConfig.TLSConfig is required")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.PeerTimeout <= 0 {
		cfg.PeerTimeout = cfg.HandshakeTimeout
	}
	if cfg.ResponseTimeout <= 0 {
		cfg.ResponseTimeout = hbone.DefaultResponseTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "h3-pool")
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func(_ context.Context, src netip.Addr) (net.PacketConn, error) {
			return ListenUDP(netip.AddrPortFrom(src, 0), log)
		}
	}
	return &Pool{
		cfg:        cfg,
		log:        log,
		h3:         &http3.Transport{DisableCompression: true, Logger: log},
		transports: map[netip.Addr]*quic.Transport{},
		conns:      map[poolKey][]*poolConn{},
	}
}

// ListenUDP opens a UDP socket on addr (any address when addr's is zero)
// with buffers sized by SizeBuffers; when they are short, it logs why once
// per socket at info level.
func ListenUDP(addr netip.AddrPort, log *slog.Logger) (*net.UDPConn, error) {
	la := net.UDPAddrFromAddrPort(addr)
	if !addr.Addr().IsValid() {
		la = &net.UDPAddr{Port: int(addr.Port())}
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	if _, _, err := SizeBuffers(c); err != nil && log != nil {
		log.Info("udp buffers smaller than quic-go asks", "addr", c.LocalAddr().String(), "reason", err)
	}
	return c, nil
}

func keyOf(t *hbone.Target) poolKey {
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

// Dial opens a CONNECT stream to t over QUIC (t.Addr is the UDP address of
// the peer's HBONE server). It returns once the server answered 200; any
// other status is returned as an *hbone.StatusError. ctx bounds the
// handshake and the wait for the answer, not the life of the Conn. Errors
// wrapping ErrHandshake or ErrPeerSilent are those after which the caller
// may dial over TCP instead.
func (p *Pool) Dial(ctx context.Context, t hbone.Target) (*Conn, error) {
	if _, err := netip.ParseAddrPort(t.Authority); err != nil {
		return nil, fmt.Errorf("h3: authority %q is not ip:port: %w", t.Authority, err)
	}
	key := keyOf(&t)
	const attempts = 2 // a pooled connection may have died since it was picked
	var err error
	for range attempts {
		var pc *poolConn
		pc, err = p.getConn(ctx, key, &t)
		if err != nil {
			return nil, err
		}
		var c *Conn
		var sent bool
		c, sent, err = p.roundTrip(ctx, pc, &t)
		if err == nil {
			return c, nil
		}
		p.release(pc)
		if sent || ctx.Err() != nil {
			return nil, err
		}
		p.log.Debug("retrying CONNECT on another connection", "error", err)
	}
	return nil, err
}

// roundTrip sends the CONNECT on pc and waits for the answer. sent
// reports whether the request may have reached the server (not retried).
// A peer that sends nothing for PeerTimeout after the CONNECT is taken for
// dead: pc leaves the pool, and the error wraps ErrPeerSilent.
func (p *Pool) roundTrip(ctx context.Context, pc *poolConn, t *hbone.Target) (c *Conn, sent bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ResponseTimeout)
	defer cancel()
	heard := pc.qc.ConnectionStats().PacketsReceived
	rs, err := pc.cc.OpenRequestStream(ctx)
	if err != nil {
		p.forget(pc)
		return nil, false, fmt.Errorf("h3: open stream to %v: %w", t.Addr, err)
	}
	abort := func() {
		rs.CancelRead(ErrCodeConnect)
		rs.CancelWrite(ErrCodeConnect)
	}
	// Bound the answer by ctx, and by the peer's silence: any packet
	// (the ACK of the HEADERS comes within the peer's max_ack_delay) says
	// it is there.
	const waiting, answered, silent = 0, 1, 2
	var state atomic.Int32
	watch := time.AfterFunc(p.cfg.PeerTimeout, func() {
		if pc.qc.ConnectionStats().PacketsReceived == heard && state.CompareAndSwap(waiting, silent) {
			abort()
		}
	})
	defer watch.Stop()
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	h := http.Header{}
	for k, v := range t.Header {
		h[k] = slices.Clone(v)
	}
	req := &http.Request{
		Method: http.MethodConnect,
		Host:   t.Authority,
		URL:    &url.URL{Host: t.Authority},
		Header: h,
	}
	req = req.WithContext(ctx)
	if err := rs.SendRequestHeader(req); err != nil {
		abort()
		return nil, true, fmt.Errorf("h3: CONNECT %s via %v: %w", t.Authority, t.Addr, err)
	}
	resp, err := rs.ReadResponse()
	if !state.CompareAndSwap(waiting, answered) && err == nil {
		err = ErrPeerSilent // the answer came as the stream was aborted
	}
	if err != nil {
		abort()
		switch {
		case state.Load() == silent:
			p.evict(pc)
			err = fmt.Errorf("%w for %v", ErrPeerSilent, p.cfg.PeerTimeout)
		case ctx.Err() != nil:
			err = ctx.Err()
		}
		return nil, true, fmt.Errorf("h3: CONNECT %s via %v: %w", t.Authority, t.Addr, err)
	}
	if !stop() {
		abort()
		return nil, true, fmt.Errorf("h3: CONNECT %s via %v: %w", t.Authority, t.Addr, ctx.Err())
	}
	if resp.StatusCode != http.StatusOK {
		abort()
		return nil, true, &hbone.StatusError{Code: resp.StatusCode, Reason: resp.Header.Get(hbone.ReasonHeader)}
	}
	c = &Conn{s: rs, local: pc.qc.LocalAddr(), remote: pc.qc.RemoteAddr()}
	c.onClose = sync.OnceFunc(func() { p.release(pc) })
	return c, true, nil
}

// getConn returns a connection with a stream reserved for the caller,
// dialing one if none has room. Concurrent callers share one dial.
func (p *Pool) getConn(ctx context.Context, key poolKey, t *hbone.Target) (*poolConn, error) {
	return dialgroup.Get(ctx, &p.dials, &p.mu, (*poolDialer)(p), key, t)
}

// poolDialer is the Pool as dialgroup.Get uses it.
type poolDialer Pool

// Reserve: under Pool.mu.
func (d *poolDialer) Reserve(key poolKey) *poolConn { return (*Pool)(d).reserveLocked(key) }

func (d *poolDialer) Dial(ctx context.Context, key poolKey, t *hbone.Target) (*poolConn, error) {
	return (*Pool)(d).dialConn(ctx, key, t)
}

// Add: under Pool.mu; a watcher forgets pc once its connection ended.
func (d *poolDialer) Add(key poolKey, pc *poolConn) {
	p := (*Pool)(d)
	p.conns[key] = append(p.conns[key], pc)
	p.wg.Add(1)
	go p.watch(pc)
}

func (d *poolDialer) Discard(pc *poolConn) { pc.qc.CloseWithError(errCodeNoError, "") }

// reserveLocked reserves a stream on a pooled connection with room.
func (p *Pool) reserveLocked(key poolKey) *poolConn {
	for _, pc := range p.conns[key] {
		if pc.streams >= p.cfg.MaxStreamsPerConn || pc.qc.Context().Err() != nil {
			continue
		}
		pc.streams++
		if pc.idle != nil {
			pc.idle.Stop()
		}
		return pc
	}
	return nil
}

// release returns a stream reservation; a connection left without
// streams is closed after IdleTimeout, at once if it left the pool.
func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	pc.streams--
	last, gone := pc.streams == 0, pc.gone
	if last && !gone {
		pc.idleSince = time.Now()
		if pc.idle == nil {
			pc.idle = time.AfterFunc(p.cfg.IdleTimeout, func() { p.closeIfIdle(pc) })
		} else {
			pc.idle.Reset(p.cfg.IdleTimeout)
		}
	}
	p.mu.Unlock()
	if last && gone {
		pc.qc.CloseWithError(errCodeNoError, "") // nothing if it had ended
	}
}

func (p *Pool) closeIfIdle(pc *poolConn) {
	p.mu.Lock()
	idle := pc.streams == 0 && !pc.gone && time.Since(pc.idleSince) >= p.cfg.IdleTimeout
	if idle {
		p.removeLocked(pc)
	}
	p.mu.Unlock()
	if idle {
		p.log.Debug("closing idle connection", "addr", pc.key.addr.String())
		pc.qc.CloseWithError(errCodeNoError, "idle")
	}
}

// watch forgets pc once its QUIC connection ended.
func (p *Pool) watch(pc *poolConn) {
	defer p.wg.Done()
	<-pc.qc.Context().Done()
	p.forget(pc)
}

// evict drops pc from the pool: no new stream goes on it. Its open
// tunnels run on (if the peer was only slow, they are fine; if it is gone,
// QUIC's idle timeout ends them), and release closes it after the last.
func (p *Pool) evict(pc *poolConn) {
	p.forget(pc)
	p.log.Info("peer silent, connection leaves the pool", "addr", pc.key.addr.String(), "timeout", p.cfg.PeerTimeout)
}

func (p *Pool) forget(pc *poolConn) {
	p.mu.Lock()
	p.removeLocked(pc)
	p.mu.Unlock()
}

func (p *Pool) removeLocked(pc *poolConn) {
	if pc.gone {
		return
	}
	pc.gone = true
	if pc.idle != nil {
		pc.idle.Stop()
	}
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

// transport returns the QUIC transport of the source address src.
func (p *Pool) transport(ctx context.Context, src netip.Addr) (*quic.Transport, error) {
	p.mu.Lock()
	tr := p.transports[src]
	p.mu.Unlock()
	if tr != nil {
		return tr, nil
	}
	pc, err := p.cfg.ListenPacket(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("h3: udp socket for %v: %w", src, err)
	}
	tr = &quic.Transport{Conn: pc}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dials.Closed() != nil {
		pc.Close()
		return nil, ErrPoolClosed
	}
	if old := p.transports[src]; old != nil {
		pc.Close()
		return old, nil
	}
	p.transports[src] = tr
	return tr, nil
}

// dialConn runs the QUIC handshake and starts an HTTP/3 client connection.
func (p *Pool) dialConn(ctx context.Context, key poolKey, t *hbone.Target) (*poolConn, error) {
	tr, err := p.transport(ctx, t.SourceAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	cfg, err := p.cfg.TLSConfig(ctx, t.SourceID, t.DestIDs)
	if err != nil {
		return nil, fmt.Errorf("%w: tls config: %w", ErrHandshake, err)
	}
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	qc, err := tr.Dial(hctx, net.UDPAddrFromAddrPort(t.Addr), ClientTLS(cfg), quicConfig(p.cfg.HandshakeTimeout, -1))
	if err != nil {
		if ctx.Err() == nil && hctx.Err() != nil {
			err = fmt.Errorf("handshake timeout: %w", err)
		}
		return nil, fmt.Errorf("%w: handshake with %v: %w", ErrHandshake, t.Addr, err)
	}
	state := qc.ConnectionState().TLS
	if err := checkPeer(&state, t.DestIDs); err != nil {
		qc.CloseWithError(errCodeNoError, "")
		return nil, fmt.Errorf("%w: %v: %w", ErrHandshake, t.Addr, err)
	}
	// In TLS 1.3 the client is done before the server checked its
	// certificate: the server's SETTINGS, sent once it accepted the
	// connection, tell that it did.
	cc := p.h3.NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-qc.Context().Done():
		return nil, fmt.Errorf("%w: handshake with %v: %w", ErrHandshake, t.Addr, context.Cause(qc.Context()))
	case <-hctx.Done():
		qc.CloseWithError(errCodeNoError, "")
		return nil, fmt.Errorf("%w: no settings from %v: %w", ErrHandshake, t.Addr, hctx.Err())
	}
	p.log.Debug("connection opened", "addr", t.Addr.String(), "src", t.SourceID.String())
	return &poolConn{key: key, qc: qc, cc: cc}, nil
}

// CloseFrom closes the connections and the UDP socket of the source
// address src (a local pod that went away).
func (p *Pool) CloseFrom(src netip.Addr) {
	p.mu.Lock()
	tr := p.transports[src]
	delete(p.transports, src)
	var conns []*poolConn
	for key, cs := range p.conns {
		if key.srcAddr == src {
			conns = append(conns, cs...)
		}
	}
	for _, pc := range conns {
		p.removeLocked(pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.qc.CloseWithError(errCodeNoError, "")
	}
	if tr != nil {
		tr.Close()
		tr.Conn.Close()
	}
}

// Close closes every connection and socket. Dial fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.dials.Close(ErrPoolClosed)
	var all []*poolConn
	for _, cs := range p.conns {
		all = append(all, cs...)
	}
	for _, pc := range all {
		p.removeLocked(pc)
	}
	trs := p.transports
	p.transports = map[netip.Addr]*quic.Transport{}
	p.mu.Unlock()
	for _, pc := range all {
		pc.qc.CloseWithError(errCodeNoError, "")
	}
	var errs []error
	for _, tr := range trs {
		errs = append(errs, tr.Close(), ignoreClosed(tr.Conn.Close()))
	}
	p.wg.Wait()
	return errors.Join(errs...)
}

// Stats returns the number of pooled connections and open streams.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s PoolStats
	for _, cs := range p.conns {
		s.Conns += len(cs)
		for _, pc := range cs {
			s.Streams += pc.streams
		}
	}
	return s
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
