package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is a CONNECT-only HTTP/2 server connection (RFC 9113). One
// goroutine reads frames; handlers' Conns write DATA directly under wmu; the
// reader never blocks on the network for writing: its frames (SETTINGS and
// PING acks, WINDOW_UPDATE, RST_STREAM, early responses, GOAWAY) go through
// a queue drained by one writer goroutine.

const (
	initialWindow   = 65535 // RFC 9113 initial window size
	initialMaxFrame = 16384 // RFC 9113 initial SETTINGS_MAX_FRAME_SIZE
	maxHeaderList   = 64 << 10
)

var (
	errStreamClosed  = errors.New("hbone: stream closed")
	errWriteShutdown = errors.New("hbone: write after CloseWrite")
	errGoAwayDone    = errors.New("hbone: connection drained")
	errRapidReset    = errors.New("hbone: peer resets streams faster than they complete")
)

type ctrlKind uint8

const (
	ctrlWindowUpdate ctrlKind = iota
	ctrlRST
	ctrlPingAck
	ctrlSettingsAck
	ctrlHeaders // an early response (400) with END_STREAM
	ctrlGoAway
	ctrlTableSize
	ctrlClose // close the connection once everything before is written
	ctrlPing  // a PING (client keepalive)
)

// ctrlFrame is a frame queued for the writer goroutine.
type ctrlFrame struct {
	kind   ctrlKind
	stream uint32
	n      uint32 // increment, error code, status or table size
	ping   [8]byte
	reason string
}

type serverConn struct {
	srv        *Server
	conn       *tls.Conn
	peer       spiffeid.ID
	log        *slog.Logger
	maxStreams uint32
	fr         *http2.Framer // read side; reader goroutine only

	ctx      context.Context // cancelled when the connection closes
	cancel   context.CancelFunc
	handlers sync.WaitGroup
	done     chan struct{} // closed by close
	wdone    chan struct{} // closed when the writer goroutine returns

	wmu      sync.Mutex   // guards the write side below
	wpending atomic.Int32 // writers holding or waiting for wmu (lockWrite)
	bw       *bufio.Writer
	wfr      *http2.Framer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer

	mu             sync.Mutex
	streams        map[uint32]*serverStream
	maxStreamID    uint32  // highest client stream ID seen
	out            outflow // the window the peer granted us
	peerInitWindow int64
	peerMaxFrame   int64
	in             inflow // the window we granted the peer
	ctrl           ctrlQueue
	goingAway      bool
	closeErr       error

	// Handlers run for at most maxStreams streams at a time, counting
	// streams the client reset whose handler has not returned yet; the
	// others wait in unstarted, and are dropped there if reset first.
	curHandlers uint32
	unstarted   []pendingHandler
	// earlyResets counts streams the client reset before they were
	// answered, minus the streams answered since (never below 0).
	earlyResets int
}

// pendingHandler is a stream waiting for a handler slot.
type pendingHandler struct {
	st  *serverStream
	req *Request
}

// maxEarlyResets is how far the streams a client resets before their
// answer may outnumber those answered before the connection is closed with
// ENHANCE_YOUR_CALM (CVE-2023-44487, rapid reset). Legitimate clients reset
// an unanswered CONNECT only when they give up waiting for it.
const maxEarlyResets = 1000

func newServerConn(s *Server, tc *tls.Conn, w io.Writer, peer spiffeid.ID, maxStreams uint32, log *slog.Logger) *serverConn {
	sc := &serverConn{
		srv:            s,
		conn:           tc,
		peer:           peer,
		log:            log,
		maxStreams:     maxStreams,
		ctrl:           newCtrlQueue(),
		done:           make(chan struct{}),
		wdone:          make(chan struct{}),
		streams:        make(map[uint32]*serverStream),
		out:            outflow{initialWindow},
		peerInitWindow: initialWindow,
		peerMaxFrame:   initialMaxFrame,
		in:             inflow{avail: connWindow},
	}
	sc.ctx, sc.cancel = context.WithCancel(context.Background())
	sc.fr = http2.NewFramer(nil, tc)
	sc.fr.SetMaxReadFrameSize(maxFrameSize)
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sc.fr.MaxHeaderListSize = maxHeaderList
	sc.fr.SetReuseFrames()
	sc.bw = bufio.NewWriterSize(w, 32<<10)
	sc.wfr = http2.NewFramer(sc.bw, nil)
	sc.henc = hpack.NewEncoder(&sc.hbuf)
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
		return fmt.Errorf("hbone: reading client preface: %w", err)
	}
	if string(preface) != http2.ClientPreface {
		return errors.New("hbone: bad client preface")
	}
	sc.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	)
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

func (sc *serverConn) readLoop() error {
	for {
		f, err := sc.fr.ReadFrame()
		if err == nil {
			err = sc.processFrame(f)
		}
		if err == nil && sc.ctrl.flooded() {
			sc.goAwayNow(http2.ErrCodeEnhanceYourCalm)
			return errCtrlFlood
		}
		if err == nil {
			continue
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			sc.mu.Lock()
			if se.StreamID > sc.maxStreamID && se.StreamID%2 == 1 {
				sc.maxStreamID = se.StreamID
			}
			if st := sc.streams[se.StreamID]; st != nil {
				st.failLocked(fmt.Errorf("hbone: stream error: %w", se))
			}
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: se.StreamID, n: uint32(se.Code)})
			sc.mu.Unlock()
			continue
		}
		var ce http2.ConnectionError
		switch {
		case errors.Is(err, errRapidReset):
			sc.goAwayNow(http2.ErrCodeEnhanceYourCalm)
		case errors.As(err, &ce):
			sc.goAwayNow(http2.ErrCode(ce))
		case errors.Is(err, http2.ErrFrameTooLarge):
			sc.goAwayNow(http2.ErrCodeFrameSize)
		}
		return err
	}
}

// goAwayNow writes GOAWAY with code before the connection is closed for an error.
func (sc *serverConn) goAwayNow(code http2.ErrCode) {
	sc.mu.Lock()
	last := sc.maxStreamID
	sc.mu.Unlock()
	if !sc.wmu.TryLock() {
		return // a writer is stuck on the network; just close
	}
	defer sc.wmu.Unlock()
	sc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	sc.wfr.WriteGoAway(last, code, nil)
	sc.bw.Flush()
}

// processFrame handles one frame. Errors are connection errors.
func (sc *serverConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return sc.processData(f)
	case *http2.MetaHeadersFrame:
		return sc.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return sc.processWindowUpdate(f)
	case *http2.SettingsFrame:
		return sc.processSettings(f)
	case *http2.RSTStreamFrame:
		return sc.processReset(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			sc.mu.Lock()
			sc.queueLocked(ctrlFrame{kind: ctrlPingAck, ping: f.Data})
			sc.mu.Unlock()
		}
	case *http2.GoAwayFrame:
		sc.mu.Lock()
		sc.goingAway = true
		if len(sc.streams) == 0 {
			sc.queueLocked(ctrlFrame{kind: ctrlClose})
		}
		sc.mu.Unlock()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	// PRIORITY and unknown frame types are ignored.
	return nil
}

// idleLocked reports whether id names a stream the client has not opened yet.
func (sc *serverConn) idleLocked(id uint32) bool {
	return id%2 == 0 || id > sc.maxStreamID
}

func (sc *serverConn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st := sc.streams[id]; st != nil {
		if st.remoteClosed {
			st.failLocked(errStreamClosed)
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeStreamClosed)})
			return nil
		}
		// Trailers: they must end the stream.
		if !f.StreamEnded() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		st.remoteClosed = true
		st.cond.Broadcast()
		if st.localClosed {
			sc.removeLocked(st)
		}
		return nil
	}
	if id <= sc.maxStreamID {
		return http2.ConnectionError(http2.ErrCodeStreamClosed)
	}
	sc.maxStreamID = id
	if sc.goingAway || uint32(len(sc.streams)) >= sc.maxStreams {
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeRefusedStream)})
		return nil
	}
	reject := func(reason string) error {
		// Sanitized (and so bounded) now: the queue may hold many.
		sc.queueLocked(ctrlFrame{kind: ctrlHeaders, stream: id, n: http.StatusBadRequest, reason: sanitizeReason(reason)})
		if !f.StreamEnded() {
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeNo)})
		}
		return nil
	}
	if f.Truncated {
		return reject("header list too large")
	}
	if m := f.PseudoValue("method"); m != http.MethodConnect {
		return reject("method " + m + " is not CONNECT")
	}
	if f.PseudoValue("protocol") != "" {
		return reject("extended CONNECT is not supported")
	}
	authority, err := netip.ParseAddrPort(f.PseudoValue("authority"))
	if err != nil {
		return reject("authority is not ip:port")
	}
	h := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		h.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	st := &serverStream{
		sc:           sc,
		id:           id,
		out:          outflow{sc.peerInitWindow},
		in:           inflow{avail: streamWindow},
		remoteClosed: f.StreamEnded(),
	}
	st.cond.L = &sc.mu
	st.ctx, st.cancel = context.WithCancel(sc.ctx)
	sc.streams[id] = st
	req := sc.request(netip.AddrPortFrom(authority.Addr().Unmap(), authority.Port()), h)
	return sc.scheduleHandlerLocked(st, req)
}

// scheduleHandlerLocked starts st's handler, or queues it until a running
// handler returns.
func (sc *serverConn) scheduleHandlerLocked(st *serverStream, req *Request) error {
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

func (sc *serverConn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if !sc.in.take(n) {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st := sc.streams[id]
	if st == nil || st.remoteClosed || st.err != nil {
		sc.refundLocked(n)
		if sc.idleLocked(id) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if st != nil && st.err == nil {
			// DATA after END_STREAM.
			st.failLocked(errStreamClosed)
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeStreamClosed)})
		}
		return nil
	}
	if !st.in.take(n) {
		sc.refundLocked(n)
		st.failLocked(errors.New("hbone: peer exceeded the stream window"))
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	data := f.Data()
	if len(data) > 0 {
		bufferData(&st.buf, data)
	}
	if pad := n - int64(len(data)); pad > 0 {
		sc.refundLocked(pad)
		st.refundLocked(pad)
	}
	if f.StreamEnded() {
		st.remoteClosed = true
		if st.localClosed {
			sc.removeLocked(st)
		}
	}
	st.cond.Broadcast()
	return nil
}

func (sc *serverConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if f.StreamID == 0 {
		old := sc.out.n
		if !sc.out.add(inc) {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		if old <= 0 {
			for _, st := range sc.streams {
				st.cond.Broadcast()
			}
		}
		return nil
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		if sc.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	if !st.out.add(inc) {
		st.failLocked(errors.New("hbone: peer overflowed the stream window"))
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: f.StreamID, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	st.cond.Broadcast()
	return nil
}

func (sc *serverConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > maxSettings || f.HasDuplicates() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - sc.peerInitWindow
			sc.peerInitWindow = int64(s.Val)
			for _, st := range sc.streams {
				if !st.out.add(delta) {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			sc.peerMaxFrame = int64(s.Val)
		case http2.SettingHeaderTableSize:
			sc.queueLocked(ctrlFrame{kind: ctrlTableSize, n: s.Val})
		}
		return nil
	})
	if err != nil {
		return err
	}
	sc.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
	return nil
}

func (sc *serverConn) processReset(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	st := sc.streams[f.StreamID]
	if st == nil {
		idle := sc.idleLocked(f.StreamID)
		sc.mu.Unlock()
		if idle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	rerr := fmt.Errorf("hbone: stream reset by peer: %v", f.ErrCode)
	if st.remoteClosed && st.answered && st.err == nil {
		// The client sent all it had and wants nothing more (an HTTP
		// client that read a complete response): only the write side
		// ends. Writing more fails; a half-close loses nothing and
		// succeeds, as a TCP shutdown after the peer's close would.
		st.wErr = rerr
		st.localClosed = true
		st.cond.Broadcast()
		sc.removeLocked(st)
		sc.mu.Unlock()
		return nil
	}
	st.failLocked(rerr)
	var err error
	if !st.answered {
		if sc.earlyResets++; sc.earlyResets > maxEarlyResets {
			err = fmt.Errorf("%w: %d more streams reset before their answer than answered", errRapidReset, sc.earlyResets)
		}
	}
	sc.mu.Unlock()
	st.cancel()
	return err
}

// queueLocked queues a frame for the writer goroutine.
func (sc *serverConn) queueLocked(c ctrlFrame) {
	if sc.closeErr != nil {
		return
	}
	sc.ctrl.push(c)
}

// refundLocked returns n consumed bytes to the connection-level window,
// sending WINDOW_UPDATE once a quarter of the window has accumulated.
func (sc *serverConn) refundLocked(n int64) {
	if inc := sc.in.add(n, connWindow); inc > 0 {
		sc.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, n: inc})
	}
}

// removeLocked forgets a finished stream.
func (sc *serverConn) removeLocked(st *serverStream) {
	if sc.streams[st.id] != st {
		return
	}
	delete(sc.streams, st.id)
	if sc.goingAway && len(sc.streams) == 0 {
		sc.queueLocked(ctrlFrame{kind: ctrlClose})
	}
}

// writeLoop writes queued frames until the connection closes.
func (sc *serverConn) writeLoop() {
	defer close(sc.wdone)
	var q []ctrlFrame
	for {
		select {
		case <-sc.ctrl.sig:
		case <-sc.done:
			return
		}
		sc.mu.Lock()
		q = sc.ctrl.take(q)
		sc.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		closeAfter := false
		var err error
		sc.lockWrite()
		for i := range q {
			if q[i].kind == ctrlClose {
				closeAfter = true
				break
			}
			if err = sc.writeCtrlLocked(&q[i]); err != nil {
				break
			}
		}
		if closeAfter && err == nil {
			// unlockWrite leaves the flush to a waiting writer; the
			// connection closes before that one would run.
			err = sc.bw.Flush()
		}
		err = sc.unlockWrite(err)
		sc.mu.Lock()
		sc.ctrl.written(len(q))
		sc.mu.Unlock()
		if err != nil {
			sc.close(fmt.Errorf("hbone: write: %w", err))
			return
		}
		if closeAfter {
			sc.close(errGoAwayDone)
			return
		}
	}
}

func (sc *serverConn) writeCtrlLocked(c *ctrlFrame) error {
	switch c.kind {
	case ctrlWindowUpdate:
		return sc.wfr.WriteWindowUpdate(c.stream, c.n)
	case ctrlRST:
		return sc.wfr.WriteRSTStream(c.stream, http2.ErrCode(c.n))
	case ctrlPingAck:
		return sc.wfr.WritePing(true, c.ping)
	case ctrlSettingsAck:
		return sc.wfr.WriteSettingsAck()
	case ctrlHeaders:
		return sc.writeHeadersLocked(c.stream, int(c.n), c.reason, true)
	case ctrlGoAway:
		return sc.wfr.WriteGoAway(c.stream, http2.ErrCode(c.n), nil)
	case ctrlTableSize:
		sc.henc.SetMaxDynamicTableSizeLimit(c.n)
	}
	return nil
}

// writeHeadersLocked writes a response HEADERS frame; wmu must be held.
func (sc *serverConn) writeHeadersLocked(id uint32, status int, reason string, end bool) error {
	sc.hbuf.Reset()
	sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	if reason = sanitizeReason(reason); reason != "" {
		sc.henc.WriteField(hpack.HeaderField{Name: ReasonHeader, Value: reason})
	}
	return sc.wfr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: sc.hbuf.Bytes(),
		EndStream:     end,
		EndHeaders:    true,
	})
}

// goAway starts a graceful shutdown: GOAWAY now, close once no stream is left.
func (sc *serverConn) goAway() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closeErr != nil || sc.goingAway {
		return
	}
	sc.goingAway = true
	sc.queueLocked(ctrlFrame{kind: ctrlGoAway, stream: sc.maxStreamID, n: uint32(http2.ErrCodeNo)})
	if len(sc.streams) == 0 {
		sc.queueLocked(ctrlFrame{kind: ctrlClose})
	}
}

// close closes the connection and fails every stream with err.
func (sc *serverConn) close(err error) {
	if err == nil {
		err = io.EOF
	}
	sc.mu.Lock()
	if sc.closeErr != nil {
		sc.mu.Unlock()
		return
	}
	sc.closeErr = err
	streamErr := fmt.Errorf("hbone: connection closed: %w", err)
	for _, st := range sc.streams {
		st.failLocked(streamErr)
	}
	sc.mu.Unlock()
	close(sc.done)
	sc.cancel()
	if errors.Is(err, errCtrlFlood) || errors.Is(err, errRapidReset) {
		// The peer does not read: tls.Conn.Close would first wait up to
		// 5 s to send close_notify behind a writer stuck on the full
		// socket. Drop the connection now; that also frees the writer.
		sc.conn.NetConn().Close()
	}
	sc.conn.Close()
}

// lockWrite takes wmu and counts the caller as a pending writer.
func (sc *serverConn) lockWrite() {
	sc.wpending.Add(1)
	sc.wmu.Lock()
}

// unlockWrite ends a write begun by lockWrite. It flushes the buffered
// frames unless another writer is already waiting for wmu: that one will
// flush, so the frames of concurrent writers (several streams, control
// frames) leave in one TLS record and one write(2). It returns err, or the
// flush's error.
func (sc *serverConn) unlockWrite(err error) error {
	if sc.wpending.Add(-1) == 0 && err == nil {
		err = sc.bw.Flush()
	}
	sc.wmu.Unlock()
	return err
}

// write writes one DATA frame; it is the only write of data frames.
func (sc *serverConn) writeData(id uint32, end bool, p []byte) error {
	sc.lockWrite()
	err := sc.unlockWrite(sc.wfr.WriteData(id, end, p))
	if err != nil {
		sc.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	return nil
}

// serverStream is one accepted CONNECT stream.
type serverStream struct {
	sc     *serverConn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	cond   sync.Cond  // L is &sc.mu
	wmu    sync.Mutex // serializes Write and CloseWrite

	// Guarded by sc.mu.
	buf          bytes.Buffer
	in           inflow
	out          outflow
	remoteClosed bool  // END_STREAM received
	localClosed  bool  // END_STREAM written
	wErr         error // the client reset the stream after its END_STREAM
	answered     bool  // response HEADERS written
	appClosed    bool  // Close called
	err          error
	rdl, wdl     time.Time
	rdt, wdt     *time.Timer
}

var _ stream = (*serverStream)(nil)

// failLocked ends the stream with err and returns its buffered bytes to the
// connection window.
func (st *serverStream) failLocked(err error) {
	if st.err == nil {
		st.err = err
	}
	st.sc.refundLocked(int64(st.buf.Len()))
	st.buf.Reset()
	st.cond.Broadcast()
	st.sc.removeLocked(st)
}

// refundLocked returns n bytes to the stream window.
func (st *serverStream) refundLocked(n int64) {
	if st.remoteClosed {
		return
	}
	if inc := st.in.add(n, streamWindow); inc > 0 {
		st.sc.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, stream: st.id, n: inc})
	}
}

func expired(d time.Time) bool { return !d.IsZero() && !time.Now().Before(d) }

func (st *serverStream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if err := st.waitLocked(); err != nil {
		return 0, err
	}
	n, _ := st.buf.Read(p)
	trimDrained(&st.buf)
	st.refundLocked(int64(n))
	sc.refundLocked(int64(n))
	return n, nil
}

// buffered waits until data can be read and returns how much.
func (st *serverStream) buffered() (int, error) {
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	if err := st.waitLocked(); err != nil {
		return 0, err
	}
	return st.buf.Len(), nil
}

// waitLocked waits until data can be read, or returns why none will be.
func (st *serverStream) waitLocked() error {
	for st.buf.Len() == 0 || st.err != nil || st.appClosed {
		switch {
		case st.appClosed:
			return net.ErrClosed
		case st.err != nil:
			return st.err
		case st.remoteClosed:
			return io.EOF
		case expired(st.rdl):
			return os.ErrDeadlineExceeded
		}
		st.cond.Wait()
	}
	return nil
}

func (st *serverStream) Write(p []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	sc := st.sc
	total := 0
	for len(p) > 0 {
		sc.mu.Lock()
		var n int64
		for {
			switch {
			case st.appClosed:
				sc.mu.Unlock()
				return total, net.ErrClosed
			case st.err != nil:
				err := st.err
				sc.mu.Unlock()
				return total, err
			case st.wErr != nil:
				err := st.wErr
				sc.mu.Unlock()
				return total, err
			case st.localClosed:
				sc.mu.Unlock()
				return total, errWriteShutdown
			case expired(st.wdl):
				sc.mu.Unlock()
				return total, os.ErrDeadlineExceeded
			}
			n = min(int64(len(p)), st.out.n, sc.out.n, sc.peerMaxFrame)
			if n > 0 {
				break
			}
			st.cond.Wait()
		}
		st.out.take(n)
		sc.out.take(n)
		sc.mu.Unlock()
		if err := sc.writeData(st.id, false, p[:n]); err != nil {
			return total, err
		}
		total += int(n)
		p = p[n:]
	}
	return total, nil
}

func (st *serverStream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return st.closeWriteLocked()
}

// closeWriteLocked sends END_STREAM; st.wmu must be held.
func (st *serverStream) closeWriteLocked() error {
	sc := st.sc
	sc.mu.Lock()
	switch {
	case st.err != nil:
		err := st.err
		sc.mu.Unlock()
		return err
	case st.localClosed:
		sc.mu.Unlock()
		return nil
	}
	sc.mu.Unlock()
	if err := sc.writeData(st.id, true, nil); err != nil {
		return err
	}
	sc.mu.Lock()
	st.localClosed = true
	if st.remoteClosed {
		sc.removeLocked(st)
	}
	sc.mu.Unlock()
	return nil
}

// Close ends the stream: END_STREAM if the write side is open and idle, then,
// if the peer's side is still open, RST_STREAM — NO_ERROR after a complete
// response (RFC 9113 §8.1: the client may stop sending; it is a clean
// close, as a TCP server's), CANCEL when the response was cut short.
func (st *serverStream) Close() error {
	sc := st.sc
	sc.mu.Lock()
	if st.appClosed {
		sc.mu.Unlock()
		return nil
	}
	st.appClosed = true
	st.stopTimersLocked()
	st.cond.Broadcast()
	done := st.err != nil || st.localClosed && st.remoteClosed
	sc.mu.Unlock()
	if !done && st.wmu.TryLock() {
		st.closeWriteLocked()
		st.wmu.Unlock()
	}
	sc.mu.Lock()
	if st.err == nil {
		switch {
		case !st.localClosed:
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeCancel)})
		case !st.remoteClosed:
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeNo)})
		}
		st.failLocked(errStreamClosed)
	}
	sc.mu.Unlock()
	st.cancel()
	return nil
}

func (st *serverStream) stopTimersLocked() {
	if st.rdt != nil {
		st.rdt.Stop()
	}
	if st.wdt != nil {
		st.wdt.Stop()
	}
}

// respond writes the response HEADERS.
func (st *serverStream) respond(status int, reason string, end bool) error {
	sc := st.sc
	sc.mu.Lock()
	err := st.err
	sc.mu.Unlock()
	if err != nil {
		return err
	}
	sc.lockWrite()
	err = sc.unlockWrite(sc.writeHeadersLocked(st.id, status, reason, end))
	if err != nil {
		sc.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	sc.mu.Lock()
	st.answered = true
	sc.earlyResets = max(sc.earlyResets-1, 0)
	sc.mu.Unlock()
	return nil
}

// reject answers status and ends the stream.
func (st *serverStream) reject(status int, reason string) {
	if st.respond(status, reason, true) != nil {
		return
	}
	sc := st.sc
	sc.mu.Lock()
	st.localClosed = true
	if st.err == nil {
		if !st.remoteClosed {
			// RFC 9113 §8.1: stop the request without error.
			sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeNo)})
		}
		st.failLocked(errStreamClosed)
	}
	sc.mu.Unlock()
}

// reset aborts the stream with RST_STREAM(INTERNAL_ERROR).
func (st *serverStream) reset(err error) {
	sc := st.sc
	sc.mu.Lock()
	if st.err == nil {
		sc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeInternal)})
		st.failLocked(err)
	}
	sc.mu.Unlock()
}

func (st *serverStream) SetReadDeadline(t time.Time) error {
	st.setDeadline(&st.rdl, &st.rdt, t)
	return nil
}

func (st *serverStream) SetWriteDeadline(t time.Time) error {
	st.setDeadline(&st.wdl, &st.wdt, t)
	return nil
}

func (st *serverStream) setDeadline(d *time.Time, timer **time.Timer, t time.Time) {
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	*d = t
	if *timer != nil {
		(*timer).Stop()
		*timer = nil
	}
	if !t.IsZero() && !st.appClosed {
		if wait := time.Until(t); wait > 0 {
			*timer = time.AfterFunc(wait, func() {
				sc.mu.Lock()
				st.cond.Broadcast()
				sc.mu.Unlock()
			})
		}
	}
	st.cond.Broadcast()
}
