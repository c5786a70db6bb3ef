package logstream

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/pkg/accesslog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rec(port uint16) *accesslog.Record {
	return &accesslog.Record{SrcAddr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), Direction: accesslog.Inbound}
}

func TestRingRead(t *testing.T) {
	for _, tc := range []struct {
		name               string
		size, added        int
		from               uint64
		wantN              int
		wantNext, wantLost uint64
		wantFirstPort      uint16
	}{
		{name: "empty", size: 4, added: 0, from: 1, wantN: 0, wantNext: 1},
		{name: "all kept", size: 4, added: 3, from: 1, wantN: 3, wantNext: 4, wantFirstPort: 1},
		{name: "from the middle", size: 4, added: 3, from: 3, wantN: 1, wantNext: 4, wantFirstPort: 3},
		{name: "overwritten: reader lost two", size: 4, added: 6, from: 1, wantN: 4, wantNext: 7, wantLost: 2, wantFirstPort: 3},
		{name: "far behind", size: 4, added: 100, from: 1, wantN: 4, wantNext: 101, wantLost: 96, wantFirstPort: 97},
		{name: "up to date", size: 4, added: 6, from: 7, wantN: 0, wantNext: 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRing(tc.size)
			for i := 1; i <= tc.added; i++ {
				r.Add(rec(uint16(i)), time.Millisecond)
			}
			buf := make([]entry, 16)
			n, next, lost := r.read(tc.from, buf)
			if n != tc.wantN || next != tc.wantNext || lost != tc.wantLost {
				t.Fatalf("read(%d) = %d, %d, %d, want %d, %d, %d", tc.from, n, next, lost, tc.wantN, tc.wantNext, tc.wantLost)
			}
			if n > 0 {
				if got := buf[0].rec.SrcAddr.Port(); got != tc.wantFirstPort {
					t.Errorf("first record's port = %d, want %d", got, tc.wantFirstPort)
				}
				for i := 1; i < n; i++ {
					if buf[i].seq != buf[i-1].seq+1 {
						t.Errorf("seq %d after %d, want consecutive", buf[i].seq, buf[i-1].seq)
					}
				}
			}
		})
	}
}

func TestRingDefaultSize(t *testing.T) {
	if got := NewRing(0).Size(); got != DefaultRingSize {
		t.Errorf("NewRing(0).Size() = %d, want %d", got, DefaultRingSize)
	}
}

// The ring is the access logger's sink: every record reaches it, whatever
// the log level, early denies (with an error) included.
func TestRingIsTheLoggerSink(t *testing.T) {
	r := NewRing(8)
	l := accesslog.New(nil) // discards: no level enabled
	l.SetSink(r.Sink())
	start := time.Now().Add(-30 * time.Millisecond)
	l.Log(t.Context(), &accesslog.Record{Direction: accesslog.Inbound, Start: start, ResponseFlags: "DENY", Err: errDenied{}})
	buf := make([]entry, 4)
	n, _, _ := r.read(1, buf)
	if n != 1 {
		t.Fatalf("records in the ring = %d, want 1", n)
	}
	if buf[0].dur < 30*time.Millisecond {
		t.Errorf("duration = %v, want at least 30ms (time since Start)", buf[0].dur)
	}
	if got := VerdictOf(&buf[0].rec); got.String() != "DENY" {
		t.Errorf("verdict = %v, want DENY", got)
	}
}

type errDenied struct{}

func (errDenied) Error() string { return "connection denied by policy" }

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
