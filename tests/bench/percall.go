package bench

// Per-request counts of a proxy process: system calls and context switches
// (perf stat), payload-sized user-space copies (a perf uprobe on Go's
// runtime.memmove), bytes through read/write system calls
// (/proc/<pid>/io), and goroutine wake-ups (a Go execution trace).

import (
	"bufio"
	"context"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// MemmoveProbe is a uprobe on runtime.memmove of one Go process's binary,
// recording the length argument (register CX in Go's register ABI).
type MemmoveProbe struct {
	Event string // group:name, for perf -e
}

const uprobeEvents = "/sys/kernel/tracing/uprobe_events"

// AddMemmoveProbe adds the probe on the binary of process pid (as root),
// through tracefs with the path /proc/<pid>/exe, which reaches the binary
// even when its file has been replaced since the process started.
func AddMemmoveProbe(pid int) (*MemmoveProbe, error) {
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	off, err := symbolOffset(exe, "runtime.memmove")
	if err != nil {
		return nil, err
	}
	p := &MemmoveProbe{Event: fmt.Sprintf("bench_%d:memmove", pid)}
	p.Remove() // left over from an interrupted run
	def := fmt.Sprintf("p:%s/memmove %s:0x%x n=%%cx:u64\n", strings.TrimSuffix(p.Event, ":memmove"), exe, off)
	if err := appendFile(uprobeEvents, def); err != nil {
		return nil, fmt.Errorf("uprobe %q: %w", def, err)
	}
	return p, nil
}

// Remove deletes the probe.
func (p *MemmoveProbe) Remove() {
	_ = appendFile(uprobeEvents, "-:"+strings.Replace(p.Event, ":", "/", 1)+"\n")
}

func appendFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// symbolOffset is the file offset of symbol name in the ELF file.
func symbolOffset(file, name string) (uint64, error) {
	f, err := elf.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	addr, err := symbolAddr(f, name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_LOAD && prog.Flags&elf.PF_X != 0 && addr >= prog.Vaddr && addr < prog.Vaddr+prog.Filesz {
			return addr - prog.Vaddr + prog.Off, nil
		}
	}
	return 0, fmt.Errorf("%s: %s is in no executable segment", file, name)
}

// symbolAddr finds name in the symbol table or, in a stripped Go binary
// (go test links with -s), in the Go function table (.gopclntab).
func symbolAddr(f *elf.File, name string) (uint64, error) {
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			if s.Name == name {
				return s.Value, nil
			}
		}
	}
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return 0, fmt.Errorf("no symbol %s and no Go function table", name)
	}
	data, err := pcln.Data()
	if err != nil {
		return 0, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return 0, err
	}
	fn := tab.LookupFunc(name)
	if fn == nil {
		return 0, fmt.Errorf("no function %s", name)
	}
	return fn.Entry, nil
}

// Counting is a running perf stat of one process.
type Counting struct {
	cmd     *exec.Cmd
	events  []string
	started time.Time
	done    chan struct{} // the output is read
	mu      sync.Mutex
	sums    map[string]float64
	lines   []string
}

// countInterval is perf stat's print interval: the counts are the sum of
// the intervals, and the first interval shows that perf counts.
const countInterval = 100 * time.Millisecond

// StartCounting starts perf stat on every thread of pid for the system
// calls, the context switches and, when probe is not nil, the memmoves of
// at least CopyThreshold bytes. It returns once perf counts, and counts
// until Stop.
func StartCounting(pid int, probe *MemmoveProbe) (*Counting, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	c := &Counting{events: []string{EventSyscalls, EventSwitches}, done: make(chan struct{}), sums: map[string]float64{}}
	args := []string{"stat", "-x", ",", "-I", strconv.Itoa(int(countInterval / time.Millisecond)), "-p", strconv.Itoa(pid), "-e", EventSyscalls, "-e", EventSwitches}
	if probe != nil {
		args = append(args, "-e", probe.Event, "--filter", fmt.Sprintf("n >= %d", CopyThreshold))
		c.events = append(c.events, probe.Event)
	}
	c.cmd = exec.Command(perf, args...)
	out, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	c.cmd.Stdout = c.cmd.Stderr
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan time.Time, 1)
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		first := true
		for sc.Scan() {
			// time,value,unit,event,...
			f := strings.Split(sc.Text(), ",")
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			if len(f) >= 4 {
				// "<not counted>": no thread of the process ran in the
				// interval (an idle process), so nothing happened.
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					c.sums[f[3]] += v
				} else if f[1] == "<not counted>" {
					c.sums[f[3]] += 0
				}
				if first {
					first = false
					ready <- time.Now()
				}
			}
			c.mu.Unlock()
		}
	}()
	select {
	case t := <-ready:
		c.started = t.Add(-countInterval)
		return c, nil
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	return nil, fmt.Errorf("perf stat did not start counting: %s", c.output())
}

func (c *Counting) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// Stop ends the count (SIGINT, as perf expects) and returns each event's
// count and about how long perf counted.
func (c *Counting) Stop() (map[string]float64, time.Duration, error) {
	span := time.Since(c.started)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	_ = c.cmd.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.events {
		if _, ok := c.sums[e]; !ok {
			return nil, span, fmt.Errorf("perf stat counted no %s: %s", e, strings.Join(c.lines, "\n"))
		}
	}
	return c.sums, span, nil
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
