package logstream

import (
	"context"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// BenchmarkLog is what the data path pays per record: the access logger
// (level disabled) with and without the ring as its sink, and with a
// follower reading from the ring.
func BenchmarkLog(b *testing.B) {
	r := rec(1)
	r.Start = time.Now()
	r.SrcWorkload, r.SrcNamespace, r.DstWorkload, r.DstNamespace = "client", "demo", "echo-0", "demo"
	b.Run("no sink", func(b *testing.B) {
		l := accesslog.New(nil)
		b.ReportAllocs()
		for b.Loop() {
			l.Log(context.Background(), r)
		}
	})
	b.Run("ring", func(b *testing.B) {
		l := accesslog.New(nil)
		l.SetSink(NewRing(0).Sink())
		b.ReportAllocs()
		for b.Loop() {
			l.Log(context.Background(), r)
		}
	})
	b.Run("ring with a follower", func(b *testing.B) {
		ring := NewRing(0)
		l := accesslog.New(nil)
		l.SetSink(ring.Sink())
		s := NewService(Config{Ring: ring, Name: "node-a"})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.Watch(ctx, &logsv1.WatchRequest{Follow: true}, func(...*logsv1.WatchResponse) error { return nil })
		}()
		b.ReportAllocs()
		for b.Loop() {
			l.Log(context.Background(), r)
		}
		cancel()
		<-done
	})
}
