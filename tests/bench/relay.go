package bench

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// Relay forwards every connection its listener accepts to what dial
// returns, both ways with half-close: how the bench lets a process in a
// pod's namespace reach istiod-lite in the underlay, as a pod reaches
// istiod through its Service.
type Relay struct {
	l    net.Listener
	dial func(ctx context.Context) (net.Conn, error)
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// NewRelay starts relaying l's connections.
func NewRelay(l net.Listener, dial func(ctx context.Context) (net.Conn, error)) *Relay {
	r := &Relay{l: l, dial: dial, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.relay(c)
			}()
		}
	}()
	return r
}

func (r *Relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *Relay) relay(c net.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := r.dial(ctx)
	cancel()
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(c, up) {
		return
	}
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		delete(r.conns, up)
		r.mu.Unlock()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, c)
		closeWrite(up)
	}()
	io.Copy(c, up)
	closeWrite(c)
	<-done
}

// Close stops accepting, closes the relayed connections and waits for
// every goroutine.
func (r *Relay) Close() error {
	err := r.l.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}
