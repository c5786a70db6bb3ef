package bench

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stat    string
		want    time.Duration
		wantErr bool
	}{
		{
			name: "plain name",
			stat: "1234 (ztunnel) S 1 1234 1234 0 -1 4194560 2000 0 0 0 250 130 0 0 20 0 9 0 100 1000000 5000 18446744073709551615",
			want: 3800 * time.Millisecond,
		},
		{
			name: "name with spaces and parentheses",
			stat: "77 (a (b) c) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 100 10 0",
			want: 100 * time.Millisecond,
		},
		{name: "truncated", stat: "77 (x) R 1 2 3", wantErr: true},
		{name: "no name", stat: "77 x R", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.stat))
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseStatCPU(%q) error = %v, want error %v", tc.stat, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("parseStatCPU(%q) = %v, want %v", tc.stat, got, tc.want)
			}
		})
	}
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\tztunnel\nVmPeak:\t 1300000 kB\nVmHWM:\t   30000 kB\nVmRSS:\t   21504 kB\nThreads:\t9\n"
	for _, tc := range []struct {
		key     string
		want    int64
		wantErr bool
	}{
		{key: "VmRSS", want: 21504 << 10},
		{key: "VmHWM", want: 30000 << 10},
		{key: "VmSwap", wantErr: true},
		{key: "Threads", wantErr: true}, // not a kB field
	} {
		t.Run(tc.key, func(t *testing.T) {
			got, err := parseStatusKB([]byte(status), tc.key)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseStatusKB(%s) error = %v, want error %v", tc.key, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("parseStatusKB(%s) = %d, want %d", tc.key, got, tc.want)
			}
		})
	}
}

func TestParseCPUInfo(t *testing.T) {
	info := "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
	model, cores := parseCPUInfo([]byte(info), 9)
	if diff := cmp.Diff([]any{"AMD EPYC 7B13", 2}, []any{model, cores}); diff != "" {
		t.Errorf("parseCPUInfo() (-want +got):\n%s", diff)
	}
	model, cores = parseCPUInfo(nil, 9)
	if diff := cmp.Diff([]any{"unknown CPU", 9}, []any{model, cores}); diff != "" {
		t.Errorf("parseCPUInfo(nil) (-want +got):\n%s", diff)
	}
}

// TestReadProcSelf reads this process: it has used some CPU and holds some
// memory.
func TestReadProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	s, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatalf("ReadProc(self): %v", err)
	}
	if s.RSS <= 0 || s.HWM < s.RSS || s.CPU < 0 {
		t.Errorf("ReadProc(self) = %+v, want RSS > 0, HWM ≥ RSS, CPU ≥ 0", s)
	}
	if m := ReadMachine(); m.Cores < 1 || m.Kernel == "" {
		t.Errorf("ReadMachine() = %+v, want cores and a kernel", m)
	}
}

// ReadCPU counts this process's CPU below the 10 ms tick of utime+stime.
func TestReadCPUResolution(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc/self/task: not Linux")
	}
	if _, err := os.Stat("/proc/self/schedstat"); err != nil {
		t.Skip("kernel without schedstat: ReadCPU counts ticks")
	}
	pid := os.Getpid()
	before, err := ReadCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Burn about 2 ms of CPU: less than a tick.
	x := 0
	for start := time.Now(); time.Since(start) < 2*time.Millisecond; {
		x++
	}
	// schedstat is brought up to date when a thread is switched out: wait
	// (sleeping, so the busy thread stops) until it was.
	var after time.Duration
	for deadline := time.Now().Add(2 * time.Second); ; {
		time.Sleep(5 * time.Millisecond)
		if after, err = ReadCPU(pid); err != nil {
			t.Fatal(err)
		}
		if after > before || time.Now().After(deadline) {
			break
		}
	}
	if d := after - before; d <= 0 || d >= time.Second {
		t.Fatalf("CPU over a 2 ms busy loop: %v (x=%d); want a positive count below a second", d, x)
	}
	if after%(10*time.Millisecond) == 0 {
		t.Errorf("ReadCPU = %v, a whole number of ticks: not the threads' schedstat", after)
	}
}

// ReadCPU keeps the time of a thread that has exited: stunnel runs a
// thread per connection, and the load closes its connections before the
// second reading.
func TestReadCPUCountsExitedThreads(t *testing.T) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		t.Skip("no /proc/self/task: not Linux")
	}
	pid := os.Getpid()
	before, err := ReadCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// A goroutine locked to its thread burns 200 ms of that thread's CPU
	// (10 s of wall time at most) and returns still locked: the runtime
	// ends the thread with it. The main thread is never ended: a goroutine
	// that lands on it keeps it (locked, until the test ends) and another
	// one tries (10 at most), which then cannot land there too; this
	// goroutine holds its own thread as well.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	mainHeld := make(chan struct{})
	var held sync.WaitGroup
	defer func() { close(mainHeld); held.Wait() }()
	const burn = 200 * time.Millisecond
	tid := 0
	for range 10 {
		tids := make(chan int, 1)
		held.Add(1)
		go func() {
			defer held.Done()
			runtime.LockOSThread()
			if unix.Gettid() == pid {
				tids <- 0
				<-mainHeld
				runtime.UnlockOSThread()
				return
			}
			tids <- unix.Gettid()
			var ts unix.Timespec
			if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
				return
			}
			until := time.Duration(ts.Nano()) + burn
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil || time.Duration(ts.Nano()) >= until {
					return
				}
			}
		}()
		if tid = <-tids; tid != 0 {
			break
		}
	}
	if tid == 0 {
		t.Fatal("every goroutine ran on the main thread")
	}
	task := fmt.Sprintf("/proc/self/task/%d", tid)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there after 5 s", task)
		}
	}
	after, err := ReadCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got := after - before; got < burn {
		t.Errorf("ReadCPU grew by %v over a thread that burnt %v and exited; want ≥ %v", got, burn, burn)
	}
}
