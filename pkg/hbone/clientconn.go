package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is a CONNECT-only HTTP/2 client connection, the mirror of
// serverconn.go. One goroutine reads frames; Conns write HEADERS and DATA
// directly under wmu (coalesced like the server's); the reader's frames
// (WINDOW_UPDATE, RST_STREAM, PING, SETTINGS ack) go through a queue drained
// by one writer goroutine; a third sends keepalive PINGs and closes the
// connection when it has been idle too long or its PING went unanswered.

// errUnprocessed marks a CONNECT the server did not process: it may be
// retried on another connection.
var errUnprocessed = errors.New("hbone: stream not processed by the server")

const initialPeerMaxStreams = 100 // until the server's SETTINGS say otherwise

type clientConn struct {
	conn    *tls.Conn
	fr      *http2.Framer // read side; reader goroutine only
	onClose func()

	pingInterval time.Duration
	pingTimeout  time.Duration
	idleTimeout  time.Duration
	lastRead     atomic.Int64 // unix nanoseconds of the last frame read

	done chan struct{} // closed by close

	wmu      sync.Mutex
	wpending atomic.Int32
	bw       *bufio.Writer
	wfr      *http2.Framer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer

	mu             sync.Mutex
	streams        map[uint32]*clientStream
	nextID         uint32
	reserved       int
	peerMaxStreams uint32
	out            outflow // the window the peer granted us
	peerInitWindow int64
	peerMaxFrame   int64
	in             inflow // the window we granted the peer
	ctrl           ctrlQueue
	goingAway      bool
	pingOut        bool
	pingSent       time.Time
	idleSince      time.Time
	closeErr       error
	onCloseOnce    sync.Once
}

type clientConnConfig struct {
	pingInterval, pingTimeout, idleTimeout time.Duration
	onClose                                func()
}

// newClientConn writes the client preface and starts the connection's goroutines.
func newClientConn(tc *tls.Conn, w io.Writer, cfg clientConnConfig) (*clientConn, error) {
	cc := &clientConn{
		conn:           tc,
		onClose:        cfg.onClose,
		pingInterval:   cfg.pingInterval,
		pingTimeout:    cfg.pingTimeout,
		idleTimeout:    cfg.idleTimeout,
		ctrl:           newCtrlQueue(),
		done:           make(chan struct{}),
		streams:        make(map[uint32]*clientStream),
		nextID:         1,
		peerMaxStreams: initialPeerMaxStreams,
		out:            outflow{initialWindow},
		peerInitWindow: initialWindow,
		peerMaxFrame:   initialMaxFrame,
		in:             inflow{avail: initialWindow + connWindow},
		idleSince:      time.Now(),
	}
	cc.lastRead.Store(time.Now().UnixNano())
	cc.fr = http2.NewFramer(nil, tc)
	cc.fr.SetMaxReadFrameSize(maxFrameSize)
	cc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	cc.fr.MaxHeaderListSize = maxHeaderList
	cc.fr.SetReuseFrames()
	cc.bw = bufio.NewWriterSize(w, 32<<10)
	cc.wfr = http2.NewFramer(cc.bw, nil)
	cc.henc = hpack.NewEncoder(&cc.hbuf)

	tc.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	cc.bw.WriteString(http2.ClientPreface)
	cc.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	)
	cc.wfr.WriteWindowUpdate(0, connWindow)
	if err := cc.bw.Flush(); err != nil {
		return nil, fmt.Errorf("hbone: writing client preface: %w", err)
	}
	tc.SetWriteDeadline(time.Time{})
	go cc.readLoop()
	go cc.writeLoop()
	go cc.keepaliveLoop()
	return cc, nil
}

// reserve reserves a stream for a later open; false if the connection is
// full or closing.
func (cc *clientConn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closeErr != nil || cc.goingAway || uint32(len(cc.streams)+cc.reserved) >= cc.peerMaxStreams {
		return false
	}
	cc.reserved++
	return true
}

// closing reports whether the connection takes no new streams any more.
func (cc *clientConn) closing() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closeErr != nil || cc.goingAway
}

// Close closes the connection and every stream on it.
func (cc *clientConn) Close() error {
	cc.close(net.ErrClosed)
	return nil
}

func (cc *clientConn) readLoop() {
	var err error
	for {
		var f http2.Frame
		f, err = cc.fr.ReadFrame()
		if err == nil {
			cc.lastRead.Store(time.Now().UnixNano())
			err = cc.processFrame(f)
		}
		if err == nil && cc.ctrl.flooded() {
			cc.goAwayNow(http2.ErrCodeEnhanceYourCalm)
			err = errCtrlFlood
			break
		}
		if err == nil {
			continue
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			cc.mu.Lock()
			if st := cc.streams[se.StreamID]; st != nil {
				st.failLocked(fmt.Errorf("hbone: stream error: %w", se))
			}
			cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: se.StreamID, n: uint32(se.Code)})
			cc.mu.Unlock()
			continue
		}
		var ce http2.ConnectionError
		switch {
		case errors.As(err, &ce):
			cc.goAwayNow(http2.ErrCode(ce))
		case errors.Is(err, http2.ErrFrameTooLarge):
			cc.goAwayNow(http2.ErrCodeFrameSize)
		}
		break
	}
	cc.close(err)
}

func (cc *clientConn) goAwayNow(code http2.ErrCode) {
	if !cc.wmu.TryLock() {
		return
	}
	defer cc.wmu.Unlock()
	cc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	cc.wfr.WriteGoAway(0, code, nil)
	cc.bw.Flush()
}

func (cc *clientConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return cc.processData(f)
	case *http2.MetaHeadersFrame:
		return cc.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return cc.processWindowUpdate(f)
	case *http2.SettingsFrame:
		return cc.processSettings(f)
	case *http2.RSTStreamFrame:
		return cc.processReset(f)
	case *http2.PingFrame:
		cc.mu.Lock()
		if f.IsAck() {
			cc.pingOut = false
		} else {
			cc.queueLocked(ctrlFrame{kind: ctrlPingAck, ping: f.Data})
		}
		cc.mu.Unlock()
	case *http2.GoAwayFrame:
		cc.processGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// idleLocked reports whether id names a stream not opened yet.
func (cc *clientConn) idleLocked(id uint32) bool {
	return id%2 == 0 || id >= cc.nextID
}

func (cc *clientConn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.idleLocked(id) {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st := cc.streams[id]
	if st == nil {
		return nil // reset by us; frames in flight
	}
	if st.remoteClosed {
		st.failLocked(errStreamClosed)
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeStreamClosed)})
		return nil
	}
	if st.status != 0 {
		// Trailers: they must end the stream.
		if !f.StreamEnded() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		st.remoteClosed = true
		st.cond.Broadcast()
		if st.localClosed {
			cc.removeLocked(st)
		}
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		st.failLocked(errors.New("hbone: malformed response status"))
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeProtocol)})
		return nil
	}
	if status < 200 {
		return nil // informational
	}
	st.status = status
	for _, hf := range f.RegularFields() {
		if strings.EqualFold(hf.Name, ReasonHeader) {
			st.reason = hf.Value
			break
		}
	}
	if f.StreamEnded() {
		st.remoteClosed = true
		if st.localClosed {
			cc.removeLocked(st)
		}
	}
	st.cond.Broadcast()
	return nil
}

func (cc *clientConn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.in.take(n) {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st := cc.streams[id]
	if st == nil || st.remoteClosed || st.err != nil || st.status == 0 {
		cc.refundLocked(n)
		if cc.idleLocked(id) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if st != nil && st.err == nil {
			// DATA before the response, or after END_STREAM (RFC 9113 §5.1).
			code := http2.ErrCodeProtocol
			if st.remoteClosed {
				code = http2.ErrCodeStreamClosed
			}
			st.failLocked(errStreamClosed)
			cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(code)})
		}
		return nil
	}
	if !st.in.take(n) {
		cc.refundLocked(n)
		st.failLocked(errors.New("hbone: peer exceeded the stream window"))
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	if data := f.Data(); len(data) > 0 {
		bufferData(&st.buf, data)
	}
	if pad := n - int64(len(f.Data())); pad > 0 {
		cc.refundLocked(pad)
		st.refundLocked(pad)
	}
	if f.StreamEnded() {
		st.remoteClosed = true
		if st.localClosed {
			cc.removeLocked(st)
		}
	}
	st.cond.Broadcast()
	return nil
}

func (cc *clientConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if f.StreamID == 0 {
		old := cc.out.n
		if !cc.out.add(inc) {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		if old <= 0 {
			for _, st := range cc.streams {
				st.cond.Broadcast()
			}
		}
		return nil
	}
	st := cc.streams[f.StreamID]
	if st == nil {
		if cc.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	if !st.out.add(inc) {
		st.failLocked(errors.New("hbone: peer overflowed the stream window"))
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: f.StreamID, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	st.cond.Broadcast()
	return nil
}

func (cc *clientConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > maxSettings || f.HasDuplicates() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - cc.peerInitWindow
			cc.peerInitWindow = int64(s.Val)
			for _, st := range cc.streams {
				if !st.out.add(delta) {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			cc.peerMaxFrame = int64(s.Val)
		case http2.SettingMaxConcurrentStreams:
			cc.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			cc.queueLocked(ctrlFrame{kind: ctrlTableSize, n: s.Val})
		}
		return nil
	})
	if err != nil {
		return err
	}
	cc.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
	return nil
}

func (cc *clientConn) processReset(f *http2.RSTStreamFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	st := cc.streams[f.StreamID]
	if st == nil {
		if cc.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	err := fmt.Errorf("hbone: stream reset by peer: %v", f.ErrCode)
	if st.remoteClosed && st.err == nil {
		// The response is complete: what was received stays readable
		// (a server handler that returns resets the stream after its
		// END_STREAM); only the write side ends.
		st.wErr = err
		st.localClosed = true
		st.cond.Broadcast()
		cc.removeLocked(st)
		return nil
	}
	if f.ErrCode == http2.ErrCodeRefusedStream && st.status == 0 {
		err = fmt.Errorf("%w: %w", errUnprocessed, err)
	}
	st.failLocked(err)
	return nil
}

func (cc *clientConn) processGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	cc.goingAway = true
	for id, st := range cc.streams {
		if id > f.LastStreamID {
			st.failLocked(fmt.Errorf("%w: GOAWAY %v", errUnprocessed, f.ErrCode))
		}
	}
	empty := len(cc.streams) == 0
	cc.mu.Unlock()
	cc.forget()
	if empty {
		cc.close(errGoAwayDone)
	}
}

func (cc *clientConn) queueLocked(c ctrlFrame) {
	if cc.closeErr != nil {
		return
	}
	cc.ctrl.push(c)
}

// refundLocked returns n consumed bytes to the connection window, sending
// WINDOW_UPDATE once a quarter of the window has accumulated.
func (cc *clientConn) refundLocked(n int64) {
	if inc := cc.in.add(n, connWindow); inc > 0 {
		cc.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, n: inc})
	}
}

func (cc *clientConn) removeLocked(st *clientStream) {
	if cc.streams[st.id] != st {
		return
	}
	delete(cc.streams, st.id)
	if len(cc.streams) == 0 {
		cc.idleSince = time.Now()
		if cc.goingAway {
			cc.queueLocked(ctrlFrame{kind: ctrlClose})
		}
	}
}

// writeLoop writes queued frames until the connection closes.
func (cc *clientConn) writeLoop() {
	var q []ctrlFrame
	for {
		select {
		case <-cc.ctrl.sig:
		case <-cc.done:
			return
		}
		cc.mu.Lock()
		q = cc.ctrl.take(q)
		cc.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		closeAfter := false
		var err error
		cc.lockWrite()
		for i := range q {
			if q[i].kind == ctrlClose {
				closeAfter = true
				break
			}
			if err = cc.writeCtrlLocked(&q[i]); err != nil {
				break
			}
		}
		if closeAfter && err == nil {
			// unlockWrite leaves the flush to a waiting writer; the
			// connection closes before that one would run.
			err = cc.bw.Flush()
		}
		err = cc.unlockWrite(err)
		cc.mu.Lock()
		cc.ctrl.written(len(q))
		cc.mu.Unlock()
		if err != nil {
			cc.close(fmt.Errorf("hbone: write: %w", err))
			return
		}
		if closeAfter {
			cc.close(errGoAwayDone)
			return
		}
	}
}

var (
	errIdle        = errors.New("hbone: connection idle")
	errPingTimeout = errors.New("hbone: PING not answered")
)

// keepaliveLoop queues PINGs and closes the connection when it is idle or
// its PING went unanswered. It is not the writer goroutine, so that a write
// stuck on a dead peer does not stop it; closing the connection unblocks
// the write.
func (cc *clientConn) keepaliveLoop() {
	tick := max(min(cc.pingInterval, cc.idleTimeout)/2, 5*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			if err := cc.keepalive(); err != nil {
				cc.close(err)
				return
			}
		case <-cc.done:
			return
		}
	}
}

// keepalive runs on every tick of keepaliveLoop.
func (cc *clientConn) keepalive() error {
	now := time.Now()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if len(cc.streams) == 0 && cc.reserved == 0 && now.Sub(cc.idleSince) >= cc.idleTimeout {
		return errIdle
	}
	if cc.pingOut {
		if now.Sub(cc.pingSent) >= cc.pingTimeout {
			return errPingTimeout
		}
		return nil
	}
	if now.Sub(time.Unix(0, cc.lastRead.Load())) >= cc.pingInterval {
		cc.pingOut = true
		cc.pingSent = now
		var data [8]byte
		copy(data[:], strconv.FormatInt(now.UnixNano()%1e8, 10))
		cc.queueLocked(ctrlFrame{kind: ctrlPing, ping: data})
	}
	return nil
}

func (cc *clientConn) writeCtrlLocked(c *ctrlFrame) error {
	switch c.kind {
	case ctrlWindowUpdate:
		return cc.wfr.WriteWindowUpdate(c.stream, c.n)
	case ctrlRST:
		return cc.wfr.WriteRSTStream(c.stream, http2.ErrCode(c.n))
	case ctrlPingAck:
		return cc.wfr.WritePing(true, c.ping)
	case ctrlPing:
		return cc.wfr.WritePing(false, c.ping)
	case ctrlSettingsAck:
		return cc.wfr.WriteSettingsAck()
	case ctrlTableSize:
		cc.henc.SetMaxDynamicTableSizeLimit(c.n)
	}
	return nil
}

// close closes the connection and fails every stream with err.
func (cc *clientConn) close(err error) {
	if err == nil {
		err = io.EOF
	}
	cc.mu.Lock()
	if cc.closeErr != nil {
		cc.mu.Unlock()
		return
	}
	cc.closeErr = err
	for _, st := range cc.streams {
		serr := fmt.Errorf("hbone: connection closed: %w", err)
		if st.remoteClosed && st.err == nil {
			// The response is complete: what was received stays
			// readable, as after processReset; only writes fail.
			st.wErr = serr
			st.localClosed = true
			st.cond.Broadcast()
			cc.removeLocked(st)
			continue
		}
		if !st.sent {
			serr = fmt.Errorf("%w: %w", errUnprocessed, serr)
		}
		st.failLocked(serr)
	}
	cc.mu.Unlock()
	close(cc.done)
	if errors.Is(err, errCtrlFlood) {
		// As serverConn.close: no close_notify behind a stuck writer.
		cc.conn.NetConn().Close()
	}
	cc.conn.Close()
	cc.forget()
}

// forget tells the pool once that the connection takes no new streams.
func (cc *clientConn) forget() {
	if cc.onClose != nil {
		cc.onCloseOnce.Do(cc.onClose)
	}
}

func (cc *clientConn) lockWrite() {
	cc.wpending.Add(1)
	cc.wmu.Lock()
}

// unlockWrite: see serverConn.unlockWrite.
func (cc *clientConn) unlockWrite(err error) error {
	if cc.wpending.Add(-1) == 0 && err == nil {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	return err
}

func (cc *clientConn) writeData(id uint32, end bool, p []byte) error {
	cc.lockWrite()
	err := cc.unlockWrite(cc.wfr.WriteData(id, end, p))
	if err != nil {
		cc.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	return nil
}

// open sends a CONNECT for authority with the extra headers h, using a
// reservation made by reserve, and waits for the response.
func (cc *clientConn) open(ctx context.Context, authority string, h http.Header) (*clientStream, error) {
	st := &clientStream{cc: cc, in: inflow{avail: streamWindow}}
	st.cond.L = &cc.mu

	// Stream IDs must reach the wire in order: take wmu before numbering.
	cc.lockWrite()
	cc.mu.Lock()
	cc.reserved--
	if cc.closeErr != nil || cc.goingAway {
		err := cc.closeErr
		cc.mu.Unlock()
		cc.unlockWrite(nil)
		return nil, fmt.Errorf("%w: connection closing (%v)", errUnprocessed, err)
	}
	st.id = cc.nextID
	cc.nextID += 2
	st.out.n = cc.peerInitWindow
	cc.streams[st.id] = st
	maxFrame := int(cc.peerMaxFrame)
	cc.mu.Unlock()

	cc.hbuf.Reset()
	cc.henc.WriteField(hpack.HeaderField{Name: ":method", Value: http.MethodConnect})
	cc.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for k, vs := range h {
		k = strings.ToLower(k)
		switch k {
		case "host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
			continue
		}
		for _, v := range vs {
			cc.henc.WriteField(hpack.HeaderField{Name: k, Value: v})
		}
	}
	block := cc.hbuf.Bytes()
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	err := cc.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: first, EndHeaders: len(block) == 0})
	for err == nil && len(block) > 0 {
		frag := block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		err = cc.wfr.WriteContinuation(st.id, len(block) == 0, frag)
	}
	cc.mu.Lock()
	st.sent = err == nil
	cc.mu.Unlock()
	if err = cc.unlockWrite(err); err != nil {
		cc.close(fmt.Errorf("hbone: write: %w", err))
	}

	stop := context.AfterFunc(ctx, func() {
		cc.mu.Lock()
		st.cond.Broadcast()
		cc.mu.Unlock()
	})
	defer stop()
	cc.mu.Lock()
	for st.status == 0 && st.err == nil && ctx.Err() == nil {
		st.cond.Wait()
	}
	status, serr := st.status, st.err
	if status == 0 && serr == nil {
		serr = ctx.Err()
		st.failLocked(serr)
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeCancel)})
	}
	if status != 0 && status != http.StatusOK && st.err == nil {
		if !st.remoteClosed || !st.localClosed {
			cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeCancel)})
		}
		st.failLocked(errStreamClosed)
	}
	cc.mu.Unlock()
	if status == 0 {
		return nil, serr
	}
	if status != http.StatusOK {
		return nil, &StatusError{Code: status, Reason: st.reason}
	}
	return st, nil
}

// clientStream is the client side of a CONNECT stream.
type clientStream struct {
	cc      *clientConn
	id      uint32
	cond    sync.Cond  // L is &cc.mu
	wmu     sync.Mutex // serializes Write and CloseWrite
	release func()

	// Guarded by cc.mu.
	sent         bool // HEADERS written
	status       int
	reason       string
	buf          bytes.Buffer
	in           inflow
	out          outflow
	remoteClosed bool
	localClosed  bool
	appClosed    bool
	err          error
	wErr         error // the server reset the stream after its END_STREAM
	rdl, wdl     time.Time
	rdt, wdt     *time.Timer
}

var _ stream = (*clientStream)(nil)

func (st *clientStream) failLocked(err error) {
	if st.err == nil {
		st.err = err
	}
	st.cc.refundLocked(int64(st.buf.Len()))
	st.buf.Reset()
	st.cond.Broadcast()
	st.cc.removeLocked(st)
}

func (st *clientStream) refundLocked(n int64) {
	if st.remoteClosed {
		return
	}
	if inc := st.in.add(n, streamWindow); inc > 0 {
		st.cc.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, stream: st.id, n: inc})
	}
}

func (st *clientStream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	cc := st.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if err := st.waitLocked(); err != nil {
		return 0, err
	}
	n, _ := st.buf.Read(p)
	trimDrained(&st.buf)
	st.refundLocked(int64(n))
	cc.refundLocked(int64(n))
	return n, nil
}

// buffered waits until data can be read and returns how much.
func (st *clientStream) buffered() (int, error) {
	st.cc.mu.Lock()
	defer st.cc.mu.Unlock()
	if err := st.waitLocked(); err != nil {
		return 0, err
	}
	return st.buf.Len(), nil
}

// waitLocked waits until data can be read, or returns why none will be.
func (st *clientStream) waitLocked() error {
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

func (st *clientStream) Write(p []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	cc := st.cc
	total := 0
	for len(p) > 0 {
		cc.mu.Lock()
		var n int64
		for {
			switch {
			case st.appClosed:
				cc.mu.Unlock()
				return total, net.ErrClosed
			case st.err != nil:
				err := st.err
				cc.mu.Unlock()
				return total, err
			case st.wErr != nil:
				err := st.wErr
				cc.mu.Unlock()
				return total, err
			case st.localClosed:
				cc.mu.Unlock()
				return total, errWriteShutdown
			case expired(st.wdl):
				cc.mu.Unlock()
				return total, os.ErrDeadlineExceeded
			}
			n = min(int64(len(p)), st.out.n, cc.out.n, cc.peerMaxFrame)
			if n > 0 {
				break
			}
			st.cond.Wait()
		}
		st.out.take(n)
		cc.out.take(n)
		cc.mu.Unlock()
		if err := cc.writeData(st.id, false, p[:n]); err != nil {
			return total, err
		}
		total += int(n)
		p = p[n:]
	}
	return total, nil
}

func (st *clientStream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return st.closeWriteLocked()
}

func (st *clientStream) closeWriteLocked() error {
	cc := st.cc
	cc.mu.Lock()
	switch {
	case st.err != nil:
		err := st.err
		cc.mu.Unlock()
		return err
	case st.localClosed:
		// Also after the server ended the stream once its response was
		// complete (wErr): nothing more was to be sent, nothing is lost.
		cc.mu.Unlock()
		return nil
	}
	cc.mu.Unlock()
	if err := cc.writeData(st.id, true, nil); err != nil {
		return err
	}
	cc.mu.Lock()
	st.localClosed = true
	if st.remoteClosed {
		cc.removeLocked(st)
	}
	cc.mu.Unlock()
	return nil
}

// Close ends the stream: END_STREAM if the write side is open and idle,
// then RST_STREAM(CANCEL) if the server's side is still open or unread.
func (st *clientStream) Close() error {
	cc := st.cc
	cc.mu.Lock()
	if st.appClosed {
		cc.mu.Unlock()
		return nil
	}
	st.appClosed = true
	st.stopTimersLocked()
	st.cond.Broadcast()
	done := st.err != nil || st.localClosed && st.remoteClosed
	cc.mu.Unlock()
	if !done && st.wmu.TryLock() {
		st.closeWriteLocked()
		st.wmu.Unlock()
	}
	cc.mu.Lock()
	if st.err == nil {
		if !st.localClosed || !st.remoteClosed {
			cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeCancel)})
		}
		st.failLocked(errStreamClosed)
	}
	cc.mu.Unlock()
	if st.release != nil {
		st.release()
	}
	return nil
}

func (st *clientStream) stopTimersLocked() {
	if st.rdt != nil {
		st.rdt.Stop()
	}
	if st.wdt != nil {
		st.wdt.Stop()
	}
}

func (st *clientStream) SetReadDeadline(t time.Time) error {
	st.setDeadline(&st.rdl, &st.rdt, t)
	return nil
}

func (st *clientStream) SetWriteDeadline(t time.Time) error {
	st.setDeadline(&st.wdl, &st.wdt, t)
	return nil
}

func (st *clientStream) setDeadline(d *time.Time, timer **time.Timer, t time.Time) {
	cc := st.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	*d = t
	if *timer != nil {
		(*timer).Stop()
		*timer = nil
	}
	if !t.IsZero() && !st.appClosed {
		if wait := time.Until(t); wait > 0 {
			*timer = time.AfterFunc(wait, func() {
				cc.mu.Lock()
				st.cond.Broadcast()
				cc.mu.Unlock()
			})
		}
	}
	st.cond.Broadcast()
}
