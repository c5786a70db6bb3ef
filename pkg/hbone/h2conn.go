package hbone

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is the HTTP/2 connection core (RFC 9113) that both ends of a
// tunnel share: the client (clientconn.go, under a Pool) and the server
// (serverconn.go). Each keeps only what differs: the client opens streams
// and sends PINGs, the server accepts streams, runs handlers and defends
// itself.
//
// Why not x/net's http2.Server and Transport: the stock server ends a
// stream when its handler returns, so a handler cannot half-close towards
// the client (END_STREAM) while it still reads from it, which a TCP tunnel
// needs; the stock client costs a goroutine and an io.Pipe per stream and
// sends a WINDOW_UPDATE per 4 KiB read. Here x/net provides the Framer and
// hpack; streams write DATA frames directly from the caller's goroutine,
// concurrent writers share a flush, and window updates are batched
// (docs/optimisations.md).
//
// One goroutine reads frames (readLoop) and handles them under mu. It never
// blocks on the network to write (its one write, DATA to the socket of a
// waiting WriteTo, is non-blocking: deliver.go): the frames it causes (SETTINGS and PING
// acks, WINDOW_UPDATE, RST_STREAM, early responses, GOAWAY) go through
// ctrl, a queue that one writer goroutine (writeLoop) drains. Streams write
// HEADERS and DATA directly under wmu.

const (
	initialWindow   = 65535    // RFC 9113 initial window size
	initialMaxFrame = 16384    // RFC 9113 initial SETTINGS_MAX_FRAME_SIZE
	maxHeaderList   = 64 << 10 // default SETTINGS_MAX_HEADER_LIST_SIZE
)

// resetMemory is how many of the streams it reset last a connection
// remembers, to ignore the frames the peer sent before it saw the
// RST_STREAM (RFC 9113 §5.1) instead of answering them as errors. Rust's
// h2, ztunnel's HTTP/2, keeps a bounded set of the same kind.
const resetMemory = 32

var (
	errStreamClosed  = errors.New("hbone: stream closed")
	errWriteShutdown = errors.New("hbone: write after CloseWrite")
	errGoAwayDone    = errors.New("hbone: connection drained")
)

// side is what the client and the server do differently with the frames
// the core reads. Its methods are called by the reader goroutine, those
// named ...Locked with mu held.
type side interface {
	// headersLocked handles a HEADERS frame on stream id that is not a
	// trailer: one that opens a stream (server; st is nil) or answers one
	// (client; st is nil if the stream is gone).
	headersLocked(id uint32, st *stream, f *http2.MetaHeadersFrame) error
	// resetLocked ends st, which the peer reset with code before the
	// exchange was complete; err says so. A non-nil result is a connection
	// error.
	resetLocked(st *stream, code http2.ErrCode, err error) error
	// goAway handles the peer's GOAWAY; mu is not held.
	goAway(f *http2.GoAwayFrame)
	// closeStreamLocked ends st because the connection closed with err.
	closeStreamLocked(st *stream, err error)
	// closed is called once when the connection closes, after its
	// streams were ended.
	closed()
}

// h2Conn is one HTTP/2 connection, client or server.
type h2Conn struct {
	conn   *tls.Conn
	side   side
	server bool
	fr     *http2.Framer // read side; reader goroutine only

	lastRead atomic.Int64  // unix nanoseconds of the last frame read
	done     chan struct{} // closed by close
	wdone    chan struct{} // closed when writeLoop returns

	wmu      sync.Mutex   // guards the write side below
	wpending atomic.Int32 // writers holding or waiting for wmu (lockWrite)
	bw       *bufio.Writer
	wfr      *http2.Framer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	dataHdr  [frameHeaderLen]byte // writeDataLocked's frame header

	mu             sync.Mutex
	streams        map[uint32]*stream
	lastID         uint32 // highest stream ID opened (all are the client's: odd)
	out            outflow
	in             inflow
	peerInitWindow int64
	peerMaxFrame   int64
	peerMaxStreams uint32 // SETTINGS_MAX_CONCURRENT_STREAMS; the client obeys it
	ctrl           ctrlQueue
	goingAway      bool
	pingOut        bool                // a PING of ours waits for its ack
	resetIDs       [resetMemory]uint32 // the streams we reset last, a ring
	resetNext      int                 // the next slot of resetIDs to write
	idleSince      time.Time           // when the last stream ended
	closeErr       error
	deliverHook    func() // tests: runs in deliverLocked while mu is released
}

// init sets c up on tc, writing through w; the caller sets in and starts
// the goroutines.
func (c *h2Conn) init(tc *tls.Conn, w io.Writer, s side, server bool, maxHeaderListSize uint32) {
	c.conn = tc
	c.side = s
	c.server = server
	c.done = make(chan struct{})
	c.wdone = make(chan struct{})
	c.ctrl = newCtrlQueue()
	c.streams = make(map[uint32]*stream)
	c.out = outflow{initialWindow}
	c.peerInitWindow = initialWindow
	c.peerMaxFrame = initialMaxFrame
	c.idleSince = time.Now()
	c.lastRead.Store(time.Now().UnixNano())
	c.fr = http2.NewFramer(nil, tc)
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.fr.SetReuseFrames()
	c.bw = bufio.NewWriterSize(w, 32<<10)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
}

// ourSettings are the SETTINGS both sides send (the server adds
// MAX_CONCURRENT_STREAMS, the client disables push).
func ourSettings(first http2.Setting, maxHeaderListSize uint32) []http2.Setting {
	return []http2.Setting{
		first,
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
}

// readLoop reads and handles frames until a connection error, which it
// returns after sending GOAWAY where the error has a code.
func (c *h2Conn) readLoop() error {
	for {
		f, err := c.fr.ReadFrame()
		if err == nil {
			c.lastRead.Store(time.Now().UnixNano())
			err = c.processFrame(f)
		}
		if err == nil && c.ctrl.flooded() {
			c.goAwayNow(http2.ErrCodeEnhanceYourCalm)
			return errCtrlFlood
		}
		if err == nil {
			continue
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			c.mu.Lock()
			if c.server && se.StreamID > c.lastID && se.StreamID%2 == 1 {
				c.lastID = se.StreamID // opened, then reset
			}
			if st := c.streams[se.StreamID]; st != nil {
				st.failLocked(fmt.Errorf("hbone: stream error: %w", se))
			}
			c.queueLocked(ctrlFrame{kind: ctrlRST, stream: se.StreamID, n: uint32(se.Code)})
			c.mu.Unlock()
			continue
		}
		var ce http2.ConnectionError
		switch {
		case errors.Is(err, errRapidReset):
			c.goAwayNow(http2.ErrCodeEnhanceYourCalm)
		case errors.As(err, &ce):
			c.goAwayNow(http2.ErrCode(ce))
		case errors.Is(err, http2.ErrFrameTooLarge):
			c.goAwayNow(http2.ErrCodeFrameSize)
		}
		return err
	}
}

// goAwayNow writes GOAWAY with code before the connection is closed for an
// error. It waits for a write under way, but not for long: a writer stuck
// on a peer that does not read is left to the close, which frees it.
func (c *h2Conn) goAwayNow(code http2.ErrCode) {
	var last uint32 // the last stream the peer opened: none on the client
	if c.server {
		c.mu.Lock()
		last = c.lastID
		c.mu.Unlock()
	}
	if !c.lockWriteWithin(goAwayWait) {
		return // a writer is stuck on the network; just close
	}
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.wfr.WriteGoAway(last, code, nil)
	c.bw.Flush()
}

// goAwayWait is how long goAwayNow waits for the writer before it gives up
// the GOAWAY.
const goAwayWait = 500 * time.Millisecond

// lockWriteWithin takes wmu, waiting at most d for its holder.
func (c *h2Conn) lockWriteWithin(d time.Duration) bool {
	if c.wmu.TryLock() {
		return true
	}
	locked, giveUp := make(chan struct{}), make(chan struct{})
	go func() {
		c.wmu.Lock()
		select {
		case locked <- struct{}{}: // handed over
		case <-giveUp:
			c.wmu.Unlock()
		}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-locked:
		return true
	case <-t.C:
		close(giveUp)
		return false
	}
}

// processFrame handles one frame. Errors are connection errors.
func (c *h2Conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.RSTStreamFrame:
		return c.processReset(f)
	case *http2.PingFrame:
		c.mu.Lock()
		if f.IsAck() {
			c.pingOut = false
		} else {
			c.queueLocked(ctrlFrame{kind: ctrlPingAck, ping: f.Data})
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		c.side.goAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.PriorityFrame:
		return checkPriority(f.StreamID, f.PriorityParam)
	}
	// Unknown frame types are ignored.
	return nil
}

// checkPriority refuses a stream that depends on itself (RFC 9113 §5.3.1,
// as x/net's server does); priority signals are otherwise ignored (§5.3.2).
func checkPriority(id uint32, p http2.PriorityParam) error {
	if p.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	return nil
}

// idleLocked reports whether id names a stream not opened yet.
func (c *h2Conn) idleLocked(id uint32) bool {
	return id%2 == 0 || id > c.lastID
}

// processHeaders handles trailers and HEADERS on half-closed streams, and
// hands the others to the side.
func (c *h2Conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	defer c.mu.Unlock()
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if f.HasPriority() {
		if err := checkPriority(id, f.Priority); err != nil {
			return err
		}
	}
	st := c.streams[id]
	switch {
	case st == nil && c.server && !c.idleLocked(id):
		// RFC 9113 §5.1: a closed stream. Frames the peer sent before it
		// saw our RST_STREAM (the trailers of a request answered early)
		// are ignored; otherwise it is a new stream below the last one
		// (§5.1.1) or HEADERS after the stream ended: x/net's server
		// makes both a connection error PROTOCOL_ERROR, the more common
		// one, since they cannot be told apart without remembering every
		// stream.
		if c.resetRecentlyLocked(id) {
			return nil
		}
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case st == nil || !st.peerHeaders:
		return c.side.headersLocked(id, st, f)
	case st.remoteClosed:
		// RFC 9113 §5.1: half-closed (remote).
		st.failLocked(errStreamClosed)
		c.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeStreamClosed)})
		return nil
	case !f.StreamEnded():
		// Trailers must end the stream.
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case len(f.PseudoFields()) > 0:
		// §8.1: trailers carry no pseudo-header fields; malformed.
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	st.endRemoteLocked()
	st.cond.Broadcast()
	return nil
}

func (c *h2Conn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.in.take(n) {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st := c.streams[id]
	if st == nil || st.remoteClosed || st.err != nil || !st.peerHeaders {
		// Counted against the connection window above, and given back.
		c.refundLocked(n)
		switch {
		case c.idleLocked(id):
			return http2.ConnectionError(http2.ErrCodeProtocol)
		case st != nil && st.err == nil:
			// DATA after END_STREAM (RFC 9113 §5.1), or before the
			// response (§8.1).
			code := http2.ErrCodeStreamClosed
			if !st.remoteClosed {
				code = http2.ErrCodeProtocol
			}
			st.failLocked(errStreamClosed)
			c.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(code)})
		case c.resetRecentlyLocked(id):
			// Sent before the peer saw our RST_STREAM (§5.1): ignored.
		case c.server:
			// A closed stream: after both END_STREAMs, or after the
			// client's RST_STREAM. §5.1 wants STREAM_CLOSED; as x/net's
			// server, a stream error. The client ignores DATA on streams
			// it forgot, as x/net's Transport does: it resets streams it
			// is done with more often than it can remember.
			c.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeStreamClosed)})
		}
		return nil
	}
	st.activity++ // the idle timeout's clock (Conn.Activity)
	if !st.in.take(n) {
		c.refundLocked(n)
		st.failLocked(errors.New("hbone: peer exceeded the stream window"))
		c.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		c.refundLocked(pad)
		st.refundLocked(pad)
	}
	if len(data) > 0 && st.sink != nil && !st.sink.busy && st.buf.Len() == 0 {
		// WriteTo waits: write to its socket if it takes the data now.
		if data = c.deliverLocked(st, data); st.err != nil {
			// Closed during the write: what is left is discarded.
			c.refundLocked(int64(len(data)))
			return nil
		}
		if len(data) == 0 && !f.StreamEnded() {
			return nil // all delivered; WriteTo sleeps on
		}
	}
	if len(data) > 0 {
		bufferData(&st.buf, data)
	}
	if f.StreamEnded() {
		st.endRemoteLocked()
	}
	st.cond.Broadcast()
	return nil
}

func (c *h2Conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		old := c.out.n
		if !c.out.add(inc) {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		if old <= 0 {
			for _, st := range c.streams {
				st.cond.Broadcast()
			}
		}
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	if !st.out.add(inc) {
		st.failLocked(errors.New("hbone: peer overflowed the stream window"))
		c.queueLocked(ctrlFrame{kind: ctrlRST, stream: f.StreamID, n: uint32(http2.ErrCodeFlowControl)})
		return nil
	}
	st.cond.Broadcast()
	return nil
}

func (c *h2Conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > maxSettings || f.HasDuplicates() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			c.peerInitWindow = int64(s.Val)
			for _, st := range c.streams {
				if !st.out.add(delta) {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = int64(s.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			c.queueLocked(ctrlFrame{kind: ctrlTableSize, n: s.Val})
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
	return nil
}

func (c *h2Conn) processReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	st := c.streams[f.StreamID]
	if st == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	rerr := fmt.Errorf("hbone: stream reset by peer: %v", f.ErrCode)
	if st.remoteClosed && st.sentHeaders && st.err == nil {
		// The peer sent all it had and wants nothing more: a server
		// handler that returned after its response, or an HTTP client
		// that read a complete response. Only the write side ends:
		// writing more fails, what was received stays readable, and a
		// half-close loses nothing and succeeds, as a TCP shutdown after
		// the peer's close would.
		st.endWriteLocked(rerr)
		c.mu.Unlock()
		return nil
	}
	err := c.side.resetLocked(st, f.ErrCode, rerr)
	c.mu.Unlock()
	if st.cancel != nil {
		st.cancel()
	}
	return err
}

// queueLocked queues a frame for the writer goroutine.
func (c *h2Conn) queueLocked(f ctrlFrame) {
	if c.closeErr != nil {
		return
	}
	if f.kind == ctrlRST {
		c.resetIDs[c.resetNext] = f.stream
		c.resetNext = (c.resetNext + 1) % resetMemory
	}
	c.ctrl.push(f)
}

// resetRecentlyLocked reports whether stream id is one of the last
// resetMemory streams we reset.
func (c *h2Conn) resetRecentlyLocked(id uint32) bool {
	for _, r := range c.resetIDs {
		if r == id {
			return true
		}
	}
	return false
}

// refundLocked returns n consumed bytes to the connection window.
func (c *h2Conn) refundLocked(n int64) {
	if inc := c.in.add(n, connWindow); inc > 0 {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, n: inc})
	}
}

// removeLocked forgets a finished stream.
func (c *h2Conn) removeLocked(st *stream) {
	if c.streams[st.id] != st {
		return
	}
	delete(c.streams, st.id)
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		if c.goingAway {
			c.queueLocked(ctrlFrame{kind: ctrlClose})
		}
	}
}

// writeLoop writes queued frames until the connection closes.
func (c *h2Conn) writeLoop() {
	defer close(c.wdone)
	var q []ctrlFrame
	for {
		select {
		case <-c.ctrl.sig:
		case <-c.done:
			return
		}
		c.mu.Lock()
		q = c.ctrl.take(q)
		c.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		closeAfter := false
		var err error
		c.lockWrite()
		for i := range q {
			if q[i].kind == ctrlClose {
				closeAfter = true
				break
			}
			if err = c.writeCtrlLocked(&q[i]); err != nil {
				break
			}
		}
		if closeAfter && err == nil {
			// unlockWrite leaves the flush to a waiting writer; the
			// connection closes before that one would run.
			err = c.bw.Flush()
		}
		err = c.unlockWrite(err)
		c.mu.Lock()
		c.ctrl.written(len(q))
		c.mu.Unlock()
		if err != nil {
			c.close(fmt.Errorf("hbone: write: %w", err))
			return
		}
		if closeAfter {
			c.close(errGoAwayDone)
			return
		}
	}
}

// writeCtrlLocked writes one queued frame; wmu must be held.
func (c *h2Conn) writeCtrlLocked(f *ctrlFrame) error {
	switch f.kind {
	case ctrlWindowUpdate:
		return c.wfr.WriteWindowUpdate(f.stream, f.n)
	case ctrlRST:
		return c.wfr.WriteRSTStream(f.stream, http2.ErrCode(f.n))
	case ctrlPingAck:
		return c.wfr.WritePing(true, f.ping)
	case ctrlPing:
		return c.wfr.WritePing(false, f.ping)
	case ctrlSettingsAck:
		return c.wfr.WriteSettingsAck()
	case ctrlHeaders:
		return c.writeResponseLocked(f.stream, int(f.n), f.reason, true)
	case ctrlGoAway:
		return c.wfr.WriteGoAway(f.stream, http2.ErrCode(f.n), nil)
	case ctrlTableSize:
		c.henc.SetMaxDynamicTableSizeLimit(f.n)
	}
	return nil
}

// writeResponseLocked writes a server's response HEADERS; wmu must be held.
func (c *h2Conn) writeResponseLocked(id uint32, status int, reason string, end bool) error {
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	if reason = sanitizeReason(reason); reason != "" {
		c.henc.WriteField(hpack.HeaderField{Name: ReasonHeader, Value: reason})
	}
	return c.writeHeadersLocked(id, end, initialMaxFrame)
}

// writeHeadersLocked writes the header block in hbuf as HEADERS and
// CONTINUATION frames of at most maxFrame bytes; wmu must be held.
func (c *h2Conn) writeHeadersLocked(id uint32, end bool, maxFrame int) error {
	block := c.hbuf.Bytes()
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	err := c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for err == nil && len(block) > 0 {
		frag := block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		err = c.wfr.WriteContinuation(id, len(block) == 0, frag)
	}
	return err
}

// close closes the connection and ends every stream with err.
func (c *h2Conn) close(err error) {
	if err == nil {
		err = io.EOF
	}
	c.mu.Lock()
	if c.closeErr != nil {
		c.mu.Unlock()
		return
	}
	c.closeErr = err
	streamErr := fmt.Errorf("hbone: connection closed: %w", err)
	for _, st := range c.streams {
		c.side.closeStreamLocked(st, streamErr)
	}
	c.mu.Unlock()
	close(c.done)
	c.side.closed()
	if errors.Is(err, errCtrlFlood) || errors.Is(err, errRapidReset) {
		// The peer does not read: tls.Conn.Close would first wait up to
		// 5 s to send close_notify behind a writer stuck on the full
		// socket. Drop the connection now; that also frees the writer.
		c.conn.NetConn().Close()
	}
	c.conn.Close()
}

// lockWrite takes wmu and counts the caller as a pending writer.
func (c *h2Conn) lockWrite() {
	c.wpending.Add(1)
	c.wmu.Lock()
}

// unlockWrite ends a write begun by lockWrite. It flushes the buffered
// frames unless another writer is already waiting for wmu: that one will
// flush, so the frames of concurrent writers (several streams, control
// frames) leave in one TLS record and one write(2). It returns err, or the
// flush's error.
func (c *h2Conn) unlockWrite(err error) error {
	if c.wpending.Add(-1) == 0 && err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	return err
}

// writeData writes one DATA frame; it is the only write of data frames.
func (c *h2Conn) writeData(id uint32, end bool, p []byte) error {
	c.lockWrite()
	err := c.unlockWrite(c.writeDataLocked(id, end, p))
	if err != nil {
		c.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	return nil
}

// writeDataLocked writes a DATA frame; wmu must be held. A frame that fits
// in bw goes there directly, header and payload: the Framer would first
// copy the payload into a buffer of its own. A larger one goes through the
// Framer, in one piece, so that bw does not split it into two TLS writes.
func (c *h2Conn) writeDataLocked(id uint32, end bool, p []byte) error {
	if len(p)+frameHeaderLen > c.bw.Available() {
		return c.wfr.WriteData(id, end, p)
	}
	h := &c.dataHdr
	h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(h[5:], id&(1<<31-1))
	c.bw.Write(h[:])
	_, err := c.bw.Write(p)
	return err
}

// frameHeaderLen is the length of an HTTP/2 frame header (RFC 9113 §4.1).
const frameHeaderLen = 9
