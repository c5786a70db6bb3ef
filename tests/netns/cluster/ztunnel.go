package cluster

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	*process
	host string // loopback address of its admin, metrics and readiness ports ("": 127.0.0.1)
}

// addr is the ztunnel's address of one of AdminAddr, MetricsAddr and
// ReadinessAddr: the same port, on its own loopback address (a successor
// started by HandOverZtunnel runs next to it on another).
func (z *Ztunnel) addr(def string) string {
	if z.host == "" {
		return def
	}
	_, port, _ := net.SplitHostPort(def)
	return net.JoinHostPort(z.host, port)
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

func (n *Node) startZtunnel() (*Ztunnel, error) { return n.startZtunnelAt("", true) }

// startZtunnelAt starts a ztunnel whose admin, metrics and readiness
// ports are on the loopback address host ("": 127.0.0.1); with register,
// it becomes the node's ztunnel (Node.Ztunnel, stopped at teardown) at
// once.
func (n *Node) startZtunnelAt(host string, register bool) (*Ztunnel, error) {
	c := n.c
	z := &Ztunnel{Node: n, host: host}
	args := []string{
		"--mode", "inpod",
		"--node", n.Name,
		"--xds-address", c.IstiodAddr().String(),
		"--ca-root", c.rootFile,
		"--token", c.Token(n.Name),
		"--zds-socket", n.ZDSSocket,
		"--pod-state-dir", n.PodStateDir,
		"--admin-addr", z.addr(AdminAddr),
		"--metrics-addr", z.addr(MetricsAddr),
		"--readiness-addr", z.addr(ReadinessAddr),
		"--log-level", cmp.Or(c.opts.LogLevel, "debug"),
	}
	if c.opts.CertTTL > 0 {
		args = append(args, "--cert-ttl", c.opts.CertTTL.String())
	}
	args = append(args, c.opts.ZtunnelArgs...)
	if err := os.MkdirAll(filepath.Dir(n.ZDSSocket), 0o755); err != nil {
		return nil, err
	}
	proc, err := startProcess(n.NS, "ztunnel "+n.Name, exec.Command(filepath.Join(c.bin, "ztunnel"), args...))
	if err != nil {
		return nil, err
	}
	z.process = proc
	if register {
		n.mu.Lock()
		n.zt = z
		n.mu.Unlock()
	}
	if err := proc.waitReady(n.NS, "http://"+z.addr(ReadinessAddr)+"/healthz/ready", 15*time.Second); err != nil {
		return z, err
	}
	return z, nil
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
		z.kill()
	}
}

// Admin fetches path from the admin server.
func (z *Ztunnel) Admin(ctx context.Context, path string) ([]byte, error) {
	return HTTPClient{NS: z.Node.NS}.Get(ctx, "http://"+z.addr(AdminAddr)+path)
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

// HasWorkload reports whether the ztunnel's configuration holds a workload
// with address a (from /config_dump).
func (z *Ztunnel) HasWorkload(ctx context.Context, a netip.Addr) (bool, error) {
	b, err := z.Admin(ctx, "/config_dump")
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte(`"`+a.String()+`"`)), nil
}
