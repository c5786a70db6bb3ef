package logstream

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambient-go/mesh/pkg/accesslog"
)

// A new ring holds none of its records' memory: the default 4096 entries
// are 2 MiB, and an idle proxy should not pay for them.
func TestRingHoldsNothingBeforeFirstWrite(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := NewRing(DefaultRingSize)
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	runtime.KeepAlive(r)

	if got := r.allocated(); got != 0 {
		t.Errorf("NewRing(%d).allocated() = %d chunks, want 0", DefaultRingSize, got)
	}
	// The chunk index is 64 slice headers (1.5 KiB); one chunk is 32 KiB.
	if limit := int64(16 << 10); grown > limit {
		t.Errorf("NewRing(%d) retains %d B of heap, want at most %d", DefaultRingSize, grown, limit)
	}
	if got := r.Size(); got != DefaultRingSize {
		t.Errorf("Size() = %d, want %d", got, DefaultRingSize)
	}
}

// The ring allocates one chunk per chunkLen records written, never more
// than its size needs, and keeps them when it wraps.
func TestRingGrowsChunkByChunk(t *testing.T) {
	for _, tc := range []struct {
		size, added int
		want        int
	}{
		// Sequence numbers start at 1, so entry 0 is first written when
		// the ring wraps: record n goes to entry n%size.
		{size: 4096, added: 0, want: 0},
		{size: 4096, added: 1, want: 1},
		{size: 4096, added: chunkLen - 1, want: 1},
		{size: 4096, added: chunkLen, want: 2},
		{size: 4096, added: 4*chunkLen + 3, want: 5},
		{size: 4096, added: 4095, want: 64},
		{size: 4096, added: 10000, want: 64},
		{size: 100, added: 63, want: 1},
		{size: 100, added: 64, want: 2},
		{size: 100, added: 250, want: 2},
		{size: 1, added: 5, want: 1},
	} {
		t.Run(fmt.Sprintf("size %d added %d", tc.size, tc.added), func(t *testing.T) {
			r := NewRing(tc.size)
			for i := 1; i <= tc.added; i++ {
				r.Add(rec(uint16(i)), 0)
			}
			if got := r.allocated(); got != tc.want {
				t.Errorf("allocated() = %d chunks, want %d", got, tc.want)
			}
			n := 0
			for _, c := range r.chunks {
				n += len(c)
			}
			if most := tc.want * chunkLen; n > tc.size || n > most {
				t.Errorf("entries allocated = %d, want at most min(size %d, %d)", n, tc.size, most)
			}
		})
	}
}

// Reading a ring whose size is not a multiple of the chunk length, after
// it wrapped zero, one or several times, returns the last size records in
// order, and counts the ones overwritten.
func TestRingWrapsAcrossChunks(t *testing.T) {
	for _, size := range []int{1, 3, chunkLen - 1, chunkLen, chunkLen + 1, 100, 2*chunkLen + 5} {
		for _, added := range []int{size - 1, size, size + 1, 2*size + 37, 3*size + chunkLen} {
			t.Run(fmt.Sprintf("size %d added %d", size, added), func(t *testing.T) {
				r := NewRing(size)
				for i := 1; i <= added; i++ {
					r.Add(rec(uint16(i)), time.Duration(i))
				}
				out := make([]entry, size+10)
				n, next, lost := r.read(1, out)

				kept := min(added, size)
				var want, got []uint64
				for s := added - kept + 1; s <= added; s++ {
					want = append(want, uint64(s))
				}
				for _, e := range out[:n] {
					if e.rec.SrcAddr.Port() != uint16(e.seq) || e.dur != time.Duration(e.seq) {
						t.Errorf("entry seq %d holds port %d, dur %d, want the record added as %d", e.seq, e.rec.SrcAddr.Port(), e.dur, e.seq)
					}
					got = append(got, e.seq)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("read(1) seqs (-want +got):\n%s", diff)
				}
				if wantNext, wantLost := uint64(added+1), uint64(added-kept); next != wantNext || lost != wantLost {
					t.Errorf("read(1) next, lost = %d, %d, want %d, %d", next, lost, wantNext, wantLost)
				}
				if got, want := r.oldest(), uint64(added-kept+1); got != want {
					t.Errorf("oldest() = %d, want %d", got, want)
				}
			})
		}
	}
}

// Writers and readers at once (run with -race): every reader sees
// consecutive sequence numbers, each writer's records in the order it
// wrote them, and accounts for every record as read or lost.
func TestRingConcurrentWritersAndReaders(t *testing.T) {
	const (
		writers   = 4
		perWriter = 3000
		readers   = 3
		size      = 2*chunkLen + 7 // wraps often, across a short last chunk
	)
	r := NewRing(size)
	total := uint64(writers * perWriter)
	deadline := time.Now().Add(20 * time.Second)

	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(w)})
			for i := 1; i <= perWriter; i++ {
				r.Add(&accesslog.Record{SrcAddr: netip.AddrPortFrom(addr, uint16(i)), Direction: accesslog.Outbound}, 0)
			}
		})
	}
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			errs <- func() error {
				out := make([]entry, 50)
				var last [writers]uint16
				pos, seen, lostAll := uint64(1), uint64(0), uint64(0)
				for pos <= total {
					if time.Now().After(deadline) {
						return fmt.Errorf("reader at %d of %d after 20s", pos, total)
					}
					n, next, lost := r.read(pos, out)
					if got, want := next, pos+lost+uint64(n); got != want {
						return fmt.Errorf("read(%d) = %d, next %d, lost %d: next want %d", pos, n, next, lost, want)
					}
					for i, e := range out[:n] {
						if want := pos + lost + uint64(i); e.seq != want {
							return fmt.Errorf("seq %d at %d, want %d", e.seq, i, want)
						}
						w := e.rec.SrcAddr.Addr().As4()[3]
						if p := e.rec.SrcAddr.Port(); p <= last[w] {
							return fmt.Errorf("writer %d: record %d after %d", w, p, last[w])
						}
						last[w] = e.rec.SrcAddr.Port()
					}
					seen += uint64(n)
					lostAll += lost
					if n == 0 {
						runtime.Gosched()
					}
					pos = next
				}
				if seen+lostAll != total {
					return fmt.Errorf("read %d + lost %d, want %d", seen, lostAll, total)
				}
				return nil
			}()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := r.allocated(); got != 3 {
		t.Errorf("allocated() = %d chunks, want 3", got)
	}
}
