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
	"runtime/debug"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/hbone/internal/answer"
)

// Handler serves one tunnel, as hbone.Handler does for TCP: it must call
// exactly one of t.Accept or t.Reject; if it returns without either, the
// server answers 503. When it returns, the tunnel is closed, so a handler
// that accepted relays the stream before returning. ctx ends when the
// stream or the connection does.
type Handler interface {
	ServeH3(ctx context.Context, req *hbone.Request, t *Tunnel)
}

// HandlerFunc adapts a function to a [Handler].
type HandlerFunc func(ctx context.Context, req *hbone.Request, t *Tunnel)

// ServeH3 calls f(ctx, req, t).
func (f HandlerFunc) ServeH3(ctx context.Context, req *hbone.Request, t *Tunnel) { f(ctx, req, t) }

// Server terminates HBONE over QUIC: mTLS (TLS 1.3, ALPN h3), then HTTP/3
// CONNECT streams. One Server serves any number of UDP sockets (in-pod
// mode: one per pod).
type Server struct {
	// TLSConfig is the server's mTLS configuration as for HBONE over TCP
	// (client certificates required and verified); ServerTLS sets its ALPN
	// to h3. Required.
	TLSConfig *tls.Config
	// Handler serves each CONNECT. Required.
	Handler Handler
	// MaxConcurrentStreams per connection. Default 200.
	MaxConcurrentStreams int
	// HandshakeTimeout bounds the QUIC handshake. Default 10 s.
	HandshakeTimeout time.Duration
	// Logger; default discards.
	Logger *slog.Logger

	once      sync.Once
	tlsConfig *tls.Config
	h3        *http3.Server
	log       *slog.Logger

	mu         sync.Mutex
	transports map[*quic.Transport]struct{}
	closing    bool
	handlers   sync.WaitGroup
	closed     chan struct{} // closed by Close, once every connection ended
	closeOnce  sync.Once
}

func (s *Server) init() {
	s.once.Do(func() {
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.log = s.log.With("component", "h3-server")
		s.tlsConfig = ServerTLS(s.TLSConfig)
		s.h3 = &http3.Server{
			Handler: http.HandlerFunc(s.serveHTTP),
			Logger:  s.log,
		}
		s.transports = map[*quic.Transport]struct{}{}
		s.closed = make(chan struct{})
	})
}

// Serve serves HBONE over QUIC on pc until pc or the server is closed,
// and closes pc when it returns. It
// returns ErrServerClosed after Close, an error wrapping net.ErrClosed
// when pc was closed, or another error.
func (s *Server) Serve(pc net.PacketConn) error {
	if s.TLSConfig == nil || s.Handler == nil {
		return errors.New("h3: Server needs TLSConfig and Handler")
	}
	s.init()
	handshake := s.HandshakeTimeout
	if handshake <= 0 {
		handshake = defaultHandshakeTimeout
	}
	maxStreams := int64(s.MaxConcurrentStreams)
	if maxStreams <= 0 {
		maxStreams = defaultMaxStreams
	}
	tr := &quic.Transport{Conn: pc}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.transports[tr] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			// Shutdown: the connections on tr drain until Close.
			<-s.closed
		}
		s.mu.Lock()
		delete(s.transports, tr)
		s.mu.Unlock()
		tr.Close()
		pc.Close()
	}()
	ln, err := tr.Listen(s.tlsConfig, quicConfig(handshake, maxStreams))
	if err != nil {
		return fmt.Errorf("h3: listen on %v: %w", pc.LocalAddr(), err)
	}
	defer ln.Close()
	err = s.h3.ServeListener(ln)
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	switch {
	case closing:
		return ErrServerClosed
	case errors.Is(err, quic.ErrTransportClosed), errors.Is(err, quic.ErrServerClosed),
		errors.Is(err, http.ErrServerClosed), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("h3: serve %v: %w", pc.LocalAddr(), net.ErrClosed)
	default:
		return fmt.Errorf("h3: serve %v: %w", pc.LocalAddr(), err)
	}
}

// Close closes every socket and connection and waits for the handlers to
// return.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	s.closing = true
	trs := make([]*quic.Transport, 0, len(s.transports))
	for tr := range s.transports {
		trs = append(trs, tr)
	}
	s.mu.Unlock()
	err := s.h3.Close()
	s.closeOnce.Do(func() { close(s.closed) })
	for _, tr := range trs {
		tr.Close()
	}
	s.handlers.Wait()
	return err
}

// Shutdown stops accepting connections, sends GOAWAY on every connection
// and waits for their tunnels to finish; when ctx is done first it closes
// what remains and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	err := s.h3.Shutdown(ctx)
	s.Close()
	return err
}

// serveHTTP checks one CONNECT as hbone's server does and hands it to the
// Handler.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		reject(w, http.StatusServiceUnavailable, "server closing")
		return
	}
	s.handlers.Add(1)
	s.mu.Unlock()
	defer s.handlers.Done()

	if r.Method != http.MethodConnect {
		reject(w, http.StatusBadRequest, "method is not CONNECT")
		return
	}
	if r.Proto != "HTTP/3.0" {
		// Extended CONNECT (RFC 9220: quic-go offers it and puts :protocol
		// in Proto): refused as over TCP (serverconn.go), never a tunnel.
		reject(w, http.StatusBadRequest, "extended CONNECT is not supported")
		return
	}
	authority, err := netip.ParseAddrPort(r.Host)
	if err != nil {
		reject(w, http.StatusBadRequest, "authority is not ip:port")
		return
	}
	authority = netip.AddrPortFrom(authority.Addr().Unmap(), authority.Port())
	if r.TLS == nil {
		reject(w, http.StatusUnauthorized, "no TLS state")
		return
	}
	peer, err := hbone.PeerIDFromState(r.TLS)
	if err != nil {
		// The TLS configuration requires a verified certificate: not reached.
		reject(w, http.StatusUnauthorized, "no peer identity")
		return
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	req := &hbone.Request{
		Authority:  authority,
		Header:     r.Header,
		PeerID:     peer,
		LocalAddr:  addrPortOf(local),
		RemoteAddr: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()),
	}
	t := &Tunnel{w: w, local: local, remote: udpAddr(req.RemoteAddr)}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panic", "panic", p, "stack", string(debug.Stack()))
			t.Reject(http.StatusInternalServerError, "handler panic")
		}
		t.finish()
	}()
	s.Handler.ServeH3(r.Context(), req, t)
}

func reject(w http.ResponseWriter, code int, reason string) {
	w.Header().Set(hbone.ReasonHeader, reason)
	w.WriteHeader(code)
}

// Tunnel is the server's side of one CONNECT before it is answered.
type Tunnel struct {
	w             http.ResponseWriter
	local, remote net.Addr
	answer        answer.Once[*Conn]
}

// Accept answers 200 and returns the stream.
func (t *Tunnel) Accept() (*Conn, error) {
	return t.answer.Accept(func() (*Conn, error) {
		hs, ok := t.w.(http3.HTTPStreamer)
		if !ok {
			return nil, errors.New("h3: response writer cannot hand over its stream")
		}
		t.w.WriteHeader(http.StatusOK)
		str, err := hs.HTTPStream()
		if err != nil {
			return nil, fmt.Errorf("h3: sending 200: %w", err)
		}
		return &Conn{s: str, local: t.local, remote: t.remote}, nil
	})
}

// Reject answers status (400, 401, 503, ...) with reason in hbone's
// ReasonHeader and ends the stream. Reject after Accept or Reject does
// nothing.
func (t *Tunnel) Reject(status int, reason string) {
	t.answer.Reject(func() { reject(t.w, status, answer.Reason(reason)) })
}

// finish runs when the handler returned.
func (t *Tunnel) finish() {
	t.answer.Finish(func() { reject(t.w, http.StatusServiceUnavailable, "no response from handler") })
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func udpAddr(ap netip.AddrPort) net.Addr { return net.UDPAddrFromAddrPort(ap) }
