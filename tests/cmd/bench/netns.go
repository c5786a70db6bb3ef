package main

// The netns topology (-topology netns, root only): the mesh runs as it runs
// on Kubernetes nodes (package tests/netns/cluster): each node is a network
// namespace with a ztunnel process in in-pod mode, pods are namespaces
// handed to it by the CNI plugin, traffic is captured transparently.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// benchTB is the testing.TB package cluster asks for, outside a test:
// Fatal panics with tbFatal (recovered by withTB), Cleanup functions run
// in close. Methods cluster does not use are left to the nil embedded
// interface.
type benchTB struct {
	testing.TB
	dir      string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

type tbFatal struct{ msg string }

func newBenchTB(dir string) (*benchTB, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &benchTB{dir: dir}, nil
}

func (t *benchTB) Helper()      {}
func (t *benchTB) Name() string { return "bench" }
func (t *benchTB) Failed() bool { t.mu.Lock(); defer t.mu.Unlock(); return t.failed }
func (t *benchTB) Log(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"bench: cluster:"}, args...)...)
}
func (t *benchTB) Logf(format string, args ...any) { t.Log(fmt.Sprintf(format, args...)) }
func (t *benchTB) Error(args ...any) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	t.Log(args...)
}
func (t *benchTB) Errorf(format string, args ...any) { t.Error(fmt.Sprintf(format, args...)) }
func (t *benchTB) Fatal(args ...any)                 { t.Error(args...); panic(tbFatal{fmt.Sprint(args...)}) }
func (t *benchTB) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }
func (t *benchTB) FailNow()                          { t.Fatal("FailNow") }
func (t *benchTB) Skip(args ...any)                  { panic(tbFatal{"skipped: " + fmt.Sprint(args...)}) }
func (t *benchTB) Skipf(format string, args ...any)  { t.Skip(fmt.Sprintf(format, args...)) }
func (t *benchTB) SkipNow()                          { t.Skip() }
func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *benchTB) TempDir() string {
	d, err := os.MkdirTemp(t.dir, "tmp")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// close runs the cleanups, last registered first; it reports whether
// any of them (or anything before) failed.
func (t *benchTB) close() error {
	t.mu.Lock()
	cs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("cleanup: %v", r)
				}
			}()
			cs[i]()
		}()
	}
	if t.Failed() {
		return errors.New("cluster teardown reported errors (above)")
	}
	return nil
}

// withTB runs f, turning a Fatal of the cluster into an error.
func withTB(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			tf, ok := r.(tbFatal)
			if !ok {
				panic(r)
			}
			err = errors.New(tf.msg)
		}
	}()
	return f()
}

var ambientLabels = map[string]string{"istio.io/dataplane-mode": "ambient"}

// setupNetns builds a two-node cluster: namespace bench-direct (no
// ambient label) holds direct-client on node-1 and direct-server on node-2
// (used by direct and, with a stunnel4 in each pod, by peer); namespace
// bench-mesh (ambient) holds mesh-client on node-1, mesh-server on node-2
// and localPods-1 idle pods on node-1.
func setupNetns(ctx context.Context, o options, localPods int) (s *setup, err error) {
	tb, err := newBenchTB(filepath.Join(o.out, "netns"))
	if err != nil {
		return nil, err
	}
	s = &setup{}
	var stops []func()
	s.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
		if err := tb.close(); err != nil {
			say("netns teardown: %v", err)
		}
	}
	defer func() {
		if err != nil {
			s.stop()
			s = nil
		}
	}()
	var c *cluster.Cluster
	err = withTB(func() error {
		c = cluster.New(tb, cluster.Options{Nodes: 2, LogLevel: "info", ZtunnelArgs: strings.Fields(o.ztunnelArgs)})
		c.Namespace("bench-direct", map[string]string{})
		c.Namespace("bench-mesh", ambientLabels)
		c.Write("bench-l7.yaml", l7YAML)
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("netns cluster: %w", err)
	}
	if err := lossyUnderlay(ctx, c); err != nil { // -lossy (quic.go)
		return s, err
	}
	n1, n2 := c.Node(1), c.Node(2)
	var pods1, pods2 []*cluster.Pod
	err = withTB(func() error {
		var err error
		specs := []cluster.PodSpec{
			{Namespace: "bench-direct", Name: "direct-client"},
			{Namespace: "bench-mesh", Name: "mesh-client"},
		}
		for i := 1; i < localPods; i++ {
			specs = append(specs, cluster.PodSpec{Namespace: "bench-mesh", Name: fmt.Sprintf("idle-%d", i), ServiceAccount: "idle"})
		}
		if pods1, err = n1.AddPods(specs); err != nil {
			return err
		}
		pods2, err = n2.AddPods([]cluster.PodSpec{
			{Namespace: "bench-direct", Name: "direct-server"},
			{Namespace: "bench-mesh", Name: "mesh-server", Labels: map[string]string{"app": "mesh-server"}},
			// Where the waypoint is, the L7 peer is: node-2, a pod of its own.
			{Namespace: "bench-mesh", Name: waypointGateway + "-0", ServiceAccount: waypointGateway,
				Labels: map[string]string{"gateway.networking.k8s.io/gateway-name": waypointGateway, "istio.io/dataplane-mode": "none"}},
			{Namespace: "bench-direct", Name: "haproxy"},
		})
		return err
	})
	if err != nil {
		return s, fmt.Errorf("pods: %w", err)
	}
	directClient, meshClient := pods1[0], pods1[1]
	directServer, meshServer, wpPod, l7Pod := pods2[0], pods2[1], pods2[2], pods2[3]
	s.describe = fmt.Sprintf("netns: node-1 %s, node-2 %s; client pods %s (direct, peer) and %s (mesh, captured) on node-1, server pods %s and %s on node-2; %d ambient pods on node-1; waypoint pod %s and HAProxy pod %s on node-2",
		n1.IP, n2.IP, directClient.IP, meshClient.IP, directServer.IP, meshServer.IP, localPods, wpPod.IP, l7Pod.IP)

	for _, srv := range []*cluster.Pod{directServer, meshServer} {
		apps, err := bench.StartAppsWith(srv.Listen, srv.IP.String())
		if err != nil {
			return s, fmt.Errorf("applications in %s: %w", srv.Key(), err)
		}
		stops = append(stops, func() { apps.Close() })
	}
	podDialer := func(src *cluster.Pod, dst netip.Addr) bench.Dialer {
		return func(ctx context.Context, port uint16) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return src.Dial(ctx, "tcp", netip.AddrPortFrom(dst, port).String())
		}
	}
	zt1 := bench.External("ztunnel node-1", n1.Ztunnel().Pid())
	zt2 := bench.External("ztunnel node-2", n2.Ztunnel().Pid())

	say("starting the stunnel4 pair in the plain pods (TLS 1.3, mutual auth, ECDSA P-256)")
	peerCfg := bench.PeerConfig{Stunnel: o.stunnel, Dir: filepath.Join(o.out, "peer"),
		Client: directClient.IP, Server: directServer.IP, Backend: directServer.IP,
		StartClient: directClient.Start, StartServer: directServer.Start,
		DialClient: directClient.Dial, DialServer: directServer.Dial,
		L7: netip.AddrPortFrom(l7Pod.IP, l7Port)}
	peer, err := bench.StartPeer(ctx, peerCfg)
	if err != nil {
		return s, err
	}
	stops = append(stops, peer.Stop)

	// The floor's relays sit where the ztunnels' sockets are: the client
	// side in the client pod's namespace, the server side in the server
	// pod's, dialling the application there.
	say("starting the floor relays in the plain pods (plain TCP relays in Go)")
	floor, err := bench.StartFloor(ctx, bench.FloorConfig{Bin: o.floor, Dir: filepath.Join(o.out, "floor"),
		Client: directClient.IP, Server: directServer.IP, Backend: directServer.IP,
		StartClient: directClient.Start, StartServer: directServer.Start,
		DialClient: directClient.Dial, DialServer: directServer.Dial})
	if err != nil {
		return s, err
	}
	stops = append(stops, floor.Stop)

	s.variants = []variant{
		{"direct", podDialer(directClient, directServer.IP), nil},
		{"mesh", podDialer(meshClient, meshServer.IP), []*bench.Process{zt1, zt2}},
		{"peer", peer.Dial, []*bench.Process{peer.Client, peer.Server}},
		{"floor", floor.Dial, []*bench.Process{floor.Client, floor.Server}},
	}
	s.idle = []*bench.Process{zt1, zt2, peer.Client, peer.Server, floor.Client, floor.Server}
	s.admin = map[string][]adminGet{
		"mesh":  {n1.Ztunnel().Admin, n2.Ztunnel().Admin},
		"floor": {floor.AdminClient, floor.AdminServer},
	}
	s.profile = func(ctx context.Context, d durations) ([]profileOut, error) {
		get := map[string]func(ctx context.Context, path string) ([]byte, error){
			"node-1": n1.Ztunnel().Admin, "node-2": n2.Ztunnel().Admin}
		return profileWith(ctx, o, s.variants[1].dial, d, get)
	}

	// The L7 figures: the waypoint and HAProxy.
	say("starting HAProxy in pod %s (mode http, mTLS in and out, routing by path)", l7Pod.Key())
	l7, err := bench.StartL7(ctx, bench.L7Config{HAProxy: o.haproxy, Dir: peerCfg.Dir, Listen: peerCfg.L7, Backend: peerCfg.L7Backend(),
		Start: l7Pod.Start, Dial: l7Pod.Dial})
	if err != nil {
		return s, err
	}
	stops = append(stops, l7.Stop)

	say("starting the waypoint in pod %s (Gateway bench-mesh/%s)", wpPod.Key(), waypointGateway)
	// The waypoint's pod reaches istiod-lite as a pod reaches a Service:
	// here through a relay from its namespace's loopback to the underlay.
	rl, err := wpPod.Listen("tcp", "127.0.0.1:15012")
	if err != nil {
		return s, err
	}
	relay := bench.NewRelay(rl, func(ctx context.Context) (net.Conn, error) {
		return c.Topo.Underlay.Dial(ctx, "tcp", c.IstiodAddr().String())
	})
	stops = append(stops, func() { relay.Close() })
	wpDir := filepath.Join(o.out, "waypoint")
	if err := os.MkdirAll(wpDir, 0o755); err != nil {
		return s, err
	}
	root := filepath.Join(wpDir, "root-cert.pem")
	if err := os.WriteFile(root, c.Istiod.RootPEM(), 0o644); err != nil {
		return s, err
	}
	wpGet := cluster.HTTPClient{NS: wpPod.NS}.Get
	wp, err := bench.StartWaypoint(ctx, bench.WaypointConfig{Bin: filepath.Join(o.bin, "waypoint"), Dir: wpDir,
		Namespace: "bench-mesh", Gateway: waypointGateway, PodName: wpPod.Spec.Name, PodIP: wpPod.IP,
		XDSAddress: "127.0.0.1:15012", CARoot: root, Token: c.Token(n2.Name),
		Start: wpPod.Start, Get: wpGet})
	if err != nil {
		return s, err
	}
	stops = append(stops, wp.Stop)
	s.waypoint = wp

	mesh, viaWaypoint := podDialer(meshClient, svcVIP), podDialer(meshClient, svcWaypointVIP)
	if err := checkWaypointPath(ctx, wp, mesh, viaWaypoint); err != nil {
		return s, err
	}
	s.l7 = []variant{
		{"direct", podDialer(directClient, directServer.IP), nil},
		{"mesh", mesh, []*bench.Process{zt1, zt2}},
		{"mesh+waypoint", viaWaypoint, []*bench.Process{zt1, zt2, wp.Proc}},
		{"peer", peer.Dial, []*bench.Process{peer.Client, peer.Server}},
		{"peer+haproxy", peer.DialL7, []*bench.Process{peer.Client, peer.Server, l7.Proc}},
	}
	for _, rt := range l7Routes {
		dial := podDialer(meshClient, rt.vip)
		if err := checkRoutePath(ctx, wp, dial, rt); err != nil {
			return s, err
		}
		s.l7Routes = append(s.l7Routes, variant{rt.variant, dial, []*bench.Process{zt1, zt2, wp.Proc}})
	}
	s.idle = append(s.idle, wp.Proc, l7.Proc)
	return s, nil
}

// The L7 objects of the netns topology: the waypoint Gateway of
// bench-mesh, its Service (named after it, as the deployer writes it), and
// two Services of mesh-server's HTTP application, one bound to the
// waypoint (istio.io/use-waypoint on the Service) and one not.
const (
	waypointGateway = "waypoint"
	l7Port          = 8443 // HAProxy's frontend
)

var (
	waypointVIP    = netns.VIP(1)
	svcVIP         = netns.VIP(2)
	svcWaypointVIP = netns.VIP(3)
	l7YAML         = fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %[1]s
  namespace: bench-mesh
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: bench-mesh
  labels:
    gateway.networking.k8s.io/gateway-name: %[1]s
spec:
  clusterIP: %[2]s
  selector:
    gateway.networking.k8s.io/gateway-name: %[1]s
  ports:
  - name: status-port
    port: 15021
    targetPort: 15021
  - name: mesh
    port: 15008
    targetPort: 15008
---
apiVersion: v1
kind: Service
metadata:
  name: mesh-http
  namespace: bench-mesh
spec:
  clusterIP: %[3]s
  selector:
    app: mesh-server
  ports:
  - name: http
    port: %[5]d
    targetPort: %[5]d
    appProtocol: http
---
apiVersion: v1
kind: Service
metadata:
  name: mesh-http-waypoint
  namespace: bench-mesh
  labels:
    istio.io/use-waypoint: %[1]s
spec:
  clusterIP: %[4]s
  selector:
    app: mesh-server
  ports:
  - name: http
    port: %[5]d
    targetPort: %[5]d
    appProtocol: http
`, waypointGateway, waypointVIP, svcVIP, svcWaypointVIP, bench.HTTPPort) + l7RoutesYAML()
)

// checkWaypointPath waits (20 s at most) until a request to the Service
// bound to the waypoint succeeds and is counted by the waypoint, then
// checks that a request to the other Service does not pass it: otherwise
// the mesh+waypoint figures would measure something else.
func checkWaypointPath(ctx context.Context, wp *bench.Waypoint, mesh, viaWaypoint bench.Dialer) error {
	before, err := wp.Requests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	var last error
	if err := bench.WaitFor(ctx, 20*time.Second, "a request through the waypoint", func() bool {
		if last = bench.HTTPCheck(ctx, viaWaypoint); last != nil {
			return false
		}
		n, err := wp.Requests(ctx)
		if err != nil || n <= before {
			last = fmt.Errorf("answered, but the waypoint counted no request (%v)", err)
			return false
		}
		return true
	}); err != nil {
		return fmt.Errorf("%w: %v", err, last)
	}
	before, err = wp.Requests(ctx)
	if err != nil {
		return err
	}
	if err := bench.HTTPCheck(ctx, mesh); err != nil {
		return fmt.Errorf("mesh-http: %w", err)
	}
	if after, err := wp.Requests(ctx); err != nil || after != before {
		return fmt.Errorf("a request to mesh-http (no waypoint) went through the waypoint (%v → %v, %v)", before, after, err)
	}
	return nil
}

// The report's text for the netns topology.
const (
	netnsTopology = `netns (root) — real network namespaces on one kernel: two
  "nodes" joined by an underlay bridge (198.18.0.0/24), pods are namespaces on
  each node's bridge (198.19.N.0/24, veth pairs), as in tests/netns/cluster.
  istiod-lite runs in the bench process with its listeners in the underlay
  namespace; one ztunnel process per node in in-pod mode (the CNI plugin hands
  it each pod's namespace; --log-level info); the two stunnels run inside the
  plain pods. CPU and RSS of the proxies are read from /proc; the load
  generators and the applications run in the bench process (their sockets
  opened inside the pods' namespaces), on the same cores.
`
	netnsVariants = `- **direct**: pod direct-client (namespace bench-direct, not ambient) on
  node-1 dials pod direct-server on node-2: plain TCP through the pod veths,
  the node namespaces and the underlay.
- **mesh**: pod mesh-client (namespace bench-mesh, labelled
  istio.io/dataplane-mode=ambient) on node-1 dials pod mesh-server's address
  on node-2 as any application does; the connection is captured transparently
  (in-pod redirection, no SOCKS5) by ztunnel node-1 → HBONE (HTTP/2 CONNECT
  over mTLS, TLS 1.3, ECDSA P-256, pooled) across the underlay → ztunnel
  node-2, listening inside mesh-server's namespace → server. Node-1 carries
  100 ambient pods (mesh-client and 99 idle ones).
- **peer**: a stunnel4 client inside direct-client's namespace → TLS 1.3
  mutual auth (ECDSA P-256, TLS_AES_128_GCM_SHA256, the suite Go picks too)
  across the underlay → a stunnel4 server inside direct-server's namespace →
  server.
`
	netnsConns = `  Through the mesh each connection is captured (no extra round trip) and
  opens a new HBONE stream on the pooled HTTP/2 connection; the TLS handshake
  happens once per pool connection. Every dial of every variant enters the
  client pod's namespace from an OS thread of the bench process (setns), an
  equal overhead for every variant.
`
)
