package ztunnel

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestReleaseWhenSettled: the free heap goes back to the OS once per
// burst of configuration changes, delay after its last change, and never
// twice within every.
func TestReleaseWhenSettled(t *testing.T) {
	const delay, every = 2 * time.Second, time.Minute
	tests := []struct {
		name string
		// changes are the offsets from the start at which the
		// configuration changes.
		changes []time.Duration
		// want are the offsets at which memory is released, within the
		// first end of the run.
		want []time.Duration
		end  time.Duration
	}{
		{
			name: "the start-up is released once",
			end:  10 * time.Minute,
			want: []time.Duration{delay},
		},
		{
			name:    "a burst is released once, delay after its last change",
			changes: []time.Duration{3 * time.Minute, 3*time.Minute + time.Second, 3*time.Minute + 2*time.Second},
			end:     10 * time.Minute,
			want:    []time.Duration{delay, 3*time.Minute + 2*time.Second + delay},
		},
		{
			name:    "changes closer than delay keep deferring it",
			changes: []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second},
			end:     10 * time.Minute,
			want:    []time.Duration{4*time.Second + delay},
		},
		{
			name:    "a burst within every of the last release waits for every",
			changes: []time.Duration{10 * time.Second, 3 * time.Minute},
			end:     10 * time.Minute,
			want:    []time.Duration{delay, delay + every, 3*time.Minute + delay},
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
					releaseWhenSettled(ctx, changed, delay, every, func() { got = append(got, time.Since(start)) })
				}()
				for _, at := range tc.changes {
					time.Sleep(time.Until(start.Add(at)))
					changed <- struct{}{}
				}
				time.Sleep(time.Until(start.Add(tc.end)))
				cancel()
				<-done
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("releases at (-want +got):\n%s", diff)
				}
			})
		})
	}
}
