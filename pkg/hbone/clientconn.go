package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is the client's side of an HTTP/2 connection (h2conn.go is
// the core it shares with the server): opening CONNECT streams and reading
// their responses, the Pool's reservations, GOAWAY's unprocessed streams,
// a keepalive goroutine that sends PINGs and closes the connection when
// it has been idle too long or its PING went unanswered, and the liveness
// probe: a CONNECT sent on a quiet connection carries a PING, and the
// connection is closed as dead when nothing at all arrives on it for the
// probe timeout (a peer behind a black hole, e.g. port 15008 dropped by a
// NetworkPolicy), so that its CONNECTs fail in seconds, not after the
// response timeout, and new ones go to a new connection.

// errUnprocessed marks a CONNECT the server did not process: it may be
// retried on another connection.
var errUnprocessed = errors.New("hbone: stream not processed by the server")

const initialPeerMaxStreams = 100 // until the server's SETTINGS say otherwise

type clientConn struct {
	h2Conn
	onClose func()

	pingInterval    time.Duration
	pingTimeout     time.Duration
	idleTimeout     time.Duration
	responseTimeout time.Duration
	probeTimeout    time.Duration
	onLimit         func(string)

	// Guarded by mu.
	nextID      uint32
	reserved    int
	pingSent    time.Time
	probing     bool        // the PING out is a liveness probe
	probeArmed  bool        // probeTimer runs
	lastOpen    time.Time   // when the last CONNECT was opened
	probeTimer  *time.Timer // runs probe; nil until the first CONNECT
	onCloseOnce sync.Once
}

var _ side = (*clientConn)(nil)

type clientConnConfig struct {
	pingInterval, pingTimeout, idleTimeout time.Duration
	responseTimeout                        time.Duration // CONNECT to its answer
	probeTimeout                           time.Duration // liveness probe; 0: none
	handshakeTimeout                       time.Duration // bounds writing the preface
	maxHeaderListSize                      uint32
	onClose                                func()
	onLimit                                func(string)
}

// newClientConn writes the client preface and starts the connection's goroutines.
func newClientConn(tc *tls.Conn, w io.Writer, cfg clientConnConfig) (*clientConn, error) {
	cc := &clientConn{
		onClose:         cfg.onClose,
		onLimit:         cfg.onLimit,
		pingInterval:    cfg.pingInterval,
		pingTimeout:     cfg.pingTimeout,
		idleTimeout:     cfg.idleTimeout,
		responseTimeout: cfg.responseTimeout,
		probeTimeout:    cfg.probeTimeout,
		nextID:          1,
	}
	if cfg.maxHeaderListSize == 0 {
		cfg.maxHeaderListSize = DefaultMaxHeaderListSize
	}
	if cfg.handshakeTimeout <= 0 {
		cfg.handshakeTimeout = handshakeTimeout
	}
	cc.init(tc, w, cc, false, cfg.maxHeaderListSize)
	cc.in = inflow{avail: initialWindow + connWindow}
	cc.peerMaxStreams = initialPeerMaxStreams

	tc.SetWriteDeadline(time.Now().Add(cfg.handshakeTimeout))
	cc.bw.WriteString(http2.ClientPreface)
	cc.wfr.WriteSettings(ourSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}, cfg.maxHeaderListSize)...)
	cc.wfr.WriteWindowUpdate(0, connWindow)
	if err := cc.bw.Flush(); err != nil {
		return nil, fmt.Errorf("hbone: writing client preface: %w", err)
	}
	tc.SetWriteDeadline(time.Time{})
	go func() { cc.close(cc.readLoop()) }()
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

// headersLocked handles the response to a CONNECT.
func (cc *clientConn) headersLocked(id uint32, st *stream, f *http2.MetaHeadersFrame) error {
	if cc.idleLocked(id) {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st == nil {
		return nil // reset by us; frames in flight
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
	if f.Truncated {
		// RFC 9113 §10.5.1: a client may discard a response it cannot
		// process; the Framer decoded the whole block, so the
		// connection's HPACK state is intact and only this stream ends.
		onLimit(cc.onLimit, LimitHeaderList)
		st.failLocked(ErrHeaderListTooLarge)
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeCancel)})
		return nil
	}
	if status != http.StatusOK {
		// A refusal: open returns it; the server's side ends too.
		reason := ""
		for _, hf := range f.RegularFields() {
			if strings.EqualFold(hf.Name, ReasonHeader) {
				reason = hf.Value
				break
			}
		}
		st.failLocked(&StatusError{Code: status, Reason: reason})
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeCancel)})
		return nil
	}
	st.peerHeaders = true
	if f.StreamEnded() {
		st.endRemoteLocked()
	}
	st.cond.Broadcast()
	return nil
}

// resetLocked: a stream the server refused before answering may be retried.
func (cc *clientConn) resetLocked(st *stream, code http2.ErrCode, err error) error {
	if code == http2.ErrCodeRefusedStream && !st.peerHeaders {
		err = fmt.Errorf("%w: %w", errUnprocessed, err)
	}
	st.failLocked(err)
	return nil
}

// goAway fails the streams the server will not process, so that they are
// retried, and takes the connection out of the pool.
func (cc *clientConn) goAway(f *http2.GoAwayFrame) {
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

// closeStreamLocked keeps a complete response readable, as after a reset
// (processReset); the streams the server never saw may be retried.
func (cc *clientConn) closeStreamLocked(st *stream, err error) {
	if st.remoteClosed && st.err == nil {
		st.endWriteLocked(err)
		return
	}
	if !st.sentHeaders {
		err = fmt.Errorf("%w: %w", errUnprocessed, err)
	}
	st.failLocked(err)
}

// closed tells the pool that the connection is gone, and stops the probe.
func (cc *clientConn) closed() {
	cc.mu.Lock()
	if cc.probeTimer != nil {
		cc.probeTimer.Stop()
	}
	cc.mu.Unlock()
	cc.forget()
}

// forget tells the pool once that the connection takes no new streams.
func (cc *clientConn) forget() {
	if cc.onClose != nil {
		cc.onCloseOnce.Do(cc.onClose)
	}
}

var (
	errIdle        = errors.New("hbone: connection idle")
	errPingTimeout = errors.New("hbone: PING not answered")
)

// ErrConnectionDead ends the streams of a pooled connection on which
// nothing arrived for PoolConfig.ProbeTimeout after a CONNECT was sent with
// a PING: the peer, or the path to it, is gone without a FIN or RST (a
// firewall or NetworkPolicy dropping port 15008, a node that vanished).
var ErrConnectionDead = errors.New("hbone: connection dead: nothing received after a PING (is the HBONE port blocked?)")

// keepaliveLoop queues PINGs and closes the connection when it is idle or
// its PING went unanswered. It is not the writer goroutine, so that a write
// stuck on a dead peer does not stop it; closing the connection unblocks
// the write.
func (cc *clientConn) keepaliveLoop() {
	period := min(cc.pingInterval, cc.idleTimeout)
	if cc.responseTimeout > 0 {
		period = min(period, cc.responseTimeout)
	}
	tick := max(period/2, 5*time.Millisecond)
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
	cc.expireResponsesLocked(now)
	if cc.pingOut {
		if now.Sub(cc.pingSent) >= cc.pingTimeout {
			onLimit(cc.onLimit, LimitPingTimeout)
			return errPingTimeout
		}
		return nil
	}
	if now.Sub(time.Unix(0, cc.lastRead.Load())) >= cc.pingInterval {
		cc.pingLocked(now, false)
	}
	return nil
}

// pingLocked queues a PING; probe says it is a liveness probe, which
// the probe timer watches.
func (cc *clientConn) pingLocked(now time.Time, probe bool) {
	cc.pingOut = true
	cc.pingSent = now
	cc.probing = probe
	var data [8]byte
	copy(data[:], strconv.FormatInt(now.UnixNano()%1e8, 10))
	cc.queueLocked(ctrlFrame{kind: ctrlPing, ping: data})
}

// armProbeLocked makes sure the probe timer runs while a CONNECT waits.
func (cc *clientConn) armProbeLocked() {
	if cc.probeTimeout <= 0 || cc.probeArmed {
		return
	}
	cc.probeArmed = true
	if cc.probeTimer == nil {
		cc.probeTimer = time.AfterFunc(cc.probeTimeout/3, cc.probe)
	} else {
		cc.probeTimer.Reset(cc.probeTimeout / 3)
	}
}

// probe runs, from a CONNECT until something is read after it, every
// third of the probe timeout. When the connection read nothing for that
// long it sends a PING (a busy connection's frames prove the peer alive,
// and cost no PING); when nothing at all was read for the probe timeout
// after that PING was sent, the connection is closed with
// ErrConnectionDead. A CONNECT its client gave up on still counts: the
// connection it went on is checked all the same. Any frame read counts,
// not only the PING's ack: an ack queued behind a bulk transfer does not
// make the connection dead.
func (cc *clientConn) probe() {
	now := time.Now()
	lastRead := time.Unix(0, cc.lastRead.Load())
	cc.mu.Lock()
	if cc.closeErr != nil {
		cc.mu.Unlock()
		return
	}
	next := cc.probeTimeout / 3
	switch {
	case cc.pingOut && cc.probing:
		last := cc.pingSent
		if lastRead.After(last) {
			last = lastRead
		}
		if wait := cc.probeTimeout - now.Sub(last); wait > 0 {
			next = wait
			break
		}
		cc.mu.Unlock()
		onLimit(cc.onLimit, LimitPingTimeout)
		cc.close(fmt.Errorf("%w (%v)", ErrConnectionDead, cc.probeTimeout))
		return
	case !lastRead.Before(cc.lastOpen):
		cc.probeArmed = false // read from since the last CONNECT: alive
		cc.mu.Unlock()
		return
	case now.Sub(lastRead) >= cc.probeTimeout/3:
		if cc.pingOut {
			cc.probing = true // the keepalive's PING serves, from when it was sent
		} else {
			cc.pingLocked(now, true)
		}
		next = cc.probeTimeout
	}
	cc.probeTimer.Reset(next)
	cc.mu.Unlock()
}

// expireResponsesLocked fails, with ErrResponseTimeout, the streams whose
// CONNECT has waited responseTimeout for its answer, and resets them. It
// runs on every keepalive tick (at most half the timeout apart), so that a
// CONNECT costs no timer of its own: an answer is given up on between
// responseTimeout and 1.5 × responseTimeout after the request.
func (cc *clientConn) expireResponsesLocked(now time.Time) {
	if cc.responseTimeout <= 0 {
		return
	}
	for id, st := range cc.streams {
		if st.peerHeaders || st.err != nil || st.opened.IsZero() || now.Sub(st.opened) < cc.responseTimeout {
			continue
		}
		onLimit(cc.onLimit, LimitResponseTimeout)
		st.failLocked(fmt.Errorf("%w (%v)", ErrResponseTimeout, cc.responseTimeout))
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: id, n: uint32(http2.ErrCodeCancel)})
	}
}

// open sends a CONNECT for authority with the extra headers h, using a
// reservation made by reserve, and waits for the response.
func (cc *clientConn) open(ctx context.Context, authority string, h http.Header) (*stream, error) {
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
	st := cc.newStreamLocked(cc.nextID)
	st.opened = time.Now()
	cc.lastOpen = st.opened
	cc.armProbeLocked()
	cc.nextID += 2
	cc.lastID = st.id
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
	err := cc.writeHeadersLocked(st.id, false, maxFrame)
	cc.mu.Lock()
	st.sentHeaders = err == nil
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
	// keepalive fails the stream if its answer takes longer than
	// responseTimeout (expireResponsesLocked).
	cc.mu.Lock()
	for !st.peerHeaders && st.err == nil && ctx.Err() == nil {
		st.cond.Wait()
	}
	ok, err := st.peerHeaders, st.err
	if !ok && err == nil {
		err = ctx.Err()
		st.failLocked(err)
		cc.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(http2.ErrCodeCancel)})
	}
	cc.mu.Unlock()
	if !ok {
		return nil, err // a *StatusError if the server refused
	}
	return st, nil
}
