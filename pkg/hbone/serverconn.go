package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// This file is the server's side of an HTTP/2 connection (h2conn.go is
// the core it shares with the client): the preface and SETTINGS exchange,
// accepting CONNECT streams and running their handlers within
// MaxConcurrentStreams, the answers (200, 400 and the handler's rejections),
// graceful shutdown, and the defences against peers that reset streams
// faster than they complete (rapid reset).

var errRapidReset = errors.New("hbone: peer resets streams faster than they complete")

type serverConn struct {
	h2Conn
	srv        *Server
	peer       spiffeid.ID
	log        *slog.Logger
	maxStreams uint32

	ctx      context.Context // cancelled when the connection closes
	cancel   context.CancelFunc
	handlers sync.WaitGroup

	// Guarded by mu. Handlers run for at most maxStreams streams at a
	// time, counting streams the client reset whose handler has not
	// returned yet; the others wait in unstarted, and are dropped there if
	// reset first.
	curHandlers uint32
	unstarted   []pendingHandler
	// earlyResets counts streams the client reset before they were
	// answered, minus the streams answered since (never below 0).
	earlyResets int
}

var _ side = (*serverConn)(nil)

// pendingHandler is a stream waiting for a handler slot.
type pendingHandler struct {
	st  *stream
	req *Request
}

// maxEarlyResets is how far the streams a client resets before their
// answer may outnumber those answered before the connection is closed with
// ENHANCE_YOUR_CALM (CVE-2023-44487, rapid reset). Legitimate clients reset
// an unanswered CONNECT only when they give up waiting for it.
const maxEarlyResets = 1000

func newServerConn(s *Server, tc *tls.Conn, w io.Writer, peer spiffeid.ID, maxStreams uint32, log *slog.Logger) *serverConn {
	sc := &serverConn{
		srv:        s,
		peer:       peer,
		log:        log,
		maxStreams: maxStreams,
	}
	sc.init(tc, w, sc, true, s.maxHeaderListSize())
	sc.in = inflow{avail: connWindow}
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	return sc
}

// serve runs the connection until it closes, then waits for its handlers.
func (sc *serverConn) serve() {
	err := sc.start()
	if err == nil {
		go sc.writeLoop()
		err = sc.readLoop()
	} else {
		close(sc.wdone)
	}
	sc.close(err)
	sc.handlers.Wait()
	<-sc.wdone
}

// start reads the client preface and exchanges SETTINGS.
func (sc *serverConn) start() error {
	sc.conn.SetDeadline(time.Now().Add(sc.srv.handshakeTimeout()))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(sc.conn, preface); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			onLimit(sc.srv.OnLimit, LimitHandshakeTimeout)
		}
		return fmt.Errorf("hbone: reading client preface: %w", err)
	}
	if string(preface) != http2.ClientPreface {
		return errors.New("hbone: bad client preface")
	}
	sc.wfr.WriteSettings(ourSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxStreams}, sc.srv.maxHeaderListSize())...)
	sc.wfr.WriteWindowUpdate(0, connWindow-initialWindow)
	if err := sc.bw.Flush(); err != nil {
		return fmt.Errorf("hbone: writing settings: %w", err)
	}
	f, err := sc.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("hbone: reading client settings: %w", err)
	}
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		return errors.New("hbone: first frame is not SETTINGS")
	}
	if err := sc.processFrame(f); err != nil {
		return err
	}
	sc.conn.SetDeadline(time.Time{})
	return nil
}

// headersLocked handles a HEADERS frame that opens stream id: a CONNECT
// gets a handler, anything else a 400.
func (sc *serverConn) headersLocked(id uint32, _ *stream, f *http2.MetaHeadersFrame) error {
	if id <= sc.lastID {
		// RFC 9113 §5.1.1 (h2conn.go's processHeaders handles closed
		// streams before they get here).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.lastID = id
	if sc.goingAway || uint32(len(sc.streams)) >= sc.maxStreams {
		if !sc.goingAway {
			onLimit(sc.srv.OnLimit, LimitServerStreams)
		}
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeRefusedStream)})
		return nil
	}
	reject := func(status uint32, reason string) error {
		// Sanitized (and so bounded) now: the queue may hold many.
		sc.queueLocked(ctrlFrame{kind: ctrlHeaders, stream: id, n: status, reason: sanitizeReason(reason)})
		if !f.StreamEnded() {
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeNo)})
		}
		return nil
	}
	if f.Truncated {
		// RFC 9113 §10.5.1: 431 (RFC 6585), as x/net's server answers;
		// the connection's HPACK state is intact (the Framer decoded the
		// whole block), so only this stream ends.
		onLimit(sc.srv.OnLimit, LimitHeaderList)
		return reject(http.StatusRequestHeaderFieldsTooLarge, "header list too large")
	}
	if malformed(f) {
		// RFC 9113 §8.1.1: a stream error PROTOCOL_ERROR, as x/net's
		// server and Rust's h2 (ztunnel) answer; never tunnelled.
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if m := f.PseudoValue("method"); m != http.MethodConnect {
		return reject(http.StatusBadRequest, "method "+m+" is not CONNECT")
	}
	if f.PseudoValue("protocol") != "" {
		return reject(http.StatusBadRequest, "extended CONNECT is not supported")
	}
	authority, err := netip.ParseAddrPort(f.PseudoValue("authority"))
	if err != nil {
		return reject(http.StatusBadRequest, "authority is not ip:port")
	}
	h := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		h.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	st := sc.newStreamLocked(id)
	st.peerHeaders = true
	st.remoteClosed = f.StreamEnded()
	st.ctx, st.cancel = context.WithCancel(sc.ctx)
	sc.streams[id] = st
	req := sc.request(netip.AddrPortFrom(authority.Addr().Unmap(), authority.Port()), h)
	return sc.scheduleHandlerLocked(st, req)
}

// malformed reports whether the request in f is malformed in what x/net's
// Framer does not check (it refuses upper-case names, pseudo-header fields
// after regular ones, unknown, duplicate and response pseudo-header fields,
// and invalid values): pseudo-header fields missing or out of place
// (RFC 9113 §8.3.1, §8.5: a CONNECT has :authority and, unless it is an
// extended CONNECT, neither :scheme nor :path) and connection-specific
// fields (§8.2.2).
func malformed(f *http2.MetaHeadersFrame) bool {
	method := f.PseudoValue("method")
	scheme, path := f.PseudoValue("scheme"), f.PseudoValue("path")
	switch {
	case method != http.MethodConnect:
		if method == "" || scheme == "" || path == "" {
			return true
		}
	case f.PseudoValue("protocol") == "":
		if scheme != "" || path != "" || f.PseudoValue("authority") == "" {
			return true
		}
	}
	// An extended CONNECT (RFC 8441) is answered 400, unsupported.
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return true
		case "te":
			if hf.Value != "trailers" {
				return true
			}
		}
	}
	return false
}

// scheduleHandlerLocked starts st's handler, or queues it until a running
// handler returns.
func (sc *serverConn) scheduleHandlerLocked(st *stream, req *Request) error {
	if sc.curHandlers < sc.maxStreams {
		sc.curHandlers++
		sc.handlers.Add(1)
		go sc.runHandler(st, req)
		return nil
	}
	if len(sc.unstarted) >= 4*int(sc.maxStreams) {
		// Only reset streams can be queued past maxStreams.
		return fmt.Errorf("%w: %d streams wait for a handler", errRapidReset, len(sc.unstarted))
	}
	sc.unstarted = append(sc.unstarted, pendingHandler{st, req})
	return nil
}

// handlerDoneLocked is called when a handler returns: it starts the next
// queued handler whose stream is still live.
func (sc *serverConn) handlerDoneLocked() {
	sc.curHandlers--
	i := 0
	for ; i < len(sc.unstarted) && sc.curHandlers < sc.maxStreams; i++ {
		p := sc.unstarted[i]
		sc.unstarted[i] = pendingHandler{}
		if p.st.err != nil || sc.closeErr != nil {
			continue // reset (or the connection closed) before it started
		}
		sc.curHandlers++
		sc.handlers.Add(1)
		go sc.runHandler(p.st, p.req)
	}
	sc.unstarted = sc.unstarted[i:]
	if len(sc.unstarted) == 0 {
		sc.unstarted = nil
	}
}

// resetLocked ends a stream the client reset, and counts it if it was not
// answered yet: past maxEarlyResets more of those than answers, the
// connection is closed (rapid reset).
func (sc *serverConn) resetLocked(st *stream, _ http2.ErrCode, err error) error {
	st.failLocked(err)
	if st.sentHeaders {
		return nil
	}
	if sc.earlyResets++; sc.earlyResets > maxEarlyResets {
		return fmt.Errorf("%w: %d more streams reset before their answer than answered", errRapidReset, sc.earlyResets)
	}
	return nil
}

// goAway: the client leaves; close once its streams are done.
func (sc *serverConn) goAway(*http2.GoAwayFrame) {
	sc.mu.Lock()
	sc.goingAway = true
	if len(sc.streams) == 0 {
		sc.queueLocked(ctrlFrame{kind: ctrlClose})
	}
	sc.mu.Unlock()
}

func (sc *serverConn) closeStreamLocked(st *stream, err error) { st.failLocked(err) }

// closed cancels the handlers' contexts.
func (sc *serverConn) closed() { sc.cancel() }

// shutdown starts a graceful shutdown: GOAWAY now, close once no stream is
// left.
func (sc *serverConn) shutdown() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closeErr != nil || sc.goingAway {
		return
	}
	sc.goingAway = true
	sc.queueLocked(ctrlFrame{kind: ctrlGoAway, stream: sc.lastID, n: uint32(http2.ErrCodeNo)})
	if len(sc.streams) == 0 {
		sc.queueLocked(ctrlFrame{kind: ctrlClose})
	}
}

// respond writes the response HEADERS of st; end ends the stream with
// them (a refusal).
func (sc *serverConn) respond(st *stream, status int, reason string, end bool) error {
	sc.mu.Lock()
	err := st.err
	sc.mu.Unlock()
	if err != nil {
		return err
	}
	sc.lockWrite()
	err = sc.writeResponseLocked(st.id, status, reason, end)
	if err == nil {
		// Before the flush: the stream's state is what the client will
		// read, and the RST_STREAM below is queued before anything the
		// client sends after reading the answer (a PING's ACK), so it
		// follows the answer on the wire.
		sc.mu.Lock()
		st.sentHeaders = true
		sc.earlyResets = max(sc.earlyResets-1, 0)
		if end {
			st.localClosed = true
			if st.err == nil {
				if !st.remoteClosed {
					// RFC 9113 §8.1: stop the request without error.
					sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeNo)})
				}
				st.failLocked(errStreamClosed)
			}
		}
		sc.mu.Unlock()
	}
	if err = sc.unlockWrite(err); err != nil {
		sc.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	return nil
}

// reject answers status and ends st.
func (sc *serverConn) reject(st *stream, status int, reason string) {
	sc.respond(st, status, reason, true)
}

// reset aborts st with RST_STREAM(INTERNAL_ERROR).
func (sc *serverConn) reset(st *stream, err error) {
	sc.mu.Lock()
	if st.err == nil {
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeInternal)})
		st.failLocked(err)
	}
	sc.mu.Unlock()
}
