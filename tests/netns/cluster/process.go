package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/netns"
)

// Log is one JSON log line of a mesh process (slog's JSON handler: "msg",
// "level", attributes by key).
type Log map[string]any

// String returns the attribute key as a string ("" if absent or not a
// string).
func (l Log) String(key string) string {
	s, _ := l[key].(string)
	return s
}

// Int returns the attribute key as an integer (JSON numbers decode as
// float64); ok is false if absent or not a number.
func (l Log) Int(key string) (n int64, ok bool) {
	f, ok := l[key].(float64)
	return int64(f), ok
}

// process is one mesh process (a ztunnel, a waypoint) running inside a
// network namespace; it collects the process's JSON log lines from its
// stdout and stderr.
type process struct {
	name string // "ztunnel node-1", "waypoint shop/waypoint", for errors
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed

	mu      sync.Mutex
	partial []byte // the start of a line not yet complete
	logs    []Log
	changed chan struct{} // closed and replaced at every new line
}

// startProcess starts cmd inside ns and collects its logs.
func startProcess(ns netns.NS, name string, cmd *exec.Cmd) (*process, error) {
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	cmd.Stderr = p
	cmd.Stdout = p
	if err := ns.Start(cmd); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		p.mu.Lock()
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	return p, nil
}

// Write collects the process's output, one JSON log per line.
func (p *process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		line, rest, ok := bytes.Cut(p.partial, []byte("\n"))
		if !ok {
			break
		}
		p.partial = rest
		l, ok := decodeLog(line)
		if !ok {
			l = Log{"msg": string(line), "raw": true}
		}
		p.logs = append(p.logs, l)
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return len(b), nil
}

// Logs returns the log lines so far.
func (p *process) Logs() []Log {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Log(nil), p.logs...)
}

// WaitLog waits for a log line, from the from-th on, that match accepts,
// and returns it with its index.
func (p *process) WaitLog(ctx context.Context, from int, match func(Log) bool) (Log, int, error) {
	for {
		p.mu.Lock()
		for i := from; i < len(p.logs); i++ {
			if match(p.logs[i]) {
				l := p.logs[i]
				p.mu.Unlock()
				return l, i, nil
			}
		}
		from = len(p.logs)
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, from, fmt.Errorf("%s: no matching log line: %w", p.name, ctx.Err())
		}
	}
}

// Count is the number of log lines, from the from-th on, that match
// accepts.
func (p *process) Count(from int, match func(Log) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for i := from; i < len(p.logs); i++ {
		if match(p.logs[i]) {
			n++
		}
	}
	return n
}

// Mark is the number of log lines so far, to wait for lines after it.
func (p *process) Mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.logs)
}

func (p *process) tail(n int) string {
	logs := p.Logs()
	if len(logs) > n {
		logs = logs[len(logs)-n:]
	}
	var b bytes.Buffer
	for _, l := range logs {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}

func (p *process) dumpLogs(t testing.TB, n int) {
	t.Logf("last log lines of %s:\n%s", p.name, p.tail(n))
}

// Pid is the process id.
func (p *process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM and waits (10s at most, then SIGKILL).
func (p *process) Stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 10s of SIGTERM", p.name)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && ee.ExitCode() != 0 {
		return fmt.Errorf("%s exited: %w", p.name, p.err)
	}
	return nil
}

// kill kills the process (SIGKILL), as a crash would, and waits for it.
func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// FDs is the number of the process's open file descriptors.
func (p *process) FDs() (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(p.Pid()) + "/fd")
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// waitReady polls url (a /healthz/ready) from inside ns until it answers
// 200, for at most timeout, failing early if the process exits.
func (p *process) waitReady(ns netns.NS, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	h := HTTPClient{NS: ns}
	for {
		_, err := h.Get(ctx, url)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready: %v; logs:\n%s", p.err, p.tail(20))
		case <-ctx.Done():
			return fmt.Errorf("not ready within %v: %v; logs:\n%s", timeout, err, p.tail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}
