package bench

import (
	"sync"
	"time"
)

// PeakRSS samples the RSS of procs every interval until stop is called,
// and returns each one's largest sample (0 for a process never read).
func PeakRSS(procs []*Process, interval time.Duration) (stop func() []int64) {
	peak := make([]int64, len(procs))
	sample := func() {
		for i, p := range procs {
			if s, err := p.Sample(); err == nil && s.RSS > peak[i] {
				peak[i] = s.RSS
			}
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() []int64 {
		close(done)
		wg.Wait()
		sample()
		return peak
	}
}
