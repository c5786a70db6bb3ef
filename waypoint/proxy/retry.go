package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// retryPolicy is an entry's compiled Retry.
type retryPolicy struct {
	attempts int      // retries after the first try; 0: none
	codes    []uint32 // statuses retried
	backoff  time.Duration
}

// defaultBackoff is Envoy's base retry interval, when the route sets none.
const defaultBackoff = 25 * time.Millisecond

func compileRetry(r *waypoint.Retry) retryPolicy {
	if r == nil {
		return retryPolicy{}
	}
	rp := retryPolicy{attempts: int(r.GetAttempts()), codes: r.GetCodes(), backoff: time.Duration(r.GetBackoffMs()) * time.Millisecond}
	if rp.backoff <= 0 {
		rp.backoff = defaultBackoff
	}
	return rp
}

// retryState is a routed request's tries: its backend, its replayable
// body and the endpoint of the last try (for the access log record and
// labels).
type retryState struct {
	p          *Proxy
	policy     *retryPolicy
	perTry     time.Duration // timeouts.backendRequest; 0: none
	svc        *state.Service
	port       uint16
	replayable bool
	body       []byte
	last       *state.Workload // the endpoint of the last try when it is not the first's
	tried      [4]*host        // the hosts of earlier tries, avoided by the next (balance.go)
	ntried     int
}

// roundTrip sends out with retries: each try (after the first, on another
// endpoint of the backend, after a backoff) bounded by the per-try
// timeout; a try is retried on a failure to connect, a reset (idempotent
// requests), a per-try timeout, a status the policy lists, and for gRPC the grpc-status
// UNAVAILABLE or CANCELLED of a trailers-only answer (Istio's default
// retry_on). A request whose body cannot be replayed gets one try. once
// sends one try to rq.upstream.
func (rs *retryState) roundTrip(out *http.Request, rq *request, once func(*http.Request) (*http.Response, error)) (*http.Response, error) {
	parent := out.Context()
	attempts := rs.policy.attempts
	if !rs.replayable {
		attempts = 0
	}
	for try := 0; ; try++ {
		req := out
		if try > 0 || rs.perTry > 0 {
			req = out.Clone(parent) // each try its own copy (the transports keep the request)
			req.URL.Host = rq.upstream.String()
		}
		if try > 0 && rs.body != nil {
			req.Body = newBufferedBody(rs.body)
		}
		var cancel context.CancelFunc
		if rs.perTry > 0 {
			var ctx context.Context
			ctx, cancel = context.WithTimeoutCause(parent, rs.perTry, errPerTryTimeout)
			req = req.WithContext(ctx)
		}
		res, err := once(req)
		last := try >= attempts || parent.Err() != nil
		if !last && !rs.retriable(req, res, err) {
			last = true
		}
		if last {
			switch {
			case cancel == nil:
			case err != nil && errors.Is(context.Cause(req.Context()), errPerTryTimeout) && parent.Err() == nil:
				cancel()
				return nil, &perTryTimeoutError{err}
			case err != nil:
				cancel()
			default:
				res.Body = &cancelBody{ReadCloser: res.Body, cancel: cancel}
			}
			return res, err
		}
		if res != nil {
			io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
		}
		// The try's endpoint is released (balance.go) and avoided by the
		// next try.
		if rq.lease.h != nil && rs.ntried < len(rs.tried) {
			rs.tried[rs.ntried] = rq.lease.h
			rs.ntried++
		}
		rs.p.lb.done(rq.lease, tryOutcome(req.Context(), err))
		rq.lease = lease{}
		if cancel != nil {
			cancel()
		}
		if !sleepCtx(parent, rs.backoffFor(try)) {
			return nil, parent.Err()
		}
		w, port, l, perr := rs.p.lb.pickAvoiding(rs.svc, rs.port, rs.tried[:rs.ntried])
		if perr != nil {
			return nil, &dialError{perr}
		}
		rq.lease = l
		rq.upstream = netip.AddrPortFrom(w.Addrs[0], port)
		rq.hbone = rs.p.up.tunnelled(w)
		rs.last = w
	}
}

// retriable reports whether a try's outcome is retried: a failure to
// connect (the request was not sent) and a per-try timeout always; a
// reset only for an idempotent request, which the endpoint may have
// processed before it went away (Istio's default retry_on has no reset
// at all).
func (rs *retryState) retriable(req *http.Request, res *http.Response, err error) bool {
	if err != nil {
		var de *dialError
		if errors.As(err, &de) || errors.Is(context.Cause(req.Context()), errPerTryTimeout) {
			return true
		}
		return idempotent(req)
	}
	if slices.Contains(rs.policy.codes, uint32(res.StatusCode)) {
		return true
	}
	if isGRPC(req) {
		switch res.Header.Get("Grpc-Status") {
		case "14", "1": // UNAVAILABLE, CANCELLED
			return true
		}
	}
	return false
}

// backoffFor is the wait before the try after try: the base interval
// doubled each retry, at most ten times the base (Envoy's cap).
func (rs *retryState) backoffFor(try int) time.Duration {
	d := rs.policy.backoff << min(try, 4)
	return min(d, 10*rs.policy.backoff)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// perTryTimeoutError is the last try's per-try timeout: 504, UT.
type perTryTimeoutError struct{ err error }

func (e *perTryTimeoutError) Error() string { return "backend request timeout: " + e.err.Error() }
func (e *perTryTimeoutError) Unwrap() error { return e.err }
func (e *perTryTimeoutError) Timeout() bool { return true }
func (e *perTryTimeoutError) Temporary() bool {
	return false
}

// cancelBody releases a try's context once its answer is read.
type cancelBody struct {
	io.ReadCloser
	cancel func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
