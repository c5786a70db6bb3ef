package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone/internal/answer"
)

// Handler serves one tunnel. It must call exactly one of t.Accept or
// t.Reject; if it returns without either, the server answers 503. When it
// returns, the tunnel is closed, so a handler that accepted relays the
// stream before returning. ctx is cancelled when the stream is reset, the
// connection closes, or the handler returns.
type Handler interface {
	ServeHBONE(ctx context.Context, req *Request, t *Tunnel)
}

// HandlerFunc adapts a function to a [Handler].
type HandlerFunc func(ctx context.Context, req *Request, t *Tunnel)

// ServeHBONE calls f(ctx, req, t).
func (f HandlerFunc) ServeHBONE(ctx context.Context, req *Request, t *Tunnel) { f(ctx, req, t) }

// Server terminates HBONE: mTLS, then HTTP/2 CONNECT streams.
type Server struct {
	// TLSConfig is the server-side mTLS config (client certificates
	// required and verified, ALPN h2). Required.
	TLSConfig *tls.Config
	// Handler serves each CONNECT. Required.
	Handler Handler
	// MaxConcurrentStreams per connection (SETTINGS_MAX_CONCURRENT_STREAMS);
	// a CONNECT past it is refused with RST_STREAM(REFUSED_STREAM).
	// Default 200, as Istio's ztunnel.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize is SETTINGS_MAX_HEADER_LIST_SIZE: a request whose
	// header list is larger is answered 431. Default 64 KiB.
	MaxHeaderListSize uint32
	// SocketOptions are set on every accepted connection (keepalive 180 s
	// by default; see SocketOptions).
	SocketOptions SocketOptions
	// OnLimit, if not nil, is called with a Limit... constant each time a
	// limit is hit, for example to count it in a metric. It may be called
	// with the connection's lock held: it must be quick and not call
	// back into the server.
	OnLimit func(limit string)
	// PeerID extracts the client's identity from the verified TLS state.
	// Default PeerIDFromState (first URI SAN of the leaf).
	PeerID func(*tls.ConnectionState) (spiffeid.ID, error)
	// Logger; default discards.
	Logger *slog.Logger
	// MaxPendingHandshakes caps the accepted connections that have not
	// finished their TLS handshake yet (the connections of unauthenticated
	// peers). Past it, new connections are closed at once. Default 1024.
	MaxPendingHandshakes int
	// HandshakeTimeout bounds the TLS handshake, and then the HTTP/2
	// preface and first SETTINGS. Default 10 s.
	HandshakeTimeout time.Duration
	// OnAcceptError, if not nil, is called with each accept error that
	// Serve retries (EMFILE, ENFILE, ECONNABORTED, ECONNRESET, timeouts...),
	// for example to count it in a metric. Default: nothing.
	OnAcceptError func(err error)

	mu          sync.Mutex
	handshaking int // connections in their TLS handshake
	listeners   map[net.Listener]struct{}
	conns       map[net.Conn]*serverConn // nil while handshaking
	closing     bool                     // Shutdown or Close began: no new connections
	closed      bool                     // Close began: no connection goes past its handshake
	tlsConfig   *tls.Config              // TLSConfig as oneRecordPerWrite makes it
	wg          sync.WaitGroup           // connection goroutines (and, through them, handlers)
}

// Defaults of the Server's fields. handshakeTimeout also bounds the
// client's TLS handshake.
const (
	handshakeTimeout            = 10 * time.Second
	defaultMaxPendingHandshakes = 1024
)

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return handshakeTimeout
}

func (s *Server) maxHeaderListSize() uint32 {
	if s.MaxHeaderListSize > 0 {
		return s.MaxHeaderListSize
	}
	return DefaultMaxHeaderListSize
}

func (s *Server) maxPendingHandshakes() int {
	if s.MaxPendingHandshakes > 0 {
		return s.MaxPendingHandshakes
	}
	return defaultMaxPendingHandshakes
}

// TemporaryAcceptError reports whether an accept error is worth retrying,
// as net/http retries its Temporary errors: a timeout, a descriptor or
// memory shortage (EMFILE, ENFILE, ENOBUFS, ENOMEM), or a connection that
// failed in the queue before it was accepted (ECONNABORTED and the network
// errors accept(2) says to treat like EAGAIN). Every accept loop of the
// mesh uses it, with AcceptBackoff.
func TemporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range [...]syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
		syscall.EPROTO, syscall.ENETDOWN, syscall.ENOPROTOOPT, syscall.EHOSTDOWN,
		syscall.EHOSTUNREACH, syscall.EOPNOTSUPP, syscall.ENETUNREACH,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// AcceptBackoff returns the pause before the next retried accept, given
// the previous one (zero after a successful accept): 5 ms doubling to 1 s,
// as net/http.
func AcceptBackoff(prev time.Duration) time.Duration {
	return min(max(2*prev, 5*time.Millisecond), time.Second)
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts TCP connections on l and serves HBONE on them. It returns
// ErrServerClosed after Shutdown or Close, or the listener's error.
func (s *Server) Serve(l net.Listener) error {
	if s.TLSConfig == nil || s.Handler == nil {
		return errors.New("hbone: Server needs TLSConfig and Handler")
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[l] = struct{}{}
	if s.tlsConfig == nil {
		s.tlsConfig = oneRecordPerWrite(s.TLSConfig)
	}
	tlsConfig := s.tlsConfig
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	log := s.logger().With("component", "hbone-server")
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if TemporaryAcceptError(err) {
				if s.OnAcceptError != nil {
					s.OnAcceptError(err)
				}
				backoff = AcceptBackoff(backoff)
				log.Warn("accept failed, retrying", "error", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone: accept: %w", err)
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		if s.handshaking >= s.maxPendingHandshakes() {
			s.mu.Unlock()
			onLimit(s.OnLimit, LimitPendingHandshakes)
			log.Debug("too many pending TLS handshakes, closing connection", "remote", c.RemoteAddr().String(), "max", s.maxPendingHandshakes())
			c.Close()
			continue
		}
		if s.conns == nil {
			s.conns = make(map[net.Conn]*serverConn)
		}
		s.conns[c] = nil // handshaking
		s.handshaking++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, tlsConfig, log)
	}
}

// serveConn runs the TLS handshake and the HTTP/2 connection on c.
func (s *Server) serveConn(c net.Conn, tlsConfig *tls.Config, log *slog.Logger) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	log = log.With("remote", c.RemoteAddr().String())
	if err := s.SocketOptions.Apply(c); err != nil {
		log.Debug("setting socket options", "error", err)
	}
	raw := newRawConn(c)
	tc := tls.Server(raw, tlsConfig)
	ctx, cancel := context.WithTimeout(context.Background(), s.handshakeTimeout())
	err := tc.HandshakeContext(ctx)
	if timedOut(context.Background(), ctx, err) {
		onLimit(s.OnLimit, LimitHandshakeTimeout)
	}
	cancel()
	s.mu.Lock()
	s.handshaking--
	s.mu.Unlock()
	if err != nil {
		log.Debug("tls handshake failed", "error", err)
		tc.Close()
		return
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != "h2" {
		log.Debug("client did not negotiate h2", "alpn", state.NegotiatedProtocol)
		tc.Close()
		return
	}
	peerID := s.PeerID
	if peerID == nil {
		peerID = PeerIDFromState
	}
	peer, err := peerID(&state)
	if err != nil {
		log.Debug("no peer identity", "error", err)
		tc.Close()
		return
	}
	maxStreams := s.MaxConcurrentStreams
	if maxStreams == 0 {
		maxStreams = 200
	}
	raw.startBuffering() // authenticated: now worth the read buffer
	sc := newServerConn(s, tc, tlsWriter{tc, raw}, peer, maxStreams, log.With("peer", peer.String()))

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		tc.Close()
		return
	}
	s.conns[c] = sc
	draining := s.closing // Shutdown began during the handshake
	s.mu.Unlock()
	if draining {
		sc.shutdown() // GOAWAY once the SETTINGS are exchanged
	}
	sc.serve()
}

// Shutdown stops accepting connections, sends GOAWAY on every connection and
// waits for their tunnels to finish. A connection still in its TLS
// handshake finishes it (within HandshakeTimeout) and is then drained the
// same way: its client is told to go elsewhere rather than cut. When ctx
// is done first, it closes what remains and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	for _, sc := range s.stopListening(false) {
		if sc != nil { // the handshaking ones: serveConn, after the handshake
			sc.shutdown()
		}
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection, and waits for the
// handlers to return.
func (s *Server) Close() error {
	for c, sc := range s.stopListening(true) {
		if sc == nil {
			c.Close()
			continue
		}
		sc.close(errServerClosing)
	}
	s.wg.Wait()
	return nil
}

// stopListening marks the server closing (and closed, for Close), closes
// the listeners and returns a copy of the current connections.
func (s *Server) stopListening(closed bool) map[net.Conn]*serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	s.closed = s.closed || closed
	for l := range s.listeners {
		l.Close()
	}
	return maps.Clone(s.conns)
}

// Tunnel is the server's side of one CONNECT before it is answered.
type Tunnel struct {
	st     *stream
	answer answer.Once[*Conn]
}

// Accept answers 200 and returns the stream.
func (t *Tunnel) Accept() (*Conn, error) {
	return t.answer.Accept(func() (*Conn, error) {
		sc := t.serverConn()
		if err := sc.respond(t.st, http.StatusOK, "", false); err != nil {
			return nil, err
		}
		return &Conn{s: t.st, local: sc.conn.LocalAddr(), remote: sc.conn.RemoteAddr()}, nil
	})
}

// Reject answers status (400, 401, 503, ...) and ends the stream. reason is
// sent in the ReasonHeader response header for debugging; there is no body.
// Reject after Accept or Reject does nothing.
func (t *Tunnel) Reject(status int, reason string) {
	t.answer.Reject(func() { t.serverConn().reject(t.st, status, reason) })
}

func (t *Tunnel) serverConn() *serverConn { return t.st.c.side.(*serverConn) }

// finish is called when the handler returned.
func (t *Tunnel) finish() {
	t.answer.Finish(func() {
		t.serverConn().reject(t.st, http.StatusServiceUnavailable, "no response from handler")
	})
}

// runHandler serves one stream.
func (sc *serverConn) runHandler(st *stream, req *Request) {
	defer sc.handlers.Done()
	defer func() {
		sc.mu.Lock()
		sc.handlerDoneLocked()
		sc.mu.Unlock()
	}()
	t := &Tunnel{st: st}
	defer func() {
		if r := recover(); r != nil {
			sc.log.Error("handler panic", "panic", r, "stack", string(debug.Stack()))
			t.Reject(http.StatusInternalServerError, "handler panic")
			sc.reset(st, errHandlerPanic)
		}
		t.finish()
		st.cancel()
	}()
	sc.srv.Handler.ServeHBONE(st.ctx, req, t)
}

// request builds the Request of a new stream.
func (sc *serverConn) request(authority netip.AddrPort, h http.Header) *Request {
	return &Request{
		Authority:  authority,
		Header:     h,
		PeerID:     sc.peer,
		LocalAddr:  addrPortOf(sc.conn.LocalAddr()),
		RemoteAddr: addrPortOf(sc.conn.RemoteAddr()),
	}
}

var (
	errServerClosing = errors.New("hbone: server closing")
	errHandlerPanic  = errors.New("hbone: handler panic")
)
