package ztunnel

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestReleaseWhenSettled: the free heap goes back to the OS once per
// burst of configuration changes, delay after its last change, and a
// release never comes sooner than share times the last one's duration
// after it.
func TestReleaseWhenSettled(t *testing.T) {
	const delay, share = time.Second, 100
	tests := []struct {
		name string
		// took is how long each release takes.
		took time.Duration
		// changes are the offsets from the start at which the
		// configuration changes.
		changes []time.Duration
		// want are the offsets at which releases start, within the
		// first end of the run.
		want []time.Duration
	}{
		{
			name: "the start-up is released once",
			want: []time.Duration{delay},
		},
		{
			name:    "a burst is released once, delay after its last change",
			changes: []time.Duration{3 * time.Minute, 3*time.Minute + 500*time.Millisecond, 3*time.Minute + 900*time.Millisecond},
			want:    []time.Duration{delay, 3*time.Minute + 900*time.Millisecond + delay},
		},
		{
			name:    "changes closer than delay keep deferring it",
			changes: []time.Duration{500 * time.Millisecond, 1400 * time.Millisecond, 2300 * time.Millisecond, 3200 * time.Millisecond},
			want:    []time.Duration{3200*time.Millisecond + delay},
		},
		{
			name:    "a quick release lets the next burst be released at once",
			took:    time.Millisecond,
			changes: []time.Duration{2 * time.Second, 4 * time.Second},
			want:    []time.Duration{delay, 2*time.Second + delay, 4*time.Second + delay},
		},
		{
			name:    "a slow release holds the next one back for share times its duration",
			took:    100 * time.Millisecond,
			changes: []time.Duration{2 * time.Second, 3 * time.Minute},
			// 1s–1.1s, then not before 1.1s + 10s.
			want: []time.Duration{delay, delay + 100*time.Millisecond + share*100*time.Millisecond, 3*time.Minute + delay},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				ctx, cancel := context.WithCancel(t.Context())
				changed := make(chan struct{}, 1)
				var got []time.Duration
				done := make(chan struct{})
				go func() {
					defer close(done)
					releaseWhenSettled(ctx, changed, delay, share, func() {
						got = append(got, time.Since(start))
						time.Sleep(tc.took)
					})
				}()
				for _, at := range tc.changes {
					time.Sleep(time.Until(start.Add(at)))
					changed <- struct{}{}
				}
				time.Sleep(time.Until(start.Add(10 * time.Minute)))
				cancel()
				<-done
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("releases at (-want +got):\n%s", diff)
				}
			})
		})
	}
}
