package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/harness"
)

// MeshConfig describes the mesh the data-plane figures run through: two
// nodes on loopback, istiod-lite and one ztunnel per node as separate
// processes started from their binaries (so that each one's CPU and RSS
// can be read from /proc).
type MeshConfig struct {
	// BinDir holds istiod-lite and ztunnel.
	BinDir string
	// Dir receives the config directory, CA state and logs.
	Dir string
	// Base is X in 127.X.0.0/16, the mesh's addresses.
	Base byte
	// LocalPods is the number of ambient pods on node-a, the client's node
	// (the client pod included); default 100.
	LocalPods int
}

// Mesh is a running two-node mesh.
type Mesh struct {
	cfg     MeshConfig
	procs   Processes
	Istiod  *Process
	ZtA     *Process // node-a: the client's node
	ZtB     *Process // node-b: the server's node
	AdminA  string   // node-a ztunnel admin address (pprof)
	AdminB  string
	Client  netip.Addr // the client pod (node-a)
	Server  netip.Addr // the server pod (node-b)
	Started time.Duration
}

// Addr returns 127.Base.c.d.
func (c MeshConfig) Addr(x, y byte) netip.Addr { return netip.AddrFrom4([4]byte{127, c.Base, x, y}) }

// StartMesh writes the configuration and starts istiod-lite and both
// ztunnels; it returns once both ztunnels are ready and have bound every
// local pod.
func StartMesh(ctx context.Context, cfg MeshConfig) (*Mesh, error) {
	if cfg.LocalPods == 0 {
		cfg.LocalPods = 100
	}
	if cfg.LocalPods > 200 {
		return nil, fmt.Errorf("at most 200 local pods, not %d", cfg.LocalPods)
	}
	configDir := filepath.Join(cfg.Dir, "config")
	stateDir := filepath.Join(cfg.Dir, "state")
	logDir := filepath.Join(cfg.Dir, "logs")
	for _, d := range []string{configDir, stateDir, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	m := &Mesh{cfg: cfg, Client: cfg.Addr(1, 10), Server: cfg.Addr(2, 10),
		AdminA: netip.AddrPortFrom(cfg.Addr(1, 1), 15000).String(),
		AdminB: netip.AddrPortFrom(cfg.Addr(2, 1), 15000).String()}
	if err := os.WriteFile(filepath.Join(configDir, "bench.yaml"), []byte(meshYAML(cfg)), 0o644); err != nil {
		return nil, err
	}
	start := time.Now()
	istiodAddr := netip.AddrPortFrom(cfg.Addr(0, 1), 15010).String()
	var err error
	m.Istiod, err = m.procs.Start("istiod-lite", filepath.Join(cfg.BinDir, "istiod-lite"), filepath.Join(logDir, "istiod-lite.log"),
		"--config-dir", configDir, "--state-dir", stateDir,
		"--grpc-addr", netip.AddrPortFrom(cfg.Addr(0, 1), 15012).String(), "--grpc-plaintext-addr", istiodAddr)
	if err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, 10*time.Second, "istiod-lite listening", func() bool {
		c, err := net.DialTimeout("tcp", istiodAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		m.Stop()
		return nil, err
	}
	for _, n := range []struct {
		node  string
		admin netip.Addr
		proc  **Process
	}{{"node-a", cfg.Addr(1, 1), &m.ZtA}, {"node-b", cfg.Addr(2, 1), &m.ZtB}} {
		*n.proc, err = m.procs.Start("ztunnel "+n.node, filepath.Join(cfg.BinDir, "ztunnel"), filepath.Join(logDir, "ztunnel-"+n.node+".log"),
			"--node", n.node, "--token", "token-"+n.node, "--xds-address", istiodAddr,
			"--admin-addr", netip.AddrPortFrom(n.admin, 15000).String(),
			"--metrics-addr", netip.AddrPortFrom(n.admin, 15020).String(),
			"--readiness-addr", netip.AddrPortFrom(n.admin, 15021).String())
		if err != nil {
			m.Stop()
			return nil, err
		}
	}
	for _, a := range []netip.Addr{cfg.Addr(1, 1), cfg.Addr(2, 1)} {
		url := "http://" + netip.AddrPortFrom(a, 15021).String() + "/healthz/ready"
		if err := WaitFor(ctx, 20*time.Second, "ztunnel "+url, func() bool { return HTTPOK(url) }); err != nil {
			m.Stop()
			return nil, fmt.Errorf("%w (logs in %s)", err, logDir)
		}
	}
	// Every local pod's SOCKS5 listener is bound.
	last := cfg.Addr(1, byte(10+cfg.LocalPods-1))
	if err := WaitFor(ctx, 20*time.Second, "ztunnel node-a binding its pods", func() bool {
		for _, a := range []netip.Addr{m.Client, last} {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(a, 15080).String(), time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	}); err != nil {
		m.Stop()
		return nil, err
	}
	m.Started = time.Since(start)
	return m, nil
}

// Stop stops every process of the mesh.
func (m *Mesh) Stop() { m.procs.Stop() }

// Dial connects from the client pod to the server pod's port through the
// client pod's SOCKS5 listener (local mode's stand-in for capture): the
// source ztunnel, HBONE, the destination ztunnel.
func (m *Mesh) Dial(ctx context.Context, port uint16) (net.Conn, error) {
	return harness.Dial(ctx, m.Client, netip.AddrPortFrom(m.Server, port).String())
}

// DirectDial connects from the client pod's address straight to the
// server pod's port.
func (m *Mesh) DirectDial(ctx context.Context, port uint16) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: m.Client.AsSlice()}, Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", netip.AddrPortFrom(m.Server, port).String())
}

func meshYAML(cfg MeshConfig) string {
	var b strings.Builder
	b.WriteString(harness.MeshYAML(map[string]string{"node-a": "token-node-a", "node-b": "token-node-b"}))
	b.WriteString(`---
apiVersion: v1
kind: Namespace
metadata:
  name: bench
  labels:
    istio.io/dataplane-mode: ambient
`)
	for _, sa := range []string{"client", "server", "idle"} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: %s\n  namespace: bench\n", sa)
	}
	pod := func(name, sa, node string, ip netip.Addr, ports ...uint16) {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: bench
  labels:
    app: %s
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: app
    image: app
`, name, sa, node, sa)
		if len(ports) > 0 {
			b.WriteString("    ports:\n")
			for _, p := range ports {
				fmt.Fprintf(&b, "    - containerPort: %d\n", p)
			}
		}
		fmt.Fprintf(&b, `status:
  phase: Running
  podIP: %s
  conditions:
  - type: Ready
    status: "True"
`, ip)
	}
	pod("client", "client", "node-a", cfg.Addr(1, 10))
	for i := 1; i < cfg.LocalPods; i++ {
		pod(fmt.Sprintf("idle-%d", i), "idle", "node-a", cfg.Addr(1, byte(10+i)))
	}
	pod("server", "server", "node-b", cfg.Addr(2, 10), EchoPort, SinkPort, GreetPort)
	return b.String()
}
