package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file watches an outbound connection's client while ztunnel connects
// upstream, so that a client that gives up first (its own timeout shorter
// than the dial's: 10 s TCP connect, 15 s for a CONNECT's answer) is named
// in the access log record instead of leaving a bare dial error or none.
//
// Only a reset ends the dial at once: a FIN may be a half-close (a client
// that sent nothing and waits for a server that speaks first), so the dial
// goes on and, if it fails, its error says that the client had closed.

// clientWatchDelay is how long a dial runs before its client is watched:
// most dials end sooner and cost no goroutine.
const clientWatchDelay = time.Second

// ClientGoneError wraps the upstream dial error of an outbound connection
// whose client closed (FIN) or reset its connection while ztunnel was
// still connecting upstream.
type ClientGoneError struct {
	Reset bool          // an RST, not a FIN
	After time.Duration // from the connection's accept to when it was seen
	Err   error         // the dial's error
}

func (e *ClientGoneError) Error() string {
	how := "closed"
	if e.Reset {
		how = "reset"
	}
	return fmt.Sprintf("client %s its connection %v after it opened, before the upstream connected: %v", how, e.After.Round(time.Millisecond), e.Err)
}

func (e *ClientGoneError) Unwrap() error { return e.Err }

// clientWatch watches one client connection during a dial.
type clientWatch struct {
	c      net.Conn
	rc     syscall.RawConn
	start  time.Time
	cancel context.CancelFunc // ends the dial on a reset
	timer  *time.Timer
	done   chan struct{} // closed when the watching goroutine ended
	seen   time.Time     // when the FIN or RST was seen; zero: not
	reset  bool
}

// watchClient starts watching c, accepted at start, after
// clientWatchDelay; cancel is called if c is reset. It returns nil when
// c is not a socket.
func watchClient(c net.Conn, start time.Time, cancel context.CancelFunc) *clientWatch {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &clientWatch{c: c, rc: rc, start: start, cancel: cancel, done: make(chan struct{})}
	w.timer = time.AfterFunc(clientWatchDelay, w.run)
	return w
}

// run waits, without reading anything, until c is readable, then peeks:
// 0 bytes is a FIN, ECONNRESET a reset; data means the client is there
// (it is relayed once the upstream is connected).
func (w *clientWatch) run() {
	defer close(w.done)
	var buf [1]byte
	err := w.rc.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return false
		case err != nil:
			w.seen, w.reset = time.Now(), true
		case n == 0:
			w.seen = time.Now()
		}
		return true
	})
	if err == nil && w.reset {
		w.cancel()
	}
}

// stop ends the watch (the dial returned) and wraps err, the dial's
// error, in a *ClientGoneError if the client was seen to go. The read
// deadline stop sets to end the wait is cleared before it returns.
func (w *clientWatch) stop(err error) error {
	if w == nil {
		return err
	}
	if w.timer.Stop() {
		return err // never started
	}
	w.c.SetReadDeadline(time.Unix(1, 0))
	<-w.done
	w.c.SetReadDeadline(time.Time{})
	if err == nil || w.seen.IsZero() {
		return err
	}
	return &ClientGoneError{Reset: w.reset, After: w.seen.Sub(w.start), Err: err}
}
