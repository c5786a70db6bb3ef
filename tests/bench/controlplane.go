package bench

import (
	"context"
	"fmt"
	"github.com/ambient-go/mesh/tests/harness"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// ControlPlaneConfig sizes the control-plane figure: istiod-lite (a
// separate process, local mode) serving a directory with Pods pods and
// Services services to Clients simulated ztunnels (pkg/xds clients in this
// process).
type ControlPlaneConfig struct {
	BinDir string
	Dir    string
	// Addr is where istiod-lite listens (plaintext gRPC on 15010, TLS on
	// 15012); a loopback address, as the plaintext listener requires.
	Addr netip.Addr
	// Defaults: 10,000 pods, 2,000 services, 100 clients, 10 changes, 5
	// full syncs.
	Pods, Services, Clients, Changes, Syncs int
	// PodsPerFile splits the pods over files; default 100.
	PodsPerFile int
}

func (c *ControlPlaneConfig) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Pods, 10000)
	def(&c.Services, 2000)
	def(&c.Clients, 100)
	def(&c.Changes, 10)
	def(&c.Syncs, 5)
	def(&c.PodsPerFile, 100)
}

// ControlPlaneResult holds the control-plane figures.
type ControlPlaneResult struct {
	Resources int // resources a client receives on a full sync
	// Load is how long istiod-lite took from start to serving the first
	// full sync.
	Load time.Duration
	// HerdSync is the time for all Clients, started together, to be
	// synced.
	HerdSync time.Duration
	// FullSync are the full-sync times of a new client (applying every
	// resource to a ztunnel state.Store), one per repetition, with
	// Clients connected.
	FullSync []time.Duration
	// Change holds, per file edit changing one pod, the time until the
	// last of the Clients received it; ChangeEach, every client's time of
	// every change.
	Change, ChangeEach Latencies
	ChangeAll          []time.Duration
	Lost               int // changes some client did not receive within 10s
	// RSS of istiod-lite with all clients connected, idle, and its peak.
	RSS, HWM int64
	// CPU of istiod-lite: loading, serving the herd's sync, and per change.
	CPULoad, CPUHerd, CPUPerChange time.Duration
}

// RunControlPlane measures istiod-lite.
func RunControlPlane(ctx context.Context, cfg ControlPlaneConfig) (*ControlPlaneResult, error) {
	cfg.defaults()
	configDir := filepath.Join(cfg.Dir, "config")
	for _, d := range []string{configDir, filepath.Join(cfg.Dir, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := writeClusterConfig(configDir, cfg); err != nil {
		return nil, err
	}
	target := netip.AddrPortFrom(cfg.Addr, 15010).String()
	var procs Processes
	defer procs.Stop()
	start := time.Now()
	istiod, err := procs.Start("istiod-lite", filepath.Join(cfg.BinDir, "istiod-lite"), filepath.Join(cfg.Dir, "istiod-lite.log"),
		"--config-dir", configDir, "--state-dir", filepath.Join(cfg.Dir, "state"),
		"--grpc-addr", netip.AddrPortFrom(cfg.Addr, 15012).String(), "--grpc-plaintext-addr", target)
	if err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, 30*time.Second, "istiod-lite listening", func() bool {
		c, err := net.DialTimeout("tcp", target, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		return nil, err
	}
	res := &ControlPlaneResult{}
	// The first full sync also tells when the configuration is loaded: an
	// empty answer means istiod-lite has not read the directory yet.
	want := cfg.Pods + cfg.Services
	for {
		d, n, err := fullSync(ctx, target, "probe")
		if err != nil {
			return nil, err
		}
		if n >= want {
			res.Resources, res.Load = n, time.Since(start)
			_ = d
			break
		}
		if time.Since(start) > 60*time.Second {
			return nil, fmt.Errorf("istiod-lite serves %d resources after 60s, want %d", n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s0, err := istiod.Sample()
	if err != nil {
		return nil, err
	}
	res.CPULoad = s0.CPU

	// The herd: Clients simulated ztunnels connect at once.
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	clients := make([]*countingClient, cfg.Clients)
	herdStart := time.Now()
	for i := range clients {
		cc := &countingClient{}
		c, err := xds.NewClient(xds.ClientConfig{
			Target:   target,
			Node:     &adspb.Node{Id: fmt.Sprintf("ztunnel~127.0.0.1~ztunnel-node-%d.istio-system~istio-system.svc.cluster.local", i)},
			TypeURLs: []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL},
			Token:    nodeToken,
			Handler:  cc,
			Logger:   slog.New(slog.DiscardHandler),
		})
		if err != nil {
			return nil, err
		}
		cc.c = c
		clients[i] = cc
		wg.Add(1)
		go func() { defer wg.Done(); c.Start(cctx) }()
	}
	for _, cc := range clients {
		select {
		case <-cc.c.Synced():
		case <-time.After(120 * time.Second):
			return nil, fmt.Errorf("the %d clients did not sync within 120s", cfg.Clients)
		}
	}
	res.HerdSync = time.Since(herdStart)
	for _, cc := range clients {
		if n := int(cc.resources.Load()); n < want {
			return nil, fmt.Errorf("a client received %d resources, want %d", n, want)
		}
	}
	s1, err := istiod.Sample()
	if err != nil {
		return nil, err
	}
	res.CPUHerd = s1.CPU - s0.CPU

	// A new client's full sync, with the herd connected.
	for i := range cfg.Syncs {
		d, n, err := fullSync(ctx, target, fmt.Sprintf("new-%d", i))
		if err != nil {
			return nil, err
		}
		if n < want {
			return nil, fmt.Errorf("new client received %d resources, want %d", n, want)
		}
		res.FullSync = append(res.FullSync, d)
	}

	// One pod changes (a file edit); time until every client has it.
	s2, err := istiod.Sample()
	if err != nil {
		return nil, err
	}
	var each []time.Duration
	for i := range cfg.Changes {
		for _, cc := range clients {
			cc.arm()
		}
		pod := (i * 7919) % cfg.Pods // spread over files
		file, content := podFile(cfg, pod/cfg.PodsPerFile, map[int]string{pod: fmt.Sprintf("v%d", i+1)})
		t0 := time.Now()
		if err := writeAtomic(filepath.Join(configDir, file), content); err != nil {
			return nil, err
		}
		var last time.Duration
		lost := false
		deadline := time.After(10 * time.Second) // for all clients together
		for _, cc := range clients {
			select {
			case at := <-cc.got:
				d := at.Sub(t0)
				each = append(each, d)
				last = max(last, d)
			case <-deadline:
				lost = true
			}
			if lost {
				break
			}
		}
		if lost {
			res.Lost++
			continue
		}
		res.ChangeAll = append(res.ChangeAll, last)
		time.Sleep(50 * time.Millisecond) // let the acks settle
	}
	s3, err := istiod.Sample()
	if err != nil {
		return nil, err
	}
	res.CPUPerChange = (s3.CPU - s2.CPU) / time.Duration(cfg.Changes)
	res.Change = Summarize(append([]time.Duration(nil), res.ChangeAll...))
	res.ChangeEach = Summarize(each)
	time.Sleep(500 * time.Millisecond)
	s4, err := istiod.Sample()
	if err != nil {
		return nil, err
	}
	res.RSS, res.HWM = s4.RSS, s4.HWM
	return res, nil
}

// nodeToken is the token of the configuration's only node, which every
// simulated ztunnel presents.
func nodeToken(context.Context) (string, error) { return "token-node-0", nil }

// fullSync connects one client that applies everything to a ztunnel
// state.Store, and returns the time until it is synced and how many
// resources it received.
func fullSync(ctx context.Context, target, name string) (time.Duration, int, error) {
	store := state.NewStore()
	var n atomic.Int64
	c, err := xds.NewClient(xds.ClientConfig{
		Target:   target,
		Node:     &adspb.Node{Id: "ztunnel~127.0.0.1~ztunnel-" + name + ".istio-system~istio-system.svc.cluster.local"},
		TypeURLs: []string{workloadapi.AddressTypeURL, workloadapi.AuthorizationTypeURL},
		Token:    nodeToken,
		Handler: xds.HandlerFunc(func(typeURL string, updated []*adspb.Resource, removed []string) error {
			n.Add(int64(len(updated)))
			return store.OnUpdate(typeURL, updated, removed)
		}),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return 0, 0, err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); c.Start(cctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-c.Synced():
		return time.Since(start), int(n.Load()), nil
	case <-time.After(60 * time.Second):
		return 0, 0, fmt.Errorf("client %s not synced within 60s", name)
	}
}

// countingClient is a simulated ztunnel: it counts what it receives and,
// once armed, reports when the next update arrives.
type countingClient struct {
	c         *xds.Client
	resources atomic.Int64
	mu        sync.Mutex
	got       chan time.Time
}

func (cc *countingClient) arm() {
	cc.mu.Lock()
	cc.got = make(chan time.Time, 1)
	cc.mu.Unlock()
}

func (cc *countingClient) OnUpdate(_ string, updated []*adspb.Resource, removed []string) error {
	cc.resources.Add(int64(len(updated)))
	if len(updated)+len(removed) == 0 {
		return nil
	}
	cc.mu.Lock()
	if cc.got != nil {
		select {
		case cc.got <- time.Now():
		default:
		}
	}
	cc.mu.Unlock()
	return nil
}

func writeAtomic(path, content string) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeClusterConfig writes the namespace, service accounts, services and
// pods of the simulated cluster. Pods and VIPs use 198.18.0.0/15 (no
// traffic is ever sent to them).
func writeClusterConfig(dir string, cfg ControlPlaneConfig) error {
	var b strings.Builder
	b.WriteString(harness.MeshYAML(map[string]string{"node-0": "token-node-0"}))
	b.WriteString(`---
apiVersion: v1
kind: Namespace
metadata:
  name: cluster
  labels:
    istio.io/dataplane-mode: ambient
`)
	for i := range 10 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-%d\n  namespace: cluster\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.yaml"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	const perFile = 100
	for f := 0; f*perFile < cfg.Services; f++ {
		b.Reset()
		for i := f * perFile; i < min((f+1)*perFile, cfg.Services); i++ {
			fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: svc-%d
  namespace: cluster
spec:
  clusterIP: 198.19.%d.%d
  selector:
    app: svc-%d
  ports:
  - name: http
    port: 80
    targetPort: 8080
`, i, i/250, i%250+1, i)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("services-%03d.yaml", f)), []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	for f := 0; f*cfg.PodsPerFile < cfg.Pods; f++ {
		name, content := podFile(cfg, f, nil)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// podFile is file f of pods; versions overrides the version label of some
// pods (by index).
func podFile(cfg ControlPlaneConfig, f int, versions map[int]string) (string, string) {
	var b strings.Builder
	for i := f * cfg.PodsPerFile; i < min((f+1)*cfg.PodsPerFile, cfg.Pods); i++ {
		v := versions[i]
		if v == "" {
			v = "v0"
		}
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: pod-%d
  namespace: cluster
  labels:
    app: svc-%d
    version: %s
spec:
  nodeName: node-%d
  serviceAccountName: sa-%d
  containers:
  - name: app
    image: app
    ports:
    - containerPort: 8080
status:
  phase: Running
  podIP: 198.18.%d.%d
  conditions:
  - type: Ready
    status: "True"
`, i, i%cfg.Services, v, i%cfg.Clients, i%10, i/250, i%250+1)
	}
	return fmt.Sprintf("pods-%03d.yaml", f), b.String()
}
