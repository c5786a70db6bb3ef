// Package cluster runs the mesh on a network namespace topology (package
// netns) the way it runs on Kubernetes nodes: istiod-lite in-process with
// its gRPC listeners opened inside the underlay namespace (198.18.0.1), one
// ztunnel process per node started inside the node's namespace in in-pod
// mode, and the container runtime played by the cluster itself. Creating a
// pod writes its Pod object to istiod-lite's config directory (local mode,
// as package harness does), creates the pod's namespace and veth, and calls
// the CNI plugin binary exactly as a runtime does (CNI_COMMAND, CNI_NETNS,
// CNI_ARGS with the pod's name, namespace and UID, configuration with
// prevResult on stdin); deleting it calls DEL, then removes the namespace.
// With Options.Kube, istiod-lite runs in cluster mode against a real API
// server instead, and the test's kubelet (package tests/kube) creates
// sandboxes for the pods the API server binds (Node.NewSandbox, then
// Pod.Attach once the pod's IP is published).
//
// The ztunnel and ztunnel-cni binaries are built once per test process
// (go build, cached under the user cache directory). Everything a cluster
// starts or creates is stopped and removed in t.Cleanup, even on failure.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ambient-go/mesh/istiod-lite/server"
	"github.com/ambient-go/mesh/tests/harness"
	"github.com/ambient-go/mesh/tests/netns"
)

// IstiodTLSPort is istiod-lite's gRPC port (xDS and CA, TLS) in the
// underlay namespace; it has no plaintext port there (plaintext binds only
// to loopback).
const IstiodTLSPort = 15012

// Options configure a Cluster. The zero value gives two nodes.
type Options struct {
	// Nodes is the number of nodes (node-1, node-2...); default 2.
	Nodes int
	// CertTTL is the certificate lifetime ztunnels request; default 24h.
	CertTTL time.Duration
	// Kube runs istiod-lite in cluster mode against this API server
	// instead of local mode: Pod objects then come from the API server, and
	// pods are added with NewSandbox and Attach (the kubelet's part), and
	// the pods of the waypoint Deployments istiod-lite writes with
	// Node.RunWaypointPod. istiod-lite's deployer then writes its underlay
	// address (IstiodAddr) as the waypoints' xDS address. Optional.
	Kube *rest.Config
	// Tokens are the ztunnels' CA tokens by node name (with Kube: service
	// account tokens of istio-system/ztunnel bound to a pod on the node,
	// audience istio-ca). Default: token-<node>, as local mode's Secret
	// ztunnel-node-tokens holds.
	Tokens map[string]string
	// LogLevel is the ztunnels' --log-level; default debug.
	LogLevel string
	// ZtunnelArgs are more flags for every ztunnel (e.g. --quic prefer).
	ZtunnelArgs []string
	// IstiodProcess runs istiod-lite as a process of its own in the
	// underlay namespace (soak.go) instead of in-process; Istiod is then
	// nil, and IstiodProcess returns it. Local mode only.
	IstiodProcess bool
}

// Cluster is a running mesh on a topology.
type Cluster struct {
	t    testing.TB
	opts Options
	// Topo is the topology the cluster runs on.
	Topo *netns.Topology
	// ConfigDir is istiod-lite's config directory (local mode).
	ConfigDir string
	// Istiod is the running istiod-lite.
	Istiod   *server.Server
	stateDir string
	rootFile string // istiod-lite's root certificate, which ztunnels verify it with
	stopIst  func() error
	bin      string
	// istiodProc is istiod-lite's process with Options.IstiodProcess.
	istiodProc *IstiodProcess
	// Nodes are the nodes, Nodes[i-1] being node-i.
	Nodes []*Node

	wpMu      sync.Mutex
	waypoints []*Waypoint
	wpCount   int // waypoints ever added, for default VIPs
}

// Node is one node of the cluster: its namespace, its ztunnel and its
// pods.
type Node struct {
	*netns.Node
	// Name is the Kubernetes node name, node-<index>.
	Name string
	// ZDSSocket is where the node's ztunnel listens for the CNI plugin.
	ZDSSocket string
	// PodStateDir holds the CNI plugin's pod records.
	PodStateDir string

	c    *Cluster
	mu   sync.Mutex
	zt   *Ztunnel
	pods map[string]*Pod // by namespace/name
}

// New builds the topology, starts istiod-lite and one ztunnel per node, and
// tears everything down in t.Cleanup: pods (CNI DEL, then their
// namespaces), ztunnels, istiod-lite, then the topology.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	netns.RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	bin, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	topo, err := netns.Create(netns.Options{Nodes: opts.Nodes})
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, opts: opts, Topo: topo, ConfigDir: t.TempDir(), stateDir: t.TempDir(), bin: bin}
	c.rootFile = filepath.Join(t.TempDir(), "root-cert.pem")
	t.Cleanup(c.teardown)
	run := t.TempDir()
	tokens := map[string]string{}
	for _, tn := range topo.Nodes {
		n := &Node{
			Node:        tn,
			Name:        fmt.Sprintf("node-%d", tn.Index),
			ZDSSocket:   filepath.Join(run, fmt.Sprintf("node-%d", tn.Index), "zds.sock"),
			PodStateDir: filepath.Join(run, fmt.Sprintf("node-%d", tn.Index), "pods"),
			c:           c,
			pods:        map[string]*Pod{},
		}
		c.Nodes = append(c.Nodes, n)
		tokens[n.Name] = c.Token(n.Name)
	}
	c.Write("mesh.yaml", harness.MeshYAML(tokens))
	c.StartIstiod()
	for _, n := range c.Nodes {
		n.StartZtunnel()
	}
	return c
}

// Token is node's CA token.
func (c *Cluster) Token(node string) string {
	if tok := c.opts.Tokens[node]; tok != "" {
		return tok
	}
	return "token-" + node
}

// IstiodAddr is istiod-lite's gRPC address (TLS), in the underlay.
func (c *Cluster) IstiodAddr() netip.AddrPort {
	return netip.AddrPortFrom(netns.UnderlayIP, IstiodTLSPort)
}

// Node returns node-i (from 1).
func (c *Cluster) Node(i int) *Node { return c.Nodes[i-1] }

// Write creates or replaces a file of istiod-lite's config directory,
// atomically.
func (c *Cluster) Write(name, yaml string) {
	c.t.Helper()
	if err := c.write(name, yaml); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) write(name, yaml string) error {
	tmp := filepath.Join(c.ConfigDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.ConfigDir, name))
}

// Remove deletes a file of the config directory; a missing file is fine.
func (c *Cluster) Remove(name string) {
	c.t.Helper()
	if err := os.Remove(filepath.Join(c.ConfigDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatal(err)
	}
}

// Namespace writes a Namespace with labels (e.g.
// "istio.io/dataplane-mode": "ambient"); writing it again relabels it.
func (c *Cluster) Namespace(name string, labels map[string]string) {
	c.t.Helper()
	c.Write("namespace-"+name+".yaml", fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels: %s
`, name, flow(labels)))
}

// Service writes a Service with a cluster IP selecting pods by labels,
// port → targetPort (a number).
func (c *Cluster) Service(namespace, name string, vip netip.Addr, selector map[string]string, port, targetPort int) {
	c.t.Helper()
	c.Write("service-"+namespace+"-"+name+".yaml", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  clusterIP: %s
  selector: %s
  ports:
  - name: tcp
    port: %d
    targetPort: %d
`, name, namespace, vip, flow(selector), port, targetPort))
}

// HTTPService writes a Service like Service whose port is declared HTTP
// (named http, appProtocol http), so that a waypoint serves it as HTTP
// without sniffing; a port named tcp is TCP to a waypoint, as in Istio.
func (c *Cluster) HTTPService(namespace, name string, vip netip.Addr, selector map[string]string, port, targetPort int) {
	c.t.Helper()
	c.Write("service-"+namespace+"-"+name+".yaml", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  clusterIP: %s
  selector: %s
  ports:
  - name: http
    port: %d
    targetPort: %d
    appProtocol: http
`, name, namespace, vip, flow(selector), port, targetPort))
}

// flow renders a string map as a YAML flow mapping.
func flow(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%q: %q", k, m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func logger(t testing.TB, component string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name(), "process", component)
	}
	return slog.New(slog.DiscardHandler)
}

// StartIstiod starts istiod-lite in-process; its listeners are opened
// inside the underlay namespace, on 198.18.0.1.
func (c *Cluster) StartIstiod() {
	c.t.Helper()
	if c.opts.IstiodProcess {
		c.startIstiodProcess()
		return
	}
	var s *server.Server
	cfg := server.Config{
		ConfigDir: c.ConfigDir,
		StateDir:  c.stateDir,
		Addr:      c.IstiodAddr().String(),
		Logger:    logger(c.t, "istiod-lite"),
	}
	syncTimeout := 10 * time.Second
	if c.opts.Kube != nil {
		cfg.ConfigDir = ""
		cfg.Kube = hostDialing(c.opts.Kube)
		// The waypoint Deployments it writes dial it where it listens:
		// there is no cluster DNS for istiod-lite.istio-system.svc.
		cfg.Cluster.WaypointXDSAddress = c.IstiodAddr().String()
		syncTimeout = 30 * time.Second
	}
	err := c.Topo.Underlay.Do(func() (err error) {
		s, err = server.New(cfg)
		return err
	})
	if err != nil {
		c.t.Fatalf("starting istiod-lite: %v", err)
	}
	if err := os.WriteFile(c.rootFile, s.RootPEM(), 0o644); err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	c.Istiod = s
	c.stopIst = func() error { cancel(); return <-done }
	select {
	case <-s.Synced():
	case <-time.After(syncTimeout):
		c.t.Fatalf("istiod-lite did not load its configuration within %v", syncTimeout)
	}
}

// hostDialing returns a copy of rc whose connections are dialed from the
// test's own namespace, where the API server listens, even when the
// client is built inside the underlay namespace (server.New runs there to
// bind its listeners, and reads the CA Secret on its locked thread). The
// dial runs in a new goroutine: the Go runtime never schedules it on the
// locked thread, and creates threads from a template thread, so it runs
// in the process's original namespace.
func hostDialing(rc *rest.Config) *rest.Config {
	rc = rest.CopyConfig(rc)
	dial := rc.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		ch := make(chan result, 1)
		go func() {
			conn, err := dial(ctx, network, addr)
			ch <- result{conn, err}
		}()
		r := <-ch
		return r.conn, r.err
	}
	return rc
}

// StopIstiod stops istiod-lite.
func (c *Cluster) StopIstiod() error {
	if c.stopIst == nil {
		return nil
	}
	stop := c.stopIst
	c.stopIst = nil
	return stop()
}

func (c *Cluster) teardown() {
	t := c.t
	// Waypoints first: their processes run in pods about to go.
	for _, w := range c.Waypoints() {
		if t.Failed() && w.process != nil {
			w.dumpLogs(t, 40)
		}
		if err := w.Stop(); err != nil {
			t.Errorf("%v", err)
		}
		if err := w.removeVolumes(); err != nil {
			t.Errorf("waypoint %s/%s: %v", w.Spec.Namespace, w.Spec.Name, err)
		}
	}
	for _, n := range c.Nodes {
		for _, p := range n.Pods() {
			if err := p.Delete(); err != nil {
				t.Errorf("deleting pod %s: %v", p.Key(), err)
			}
		}
	}
	for _, n := range c.Nodes {
		if z := n.Ztunnel(); z != nil {
			if t.Failed() {
				z.dumpLogs(t, 40)
			}
			if err := z.Stop(); err != nil {
				t.Errorf("ztunnel %s: %v", n.Name, err)
			}
		}
	}
	if err := c.StopIstiod(); err != nil {
		t.Errorf("istiod-lite: %v", err)
	}
	if err := c.Topo.Close(); err != nil {
		t.Errorf("removing the topology: %v", err)
	}
}

// HTTPClient sends plain HTTP/1.0 GETs from inside a namespace (to the
// admin endpoints of a node's ztunnel, say), one connection per request.
type HTTPClient struct {
	NS netns.NS
}

// Get fetches url from inside the namespace and returns the body of a 200
// answer.
func (h HTTPClient) Get(ctx context.Context, url string) ([]byte, error) {
	host, path, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := h.NS.Dial(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	fmt.Fprintf(conn, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host)
	b, err := io.ReadAll(conn)
	if err != nil {
		return nil, err
	}
	head, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok {
		return nil, fmt.Errorf("GET %s: malformed answer %q", url, b)
	}
	status, _, _ := bytes.Cut(head, []byte("\r\n"))
	if !bytes.Contains(status, []byte(" 200 ")) {
		return body, fmt.Errorf("GET %s: %s", url, status)
	}
	return body, nil
}

// Binaries builds ztunnel and ztunnel-cni once per process and returns the
// directory holding them.
func Binaries() (string, error) {
	buildOnce.Do(func() { binDir, buildErr = build("ztunnel/cmd/ztunnel", "ztunnel/cmd/ztunnel-cni") })
	return binDir, buildErr
}

// WaypointBinary builds the waypoint once per process (only tests that
// run waypoints pay for it) and returns its path.
func WaypointBinary() (string, error) {
	wpOnce.Do(func() {
		var dir string
		dir, wpErr = build("waypoint/cmd/waypoint")
		wpBin = filepath.Join(dir, "waypoint")
	})
	return wpBin, wpErr
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error

	wpOnce sync.Once
	wpBin  string
	wpErr  error
)

// build builds the packages (paths below the repository's module path)
// into the cache directory, which it returns.
func build(pkgs ...string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "ambient-go-mesh", "netns-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, pkg := range pkgs {
		name := filepath.Base(pkg)
		tmp, err := os.CreateTemp(dir, "."+name+"-*")
		if err != nil {
			return "", err
		}
		tmp.Close()
		// Static, as the images' (tests/images): no libc mapped into
		// every proxy.
		// grpcnotrace, as the images' and `make build`'s ztunnel.
		build := exec.Command("go", "build", "-tags=grpcnotrace", "-o", tmp.Name(), "github.com/ambient-go/mesh/"+pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			os.Remove(tmp.Name())
			return "", fmt.Errorf("building %s: %w\n%s", name, err, out)
		}
		// A rename is atomic: concurrent test processes each install a
		// complete binary, and running ones keep theirs.
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			os.Remove(tmp.Name())
			return "", err
		}
	}
	return dir, nil
}

// decodeLog parses one JSON log line.
func decodeLog(line []byte) (Log, bool) {
	var l Log
	if err := json.Unmarshal(line, &l); err != nil {
		return nil, false
	}
	return l, true
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
