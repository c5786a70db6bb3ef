package logbuf

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the timer's writes.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuffer) get() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

func TestBatchWrittenAfterDelay(t *testing.T) {
	var out syncBuffer
	w := New(&out, 50*time.Millisecond)
	defer w.Close()
	for i := range 3 {
		fmt.Fprintf(w, "line %d\n", i)
	}
	if got, _ := out.get(); got != "" {
		t.Fatalf("written before the delay: %q", got)
	}
	want := "line 0\nline 1\nline 2\n"
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, writes := out.get()
		if got == want {
			if writes != 1 {
				t.Fatalf("%d writes; want the batch in one", writes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %q; want %q", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A second batch arms the timer again.
	fmt.Fprintln(w, "line 3")
	for {
		if got, _ := out.get(); got == want+"line 3\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second batch was not written")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseFlushesAndFullBatchIsWritten(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Hour)
	fmt.Fprintln(w, "first")
	big := strings.Repeat("x", maxBatch)
	fmt.Fprintln(w, big)
	if got, writes := out.get(); got != "first\n"+big+"\n" || writes != 1 {
		t.Fatalf("a full batch: %d bytes in %d writes; want it written at once", len(got), writes)
	}
	fmt.Fprintln(w, "last")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := out.get(); !strings.HasSuffix(got, "\nlast\n") {
		t.Fatalf("Close did not write the batch: ...%q", got[max(0, len(got)-20):])
	}
	fmt.Fprintln(w, "after close")
	if got, _ := out.get(); !strings.HasSuffix(got, "last\nafter close\n") {
		t.Fatal("a write after Close was not passed through")
	}
}

func TestNoDelayWritesAtOnce(t *testing.T) {
	var out syncBuffer
	w := New(&out, 0)
	fmt.Fprintln(w, "a")
	fmt.Fprintln(w, "b")
	if got, writes := out.get(); got != "a\nb\n" || writes != 2 {
		t.Fatalf("got %q in %d writes; want each line at once", got, writes)
	}
}

type failing struct{}

func (failing) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestErrorsReachFlushAndClose(t *testing.T) {
	w := New(failing{}, time.Hour)
	fmt.Fprintln(w, "x")
	if err := w.Flush(); err == nil {
		t.Fatal("Flush: no error from a failing writer")
	}
	fmt.Fprintln(w, "y")
	if err := w.Close(); err == nil {
		t.Fatal("Close: no error from a failing writer")
	}
}

func TestConcurrentWritersKeepLinesWhole(t *testing.T) {
	var out syncBuffer
	w := New(&out, time.Millisecond)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(w, "g%d-%d\n", g, i)
			}
		})
	}
	wg.Wait()
	w.Close()
	got, _ := out.get()
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 8*500 {
		t.Fatalf("%d lines; want %d", len(lines), 8*500)
	}
	seen := map[string]bool{}
	for _, l := range lines {
		seen[l] = true
	}
	if len(seen) != 8*500 {
		t.Fatalf("%d distinct lines; want %d whole lines", len(seen), 8*500)
	}
}
