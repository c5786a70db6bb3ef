package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcSample is one reading of a process's resource use.
type ProcSample struct {
	CPU time.Duration // user + system time since the process started
	RSS int64         // resident set size, bytes (VmRSS)
	HWM int64         // peak resident set size, bytes (VmHWM)
}

// ReadProc reads the CPU time and RSS of process pid from /proc.
func ReadProc(pid int) (ProcSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcSample{}, err
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return ProcSample{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcSample{}, err
	}
	rss, err := parseStatusKB(status, "VmRSS")
	if err != nil {
		return ProcSample{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	hwm, err := parseStatusKB(status, "VmHWM")
	if err != nil {
		return ProcSample{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return ProcSample{CPU: cpu, RSS: rss, HWM: hwm}, nil
}

// parseStatCPU returns utime+stime from the content of /proc/<pid>/stat.
// The command name (field 2) is in parentheses and may hold spaces and
// parentheses itself, so fields are counted from the last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state(3) ... utime is field 14, stime 15 (1-based
	// over the whole line), so indexes 11 and 12 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("only %d fields after the command name", len(f))
	}
	ut, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	st, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// parseStatusKB returns the field key (a size in kB, such as VmRSS), in
// bytes, from /proc/<pid>/status.
func parseStatusKB(b []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", key, sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", key, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no %s line", key)
}

// Machine describes the machine a run happened on.
type Machine struct {
	CPUModel string
	Cores    int
	Kernel   string
	MemTotal int64 // bytes
}

func (m Machine) String() string {
	return fmt.Sprintf("%s, %d cores, Linux %s, %d MiB RAM", m.CPUModel, m.Cores, m.Kernel, m.MemTotal>>20)
}

// ReadMachine reads the CPU model, core count, kernel release and memory
// from /proc.
func ReadMachine() Machine {
	m := Machine{Cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel, m.Cores = parseCPUInfo(b, m.Cores)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(rest)
				if len(f) == 2 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.MemTotal = kb << 10
				}
			}
		}
	}
	return m
}

// parseCPUInfo returns the first model name and the number of processors
// listed in /proc/cpuinfo, or fallback cores when none is listed.
func parseCPUInfo(b []byte, fallback int) (model string, cores int) {
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(v)
			}
		case "processor":
			cores++
		}
	}
	if cores == 0 {
		cores = fallback
	}
	if model == "" {
		model = "unknown CPU"
	}
	return model, cores
}

// ReadCPU returns process pid's CPU time at nanosecond resolution: the
// process's CPU-time clock (clock_gettime on the clock
// clock_getcpuclockid(3) names), which sums every thread's on-CPU time,
// threads that have exited included. utime and stime count in 10 ms
// ticks: over a 3 s run at 1000 requests per second a tick is 3 % of a
// proxy's CPU, enough to turn a ratio around. Summing the live threads'
// /proc/<pid>/task/*/schedstat instead loses the time of every thread that
// exits between two readings: stunnel runs a thread per connection, which
// exits when the load closes it (in a trial of the L7 figures the
// stunnels' CPU read about half of this clock's). Where the clock cannot be read it returns that sum, and where
// schedstat is missing utime+stime.
func ReadCPU(pid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(processCPUClock(pid), &ts); err == nil {
		return time.Duration(ts.Nano()), nil
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err == nil {
		var sum time.Duration
		n := 0
		for _, t := range tids {
			ss, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
			if err != nil {
				continue // exited meanwhile, or no schedstat
			}
			f := strings.Fields(string(ss))
			if len(f) == 0 {
				continue
			}
			ns, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				continue
			}
			sum += time.Duration(ns)
			n++
		}
		if n > 0 {
			return sum, nil
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	total, err := parseStatCPU(stat)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return total, nil
}

// processCPUClock is the clock id of process pid's CPU-time clock, made as
// the kernel's MAKE_PROCESS_CPUCLOCK does (and glibc's
// clock_getcpuclockid): the pid's complement shifted left by 3, with
// CPUCLOCK_SCHED (2), the scheduler's nanosecond count, in the low bits.
func processCPUClock(pid int) int32 {
	const cpuclockSched = 2
	return ^int32(pid)<<3 | cpuclockSched
}
