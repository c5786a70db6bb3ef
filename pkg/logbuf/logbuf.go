// Package logbuf collects a process's log lines and writes them in batches:
// at most Delay after the first line of a batch, or at once when a batch
// holds 64 KiB. A proxy logs a line per connection or request; written one
// by one, each costs a write(2) (on the waypoint at 1000 rps, 15 % of its
// CPU went to the access log, mostly that write). Envoy flushes its access
// log files on a timer for the same reason (every 10 s by default);
// Istio's ztunnel hands its lines to a writer thread.
//
// A batch is written by a timer armed by its first line, so an idle
// process is not woken (zap's BufferedWriteSyncer ticks even when idle).
// Lines still buffered when the process dies without Close are lost: at
// most Delay's worth.
package logbuf

import (
	"io"
	"sync"
	"time"
)

// maxBatch is how much a batch holds before it is written at once.
const maxBatch = 64 << 10

// Writer batches writes to an underlying writer. It is safe for
// concurrent use.
type Writer struct {
	w     io.Writer
	delay time.Duration

	mu     sync.Mutex
	buf    []byte
	timer  *time.Timer
	armed  bool // timer runs for the current batch
	closed bool
}

// New returns a Writer that writes to w at most delay after the first line
// of a batch. A delay of zero or less writes every Write at once.
func New(w io.Writer, delay time.Duration) *Writer {
	b := &Writer{w: w, delay: delay}
	b.timer = time.AfterFunc(time.Hour, b.flushTimer)
	b.timer.Stop()
	return b
}

// Write adds p to the batch. An error of the underlying writer is returned
// by the Write that fills a batch, or by Flush and Close; lines a timer
// failed to write are dropped, as a full pipe's would be.
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.delay <= 0 || b.closed {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= maxBatch {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !b.armed {
		b.armed = true
		b.timer.Reset(b.delay)
	}
	return len(p), nil
}

// Flush writes the batch now.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *Writer) flushTimer() {
	b.mu.Lock()
	b.armed = false
	b.flushLocked()
	b.mu.Unlock()
}

func (b *Writer) flushLocked() error {
	if b.armed {
		b.armed = false
		b.timer.Stop()
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > 4*maxBatch {
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Close writes the batch; later writes go straight to the underlying
// writer.
func (b *Writer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return b.flushLocked()
}
