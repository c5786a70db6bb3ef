package hbone

import (
	"errors"
	"sync/atomic"
)

// maxQueuedControlFrames bounds the frames a connection's reader has queued
// for its writer goroutine and that are not written yet: PING and SETTINGS
// acks, RST_STREAM, WINDOW_UPDATE, early responses. A peer that makes us
// answer faster than it reads the answers is closed past it, as x/net's
// server does; without it, a client that never reads grows the queue by a
// ctrlFrame per PING it sends.
const maxQueuedControlFrames = 10000

// maxSettings bounds the entries of one SETTINGS frame (x/net's server
// closes the connection past 100 too); six are defined.
const maxSettings = 100

// errCtrlFlood closes a connection whose peer does not read the control
// frames it causes.
var errCtrlFlood = errors.New("hbone: peer does not read its control frames (too many queued)")

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

// ctrlQueue holds the frames queued for a connection's writer goroutine. It
// is guarded by the connection's mu, except flooded.
type ctrlQueue struct {
	frames  []ctrlFrame
	writing int           // taken by the writer, not written yet
	sig     chan struct{} // wakes the writer goroutine
	flood   atomic.Bool   // frames+writing went past maxQueuedControlFrames
}

func newCtrlQueue() ctrlQueue { return ctrlQueue{sig: make(chan struct{}, 1)} }

// push queues c and wakes the writer.
func (q *ctrlQueue) push(c ctrlFrame) {
	q.frames = append(q.frames, c)
	if len(q.frames)+q.writing > maxQueuedControlFrames {
		q.flood.Store(true)
	}
	select {
	case q.sig <- struct{}{}:
	default:
	}
}

// take hands the queued frames to the writer, which gives back the slice of
// its previous batch as buf, and must call written once they are written.
func (q *ctrlQueue) take(buf []ctrlFrame) []ctrlFrame {
	clear(buf)
	if cap(buf) > 256 {
		buf = nil // do not keep the capacity of a burst
	}
	batch := q.frames
	q.frames = buf[:0]
	q.writing += len(batch)
	return batch
}

// written ends the batch of n frames returned by take.
func (q *ctrlQueue) written(n int) { q.writing -= n }

// flooded reports whether the peer let too many control frames queue up.
// It may be called without the connection's mu.
func (q *ctrlQueue) flooded() bool { return q.flood.Load() }
