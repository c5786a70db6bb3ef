package bench

import (
	"context"
	"os"
	"path/filepath"
	"runtime/trace"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestCountTrace traces a fixed number of channel hand-offs between two
// goroutines and counts them back from the trace, inside and outside the
// window they happened in.
func TestCountTrace(t *testing.T) {
	if trace.IsEnabled() {
		t.Skip("tracing already enabled (go test -trace)")
	}
	const handoffs = 200
	file := filepath.Join(t.TempDir(), "trace.out")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	before := Mono()
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	from := Mono()
	ping, done := make(chan int), make(chan struct{})
	go func() {
		defer close(done)
		for range ping {
		}
	}()
	for i := range handoffs {
		ping <- i
		time.Sleep(50 * time.Microsecond) // the receiver blocks again
	}
	close(ping)
	<-done
	to := Mono()
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	got, err := CountTrace(ctx, file, from, to)
	if err != nil {
		t.Fatal(err)
	}
	// Each hand-off wakes the receiver (blocked in range) and the sender
	// after its sleep; at least the receiver's wake-ups are there.
	if got.Wakeups < handoffs || got.Created < 1 {
		t.Errorf("CountTrace(window of %d hand-offs) = %+v, want ≥ %d wake-ups and ≥ 1 goroutine created", handoffs, got, handoffs)
	}
	// Nothing happened in the window before: none counted.
	empty, err := CountTrace(ctx, file, 0, before)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(TraceCounts{}, empty); diff != "" {
		t.Errorf("CountTrace(window before the trace) (-want +got):\n%s", diff)
	}
}

func TestParseIOChars(t *testing.T) {
	rc, wc, err := IOChars(os.Getpid())
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	// Reading a file of n bytes through read(2) adds at least n to rchar.
	file := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 64<<10)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(file); err != nil {
		t.Fatal(err)
	}
	rc2, wc2, err := IOChars(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rc2-rc < int64(len(data)) || wc2-wc < int64(len(data)) {
		t.Errorf("IOChars after writing and reading %d bytes: rchar +%d, wchar +%d, want ≥ %d each", len(data), rc2-rc, wc2-wc, len(data))
	}
}

var copySink []byte

// TestCountingCopies counts this process's payload-sized memmoves with the
// uprobe while it makes a known number of them (root and perf only).
func TestCountingCopies(t *testing.T) {
	probe, err := AddMemmoveProbe(os.Getpid())
	if err != nil {
		t.Skipf("no uprobe (needs root and tracefs): %v", err)
	}
	defer probe.Remove()
	c, err := StartCounting(os.Getpid(), probe)
	if err != nil {
		t.Skipf("no perf: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // perf attached
	const copies = 1000
	src, dst := make([]byte, 4096), make([]byte, 4096)
	for range copies {
		copy(dst, src)
		copySink = dst
	}
	got, _, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if n := got[probe.Event]; n < copies || n > 10*copies {
		t.Errorf("memmoves of ≥ %d B counted while making %d: %v, want about %d", CopyThreshold, copies, n, copies)
	}
	if got[EventSyscalls] == 0 {
		t.Errorf("no system call counted: %v", got)
	}
}
