package logstream

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
)

// DefaultRingSize is how many records a Ring keeps by default.
const DefaultRingSize = 4096

// entry is one kept record.
type entry struct {
	seq  uint64
	time time.Time // when it was logged
	dur  time.Duration
	rec  accesslog.Record
}

// Ring keeps the last records logged. Add never blocks on a reader: readers
// each hold a position (a sequence number) and read under the same short
// lock; one that falls behind by more than the ring's size loses the
// records in between and is told how many.
type Ring struct {
	mu   sync.Mutex
	buf  []entry
	next uint64 // sequence number of the next record; the first is 1

	// waiters are woken (without blocking) after every Add; copy on
	// write under wmu.
	wmu     sync.Mutex
	waiters atomic.Pointer[[]chan struct{}]
}

// NewRing returns a ring keeping the last size records (DefaultRingSize
// when size <= 0).
func NewRing(size int) *Ring {
	if size <= 0 {
		size = DefaultRingSize
	}
	return &Ring{buf: make([]entry, size), next: 1}
}

// Size is how many records the ring keeps.
func (r *Ring) Size() int { return len(r.buf) }

// Sink is the accesslog.Sink that adds every record to r.
func (r *Ring) Sink() accesslog.Sink { return r.add }

// Add keeps a copy of rec, whose duration is dur.
func (r *Ring) Add(rec *accesslog.Record, dur time.Duration) { r.add(rec, dur) }

func (r *Ring) add(rec *accesslog.Record, dur time.Duration) {
	now := time.Now()
	r.mu.Lock()
	e := &r.buf[r.next%uint64(len(r.buf))]
	e.seq, e.time, e.dur, e.rec = r.next, now, dur, *rec
	r.next++
	r.mu.Unlock()
	if w := r.waiters.Load(); w != nil {
		for _, c := range *w {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

// Next is the sequence number the next record will get.
func (r *Ring) Next() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// read copies into out the records from sequence number from on (at most
// len(out)), and returns how many it copied, the position after them, and
// how many records from from on were overwritten before they could be
// read.
func (r *Ring) read(from uint64, out []entry) (n int, next, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest := uint64(1)
	if r.next > uint64(len(r.buf)) {
		oldest = r.next - uint64(len(r.buf))
	}
	if from < oldest {
		lost = oldest - from
		from = oldest
	}
	for from < r.next && n < len(out) {
		out[n] = r.buf[from%uint64(len(r.buf))]
		n++
		from++
	}
	return n, from, lost
}

// oldest is the sequence number of the oldest record kept.
func (r *Ring) oldest() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next > uint64(len(r.buf)) {
		return r.next - uint64(len(r.buf))
	}
	return 1
}

// wait returns a channel that receives after records are added, and a
// function to stop.
func (r *Ring) wait() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	r.wmu.Lock()
	var next []chan struct{}
	if cur := r.waiters.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, c)
	r.waiters.Store(&next)
	r.wmu.Unlock()
	return c, func() {
		r.wmu.Lock()
		defer r.wmu.Unlock()
		var next []chan struct{}
		for _, o := range *r.waiters.Load() {
			if o != c {
				next = append(next, o)
			}
		}
		r.waiters.Store(&next)
	}
}
