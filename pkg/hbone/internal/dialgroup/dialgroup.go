// Package dialgroup is the part HBONE's connection pools share (hbone's
// HTTP/2 over TCP, h3's HTTP/3 over QUIC): finding a pooled connection
// with room for one more stream, and otherwise dialing a new one, once,
// for all the callers that need one for the same key at the same time.
package dialgroup

import (
	"context"
	"sync"
)

// Pool is the pool a [Get] serves. Reserve and Add run with the pool's
// lock held; Dial and Discard without it.
type Pool[K, C comparable, A any] interface {
	// Reserve returns a pooled connection for key with one stream reserved
	// for the caller, or the zero C when none has room.
	Reserve(key K) C
	// Dial opens a new connection for key; arg is Get's.
	Dial(ctx context.Context, key K, arg A) (C, error)
	// Add pools the new connection c.
	Add(key K, c C)
	// Discard closes a new connection that came after Close.
	Discard(c C)
}

// Group holds the dials in progress, by key, and whether the pool is
// closed; it is guarded by the pool's lock. The zero value is ready.
type Group[K comparable] struct {
	calls  map[K]*call
	closed error
}

type call struct {
	done     chan struct{}
	err      error
	canceled bool // the dialing caller's context ended: the others dial again
}

// Close makes Get fail with err from now on. The pool's lock is held.
func (g *Group[K]) Close(err error) { g.closed = err }

// Closed returns Close's error, nil while the pool is open. The pool's
// lock is held.
func (g *Group[K]) Closed() error { return g.closed }

// Get returns a connection of p for key with a stream reserved: a pooled
// one with room, else a new one. Concurrent callers for the same key share
// one Dial (made with arg and the context of the caller that began it);
// they all get its error, except when that caller's context ended, then
// they try again. mu is the pool's lock; Get takes it and returns without
// it. A new connection is pooled (Add) and then reserved like the others;
// one that comes after Close is discarded.
func Get[K, C comparable, A any](ctx context.Context, g *Group[K], mu *sync.Mutex, p Pool[K, C, A], key K, arg A) (C, error) {
	var zero C
	mu.Lock()
	for {
		if g.closed != nil {
			mu.Unlock()
			return zero, g.closed
		}
		if c := p.Reserve(key); c != zero {
			mu.Unlock()
			return c, nil
		}
		if d := g.calls[key]; d != nil {
			mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return zero, ctx.Err()
			}
			if d.err != nil && !d.canceled {
				return zero, d.err
			}
			mu.Lock()
			continue
		}
		d := &call{done: make(chan struct{})}
		if g.calls == nil {
			g.calls = make(map[K]*call)
		}
		g.calls[key] = d
		mu.Unlock()

		c, err := p.Dial(ctx, key, arg)

		mu.Lock()
		delete(g.calls, key)
		d.err, d.canceled = err, err != nil && ctx.Err() != nil
		close(d.done)
		switch {
		case err != nil:
			mu.Unlock()
			return zero, err
		case g.closed != nil:
			mu.Unlock()
			p.Discard(c)
			return zero, g.closed
		}
		p.Add(key, c)
	}
}
