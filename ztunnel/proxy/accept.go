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
//
// In in-pod mode every captured pod has two of these loops parked in
// Accept, so their stack matters: the loop keeps its own frame small
// (the error path and the handler's start are calls it does not inline)
// so that a parked loop fits the goroutine's initial 2 KiB stack instead
// of growing it to 4 KiB (TestAcceptLoopStack).
func (p *Proxy) serve(l net.Listener, listener string, handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			var stop bool
			if backoff, stop, err = p.acceptFailed(l, listener, err, backoff); stop {
				return err
			}
			continue
		}
		backoff = 0
		p.start(c, handle)
	}
}

// acceptFailed handles an error of serve's Accept: serve stops, returning
// nil once l is closed or the error if it is not temporary; otherwise it
// goes on after acceptFailed slept the next backoff, which it returns.
//
//go:noinline // keeps serve's frame small (see serve)
func (p *Proxy) acceptFailed(l net.Listener, listener string, err error, backoff time.Duration) (next time.Duration, stop bool, _ error) {
	if errors.Is(err, net.ErrClosed) {
		return 0, true, nil
	}
	if !hbone.TemporaryAcceptError(err) {
		return 0, true, fmt.Errorf("%s accept: %w", listener, err)
	}
	p.AcceptError(listener, err)
	backoff = hbone.AcceptBackoff(backoff)
	p.log.Warn("accept failed, retrying", "listener", listener, "addr", l.Addr().String(), "error", err, "backoff", backoff)
	time.Sleep(backoff)
	return backoff, false, nil
}

// start handles c, an accepted connection, in its own tracked goroutine
// (or closes it when the proxy no longer takes connections).
//
//go:noinline // keeps serve's frame small (see serve)
func (p *Proxy) start(c net.Conn, handle func(net.Conn)) {
	if !p.track(c) {
		return
	}
	go func() {
		defer p.untrack(c)
		handle(c)
	}()
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
