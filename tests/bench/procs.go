package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is a child process under test; its CPU and RSS are read from
// /proc.
type Process struct {
	Name string
	pid  int // of an External process
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Processes are started children, stopped together.
type Processes struct {
	mu    sync.Mutex
	procs []*Process
}

// Start runs bin with args, its output appended to logFile, in its own
// process group, killed if this process dies.
func (ps *Processes) Start(name, bin, logFile string, args ...string) (*Process, error) {
	return ps.StartWith(nil, name, bin, logFile, args...)
}

// StartWith is Start with the command started by start (for instance
// inside a network namespace) instead of cmd.Start; nil means cmd.Start.
func (ps *Processes) StartWith(start func(*exec.Cmd) error, name, bin, logFile string, args ...string) (*Process, error) {
	if start == nil {
		start = (*exec.Cmd).Start
	}
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p, nil
}

// External is a process started elsewhere (a ztunnel of a netns
// cluster, say), sampled from /proc by its pid; it is not stopped by
// Processes.
func External(name string, pid int) *Process {
	return &Process{Name: name, pid: pid, done: make(chan struct{})}
}

// Pid is the process id.
func (p *Process) Pid() int {
	if p.cmd == nil {
		return p.pid
	}
	return p.cmd.Process.Pid
}

// Sample reads the process's CPU time and RSS.
func (p *Process) Sample() (ProcSample, error) {
	select {
	case <-p.done:
		return ProcSample{}, fmt.Errorf("%s exited: %v", p.Name, p.err)
	default:
	}
	return ReadProc(p.Pid())
}

// CPU reads the process's CPU time at nanosecond resolution (ReadCPU).
func (p *Process) CPU() (time.Duration, error) {
	select {
	case <-p.done:
		return 0, fmt.Errorf("%s exited: %v", p.Name, p.err)
	default:
	}
	return ReadCPU(p.Pid())
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Stop sends SIGTERM to every process group, waits up to five seconds, and
// kills what is left.
func (ps *Processes) Stop() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.procs {
		_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for _, p := range ps.procs {
		select {
		case <-p.done:
		case <-deadline:
			_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
			<-p.done
		}
	}
	ps.procs = nil
}

// WaitFor polls ok every 50ms until it returns true, timeout passes or ctx
// ends.
func WaitFor(ctx context.Context, timeout time.Duration, what string, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: timed out after %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// HTTPOK reports whether GET url answers 200.
func HTTPOK(url string) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
