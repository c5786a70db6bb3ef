package cluster

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ztunnel addresses inside each node's namespace (loopback of the node).
const (
	AdminAddr     = "127.0.0.1:15000"
	MetricsAddr   = "127.0.0.1:15020"
	ReadinessAddr = "127.0.0.1:15021"
)

// Ztunnel is a ztunnel process running inside its node's namespace.
type Ztunnel struct {
	Node *Node
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed

	mu      sync.Mutex
	partial []byte // the start of a line not yet complete
	logs    []Log
	changed chan struct{} // closed and replaced at every new line
}

// Log is one JSON log line of a ztunnel (slog's JSON handler: "msg",
// "level", attributes by key).
type Log map[string]any

// String returns the attribute key as a string ("" if absent).
func (l Log) String(key string) string {
	s, _ := l[key].(string)
	return s
}

// StartZtunnel starts the node's ztunnel in in-pod mode inside the node's
// namespace, and waits until it is ready.
func (n *Node) StartZtunnel() *Ztunnel {
	t := n.c.t
	t.Helper()
	z, err := n.startZtunnel()
	if err != nil {
		t.Fatalf("ztunnel %s: %v", n.Name, err)
	}
	return z
}

func (n *Node) startZtunnel() (*Ztunnel, error) {
	c := n.c
	args := []string{
		"--mode", "inpod",
		"--node", n.Name,
		"--xds-address", c.IstiodAddr().String(),
		"--ca-root", c.rootFile,
		"--token", c.Token(n.Name),
		"--zds-socket", n.ZDSSocket,
		"--pod-state-dir", n.PodStateDir,
		"--admin-addr", AdminAddr,
		"--metrics-addr", MetricsAddr,
		"--readiness-addr", ReadinessAddr,
		"--log-level", cmp.Or(c.opts.LogLevel, "debug"),
	}
	if c.opts.CertTTL > 0 {
		args = append(args, "--cert-ttl", c.opts.CertTTL.String())
	}
	if err := os.MkdirAll(filepath.Dir(n.ZDSSocket), 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(c.bin, "ztunnel"), args...)
	z := &Ztunnel{Node: n, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	cmd.Stderr = z
	cmd.Stdout = z
	if err := n.Start(cmd); err != nil {
		return nil, err
	}
	go func() {
		z.err = cmd.Wait()
		close(z.done)
		z.mu.Lock()
		close(z.changed)
		z.changed = make(chan struct{})
		z.mu.Unlock()
	}()
	n.mu.Lock()
	n.zt = z
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	h := HTTPClient{NS: n.NS}
	for {
		_, err := h.Get(ctx, "http://"+ReadinessAddr+"/healthz/ready")
		if err == nil {
			return z, nil
		}
		select {
		case <-z.done:
			return z, fmt.Errorf("exited before ready: %v; logs:\n%s", z.err, z.tail(20))
		case <-ctx.Done():
			return z, fmt.Errorf("not ready within 15s: %v; logs:\n%s", err, z.tail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ztunnel returns the node's ztunnel (nil once stopped).
func (n *Node) Ztunnel() *Ztunnel {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.zt
}

// StopZtunnel stops the node's ztunnel gracefully (SIGTERM).
func (n *Node) StopZtunnel() error {
	n.mu.Lock()
	z := n.zt
	n.zt = nil
	n.mu.Unlock()
	if z == nil {
		return nil
	}
	return z.Stop()
}

// KillZtunnel kills the node's ztunnel (SIGKILL), as a crash would.
func (n *Node) KillZtunnel() {
	n.mu.Lock()
	z := n.zt
	n.zt = nil
	n.mu.Unlock()
	if z != nil {
		z.cmd.Process.Kill()
		<-z.done
	}
}

// Write collects the process's output, one JSON log per line.
func (z *Ztunnel) Write(b []byte) (int, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.partial = append(z.partial, b...)
	for {
		line, rest, ok := bytes.Cut(z.partial, []byte("\n"))
		if !ok {
			break
		}
		z.partial = rest
		l, ok := decodeLog(line)
		if !ok {
			l = Log{"msg": string(line), "raw": true}
		}
		z.logs = append(z.logs, l)
	}
	close(z.changed)
	z.changed = make(chan struct{})
	return len(b), nil
}

// Logs returns the log lines so far.
func (z *Ztunnel) Logs() []Log {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]Log(nil), z.logs...)
}

// WaitLog waits for a log line, from the from-th on, that match accepts,
// and returns it with its index.
func (z *Ztunnel) WaitLog(ctx context.Context, from int, match func(Log) bool) (Log, int, error) {
	for {
		z.mu.Lock()
		for i := from; i < len(z.logs); i++ {
			if match(z.logs[i]) {
				l := z.logs[i]
				z.mu.Unlock()
				return l, i, nil
			}
		}
		from = len(z.logs)
		ch := z.changed
		z.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, from, fmt.Errorf("ztunnel %s: no matching log line: %w", z.Node.Name, ctx.Err())
		}
	}
}

// Mark is the number of log lines so far, to wait for lines after it.
func (z *Ztunnel) Mark() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return len(z.logs)
}

func (z *Ztunnel) tail(n int) string {
	logs := z.Logs()
	if len(logs) > n {
		logs = logs[len(logs)-n:]
	}
	var b bytes.Buffer
	for _, l := range logs {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}

func (z *Ztunnel) dumpLogs(t testing.TB, n int) {
	t.Logf("last log lines of ztunnel %s:\n%s", z.Node.Name, z.tail(n))
}

// Pid is the process id.
func (z *Ztunnel) Pid() int { return z.cmd.Process.Pid }

// Done is closed when the process has exited.
func (z *Ztunnel) Done() <-chan struct{} { return z.done }

// Stop sends SIGTERM and waits (10s at most, then SIGKILL).
func (z *Ztunnel) Stop() error {
	z.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-z.done:
	case <-time.After(10 * time.Second):
		z.cmd.Process.Kill()
		<-z.done
		return fmt.Errorf("ztunnel %s did not stop within 10s of SIGTERM", z.Node.Name)
	}
	var ee *exec.ExitError
	if errors.As(z.err, &ee) && ee.ExitCode() != 0 {
		return fmt.Errorf("ztunnel %s exited: %w", z.Node.Name, z.err)
	}
	return nil
}

// Admin fetches path from the admin server.
func (z *Ztunnel) Admin(ctx context.Context, path string) ([]byte, error) {
	return HTTPClient{NS: z.Node.NS}.Get(ctx, "http://"+AdminAddr+path)
}

// Goroutines is the process's goroutine count, from
// /debug/pprof/goroutine?debug=1.
func (z *Ztunnel) Goroutines(ctx context.Context) (int, error) {
	b, err := z.Admin(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscanf(string(b), "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("goroutine profile %.40q: %w", b, err)
	}
	return n, nil
}

// FDs is the number of the process's open file descriptors.
func (z *Ztunnel) FDs() (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(z.Pid()) + "/fd")
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// HasWorkload reports whether the ztunnel's configuration holds a workload
// with address a (from /config_dump).
func (z *Ztunnel) HasWorkload(ctx context.Context, a netip.Addr) (bool, error) {
	b, err := z.Admin(ctx, "/config_dump")
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte(`"`+a.String()+`"`)), nil
}
