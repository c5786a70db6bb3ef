package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// nopConn is a tracked connection that is never used.
type nopConn struct{ net.Conn }

func (*nopConn) Close() error { return nil }

// TestReleaseMemoryAfterLoad: memory goes back to the OS once, when the
// connections fall from a peak of 1,000 or more to under a quarter of it,
// and not again within ReleaseEvery.
func TestReleaseMemoryAfterLoad(t *testing.T) {
	p, err := New(Config{
		Store: state.NewStore(),
		Pool: hbone.NewPool(hbone.PoolConfig{TLSConfig: func(context.Context, spiffeid.ID, []spiffeid.ID) (*tls.Config, error) {
			return nil, errors.New("no HBONE in this test")
		}}),
		Metrics:   telemetry.NewMetrics(nil),
		AccessLog: accesslog.New(slog.New(slog.DiscardHandler)),
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p.now = func() time.Time { return now }
	freed := 0
	p.freeOSMemory = func() { freed++ }
	var conns []net.Conn
	open := func(n int) {
		for range n {
			c := &nopConn{}
			if !p.track(c) {
				t.Fatal("track refused a connection")
			}
			conns = append(conns, c)
		}
	}
	closeTo := func(n int) {
		for len(conns) > n {
			p.untrack(conns[len(conns)-1])
			conns = conns[:len(conns)-1]
		}
	}
	defer func() { closeTo(0); p.Close(); p.cfg.Pool.Close() }()

	steps := []struct {
		name  string
		do    func()
		freed int
	}{
		{"a small peak is not a load", func() { open(999); closeTo(0) }, 0},
		{"at a quarter of the peak", func() { open(1200); closeTo(300) }, 0},
		{"under a quarter of the peak", func() { closeTo(299) }, 1},
		{"once per drop", func() { closeTo(0) }, 1},
		{"not again within ReleaseEvery", func() { open(2000); closeTo(0); now = now.Add(ReleaseEvery - time.Second) }, 1},
		{"after ReleaseEvery", func() { now = now.Add(time.Second) }, 2},
	}
	for _, s := range steps {
		s.do()
		p.ReleaseMemory()
		if freed != s.freed {
			t.Fatalf("%s: FreeOSMemory called %d times, want %d", s.name, freed, s.freed)
		}
	}
}
