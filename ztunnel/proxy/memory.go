package proxy

import (
	"context"
	"time"
)

// Giving memory back after load. After thousands of concurrent connections
// close, the Go heap is small again but the runtime keeps the pages it grew
// to (the next collection is due only when the heap doubles from its peak
// size, and the background scavenger returns memory slowly): a ztunnel that
// held 10,000 connections stayed at ~500 MB RSS with a 24 MB live heap.
// So when the number of tracked connections falls from a high peak
// (ReleasePeak or more) to under a quarter of it, the proxy collects and
// returns free memory to the OS (debug.FreeOSMemory) once, at most every
// ReleaseEvery.
const (
	ReleasePeak  = 1000
	ReleaseEvery = 30 * time.Second
	// releaseCheck is how often ReleaseMemoryLoop looks.
	releaseCheck = 5 * time.Second
)

// ReleaseMemoryLoop calls ReleaseMemory every 5 s until ctx is done.
func (p *Proxy) ReleaseMemoryLoop(ctx context.Context) error {
	t := time.NewTicker(releaseCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.ReleaseMemory()
		}
	}
}

// ReleaseMemory returns free memory to the OS if the number of tracked
// connections fell from a peak of at least ReleasePeak to under a quarter
// of it, and the last release is ReleaseEvery ago; it reports whether it
// did. The peak then starts again from the current number.
func (p *Proxy) ReleaseMemory() bool {
	p.mu.Lock()
	n, peak, now := len(p.conns), p.peak, p.now()
	if peak < ReleasePeak || n >= peak/4 || (!p.released.IsZero() && now.Sub(p.released) < ReleaseEvery) {
		p.mu.Unlock()
		return false
	}
	p.peak, p.released = n, now
	p.mu.Unlock()
	start := time.Now()
	p.freeOSMemory()
	p.log.Info("memory returned to the OS after load", "peak_conns", peak, "conns", n, "took", time.Since(start))
	return true
}
