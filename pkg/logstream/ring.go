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

// chunkLen is how many entries the ring allocates at a time: 64 of 512 B
// are 32 KiB, the largest size class the Go allocator serves from its
// per-P caches.
const chunkLen = 64

// Ring keeps the last records logged. Add never blocks on a reader: readers
// each hold a position (a sequence number) and read under the same short
// lock; one that falls behind by more than the ring's size loses the
// records in between and is told how many.
//
// The ring's memory grows as records are written, one chunk of chunkLen
// entries at a time, up to its size (and is then reused, never freed): an
// idle proxy with the default 4096 entries (2 MiB) holds only the chunk
// index until the first record.
type Ring struct {
	mu     sync.Mutex
	size   uint64    // entries kept
	chunks [][]entry // entry i is chunks[i/chunkLen][i%chunkLen]; nil until first written
	next   uint64    // sequence number of the next record; the first is 1

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
	return &Ring{size: uint64(size), chunks: make([][]entry, (size+chunkLen-1)/chunkLen), next: 1}
}

// Size is how many records the ring keeps.
func (r *Ring) Size() int { return int(r.size) }

// slot is the entry that record seq is kept in, allocating its chunk on
// first use. Called with mu held.
func (r *Ring) slot(seq uint64) *entry {
	i := seq % r.size
	c := r.chunks[i/chunkLen]
	if c == nil {
		// The last chunk is short when size is not a multiple of chunkLen.
		c = make([]entry, min(chunkLen, r.size-i/chunkLen*chunkLen))
		r.chunks[i/chunkLen] = c
	}
	return &c[i%chunkLen]
}

// allocated is how many chunks the ring has allocated.
func (r *Ring) allocated() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.chunks {
		if c != nil {
			n++
		}
	}
	return n
}

// Sink is the accesslog.Sink that adds every record to r.
func (r *Ring) Sink() accesslog.Sink { return r.add }

// Add keeps a copy of rec, whose duration is dur.
func (r *Ring) Add(rec *accesslog.Record, dur time.Duration) { r.add(rec, dur) }

func (r *Ring) add(rec *accesslog.Record, dur time.Duration) {
	now := time.Now()
	r.mu.Lock()
	e := r.slot(r.next)
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
	oldest := r.oldestLocked()
	if from < oldest {
		lost = oldest - from
		from = oldest
	}
	for from < r.next && n < len(out) {
		out[n] = *r.slot(from) // written, so its chunk exists
		n++
		from++
	}
	return n, from, lost
}

// oldest is the sequence number of the oldest record kept.
func (r *Ring) oldest() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.oldestLocked()
}

func (r *Ring) oldestLocked() uint64 {
	if r.next > r.size {
		return r.next - r.size
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
