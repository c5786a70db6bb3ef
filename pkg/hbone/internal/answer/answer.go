// Package answer is the bookkeeping of a CONNECT's answer that hbone's
// and h3's Tunnel share: one answer at most (a 200 and the stream, or a
// refusal), a 503 when the handler gave none, and the accepted stream
// closed when the handler returns.
package answer

import (
	"errors"
	"io"
	"strings"
	"sync"
)

// ErrAnswered is returned by [Once.Accept] after the tunnel was answered.
var ErrAnswered = errors.New("hbone: tunnel already answered")

// Once is the answer of one CONNECT, given at most once. The zero value
// is unanswered.
type Once[C io.Closer] struct {
	mu       sync.Mutex
	answered bool
	accepted bool
	conn     C
}

// Accept runs accept, which answers 200 and returns the stream, unless the
// tunnel was answered: then it returns ErrAnswered.
func (o *Once[C]) Accept(accept func() (C, error)) (C, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.answered {
		var zero C
		return zero, ErrAnswered
	}
	o.answered = true
	c, err := accept()
	if err != nil {
		return c, err
	}
	o.conn, o.accepted = c, true
	return c, nil
}

// Reject runs reject, which answers a refusal, unless the tunnel was
// answered.
func (o *Once[C]) Reject(reject func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.answered {
		return
	}
	o.answered = true
	reject()
}

// Finish runs when the handler returned: it rejects with reject if the
// tunnel was not answered, and closes the stream if it was accepted.
func (o *Once[C]) Finish(reject func()) {
	o.mu.Lock()
	answered, accepted, conn := o.answered, o.accepted, o.conn
	o.mu.Unlock()
	if !answered {
		o.Reject(reject)
		return
	}
	if accepted {
		conn.Close()
	}
}

// Reason makes the reason of a refusal safe as a header value (control
// characters become spaces) and bounds its length to 256 bytes.
func Reason(reason string) string {
	const max = 256
	b := make([]byte, 0, min(len(reason), max))
	for i := 0; i < len(reason) && len(b) < max; i++ {
		c := reason[i]
		if c < 0x20 || c == 0x7f {
			c = ' '
		}
		b = append(b, c)
	}
	return strings.TrimSpace(string(b))
}
