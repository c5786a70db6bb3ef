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
// (debug.FreeOSMemory), at most once every releaseEvery: a collection of
// a small heap, about a millisecond, once per burst of changes.
const (
	settleDelay  = 2 * time.Second
	releaseEvery = time.Minute
)

// releaseWhenSettled calls free once changed has been quiet for delay
// after a change, and at most once every every (a change within every of
// the last call defers the next until every has passed); it returns when
// ctx is done. The first call comes delay after the start: the first sync
// is a change too.
func releaseWhenSettled(ctx context.Context, changed <-chan struct{}, delay, every time.Duration, free func()) {
	settle := time.NewTimer(delay)
	defer settle.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			settle.Reset(delay)
		case <-settle.C:
			if !last.IsZero() {
				if wait := every - time.Since(last); wait > 0 {
					settle.Reset(wait)
					continue
				}
			}
			free()
			last = time.Now()
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
	releaseWhenSettled(ctx, z.reconciled, settleDelay, releaseEvery, func() {
		start := time.Now()
		debug.FreeOSMemory()
		z.log.Info("memory returned to the OS after configuration changes", "took", time.Since(start))
	})
	return nil
}
