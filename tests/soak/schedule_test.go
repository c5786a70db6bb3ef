package soak

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSchedule checks how often each fault is due in short and long runs
// (the soak itself needs root; this does not).
func TestSchedule(t *testing.T) {
	for _, tc := range []struct {
		duration time.Duration
		want     map[string]int
	}{
		{80 * time.Second, map[string]int{faultIstiod: 1, faultSwap: 1, faultHandover: 1, faultBlock: 1}},
		{10 * time.Minute, map[string]int{faultIstiod: 2, faultSwap: 9, faultHandover: 1, faultBlock: 1}},
		{30 * time.Minute, map[string]int{faultIstiod: 6, faultSwap: 29, faultHandover: 3, faultBlock: 1}},
	} {
		t.Setenv("SOAK_DURATION", tc.duration.String())
		s := loadSettings(t)
		evs := schedule(s, specs(s))
		got := map[string]int{}
		for i, ev := range evs {
			got[ev.fault]++
			if i > 0 && ev.at < evs[i-1].at {
				t.Errorf("schedule(%v): %v before %v", tc.duration, ev, evs[i-1])
			}
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("schedule(%v) faults (-want +got):\n%s", tc.duration, diff)
		}
	}
}

// TestWindowExplains checks which failures a window accounts for.
func TestWindowExplains(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ip := mustAddr("198.19.2.13")
	other := mustAddr("198.19.2.11")
	w := &window{scope: ip, start: at(10), end: at(12), grace: 5 * time.Second}
	all := &window{start: at(10), end: at(12), grace: 5 * time.Second}
	for _, tc := range []struct {
		name string
		w    *window
		f    failure
		want bool
	}{
		{"inside", w, failure{target: ip, start: at(11), end: at(11.5)}, true},
		{"started before, failed inside", w, failure{target: ip, start: at(6), end: at(10.5)}, true},
		{"in the grace", w, failure{target: ip, start: at(16), end: at(17)}, true},
		{"after the grace", w, failure{target: ip, start: at(17.5), end: at(18)}, false},
		{"before", w, failure{target: ip, start: at(5), end: at(9)}, false},
		{"another target", w, failure{target: other, start: at(11), end: at(11.5)}, false},
		{"every target", all, failure{target: other, start: at(11), end: at(11.5)}, true},
	} {
		if got := tc.w.explains(tc.f); got != tc.want {
			t.Errorf("%s: explains = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
