package ztunnel

import (
	"context"
	"runtime/debug"
	"time"
)

// Giving the configuration's garbage back. Ztunnel's heap at idle is small
// (1.5–2 MB live with 100 pods), but bringing it there — the first xDS
// sync, a pod's capture, a push — allocates several times that in
// short-lived protobufs, listeners and log records. The runtime keeps the
// pages it grew to (the background scavenger returns only what is above
// about 110 % of the next GC's heap goal, which is at least 4 MB), so an
// idle ztunnel holds 1–2 MB of free heap it will not use until the next
// burst. Once the configuration has stopped changing for settleDelay,
// ztunnel collects and returns the free pages to the OS
// (debug.FreeOSMemory): 1.5–4 ms measured for an idle ztunnel's heap.
// What it may cost is bounded by time, not by count: the next release
// waits at least releaseShare times as long as the last one took, so
// releases never take more than 1 % of a core, whatever the heap's size
// and however often the configuration changes. (Under load the runtime
// collects many times a second anyway.)
const (
	settleDelay  = time.Second
	releaseShare = 100
)

// releaseWhenSettled calls free once changed has been quiet for delay
// after a change, and then again only share times as long as the last
// call took after it (a change before then defers the next call until
// then); it returns when ctx is done. The first call comes delay after
// the start: the first sync is a change too.
func releaseWhenSettled(ctx context.Context, changed <-chan struct{}, delay time.Duration, share int, free func()) {
	settle := time.NewTimer(delay)
	defer settle.Stop()
	var next time.Time // the earliest the next call may come
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			settle.Reset(delay)
		case <-settle.C:
			if wait := time.Until(next); wait > 0 {
				settle.Reset(wait)
				continue
			}
			start := time.Now()
			free()
			end := time.Now()
			next = end.Add(time.Duration(share) * end.Sub(start))
		}
	}
}

// releaseLoop is the runner of releaseWhenSettled, fed by reconcileLoop.
func (z *Ztunnel) releaseLoop(ctx context.Context) error {
	select {
	case <-z.xds.Synced():
	case <-ctx.Done():
		return nil
	}
	releaseWhenSettled(ctx, z.reconciled, settleDelay, releaseShare, func() {
		start := time.Now()
		debug.FreeOSMemory()
		z.log.Debug("memory returned to the OS after configuration changes", "took", time.Since(start))
	})
	return nil
}
