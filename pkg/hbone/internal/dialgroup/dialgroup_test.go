package dialgroup

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conn is a pooled connection with room for one stream.
type conn struct {
	key  string
	used bool
}

// pool is a Pool whose Dial blocks until release is closed (or its
// context ends) and then returns err, or a new conn.
type pool struct {
	mu        sync.Mutex
	g         Group[string]
	conns     []*conn
	dials     int
	release   chan struct{}
	err       error
	discarded int
}

func (p *pool) Reserve(key string) *conn {
	for _, c := range p.conns {
		if c.key == key && !c.used {
			c.used = true
			return c
		}
	}
	return nil
}

func (p *pool) Dial(ctx context.Context, key string, _ struct{}) (*conn, error) {
	p.mu.Lock()
	p.dials++
	p.mu.Unlock()
	select {
	case <-p.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if p.err != nil {
		return nil, p.err
	}
	return &conn{key: key}, nil
}

func (p *pool) Add(_ string, c *conn) { p.conns = append(p.conns, c) }

func (p *pool) Discard(*conn) { p.discarded++ }

func (p *pool) get(ctx context.Context, key string) (*conn, error) {
	return Get(ctx, &p.g, &p.mu, p, key, struct{}{})
}

func (p *pool) waitDials(t *testing.T, n int) {
	t.Helper()
	for range 1000 {
		p.mu.Lock()
		d := p.dials
		p.mu.Unlock()
		if d >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %d dials", n)
}

// TestGet: callers that need a connection at the same time share one
// dial and all get its error; a pooled connection with room is reserved
// without a dial; a dial whose caller gave up is made again by the next
// waiting caller, not failed for it; after Close, Get fails and a
// connection dialed meanwhile is discarded.
func TestGet(t *testing.T) {
	t.Run("shared dial and its error", func(t *testing.T) {
		p := &pool{release: make(chan struct{}), err: errors.New("refused")}
		errs := make(chan error, 3)
		for range 3 {
			go func() { _, err := p.get(t.Context(), "a"); errs <- err }()
		}
		p.waitDials(t, 1)
		time.Sleep(20 * time.Millisecond) // the others wait on the dial
		close(p.release)
		for range 3 {
			if err := <-errs; !errors.Is(err, p.err) {
				t.Errorf("get() = %v, want %v", err, p.err)
			}
		}
		if p.dials != 1 {
			t.Errorf("dials = %d, want 1", p.dials)
		}
	})
	t.Run("pooled connection reserved", func(t *testing.T) {
		p := &pool{release: make(chan struct{})}
		close(p.release)
		first, err := p.get(t.Context(), "a")
		if err != nil {
			t.Fatal(err)
		}
		first.used = false // its stream ended
		second, err := p.get(t.Context(), "a")
		if err != nil || second != first || p.dials != 1 {
			t.Errorf("second get() = %p, %v after %d dials; want the first connection %p, one dial", second, err, p.dials, first)
		}
	})
	t.Run("dialing caller gave up", func(t *testing.T) {
		p := &pool{release: make(chan struct{})}
		ctx, cancel := context.WithCancel(t.Context())
		leader := make(chan error, 1)
		go func() { _, err := p.get(ctx, "a"); leader <- err }()
		p.waitDials(t, 1)
		follower := make(chan error, 1)
		go func() { _, err := p.get(t.Context(), "a"); follower <- err }()
		time.Sleep(20 * time.Millisecond) // the follower waits on the dial
		cancel()
		if err := <-leader; !errors.Is(err, context.Canceled) {
			t.Errorf("leader get() = %v, want context.Canceled", err)
		}
		p.waitDials(t, 2)
		close(p.release)
		if err := <-follower; err != nil {
			t.Errorf("follower get() = %v, want a connection of its own dial", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		p := &pool{release: make(chan struct{})}
		closed := errors.New("pool closed")
		got := make(chan error, 1)
		go func() { _, err := p.get(t.Context(), "a"); got <- err }()
		p.waitDials(t, 1)
		p.mu.Lock()
		p.g.Close(closed)
		p.mu.Unlock()
		close(p.release)
		if err := <-got; !errors.Is(err, closed) {
			t.Errorf("get() during Close = %v, want %v", err, closed)
		}
		if _, err := p.get(t.Context(), "b"); !errors.Is(err, closed) {
			t.Errorf("get() after Close = %v, want %v", err, closed)
		}
		got2 := struct{ Pooled, Discarded int }{len(p.conns), p.discarded}
		if diff := cmp.Diff(struct{ Pooled, Discarded int }{0, 1}, got2); diff != "" {
			t.Errorf("connections dialed during Close (-want +got):\n%s", diff)
		}
	})
}
