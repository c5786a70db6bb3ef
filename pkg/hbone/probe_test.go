//go:build linux

package hbone

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/hbone/hbonetest"
)

// TestProbeDeadConnection: with the pool's defaults, a CONNECT sent on a
// pooled connection whose peer went silent (its packets dropped) fails
// with ErrConnectionDead, not after the 15 s response timeout (the test's
// context ends at 10 s: before the probe, Dial returned its deadline), the
// connection is counted (LimitPingTimeout) and dropped from the pool, and
// the next CONNECT, once the path is open again, goes over a new
// connection.
func TestProbeDeadConnection(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{Handler: echoHandler()})
	bh := hbonetest.NewBlackhole(t, netip.MustParseAddrPort("127.0.0.1:0"), e.addr)
	pool := e.pool(t, func(c *PoolConfig) { c.OnLimit = hits.hit })
	tgt := e.target()
	tgt.Addr = bh.Addr()

	echo := func() error {
		c, err := pool.Dial(ctxT(t), tgt)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(got) != "ping" {
			return errors.New("echo = " + string(got) + ", want ping")
		}
		return nil
	}
	if err := echo(); err != nil {
		t.Fatalf("echo before the block: %v", err)
	}

	bh.Block()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pool.Dial(ctx, tgt)
	if !errors.Is(err, ErrConnectionDead) {
		t.Errorf("Dial() over a black hole error = %v, want ErrConnectionDead", err)
	}
	hits.check(t, map[string]int{LimitPingTimeout: 1})
	if got := pool.Stats(); got.Conns != 0 {
		t.Errorf("pool connections after the dead one closed = %d, want 0", got.Conns)
	}

	bh.Unblock()
	if err := echo(); err != nil {
		t.Errorf("echo after the block: %v", err)
	}
	if got, want := bh.Accepted(), 2; got != want {
		t.Errorf("connections accepted by the proxy = %d, want %d (the dead one was reused)", got, want)
	}
}

// TestProbeAbandonedConnect: a CONNECT whose caller gave up before the
// probe fired still gets its connection checked: the dead connection is
// closed and counted, and leaves the pool.
func TestProbeAbandonedConnect(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{Handler: echoHandler()})
	bh := hbonetest.NewBlackhole(t, netip.MustParseAddrPort("127.0.0.1:0"), e.addr)
	pool := e.pool(t, func(c *PoolConfig) { c.OnLimit = hits.hit })
	tgt := e.target()
	tgt.Addr = bh.Addr()
	c, err := pool.Dial(ctxT(t), tgt)
	if err != nil {
		t.Fatalf("Dial() before the block: %v", err)
	}
	c.Close()

	bh.Block()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := pool.Dial(ctx, tgt); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial() given up on after 200ms error = %v, want context.DeadlineExceeded", err)
	}
	waitFor(t, "the dead connection to leave the pool", func() bool { return pool.Stats().Conns == 0 })
	hits.check(t, map[string]int{LimitPingTimeout: 1})
}

// TestPingTimeoutCounted: an idle pooled connection whose peer went
// silent is closed by the keepalive PING's timeout (no CONNECT, so no
// probe), and that is counted as LimitPingTimeout too.
func TestPingTimeoutCounted(t *testing.T) {
	var hits limitCounts
	e := limitServer(t, &Server{Handler: echoHandler()})
	bh := hbonetest.NewBlackhole(t, netip.MustParseAddrPort("127.0.0.1:0"), e.addr)
	pool := e.pool(t, func(c *PoolConfig) {
		c.OnLimit = hits.hit
		c.PingInterval, c.PingTimeout = 100*time.Millisecond, 300*time.Millisecond
	})
	tgt := e.target()
	tgt.Addr = bh.Addr()
	c, err := pool.Dial(ctxT(t), tgt)
	if err != nil {
		t.Fatalf("Dial() before the block: %v", err)
	}
	c.Close()
	bh.Block()
	waitFor(t, "the dead connection to leave the pool", func() bool { return pool.Stats().Conns == 0 })
	hits.check(t, map[string]int{LimitPingTimeout: 1})
}
