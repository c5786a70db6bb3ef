package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logJSON logs r through a JSON handler and returns the decoded line
// without its time.
func logJSON(t *testing.T, level slog.Level, r *Record) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level})
	New(slog.New(h)).Log(context.Background(), r)
	if buf.Len() == 0 {
		return nil
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("json.Unmarshal(%q) error = %v", buf.String(), err)
	}
	if _, ok := got["time"]; !ok {
		t.Errorf("log line %q has no time", buf.String())
	}
	delete(got, "time")
	return got
}

func TestLogJSON(t *testing.T) {
	full := Record{
		SrcAddr:      netip.MustParseAddrPort("10.0.0.1:41000"),
		DstAddr:      netip.MustParseAddrPort("10.0.0.2:15008"),
		DstHBONEAddr: netip.MustParseAddrPort("10.0.0.2:8080"),
		SrcWorkload:  "sleep-7d9f",
		SrcNamespace: "default",
		SrcIdentity:  "spiffe://cluster.local/ns/default/sa/sleep",
		DstService:   "echo.default.svc.cluster.local",
		DstWorkload:  "echo-5c4b",
		DstNamespace: "default",
		DstIdentity:  "cluster.local/ns/default/sa/echo", // scheme added
		Direction:    Outbound,
		BytesSent:    120,
		BytesRecv:    4096,
		Duration:     12*time.Millisecond + 300*time.Microsecond,
	}
	withErr := Record{
		SrcAddr:       netip.MustParseAddrPort("10.0.0.1:41000"),
		DstAddr:       netip.MustParseAddrPort("10.0.0.2:8080"),
		Direction:     Inbound,
		Duration:      500 * time.Microsecond,
		Err:           errors.New("policy rejection: explicitly denied by: default/deny-all"),
		ResponseFlags: "DENY",
		Policy:        "default/deny-all",
	}
	for _, tc := range []struct {
		name  string
		level slog.Level
		rec   Record
		want  map[string]any
	}{
		{
			name:  "all fields",
			level: slog.LevelInfo,
			rec:   full,
			want: map[string]any{
				"level":          "INFO",
				"msg":            "connection complete",
				"scope":          "access",
				"src.addr":       "10.0.0.1:41000",
				"src.workload":   "sleep-7d9f",
				"src.namespace":  "default",
				"src.identity":   "spiffe://cluster.local/ns/default/sa/sleep",
				"dst.addr":       "10.0.0.2:15008",
				"dst.hbone_addr": "10.0.0.2:8080",
				"dst.service":    "echo.default.svc.cluster.local",
				"dst.workload":   "echo-5c4b",
				"dst.namespace":  "default",
				"dst.identity":   "spiffe://cluster.local/ns/default/sa/echo",
				"direction":      "outbound",
				"bytes_sent":     float64(120),
				"bytes_recv":     float64(4096),
				"duration":       "12ms",
			},
		},
		{
			name:  "error omits empty fields",
			level: slog.LevelInfo,
			rec:   withErr,
			want: map[string]any{
				"level":          "ERROR",
				"msg":            "connection complete",
				"scope":          "access",
				"src.addr":       "10.0.0.1:41000",
				"dst.addr":       "10.0.0.2:8080",
				"direction":      "inbound",
				"bytes_sent":     float64(0),
				"bytes_recv":     float64(0),
				"duration":       "0ms",
				"response_flags": "DENY",
				"policy":         "default/deny-all",
				"error":          "policy rejection: explicitly denied by: default/deny-all",
			},
		},
		{
			name:  "error level still written above info",
			level: slog.LevelWarn,
			rec:   withErr,
			want:  map[string]any{"level": "ERROR"},
		},
		{
			name:  "info disabled",
			level: slog.LevelWarn,
			rec:   full,
			want:  nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := logJSON(t, tc.level, &tc.rec)
			if len(tc.want) == 1 { // only the level is checked
				got = map[string]any{"level": got["level"]}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("log line mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDurationFromStart(t *testing.T) {
	l := New(nil)
	ch, cancel := l.Subscribe(1)
	defer cancel()
	start := time.Now().Add(-2 * time.Second)
	l.Log(context.Background(), &Record{Start: start})
	got := <-ch
	if got.Duration < 2*time.Second {
		t.Errorf("Duration = %v, want >= 2s (from Start)", got.Duration)
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0ms"},
		{999 * time.Microsecond, "0ms"},
		{12*time.Millisecond + 900*time.Microsecond, "12ms"},
		{3 * time.Minute, "180000ms"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := FormatDuration(tc.d); got != tc.want {
				t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
			}
		})
	}
}

func TestSubscribe(t *testing.T) {
	l := New(nil) // discarded: subscribers still receive
	ch1, cancel1 := l.Subscribe(4)
	ch2, cancel2 := l.Subscribe(4)
	want := Record{SrcWorkload: "sleep", Direction: Outbound, BytesSent: 1, Duration: time.Millisecond}
	l.Log(context.Background(), &want)
	for i, ch := range []<-chan Record{ch1, ch2} {
		if diff := cmp.Diff(want, <-ch, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
			t.Errorf("subscriber %d record mismatch (-want +got):\n%s", i, diff)
		}
	}

	cancel1()
	cancel1() // idempotent
	if _, ok := <-ch1; ok {
		t.Errorf("ch1 open after cancel, want closed")
	}
	l.Log(context.Background(), &want) // only ch2 gets it
	if got := len(ch2); got != 1 {
		t.Errorf("len(ch2) = %d, want 1", got)
	}
	cancel2()
	if got := l.Dropped(); got != 0 {
		t.Errorf("Dropped() = %d, want 0", got)
	}
}

func TestFullSubscriberDoesNotBlock(t *testing.T) {
	l := New(nil)
	_, cancel := l.Subscribe(2) // never read
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			l.Log(context.Background(), &Record{Direction: Inbound})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Log blocked on a full subscriber")
	}
	if got, want := l.Dropped(), uint64(8); got != want {
		t.Errorf("Dropped() = %d, want %d", got, want)
	}
}

func TestConcurrentCancel(t *testing.T) {
	// Cancelling while records are logged never sends on a closed channel.
	l := New(nil)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				l.Log(context.Background(), &Record{})
			}
		}
	}()
	for range 100 {
		_, cancel := l.Subscribe(1)
		cancel()
	}
	close(stop)
	<-done
}

func TestNilLogger(t *testing.T) {
	var l *Logger
	l.Log(context.Background(), &Record{})
	if got := l.Dropped(); got != 0 {
		t.Errorf("Dropped() = %d, want 0", got)
	}
}

func TestLogAllocs(t *testing.T) {
	l := New(slog.New(slog.DiscardHandler))
	r := &Record{SrcAddr: netip.MustParseAddrPort("10.0.0.1:1"), Direction: Outbound}
	if allocs := testing.AllocsPerRun(100, func() { l.Log(context.Background(), r) }); allocs != 0 {
		t.Errorf("Log with logging disabled and no subscriber: allocs = %v, want 0", allocs)
	}
}

func BenchmarkLogJSON(b *testing.B) {
	l := New(slog.New(slog.NewJSONHandler(discard{}, nil)))
	r := &Record{
		SrcAddr:      netip.MustParseAddrPort("10.0.0.1:41000"),
		DstAddr:      netip.MustParseAddrPort("10.0.0.2:15008"),
		SrcWorkload:  "sleep",
		SrcNamespace: "default",
		SrcIdentity:  "spiffe://cluster.local/ns/default/sa/sleep",
		DstWorkload:  "echo",
		Direction:    Outbound,
		Duration:     time.Millisecond,
	}
	b.ReportAllocs()
	for b.Loop() {
		l.Log(context.Background(), r)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
