package proxy

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// AcceptErrorHold is how long after the last retried accept error
// AcceptHealth keeps reporting it (and ztunnel reports not ready).
const AcceptErrorHold = 5 * time.Second

// Back-off between retried accepts, as net/http: 5 ms doubling to 1 s.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// serve is the accept loop of every listener of the proxy: it accepts
// connections on l and handles each in its own tracked goroutine until l
// is closed (then it returns nil). Temporary errors (out of file
// descriptors, a connection aborted before accept, timeouts) are counted,
// reported to AcceptHealth and retried with back-off; any other error is
// returned. listener names l in metrics and logs.
func (p *Proxy) serve(l net.Listener, listener string, handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !TemporaryAcceptError(err) {
				return fmt.Errorf("%s accept: %w", listener, err)
			}
			p.AcceptError(listener, err)
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
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

// TemporaryAcceptError reports whether an accept error is worth retrying:
// a timeout, resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM), or a
// connection that failed before it was accepted (ECONNABORTED and the
// network errors accept(2) says to treat like EAGAIN).
func TemporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range [...]syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
		syscall.EPROTO, syscall.ENETDOWN, syscall.ENOPROTOOPT, syscall.EHOSTDOWN,
		syscall.ENONET, syscall.EHOSTUNREACH, syscall.EOPNOTSUPP, syscall.ENETUNREACH,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
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
