package soak

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// appPort is the servers' port.
const appPort = 8080

// ioTimeout bounds every dial and every request/answer: past it, the
// operation counts as failed.
const ioTimeout = 5 * time.Second

// app is a server pod's application: for every line it reads it answers
// "<pod name> <line>", on one connection as long as the client keeps it.
type app struct {
	name string
	l    net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func startApp(p *cluster.Pod) (*app, error) {
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, appPort).String())
	if err != nil {
		return nil, fmt.Errorf("app in %s: %w", p.Key(), err)
	}
	a := &app{name: p.Spec.Name, l: l, conns: map[net.Conn]struct{}{}}
	a.wg.Add(1)
	go a.serve()
	return a, nil
}

func (a *app) serve() {
	defer a.wg.Done()
	for {
		c, err := a.l.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			c.Close()
			return
		}
		a.conns[c] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		go a.handle(c)
	}
}

func (a *app) handle(c net.Conn) {
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		delete(a.conns, c)
		a.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 4096)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		w.WriteString(a.name)
		w.WriteByte(' ')
		w.Write(line)
		if err := w.Flush(); err != nil {
			return
		}
	}
}

// Close stops the app as a pod's deletion kills its process: the listener
// and every connection close.
func (a *app) Close() {
	a.mu.Lock()
	a.closed = true
	a.l.Close()
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// Kinds of traffic.
const (
	kindStream     = "long streams (ping every 100 ms)"
	kindShort      = "short connections (~50/s)"
	kindPersistent = "1 KiB request/response on persistent connections (~100/s)"
)

var kinds = []string{kindStream, kindShort, kindPersistent}

// failure is one failed operation (a dial, or a request and its answer).
type failure struct {
	kind       string
	target     netip.Addr
	start, end time.Time
	err        string
}

// nameAt is the pod that holds an address from a time on.
type nameAt struct {
	name  string
	since time.Time
}

// traffic runs the client side: from one client pod, long streams, short
// connections and persistent request/response connections to every
// target, round robin. Every operation is counted as done or failed, with
// its start and end.
type traffic struct {
	client  *cluster.Pod
	targets []netip.Addr

	wg sync.WaitGroup

	mu      sync.Mutex
	ok      map[string]int64
	fails   []failure
	wrong   []failure // answered by a pod the address no longer belonged to
	skipped int64     // short connections not started: too many in flight
	names   map[netip.Addr][]nameAt
}

func newTraffic(client *cluster.Pod, targets map[netip.Addr]string) *traffic {
	tr := &traffic{client: client, ok: map[string]int64{}, names: map[netip.Addr][]nameAt{}}
	for ip, name := range targets {
		tr.targets = append(tr.targets, ip)
		tr.names[ip] = []nameAt{{name: name}}
	}
	return tr
}

// setName records that name answers at ip for requests started from
// since on (a pod swap's end).
func (tr *traffic) setName(ip netip.Addr, name string, since time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.names[ip] = append(tr.names[ip], nameAt{name, since})
}

// validName reports whether an answer from name is right for a request to
// ip started at start: from the pod that held ip when the request started
// or from a later one, never from a pod replaced before.
func (tr *traffic) validName(ip netip.Addr, name string, start time.Time) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ns := tr.names[ip]
	cur := 0
	for i, n := range ns {
		if !n.since.After(start) {
			cur = i
		}
	}
	for _, n := range ns[cur:] {
		if n.name == name {
			return true
		}
	}
	return false
}

func (tr *traffic) done(kind string) {
	tr.mu.Lock()
	tr.ok[kind]++
	tr.mu.Unlock()
}

func (tr *traffic) failed(kind string, target netip.Addr, start time.Time, err error) {
	tr.mu.Lock()
	f := failure{kind: kind, target: target, start: start, end: time.Now(), err: err.Error()}
	if errors.Is(err, errWrongPod) {
		tr.wrong = append(tr.wrong, f)
	}
	tr.fails = append(tr.fails, f)
	tr.mu.Unlock()
}

// snapshot returns copies of the counts and failures.
func (tr *traffic) snapshot() (ok map[string]int64, fails, wrong []failure, skipped int64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ok = map[string]int64{}
	for k, v := range tr.ok {
		ok[k] = v
	}
	return ok, append([]failure(nil), tr.fails...), append([]failure(nil), tr.wrong...), tr.skipped
}

var errWrongPod = errors.New("answered by a pod that no longer holds the address")

// conn is a client connection with its reader.
type conn struct {
	c      net.Conn
	r      *bufio.Reader
	target netip.Addr
}

func (tr *traffic) dial(ctx context.Context, target netip.Addr) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, ioTimeout)
	defer cancel()
	c, err := tr.client.Dial(ctx, "tcp", netip.AddrPortFrom(target, appPort).String())
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 4096), target: target}, nil
}

// roundTrip sends one line (ending in \n) and checks the answer: the
// line back, after the name of a pod that may answer at the address.
func (tr *traffic) roundTrip(c *conn, line []byte, start time.Time) error {
	c.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.c.Write(line); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	ans, err := c.r.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	name, rest, ok := bytes.Cut(ans, []byte(" "))
	if !ok || !bytes.Equal(rest, line) {
		return fmt.Errorf("corrupt answer %.60q", ans)
	}
	if !tr.validName(c.target, string(name), start) {
		return fmt.Errorf("%w: %s answered at %s", errWrongPod, name, c.target)
	}
	return nil
}

// Rates.
const (
	streamsPerTarget    = 2
	streamInterval      = 100 * time.Millisecond
	shortInterval       = 20 * time.Millisecond // 50/s
	maxShortInFlight    = 64
	persistentPerTarget = 1
	persistentTotalRate = 100 // requests per second over all persistent connections
	payloadSize         = 1024
)

// start starts every loop; they stop when ctx is done (wait with wait).
func (tr *traffic) start(ctx context.Context) {
	for i, t := range tr.targets {
		for j := range streamsPerTarget {
			tr.wg.Add(1)
			go tr.streamLoop(ctx, t, i*streamsPerTarget+j)
		}
		for range persistentPerTarget {
			tr.wg.Add(1)
			go tr.persistentLoop(ctx, t, time.Second*time.Duration(len(tr.targets)*persistentPerTarget)/persistentTotalRate)
		}
	}
	tr.wg.Add(1)
	go tr.shortLoop(ctx)
}

func (tr *traffic) wait() { tr.wg.Wait() }

func (tr *traffic) streamLoop(ctx context.Context, target netip.Addr, id int) {
	defer tr.wg.Done()
	tick := time.NewTicker(streamInterval)
	defer tick.Stop()
	var c *conn
	defer func() {
		if c != nil {
			c.c.Close()
		}
	}()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		if c == nil {
			var err error
			if c, err = tr.dial(ctx, target); err != nil {
				if ctx.Err() == nil {
					tr.failed(kindStream, target, start, err)
				}
				continue
			}
		}
		if err := tr.roundTrip(c, fmt.Appendf(nil, "stream %d ping %d\n", id, seq), start); err != nil {
			if ctx.Err() == nil {
				tr.failed(kindStream, target, start, fmt.Errorf("stream broken: %w", err))
			}
			c.c.Close()
			c = nil
			continue
		}
		tr.done(kindStream)
	}
}

func (tr *traffic) persistentLoop(ctx context.Context, target netip.Addr, interval time.Duration) {
	defer tr.wg.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	payload := bytes.Repeat([]byte("x"), payloadSize)
	payload[payloadSize-1] = '\n'
	var c *conn
	defer func() {
		if c != nil {
			c.c.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		start := time.Now()
		if c == nil {
			var err error
			if c, err = tr.dial(ctx, target); err != nil {
				if ctx.Err() == nil {
					tr.failed(kindPersistent, target, start, err)
				}
				continue
			}
		}
		if err := tr.roundTrip(c, payload, start); err != nil {
			if ctx.Err() == nil {
				tr.failed(kindPersistent, target, start, err)
			}
			c.c.Close()
			c = nil
			continue
		}
		tr.done(kindPersistent)
	}
}

func (tr *traffic) shortLoop(ctx context.Context) {
	defer tr.wg.Done()
	tick := time.NewTicker(shortInterval)
	defer tick.Stop()
	sem := make(chan struct{}, maxShortInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			tr.mu.Lock()
			tr.skipped++
			tr.mu.Unlock()
			continue
		}
		target := tr.targets[seq%len(tr.targets)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			c, err := tr.dial(ctx, target)
			if err == nil {
				err = tr.roundTrip(c, fmt.Appendf(nil, "short %d\n", seq), start)
				c.c.Close()
			}
			switch {
			case err == nil:
				tr.done(kindShort)
			case ctx.Err() == nil:
				tr.failed(kindShort, target, start, err)
			}
		}()
	}
}
