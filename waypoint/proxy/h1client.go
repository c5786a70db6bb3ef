package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"os"
	"sync"
	"time"
)

// The fast HTTP/1.1 path to tunnelled endpoints. net/http's Transport
// writes each request on its connection's writeLoop goroutine and reads
// the answer on its readLoop goroutine, and it flushes a request's headers
// before copying a body that is not in memory: through the waypoint that
// is two goroutine hand-offs and two HBONE DATA frames (two TLS records,
// two write(2)) per request. h1Client sends the common request instead on
// the handler's own goroutine: a body of known length up to maxFastBody is
// read first, the request goes out in one write, and the answer is read
// on the same goroutine. Everything else (HTTP/2, upgrades, streamed or
// large bodies, endpoints outside the mesh) keeps the Transport.
const (
	// maxFastBody is the largest request body sent on the fast path.
	maxFastBody = 16 << 10
	// fastWriteBuffer holds a request's headers and body.
	fastWriteBuffer = 32 << 10
	// maxIdlePerEndpoint bounds the kept connections per endpoint, as the
	// Transport's MaxIdleConnsPerHost.
	maxIdlePerEndpoint = 100
	// max1xxResponses bounds the interim responses read before the final
	// one, as net/http's Transport.
	max1xxResponses = 5
)

// fastEligible reports whether out (the reverse proxy's outgoing request)
// may take the fast path.
func fastEligible(out *http.Request, rq *request) bool {
	if rq.h2 || !rq.hbone || out.ContentLength > maxFastBody || out.ContentLength < 0 {
		return false
	}
	if out.Body != nil && out.ContentLength == 0 {
		return false // a body of unknown length (HTTP/1.1 chunked)
	}
	// Upgrades (the reverse proxy keeps their Connection and Upgrade
	// headers) need the Transport's bidirectional body.
	_, upgrade := out.Header["Upgrade"]
	return !upgrade
}

// h1Conn is one kept HTTP/1.1 connection to an endpoint.
type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	addr   netip.AddrPort
	idleAt time.Time
}

// h1Client keeps HTTP/1.1 connections per endpoint (podIP:targetPort) and
// sends requests on the caller's goroutine.
type h1Client struct {
	dial        func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	idleTimeout time.Duration
	headerWait  time.Duration // bound until the response headers; 0: none

	mu      sync.Mutex
	idle    map[netip.AddrPort][]*h1Conn
	pruning bool // a prune timer is pending
	closed  bool
}

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, fastWriteBuffer) }}

// bodyPool holds request body buffers of maxFastBody bytes.
var bodyPool = sync.Pool{New: func() any { return new([maxFastBody]byte) }}

// roundTrip sends out to addr and returns the answer. The response body
// returns the connection to the pool once read to its end. Interim (1xx)
// answers are written to interim, or given to out's httptrace.ClientTrace
// when interim is nil.
func (c *h1Client) roundTrip(out *http.Request, addr netip.AddrPort, interim http.ResponseWriter) (*http.Response, error) {
	ctx := out.Context()
	var body []byte
	if out.ContentLength > 0 {
		buf := bodyPool.Get().(*[maxFastBody]byte)
		defer bodyPool.Put(buf)
		body = buf[:out.ContentLength]
		if _, err := io.ReadFull(out.Body, body); err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
	}
	if out.Body != nil {
		out.Body.Close()
	}
	for attempt := 0; ; attempt++ {
		cc, reused, err := c.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		resp, retry, err := c.send(ctx, cc, out, body, interim)
		if err == nil {
			return resp, nil
		}
		cc.c.Close()
		// A kept connection the endpoint closed in the meantime: once more
		// on a new one, when the request cannot have been processed (as
		// the Transport retries).
		if !reused || !retry || attempt > 0 {
			return nil, err
		}
	}
}

// send writes the request on cc and reads the answer's headers. retry
// reports that the endpoint cannot have processed the request.
func (c *h1Client) send(ctx context.Context, cc *h1Conn, out *http.Request, body []byte, interim http.ResponseWriter) (_ *http.Response, retry bool, _ error) {
	req := *out // the copy gets the in-memory body; out stays the reverse proxy's
	req.Body = nil
	if body != nil {
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	stop := context.AfterFunc(ctx, func() { cc.c.SetDeadline(aLongTimeAgo) })
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(cc.c)
	err := req.Write(bw) // in-memory body: headers and body in one flush
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writerPool.Put(bw)
	if err != nil {
		stop()
		return nil, true, fmt.Errorf("write request: %w", err)
	}
	if c.headerWait > 0 {
		cc.c.SetReadDeadline(time.Now().Add(c.headerWait))
	}
	var resp *http.Response
	for n1xx := 0; ; n1xx++ {
		resp, err = http.ReadResponse(cc.br, out)
		if err != nil {
			stop()
			// Nothing came back: the endpoint closed a kept connection
			// (only idempotent requests are sent again, as the Transport).
			retry := errors.Is(err, io.EOF) && cc.br.Buffered() == 0 && idempotent(out)
			return nil, retry, fmt.Errorf("read response: %w", err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if n1xx >= max1xxResponses {
			stop()
			return nil, false, errors.New("read response: too many 1xx responses")
		}
		if interim != nil {
			relayInterim(interim, resp.StatusCode, textproto.MIMEHeader(resp.Header))
		} else if t := httptrace.ContextClientTrace(ctx); t != nil && t.Got1xxResponse != nil {
			if err := t.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				stop()
				return nil, false, err
			}
		}
	}
	if c.headerWait > 0 {
		cc.c.SetReadDeadline(time.Time{})
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		stop()
		return nil, false, errors.New("read response: 101 to a request without upgrade")
	}
	reuse := !resp.Close && !out.Close
	if resp.Body == http.NoBody || resp.Body == nil {
		c.finish(cc, stop, reuse)
		return resp, false, nil
	}
	resp.Body = &h1Body{c: c, cc: cc, body: resp.Body, stop: stop, reuse: reuse}
	return resp, false, nil
}

// aLongTimeAgo is a deadline that has passed: it makes blocked reads and
// writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}

// finish ends a request on cc: the connection goes back to the pool if it
// can carry another request, else it is closed.
func (c *h1Client) finish(cc *h1Conn, stop func() bool, reuse bool) {
	if !stop() { // the request's context ended: the deadline may be set
		reuse = false
	}
	if !reuse || cc.br.Buffered() > 0 {
		cc.c.Close()
		return
	}
	c.put(cc)
}

// get returns a kept connection to addr that is still open, or a new one.
func (c *h1Client) get(ctx context.Context, addr netip.AddrPort) (cc *h1Conn, reused bool, err error) {
	for {
		c.mu.Lock()
		list := c.idle[addr]
		if len(list) == 0 {
			c.mu.Unlock()
			break
		}
		cc = list[len(list)-1]
		list[len(list)-1] = nil
		c.idle[addr] = list[:len(list)-1]
		c.mu.Unlock()
		if time.Since(cc.idleAt) < c.idleTimeout && alive(cc) {
			return cc, true, nil
		}
		cc.c.Close()
	}
	conn, err := c.dial(ctx, addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{c: conn, br: bufio.NewReader(conn), addr: addr}, false, nil
}

// alive reports whether a kept connection has neither been closed by the
// endpoint nor received anything while idle: a read with a past deadline
// returns at once, with EOF (or the stream's error) if it is closed, a
// timeout if it is open and quiet. An HBONE stream answers without the
// deadlines (each takes the stream's lock and a timer).
func alive(cc *h1Conn) bool {
	if cc.br.Buffered() > 0 {
		return false
	}
	if hc, ok := cc.c.(interface{ Buffered() (int, error) }); ok {
		n, err := hc.Buffered()
		return n == 0 && err == nil
	}
	cc.c.SetReadDeadline(aLongTimeAgo)
	_, err := cc.br.Peek(1)
	cc.c.SetReadDeadline(time.Time{})
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// put keeps cc for the next request to its endpoint.
func (c *h1Client) put(cc *h1Conn) {
	cc.idleAt = time.Now()
	c.mu.Lock()
	if c.closed || len(c.idle[cc.addr]) >= maxIdlePerEndpoint {
		c.mu.Unlock()
		cc.c.Close()
		return
	}
	if c.idle == nil {
		c.idle = map[netip.AddrPort][]*h1Conn{}
	}
	c.idle[cc.addr] = append(c.idle[cc.addr], cc)
	if !c.pruning {
		c.pruning = true
		time.AfterFunc(c.idleTimeout, c.prune)
	}
	c.mu.Unlock()
}

// prune closes the connections idle for longer than the idle timeout and
// runs again while any are kept.
func (c *h1Client) prune() {
	var old []*h1Conn
	c.mu.Lock()
	for addr, list := range c.idle {
		kept := list[:0]
		for _, cc := range list {
			if time.Since(cc.idleAt) >= c.idleTimeout {
				old = append(old, cc)
			} else {
				kept = append(kept, cc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(c.idle, addr)
		} else {
			c.idle[addr] = kept
		}
	}
	c.pruning = len(c.idle) > 0 && !c.closed
	if c.pruning {
		time.AfterFunc(c.idleTimeout, c.prune)
	}
	c.mu.Unlock()
	for _, cc := range old {
		cc.c.Close()
	}
}

// close closes the kept connections; connections in use are closed when
// their requests end.
func (c *h1Client) close() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.closed = true
	c.mu.Unlock()
	for _, list := range idle {
		for _, cc := range list {
			cc.c.Close()
		}
	}
}

// h1Body is a response body on the fast path: read to its end, it returns
// the connection to the pool; closed before, it closes the connection (its
// state is unknown), as the Transport does.
type h1Body struct {
	c     *h1Client
	cc    *h1Conn
	body  io.ReadCloser
	stop  func() bool
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.done = true
		b.c.finish(b.cc, b.stop, b.reuse && err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.done = true
		b.c.finish(b.cc, b.stop, false)
	}
	return nil
}
