package hbone

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// stream is one CONNECT stream on either side of a tunnel: its receive
// buffer and windows, its two half-closes, and the Read, Write,
// CloseWrite, Close and deadlines that [Conn] exposes.
type stream struct {
	c    *h2Conn
	id   uint32
	cond sync.Cond  // L is &c.mu
	wmu  sync.Mutex // serializes Write and CloseWrite

	release func()             // client: gives the Pool's reservation back; called by Close
	ctx     context.Context    // server: the handler's
	cancel  context.CancelFunc // server: cancels ctx; called on reset and Close

	// Guarded by c.mu.
	buf          bytes.Buffer
	in           inflow
	out          outflow
	sentHeaders  bool // our HEADERS written: the request (client), the response (server)
	peerHeaders  bool // the peer's HEADERS received: the request, the final response 200
	remoteClosed bool // END_STREAM received
	localClosed  bool // END_STREAM written, or the write side ended by endWriteLocked
	appClosed    bool // Close called
	err          error
	wErr         error // the peer ended our write side after the exchange was complete
	rdl, wdl     time.Time
	rdt, wdt     *time.Timer
	sink         *directSink // WriteTo's destination while it waits (deliver.go)
	activity     uint64      // DATA frames received and Write chunks sent (Conn.Activity)
	opened       time.Time   // client: when the CONNECT was sent (ResponseTimeout)
}

// newStream returns a stream of c with the given ID, not registered yet;
// c.mu must be held.
func (c *h2Conn) newStreamLocked(id uint32) *stream {
	st := &stream{c: c, id: id, in: inflow{avail: streamWindow}, out: outflow{c.peerInitWindow}}
	st.cond.L = &c.mu
	return st
}

// failLocked ends the stream with err and returns its buffered bytes to the
// connection window.
func (st *stream) failLocked(err error) {
	if st.err == nil {
		st.err = err
	}
	st.c.refundLocked(int64(st.buf.Len()))
	st.buf.Reset()
	st.cond.Broadcast()
	st.c.removeLocked(st)
}

// endRemoteLocked records the peer's END_STREAM; the stream is forgotten
// once both sides ended.
func (st *stream) endRemoteLocked() {
	st.remoteClosed = true
	if st.localClosed {
		st.c.removeLocked(st)
	}
}

// endWriteLocked ends only the write side, with err for later writes: the
// peer wants nothing more, and what it sent stays readable.
func (st *stream) endWriteLocked(err error) {
	st.wErr = err
	st.localClosed = true
	st.cond.Broadcast()
	st.c.removeLocked(st)
}

// refundLocked returns n consumed bytes to the stream window.
func (st *stream) refundLocked(n int64) {
	if st.remoteClosed {
		return
	}
	if inc := st.in.add(n, streamWindow); inc > 0 {
		st.c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, stream: st.id, n: inc})
	}
}

func expired(d time.Time) bool { return !d.IsZero() && !time.Now().Before(d) }

func (st *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := st.waitLocked(); err != nil {
		return 0, err
	}
	n, _ := st.buf.Read(p)
	trimDrained(&st.buf)
	st.refundLocked(int64(n))
	c.refundLocked(int64(n))
	return n, nil
}

// buffered waits until Read would not block and returns the bytes it
// could return, or Read's error. While it waits with nothing buffered, the
// reader goroutine may deliver data to sk (if not nil) directly; written
// is how much.
func (st *stream) buffered(sk *directSink) (n int, written int64, err error) {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	written, err = st.waitSinkLocked(sk)
	if err != nil {
		return 0, written, err
	}
	return st.buf.Len(), written, nil
}

// pending returns without blocking what Read would: the bytes it would
// return at once, or its error; 0 and nil if it would wait.
func (st *stream) pending() (int, error) {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	switch {
	case st.appClosed:
		return 0, net.ErrClosed
	case st.err != nil:
		return 0, st.err
	case st.buf.Len() > 0:
		return st.buf.Len(), nil
	case st.remoteClosed:
		return 0, io.EOF
	}
	return 0, nil
}

// waitLocked waits until data can be read, or returns why none will be.
func (st *stream) waitLocked() error {
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

// Write sends p as DATA frames as the windows allow.
func (st *stream) Write(p []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	c := st.c
	total := 0
	for len(p) > 0 {
		c.mu.Lock()
		var n int64
		for {
			switch {
			case st.appClosed:
				c.mu.Unlock()
				return total, net.ErrClosed
			case st.err != nil:
				err := st.err
				c.mu.Unlock()
				return total, err
			case st.wErr != nil:
				err := st.wErr
				c.mu.Unlock()
				return total, err
			case st.localClosed:
				c.mu.Unlock()
				return total, errWriteShutdown
			case expired(st.wdl):
				c.mu.Unlock()
				return total, os.ErrDeadlineExceeded
			}
			n = min(int64(len(p)), st.out.n, c.out.n, c.peerMaxFrame)
			if n > 0 {
				break
			}
			st.cond.Wait()
		}
		st.out.take(n)
		c.out.take(n)
		st.activity++
		c.mu.Unlock()
		if err := c.writeData(st.id, false, p[:n]); err != nil {
			return total, err
		}
		total += int(n)
		p = p[n:]
	}
	return total, nil
}

func (st *stream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	return st.closeWriteLocked()
}

// closeWriteLocked sends END_STREAM; st.wmu must be held.
func (st *stream) closeWriteLocked() error {
	c := st.c
	c.mu.Lock()
	switch {
	case st.err != nil:
		err := st.err
		c.mu.Unlock()
		return err
	case st.localClosed:
		// Also after the peer ended the write side once the exchange
		// was complete (wErr): nothing more was to be sent, nothing is
		// lost.
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	c.lockWrite()
	err := c.writeDataLocked(st.id, true, nil)
	if err == nil {
		// Before the flush: once the peer can read END_STREAM, the
		// stream's state says so, and a frame the peer sends after
		// reading it meets a closed stream (RFC 9113 §5.1).
		c.mu.Lock()
		st.localClosed = true
		if st.remoteClosed {
			c.removeLocked(st)
		}
		c.mu.Unlock()
	}
	if err = c.unlockWrite(err); err != nil {
		c.close(fmt.Errorf("hbone: write: %w", err))
		return err
	}
	return nil
}

// Close ends the stream: END_STREAM if the write side is open and idle,
// then, if the peer's side is still open, RST_STREAM. The code is CANCEL,
// except from a server whose response is complete: NO_ERROR (RFC 9113
// §8.1: the client may stop sending; it is a clean close, as a TCP
// server's).
func (st *stream) Close() error {
	c := st.c
	c.mu.Lock()
	if st.appClosed {
		c.mu.Unlock()
		return nil
	}
	st.appClosed = true
	st.stopTimersLocked()
	st.cond.Broadcast()
	done := st.err != nil || st.localClosed && st.remoteClosed
	c.mu.Unlock()
	if !done && st.wmu.TryLock() {
		st.closeWriteLocked()
		st.wmu.Unlock()
	}
	c.mu.Lock()
	if st.err == nil {
		code, reset := http2.ErrCodeCancel, !st.localClosed || !st.remoteClosed
		if c.server && st.localClosed {
			code = http2.ErrCodeNo
		}
		if reset {
			c.queueLocked(ctrlFrame{kind: ctrlRST, stream: st.id, n: uint32(code)})
		}
		st.failLocked(errStreamClosed)
	}
	c.mu.Unlock()
	if st.release != nil {
		st.release()
	}
	if st.cancel != nil {
		st.cancel()
	}
	return nil
}

// Activity returns a count that grows whenever data crosses the stream in
// either direction (a DATA frame received, a Write sent); a stream whose
// count does not change for a while is idle. It costs one lock: it is
// meant for an idle check that runs every few minutes, not per read.
func (c *Conn) Activity() uint64 {
	c.s.c.mu.Lock()
	defer c.s.c.mu.Unlock()
	return c.s.activity
}

func (st *stream) stopTimersLocked() {
	if st.rdt != nil {
		st.rdt.Stop()
	}
	if st.wdt != nil {
		st.wdt.Stop()
	}
}

func (st *stream) SetReadDeadline(t time.Time) error {
	st.setDeadline(&st.rdl, &st.rdt, t)
	return nil
}

func (st *stream) SetWriteDeadline(t time.Time) error {
	st.setDeadline(&st.wdl, &st.wdt, t)
	return nil
}

func (st *stream) setDeadline(d *time.Time, timer **time.Timer, t time.Time) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	*d = t
	if *timer != nil {
		(*timer).Stop()
		*timer = nil
	}
	if !t.IsZero() && !st.appClosed {
		if wait := time.Until(t); wait > 0 {
			*timer = time.AfterFunc(wait, func() {
				c.mu.Lock()
				st.cond.Broadcast()
				c.mu.Unlock()
			})
		}
	}
	st.cond.Broadcast()
}
