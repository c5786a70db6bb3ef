package bench

// Per-request counts of a proxy process: system calls and context switches
// (perf stat), payload-sized user-space copies (a perf uprobe on Go's
// runtime.memmove), bytes through read/write system calls
// (/proc/<pid>/io), and goroutine wake-ups (a Go execution trace).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// CopyThreshold is the smallest runtime.memmove counted as a copy of
// payload: requests and answers are ReqSize (1 KiB); frame headers,
// structs and small slices stay below it.
const CopyThreshold = 256

// Perf events counted by Counting.
const (
	EventSyscalls = "raw_syscalls:sys_enter"
	EventSwitches = "context-switches"
)

// MemmoveProbe is a perf uprobe on runtime.memmove of one Go binary,
// recording the length argument (register CX in Go's register ABI).
type MemmoveProbe struct {
	Event string // group:name, for perf -e
	exe   string
}

// AddMemmoveProbe adds the probe for the binary exe (as root). group
// names the probe (letters, digits, underscores).
func AddMemmoveProbe(ctx context.Context, exe, group string) (*MemmoveProbe, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	p := &MemmoveProbe{Event: group + ":memmove", exe: exe}
	_ = exec.CommandContext(ctx, perf, "probe", "-q", "-d", p.Event).Run() // left over from an interrupted run
	out, err := exec.CommandContext(ctx, perf, "probe", "-q", "-x", exe, "--add", p.Event+"=runtime.memmove n=%cx:u64").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("perf probe %s: %w: %s", exe, err, out)
	}
	return p, nil
}

// Remove deletes the probe.
func (p *MemmoveProbe) Remove() {
	_ = exec.Command("perf", "probe", "-q", "-d", p.Event).Run()
}

// Counting is a running perf stat of one process.
type Counting struct {
	cmd     *exec.Cmd
	out     bytes.Buffer
	events  []string
	started time.Time
}

// StartCounting starts perf stat on every thread of pid for the system
// calls, the context switches and, when probe is not nil, the memmoves of
// at least CopyThreshold bytes. It counts until Stop.
func StartCounting(pid int, probe *MemmoveProbe) (*Counting, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	c := &Counting{events: []string{EventSyscalls, EventSwitches}}
	args := []string{"stat", "-x", ",", "-p", strconv.Itoa(pid), "-e", EventSyscalls, "-e", EventSwitches}
	if probe != nil {
		args = append(args, "-e", probe.Event, "--filter", fmt.Sprintf("n >= %d", CopyThreshold))
		c.events = append(c.events, probe.Event)
	}
	c.cmd = exec.Command(perf, args...)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	c.started = time.Now()
	return c, nil
}

// Stop ends the count (SIGINT, as perf expects) and returns each event's
// count and how long perf counted.
func (c *Counting) Stop() (map[string]float64, time.Duration, error) {
	span := time.Since(c.started)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
		return nil, span, fmt.Errorf("perf stat did not stop: %s", c.out.String())
	}
	got, err := parsePerfStat(c.out.Bytes(), c.events)
	return got, span, err
}

// IOChars is /proc/<pid>/io's rchar and wchar: bytes the process passed
// through read- and write-type system calls (sockets included).
func IOChars(pid int) (rchar, wchar int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "wchar":
			wchar = n
		}
	}
	return rchar, wchar, nil
}

// Mono is CLOCK_MONOTONIC, the clock of Go execution traces' Sync events.
func Mono() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// TraceCounts are goroutine events of an execution trace in a window.
type TraceCounts struct {
	Wakeups int // Waiting → Runnable: a blocked goroutine made ready
	Created int // NotExist → Runnable: a new goroutine
}

// CountTrace reads the execution trace in file (go tool trace -d=parsed)
// and counts the goroutine state transitions whose time falls between
// from and to (CLOCK_MONOTONIC, see Mono).
func CountTrace(ctx context.Context, file string, from, to time.Duration) (TraceCounts, error) {
	cmd := exec.CommandContext(ctx, "go", "tool", "trace", "-d=parsed", file)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return TraceCounts{}, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return TraceCounts{}, err
	}
	var tc TraceCounts
	offset, synced := int64(0), false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		switch fields[3] {
		case "Sync":
			// Sync Time=… N=… Trace=T Mono=M: trace time T is monotonic M.
			t, m := field(fields, "Trace="), field(fields, "Mono=")
			if t != 0 && m != 0 && !synced {
				offset, synced = m-t, true
			}
		case "StateTransition":
			if !synced {
				continue
			}
			at := time.Duration(field(fields, "Time=") + offset)
			if at < from || at > to {
				continue
			}
			switch {
			case strings.Contains(line, " Waiting->Runnable"):
				tc.Wakeups++
			case strings.Contains(line, " NotExist->Runnable"):
				tc.Created++
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		return tc, fmt.Errorf("go tool trace %s: %w", filepath.Base(file), err)
	}
	if !synced {
		return tc, fmt.Errorf("%s: no Sync event with a monotonic clock", file)
	}
	return tc, nil
}

// field is the integer after prefix among fields, 0 when absent.
func field(fields []string, prefix string) int64 {
	for _, f := range fields {
		if v, ok := strings.CutPrefix(f, prefix); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}
