package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// AcceptErrorHold is how long after the last retried accept error
// AcceptHealth keeps reporting it (and ztunnel reports not ready).
const AcceptErrorHold = 5 * time.Second

// serve is the accept loop of every listener of the proxy: it accepts
// connections on l and handles each in its own tracked goroutine until l
// is closed (then it returns nil). Temporary errors
// (hbone.TemporaryAcceptError: out of file descriptors, a connection
// aborted before accept, timeouts) are counted, reported to AcceptHealth
// and retried with hbone.AcceptBackoff; any other error is returned. listener names l in metrics and logs.
func (p *Proxy) serve(l net.Listener, listener string, handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !hbone.TemporaryAcceptError(err) {
				return fmt.Errorf("%s accept: %w", listener, err)
			}
			p.AcceptError(listener, err)
			backoff = hbone.AcceptBackoff(backoff)
			p.log.Warn("accept failed, retrying", "listener", listener, "addr", l.Addr().String(), "error", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !p.track(c) {
			continue
		}
		go func() {
			defer p.untrack(c)
			handle(c)
		}()
	}
}

// AcceptError records a retried accept error of listener: it counts it
// (Config.AcceptErrors) and AcceptHealth reports it for AcceptErrorHold.
// Accept loops outside the proxy (the HBONE server's) call it too.
func (p *Proxy) AcceptError(listener string, err error) {
	p.cfg.AcceptErrors.Inc(listener)
	p.acceptMu.Lock()
	p.acceptErr = fmt.Errorf("accepting connections on %s is failing: %w", listener, err)
	p.acceptErrAt = p.now()
	p.acceptMu.Unlock()
}

// AcceptHealth returns the last accept error if it happened less than
// AcceptErrorHold ago, else nil: ztunnel is not ready while it cannot
// accept connections.
func (p *Proxy) AcceptHealth() error {
	p.acceptMu.Lock()
	defer p.acceptMu.Unlock()
	if p.acceptErr == nil || p.now().Sub(p.acceptErrAt) >= AcceptErrorHold {
		return nil
	}
	return p.acceptErr
}
