// Package harness boots a whole mesh in-process, on loopback, from YAML:
// istiod-lite in local mode serving a temporary config directory, and one
// ztunnel per node. Every mesh gets its own 127.X.0.0/16 so that meshes and
// other processes on the machine never collide: istiod-lite listens on
// 127.X.0.1, node n's pods are 127.X.n.10 and up, and service VIPs are
// 127.X.100.0/24. Nothing leaves loopback.
package harness

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/istiod-lite/server"
	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/socks5"
	"github.com/ambient-go/mesh/ztunnel"
)

// Options configure a Mesh. The zero value gives two nodes, node-a and
// node-b, and the CA's default certificate lifetime.
type Options struct {
	// Nodes are the node names; default node-a, node-b.
	Nodes []string
	// CertTTL is the certificate lifetime ztunnels request; default 24h.
	CertTTL time.Duration
	// QUIC is the ztunnels' --quic (off, on, prefer); default off.
	QUIC string
}

// Mesh is a running in-process mesh.
type Mesh struct {
	t        testing.TB
	opts     Options
	base     byte // X in 127.X.0.0/16
	Dir      string
	stateDir string

	mu       sync.Mutex
	istiod   *running
	Istiod   *server.Server
	ztunnels map[string]*Ztunnel
	// waypoints run in-process (waypoint.go); waypointSpecs keep each
	// waypoint's Gateway and addresses across restarts.
	waypoints     map[string]*Waypoint
	waypointSpecs map[string]*WaypointSpec
}

// Ztunnel is one node's running ztunnel.
type Ztunnel struct {
	*ztunnel.Ztunnel
	Node    string
	Records <-chan accesslog.Record
	run     *running
	unsub   func()
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

func (r *running) stop() error {
	r.cancel()
	return <-r.done
}

var (
	basesMu sync.Mutex
	bases   = map[byte]bool{}
)

func pickBase() byte {
	basesMu.Lock()
	defer basesMu.Unlock()
	for {
		n, _ := rand.Int(rand.Reader, big.NewInt(200))
		b := byte(30 + n.Int64())
		if !bases[b] {
			bases[b] = true
			return b
		}
	}
}

// New starts istiod-lite on an empty configuration (namespaces and node
// tokens only) and one ztunnel per node, and stops them all in t.Cleanup.
func New(t testing.TB, opts Options) *Mesh {
	t.Helper()
	if len(opts.Nodes) == 0 {
		opts.Nodes = []string{"node-a", "node-b"}
	}
	m := &Mesh{
		t:        t,
		opts:     opts,
		base:     pickBase(),
		Dir:      t.TempDir(),
		stateDir: t.TempDir(),
		ztunnels: map[string]*Ztunnel{},
	}
	tokens := map[string]string{}
	for _, n := range opts.Nodes {
		tokens[n] = m.Token(n)
	}
	m.Write("mesh.yaml", MeshYAML(tokens))
	t.Cleanup(m.stopAll)
	m.StartIstiod()
	for _, n := range opts.Nodes {
		m.StartZtunnel(n)
	}
	return m
}

// MeshYAML is the mesh-wide part of a local-mode configuration: the
// istio-system namespace and the Secret holding each node's CA token.
func MeshYAML(nodeTokens map[string]string) string {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
---
apiVersion: v1
kind: Secret
metadata:
  name: ztunnel-node-tokens
  namespace: istio-system
stringData:
`)
	for _, n := range slices.Sorted(maps.Keys(nodeTokens)) {
		fmt.Fprintf(&b, "  %s: %s\n", n, nodeTokens[n])
	}
	return b.String()
}

// Token is the CA token of node.
func (m *Mesh) Token(node string) string { return "token-" + node }

// IstiodAddr is istiod-lite's plaintext gRPC address.
func (m *Mesh) IstiodAddr() string { return fmt.Sprintf("127.%d.0.1:15010", m.base) }

// PodIP is the address of pod i (from 0) on node n (from 0).
func (m *Mesh) PodIP(node, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, m.base, byte(node + 1), byte(10 + i)})
}

// VIP is the address of service i.
func (m *Mesh) VIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, m.base, 100, byte(10 + i)})
}

// Write creates or replaces a file of the config directory, atomically (as
// editors do, by rename).
func (m *Mesh) Write(name, yaml string) {
	m.t.Helper()
	tmp := filepath.Join(m.Dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.Dir, name)); err != nil {
		m.t.Fatal(err)
	}
}

// Remove deletes a file of the config directory.
func (m *Mesh) Remove(name string) {
	m.t.Helper()
	if err := os.Remove(filepath.Join(m.Dir, name)); err != nil {
		m.t.Fatal(err)
	}
}

func logger(t testing.TB, component string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name(), "process", component)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// StartIstiod starts istiod-lite (again) on the same addresses and state.
func (m *Mesh) StartIstiod() {
	m.t.Helper()
	s, err := server.New(server.Config{
		ConfigDir:     m.Dir,
		StateDir:      m.stateDir,
		Addr:          fmt.Sprintf("127.%d.0.1:0", m.base),
		PlaintextAddr: m.IstiodAddr(),
		Logger:        logger(m.t, "istiod-lite"),
	})
	if err != nil {
		m.t.Fatalf("starting istiod-lite: %v", err)
	}
	r := start(s.Start)
	select {
	case <-s.Synced():
	case <-time.After(10 * time.Second):
		r.stop()
		m.t.Fatal("istiod-lite did not load its configuration within 10s")
	}
	m.mu.Lock()
	m.istiod, m.Istiod = r, s
	m.mu.Unlock()
}

// StopIstiod stops istiod-lite; ztunnels keep their last configuration.
func (m *Mesh) StopIstiod() {
	m.t.Helper()
	m.mu.Lock()
	r := m.istiod
	m.istiod = nil
	m.mu.Unlock()
	if r != nil {
		if err := r.stop(); err != nil {
			m.t.Errorf("istiod-lite: %v", err)
		}
	}
}

// StartZtunnel starts node's ztunnel and waits until it is ready.
func (m *Mesh) StartZtunnel(node string) *Ztunnel {
	m.t.Helper()
	z, err := ztunnel.New(ztunnel.Config{
		Node:          node,
		XDSAddress:    m.IstiodAddr(),
		Token:         m.Token(node),
		CertTTL:       m.opts.CertTTL,
		QUIC:          m.opts.QUIC,
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   "127.0.0.1:0",
		ReadinessAddr: "127.0.0.1:0",
		DrainTimeout:  200 * time.Millisecond,
		Logger:        logger(m.t, "ztunnel-"+node),
	})
	if err != nil {
		m.t.Fatalf("ztunnel %s: %v", node, err)
	}
	records, unsub := z.AccessLog().Subscribe(1024)
	r := start(z.Start)
	select {
	case <-z.Ready():
	case err := <-r.done:
		m.t.Fatalf("ztunnel %s stopped: %v", node, err)
	case <-time.After(10 * time.Second):
		r.stop()
		m.t.Fatalf("ztunnel %s not ready within 10s", node)
	}
	zt := &Ztunnel{Ztunnel: z, Node: node, Records: records, run: r, unsub: unsub}
	m.mu.Lock()
	m.ztunnels[node] = zt
	m.mu.Unlock()
	return zt
}

// Ztunnel returns node's running ztunnel.
func (m *Mesh) Ztunnel(node string) *Ztunnel {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ztunnels[node]
}

// StopZtunnel stops node's ztunnel.
func (m *Mesh) StopZtunnel(node string) {
	m.t.Helper()
	m.mu.Lock()
	z := m.ztunnels[node]
	delete(m.ztunnels, node)
	m.mu.Unlock()
	if z != nil {
		if err := z.run.stop(); err != nil {
			m.t.Errorf("ztunnel %s: %v", node, err)
		}
		z.unsub()
	}
}

func (m *Mesh) stopAll() {
	for _, n := range m.opts.Nodes {
		m.StopZtunnel(n)
	}
	m.StopIstiod()
}

func start(f func(context.Context) error) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- f(ctx) }()
	return r
}

// Dial connects from the pod at src to target ("ip:port" or
// "host:port") through src's ztunnel's SOCKS5 listener, from src's own
// address, as a pod's application would be captured. The connection is the
// plain *net.TCPConn to the listener, so CloseWrite half-closes it.
func Dial(ctx context.Context, src netip.Addr, target string) (*net.TCPConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(src, 15080).String())
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if dl, ok := ctx.Deadline(); ok {
		tc.SetDeadline(dl)
	}
	if err := socks5.Connect(tc, target); err != nil {
		tc.Close()
		return nil, fmt.Errorf("socks5 connect to %s: %w", target, err)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// SOCKSError is a SOCKS5 reply other than success, as Dial returns it.
type SOCKSError = socks5.ReplyError

// WaitRecord returns the first access log record of z that matches, or
// fails the test after timeout.
func WaitRecord(t testing.TB, z *Ztunnel, timeout time.Duration, match func(accesslog.Record) bool) accesslog.Record {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case r := <-z.Records:
			if match(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("ztunnel %s: no matching access log record within %s", z.Node, timeout)
			return accesslog.Record{}
		}
	}
}
