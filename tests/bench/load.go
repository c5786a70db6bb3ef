package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Dialer opens one connection to the application under test, through
// whichever path a variant takes (direct, mesh, peer).
type Dialer func(ctx context.Context, port uint16) (net.Conn, error)

// Application ports, on the server pod's address.
const (
	EchoPort uint16 = 7000 // echoes every byte back
	SinkPort uint16 = 7001 // reads to EOF, answers the byte count (8 bytes, big endian)
	// GreetPort writes one byte and closes first, as a server ending a
	// short exchange does: the TIME_WAIT state stays on the server's side
	// and the client's ephemeral ports are free at once.
	GreetPort uint16 = 7002
)

// ReqSize is the request and response size of the latency figures.
const ReqSize = 1024

// Apps are the server pod's applications.
type Apps struct {
	ls   []net.Listener
	http *http.Server
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartApps binds the echo, sink, greet and HTTP applications on host.
func StartApps(host string) (*Apps, error) {
	return StartAppsWith(net.Listen, host)
}

// StartAppsWith is StartApps with the listeners opened by listen (for
// instance inside a pod's network namespace).
func StartAppsWith(listen func(network, addr string) (net.Listener, error), host string) (*Apps, error) {
	a := &Apps{conns: map[net.Conn]struct{}{}}
	for _, s := range []struct {
		port  uint16
		serve func(net.Conn)
	}{{EchoPort, echo}, {SinkPort, sink}, {GreetPort, greet}} {
		l, err := listen("tcp", net.JoinHostPort(host, fmt.Sprint(s.port)))
		if err != nil {
			a.Close()
			return nil, err
		}
		a.ls = append(a.ls, l)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serve(l, s.serve)
		}()
	}
	l, err := listen("tcp", net.JoinHostPort(host, fmt.Sprint(HTTPPort)))
	if err != nil {
		a.Close()
		return nil, err
	}
	a.http = newHTTPServer()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.http.Serve(l)
	}()
	return a, nil
}

func (a *Apps) serve(l net.Listener, f func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		a.conns[c] = struct{}{}
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			f(c)
			c.Close()
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
		}()
	}
}

// Close stops the applications and closes their connections.
func (a *Apps) Close() error {
	for _, l := range a.ls {
		l.Close()
	}
	if a.http != nil {
		a.http.Close()
	}
	a.mu.Lock()
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

func echo(c net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func greet(c net.Conn) { c.Write([]byte{1}) }

func sink(c net.Conn) {
	buf := make([]byte, 64<<10)
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, buf)
	if err != nil {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	c.Write(b[:])
}

// ThroughputResult is one single-stream transfer.
type ThroughputResult struct {
	Bytes    int64
	Duration time.Duration // from the first write to the sink's byte count
}

// BytesPerSecond is the transfer's goodput.
func (r ThroughputResult) BytesPerSecond() float64 {
	return float64(r.Bytes) / r.Duration.Seconds()
}

// Throughput sends over one connection to the sink until maxBytes are sent
// or maxTime has passed, half-closes, and waits for the sink to confirm the
// count it received.
func Throughput(ctx context.Context, dial Dialer, maxBytes int64, maxTime time.Duration) (ThroughputResult, error) {
	c, err := dial(ctx, SinkPort)
	if err != nil {
		return ThroughputResult{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(maxTime + 10*time.Second))
	chunk := make([]byte, 128<<10)
	start := time.Now()
	deadline := start.Add(maxTime)
	var sent int64
	for sent < maxBytes && time.Now().Before(deadline) {
		n, err := c.Write(chunk[:min(int64(len(chunk)), maxBytes-sent)])
		sent += int64(n)
		if err != nil {
			return ThroughputResult{}, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := closeWrite(c); err != nil {
		return ThroughputResult{}, err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return ThroughputResult{}, fmt.Errorf("reading the sink's count: %w", err)
	}
	d := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(b[:])); got != sent {
		return ThroughputResult{}, fmt.Errorf("sink received %d bytes, sent %d", got, sent)
	}
	return ThroughputResult{Bytes: sent, Duration: d}, nil
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot half-close")
}

// roundTrip sends one ReqSize request on c and reads the ReqSize echo.
func roundTrip(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf[:ReqSize]); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf[:ReqSize])
	return err
}

// LoadResult is one run of a request/response load.
type LoadResult struct {
	Latencies
	Requests int           // completed requests
	Errors   int           // failed requests
	Elapsed  time.Duration // from the first scheduled send to the last answer
	// Late is the 99th percentile of how late the open-loop generator
	// released requests relative to their schedule.
	Late time.Duration
	// Overlapped counts the open loop's requests whose time in flight
	// (release to answer) overlapped another request's; Solo summarises
	// the latencies of the others, which had the path to themselves.
	Overlapped int
	Solo       Latencies
}

// RPS is the achieved request rate.
func (r LoadResult) RPS() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// OpenLoop sends ReqSize requests at a constant rate for duration over
// conns connections to the echo application. The schedule does not wait for
// answers: each request is released at its scheduled time and handed to
// the first free connection, and its latency runs from its release, not
// from when a connection became free. When the path stalls, the requests
// that should have been sent meanwhile wait in line and count the stall too
// (no coordinated omission). The release is the scheduled time or, when the
// generator itself wakes late (Go timers on an idle runtime have a 1 ms
// granularity), the moment it wakes: the generator's own lateness is not
// charged to the path under test, and Late reports it.
func OpenLoop(ctx context.Context, dial Dialer, conns int, rate float64, duration time.Duration) (LoadResult, error) {
	return openLoop(ctx, dial, EchoPort, tcpExchange, conns, rate, duration)
}

// exchange sends one request on its connection and reads the answer.
type exchange func() error

// newExchange returns the exchange of one connection.
type newExchange func(c net.Conn) exchange

// tcpExchange writes ReqSize bytes to the echo application and reads them
// back.
func tcpExchange(c net.Conn) exchange {
	buf := make([]byte, ReqSize)
	return func() error { return roundTrip(c, buf) }
}

func openLoop(ctx context.Context, dial Dialer, port uint16, newEx newExchange, conns int, rate float64, duration time.Duration) (LoadResult, error) {
	cs, err := dialN(ctx, dial, port, conns)
	if err != nil {
		return LoadResult{}, err
	}
	defer closeAll(cs)
	n := int(rate * duration.Seconds())
	period := time.Duration(float64(time.Second) / rate)
	released := make(chan time.Time, n)
	lat := make([][]time.Duration, len(cs))
	spans := make([][]span, len(cs))
	var errs atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	stop := time.Now().Add(duration + 10*time.Second) // hard bound on a stuck path
	for i, c := range cs {
		lat[i] = make([]time.Duration, 0, n)
		spans[i] = make([]span, 0, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex := newEx(c)
			c.SetDeadline(stop)
			for t := range released {
				if err := ex(); err != nil {
					errs.Add(1) // the others take the rest
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				end := time.Now()
				lat[i] = append(lat[i], end.Sub(t))
				spans[i] = append(spans[i], span{t, end})
			}
		}()
	}
	start := time.Now()
	late := make([]time.Duration, 0, n)
	for i := range n {
		t := start.Add(time.Duration(i) * period)
		if d := time.Until(t); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		now := time.Now()
		late = append(late, now.Sub(t))
		released <- now
	}
	close(released)
	wg.Wait()
	for range released { // left when every connection failed
		errs.Add(1)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	res := LoadResult{Latencies: Summarize(all), Requests: len(all), Errors: int(errs.Load()), Elapsed: time.Since(start),
		Late: Summarize(late).P99}
	var solo []time.Duration
	res.Overlapped, solo = overlaps(slices.Concat(spans...))
	res.Solo = Summarize(solo)
	if res.Errors > 0 {
		return res, fmt.Errorf("%d requests failed (first: %v)", res.Errors, errOf(firstErr.Load()))
	}
	return res, ctx.Err()
}

// span is one request's time in flight, from its release to its answer.
type span struct{ start, end time.Time }

// overlaps counts the spans that overlap another and returns the
// durations of the others.
func overlaps(spans []span) (n int, solo []time.Duration) {
	slices.SortFunc(spans, func(a, b span) int { return a.start.Compare(b.start) })
	var maxEnd time.Time // latest end of the spans before i
	for i, s := range spans {
		overlapped := i > 0 && s.start.Before(maxEnd) ||
			i+1 < len(spans) && spans[i+1].start.Before(s.end)
		if overlapped {
			n++
		} else {
			solo = append(solo, s.end.Sub(s.start))
		}
		if s.end.After(maxEnd) {
			maxEnd = s.end
		}
	}
	return n, solo
}

// ClosedLoop sends ReqSize requests back to back over conns connections
// for duration: the saturation throughput of the path, and the latency of
// each request from its send.
func ClosedLoop(ctx context.Context, dial Dialer, conns int, duration time.Duration) (LoadResult, error) {
	return closedLoop(ctx, dial, EchoPort, tcpExchange, conns, duration)
}

func closedLoop(ctx context.Context, dial Dialer, port uint16, newEx newExchange, conns int, duration time.Duration) (LoadResult, error) {
	cs, err := dialN(ctx, dial, port, conns)
	if err != nil {
		return LoadResult{}, err
	}
	defer closeAll(cs)
	lat := make([][]time.Duration, len(cs))
	var errs atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(duration)
	for i, c := range cs {
		lat[i] = make([]time.Duration, 0, 1<<16)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex := newEx(c)
			c.SetDeadline(end.Add(10 * time.Second))
			for ctx.Err() == nil {
				t := time.Now()
				if !t.Before(end) {
					return
				}
				if err := ex(); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	res := LoadResult{Latencies: Summarize(all), Requests: len(all), Errors: int(errs.Load()), Elapsed: time.Since(start)}
	if res.Errors > 0 {
		return res, fmt.Errorf("%d connections failed (first: %v)", res.Errors, errOf(firstErr.Load()))
	}
	return res, ctx.Err()
}

// ConnResult is one run of the new-connection load.
type ConnResult struct {
	Conns   int
	Errors  int
	Elapsed time.Duration
}

// PerSecond is the rate of completed connections.
func (r ConnResult) PerSecond() float64 { return float64(r.Conns) / r.Elapsed.Seconds() }

// NewConns opens connections to the greet application from workers
// goroutines for duration; each reads the server's byte and its close,
// then closes.
func NewConns(ctx context.Context, dial Dialer, workers int, duration time.Duration) ConnResult {
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(duration)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(end) {
				if err := oneConn(ctx, dial); err != nil {
					failed.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return ConnResult{Conns: int(ok.Load()), Errors: int(failed.Load()), Elapsed: time.Since(start)}
}

func oneConn(ctx context.Context, dial Dialer) error {
	c, err := dial(ctx, GreetPort)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [2]byte
	n, err := io.ReadFull(c, b[:])
	if n == 1 && errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return fmt.Errorf("greet: read %d bytes: %w", n, err)
}

// IdleConns opens n connections to the echo application, checks each with
// one round trip, and returns them open.
func IdleConns(ctx context.Context, dial Dialer, n int) ([]net.Conn, error) {
	cs, err := dialN(ctx, dial, EchoPort, n)
	if err != nil {
		return nil, err
	}
	var b [1]byte
	for _, c := range cs {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(b[:]); err == nil {
			_, err = io.ReadFull(c, b[:])
		}
		if err != nil {
			closeAll(cs)
			return nil, err
		}
		c.SetDeadline(time.Time{})
	}
	return cs, nil
}

func dialN(ctx context.Context, dial Dialer, port uint16, n int) ([]net.Conn, error) {
	cs := make([]net.Conn, 0, n)
	for range n {
		c, err := dial(ctx, port)
		if err != nil {
			closeAll(cs)
			return nil, fmt.Errorf("dial %d of %d: %w", len(cs)+1, n, err)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// errOf dereferences a recorded first error (nil: none).
func errOf(p *error) error {
	if p == nil {
		return nil
	}
	return *p
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
