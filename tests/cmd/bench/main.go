// Command bench measures the mesh against a direct connection, a stunnel4
// pair and a floor (two plain TCP relays in Go where the ztunnels are:
// what two user-space hops cost), then istiod-lite under a 10,000-pod cluster, prints every
// figure with its ratios and targets, and writes docs/performance.md.
// `make bench` builds the binaries and runs it.
//
// The variants of each figure run interleaved (direct, mesh, peer, floor,
// direct, mesh, ...) in one run, and the table shows the median of the runs.
// Topology (-topology): loopback, pods on 127.X.0.0/16 (X random), the
// client reaching the mesh through its pod's SOCKS5 listener; or netns
// (root), the cluster of package tests/netns/cluster with pods in network
// namespaces and transparent in-pod capture (netns.go). `make bench` picks
// netns when run as root.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"math"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

type options struct {
	bin, out, doc, stunnel, haproxy, topology string
	floor                                     string // floorrelay binary
	runs                                      int
	quick, skipCP                             bool
	only                                      string
	ztunnelArgs                               string // more flags for the netns topology's ztunnels
	adminFetch                                string // -only latency: a pprof path fetched from the Go proxies during a run
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding the istiod-lite and ztunnel binaries")
	flag.StringVar(&o.out, "out", "_out/bench", "working directory (configs, logs, profiles)")
	flag.StringVar(&o.doc, "doc", "docs/performance.md", "report to write (empty: none)")
	flag.StringVar(&o.stunnel, "stunnel", "stunnel4", "stunnel binary of the peer variant")
	flag.StringVar(&o.floor, "floor", "", "floorrelay binary of the floor variant (empty: go build it into -bin)")
	flag.StringVar(&o.haproxy, "haproxy", "haproxy", "HAProxy binary of the L7 peer (netns topology)")
	flag.StringVar(&o.topology, "topology", "loopback", "loopback, or netns (root: pods in network namespaces on two nodes, transparent capture)")
	flag.IntVar(&o.runs, "runs", 5, "runs per variant of each figure (medians are reported)")
	flag.BoolVar(&o.quick, "quick", false, "short runs, for trying the harness")
	flag.BoolVar(&o.skipCP, "skip-control-plane", false, "skip the control-plane figures")
	flag.StringVar(&o.only, "only", "", "run one group of figures alone and print it, writing no report: controlplane, l4 (the data-path figures without profiles), l7 (the HTTP figures; netns topology), latency (only the 1000 rps latency and CPU figures, with how many requests overlapped another), conns (only the new-connections figure, with per-connection counts and profiles; netns topology), quic (direct, mesh and mesh-quic on a clean then a lossy underlay; root), logstream (ztunnel CPU with and without a meshctl logs follower; root)")
	flag.StringVar(&o.ztunnelArgs, "ztunnel-args", "", "more flags for both ztunnels of the netns topology, space separated (for trying a setting, e.g. \"--worker-threads 1\")")
	flag.StringVar(&o.adminFetch, "admin-fetch", "", "with -only latency: a path fetched from every Go proxy of the mesh and floor variants (their pprof servers) during their last run at 1000 rps, saved in -out (e.g. \"/debug/pprof/trace?seconds=2\")")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runner := run
	switch o.only {
	case "", "l4", "l7", "latency":
	case "controlplane":
		runner = runControlPlaneOnly
	case "quic":
		runner = runQUIC // quic.go
	case "logstream":
		runner = runLogstream // logstream.go
	case "conns":
		runner = runConns // conns.go: new connections alone, with per-connection counts and profiles (netns)
	default:
		fmt.Fprintln(os.Stderr, "bench: -only: unknown figure", o.only)
		os.Exit(2)
	}
	if err := runner(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// variant is one way from the client to the applications.
type variant struct {
	name  string
	dial  bench.Dialer
	procs []*bench.Process // proxy processes whose CPU is charged to it
}

// durations of each figure's runs.
type durations struct {
	throughput, latency, saturation, conns, profile time.Duration
	maxBytes                                        int64
	idleConns                                       int
}

// setup is a topology ready for the data-path figures.
type setup struct {
	variants []variant
	idle     []*bench.Process // proxies whose RSS is read idle
	// profile profiles both ztunnels under mesh load; nil: not profiled.
	profile func(ctx context.Context, d durations) ([]profileOut, error)
	// admin fetches a path from the pprof server of each Go proxy of a
	// variant (by variant name, in the order of its procs): ztunnel's
	// admin server, the floor relays'.
	admin map[string][]adminGet
	// l7 are the variants of the HTTP figures (direct, mesh,
	// mesh+waypoint, peer, peer+haproxy); empty: not run (loopback).
	l7 []variant
	// l7Routes are mesh+waypoint with an HTTPRoute of 1 and of 100 rules
	// on the Service, run at 1000 rps only.
	l7Routes []variant
	waypoint *bench.Waypoint
	stop     func() // stops and removes everything
	describe string
}

func run(ctx context.Context, o options) error {
	if o.topology != "loopback" && o.topology != "netns" {
		return fmt.Errorf("topology %q: loopback or netns", o.topology)
	}
	raiseFileLimit()
	d := durations{throughput: 2 * time.Second, latency: 3 * time.Second, saturation: 2 * time.Second,
		conns: 2 * time.Second, profile: 4 * time.Second, maxBytes: 4 << 30, idleConns: 1000}
	if o.quick {
		d = durations{throughput: 500 * time.Millisecond, latency: time.Second, saturation: 500 * time.Millisecond,
			conns: 500 * time.Millisecond, profile: time.Second, maxBytes: 1 << 30, idleConns: 200}
		o.runs = min(o.runs, 2)
	}
	if o.only != "" {
		o.doc, o.skipCP = "", true
	}
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	if o.floor == "" {
		o.floor = filepath.Join(o.bin, "floorrelay")
		say("building the floor relay (tests/cmd/bench/floorrelay) into %s", o.floor)
		build := exec.CommandContext(ctx, "go", "build", "-o", o.floor, floorPackage)
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the proxies it is compared with
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w: %s", floorPackage, err, out)
		}
	}
	machine := bench.ReadMachine()
	started := time.Now()
	say("machine: %s", machine)
	base := randomBase()
	var s *setup
	var err error
	if o.topology == "netns" {
		say("topology: netns; building two nodes, istiod-lite in the underlay, one in-pod ztunnel per node, and 104 pods")
		s, err = setupNetns(ctx, o, 100)
		if err != nil {
			return err
		}
		say("topology: %s", s.describe)
	} else {
		s, err = setupLoopback(ctx, o, base)
		if err != nil {
			return err
		}
	}
	defer s.stop()
	r := &results{series: map[string]map[string][]float64{}}

	// Idle RSS before any traffic, after a moment to settle: for every
	// group of figures, -only l7 included (its middle proxies' row).
	time.Sleep(time.Second)
	for _, p := range s.idle {
		smp, err := p.Sample()
		if err != nil {
			return err
		}
		r.idleRSS = append(r.idleRSS, procRSS{p.Name, smp.RSS})
	}

	if o.only == "latency" {
		if err := runLatency(ctx, o, s, d, r); err != nil {
			return err
		}
	} else if o.only != "l7" {
		if err := runL4(ctx, o, s, d, r); err != nil {
			return err
		}
	}

	switch {
	case o.only == "l4", o.only == "latency":
	case len(s.l7) > 0:
		if err := runL7(ctx, o, s, d, r); err != nil {
			return fmt.Errorf("L7 figures: %w", err)
		}
	default:
		say("L7 figures (waypoint, HAProxy) skipped: they run in the netns topology (as root)")
	}

	if o.only == "" {
		say("profiling both ztunnels during a throughput run and a saturation run (%s each)", d.profile)
		r.profileDur = d.profile
		r.profiles, err = s.profile(ctx, d)
		if err != nil {
			say("profiling failed: %v", err)
		}
	}
	s.stop()

	if !o.skipCP {
		cpCfg := bench.ControlPlaneConfig{BinDir: o.bin, Dir: filepath.Join(o.out, "control-plane"),
			Addr: netip.AddrFrom4([4]byte{127, base, 200, 1})}
		if o.quick {
			cpCfg.Pods, cpCfg.Services, cpCfg.Clients, cpCfg.Changes, cpCfg.Syncs = 2000, 400, 20, 10, 2
		}
		say("control plane: istiod-lite with %s pods, %s services, %s xDS clients", orDef(cpCfg.Pods, 10000), orDef(cpCfg.Services, 2000), orDef(cpCfg.Clients, 100))
		r.cp, err = bench.RunControlPlane(ctx, cpCfg)
		if err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
	}

	var quicTable string
	if o.only == "" && o.topology == "netns" {
		say("HBONE over QUIC (mesh-quic), clean then lossy underlay")
		quicD := durations{throughput: d.throughput, latency: d.latency, maxBytes: d.maxBytes}
		if quicTable, err = measureQUIC(ctx, o, quicD); err != nil {
			say("QUIC figures failed: %v", err)
			quicTable = "Not measured: " + err.Error() + "\n"
		}
	}

	var rows []bench.Row
	var table string
	if o.only == "latency" {
		rows = r.latencyRows()
		fmt.Println()
		fmt.Print(bench.Markdown(rows, []string{"direct", "mesh", "peer", "floor"}))
		fmt.Println()
	} else if o.only != "l7" {
		rows = r.rows()
		table = bench.Markdown(rows, []string{"direct", "mesh", "peer", "floor"})
		fmt.Println()
		fmt.Print(table)
		fmt.Println()
	}
	var l7Table string
	l7Rows := r.l7Rows()
	if len(l7Rows) > 0 {
		l7Table = bench.Markdown(l7Rows, l7Columns)
		fmt.Print(l7Table)
		fmt.Println()
	}
	routeRows := r.l7RouteRows()
	if len(routeRows) > 0 {
		fmt.Print(bench.Markdown(routeRows, l7RouteColumns))
		fmt.Println()
		l7Rows = append(l7Rows, routeRows...)
	}
	var pcTable string
	if pcRows := r.perCallRows(); len(pcRows) > 0 {
		pcTable = bench.Markdown(pcRows, perCallColumns)
		fmt.Print(pcTable)
		fmt.Println()
	}
	for _, row := range append(rows, l7Rows...) {
		if row.Verdict != "" {
			fmt.Printf("%-4s %-55s %s\n", row.Verdict, row.Figure, strings.Join(row.Ratios, ", "))
		}
	}
	if o.doc != "" {
		doc := r.document(ctx, machine, started, time.Since(started), o, table, pcTable, l7Table)
		if quicTable != "" {
			doc += "\n## HBONE over QUIC (mesh-quic)\n\nA cluster of its own whose ztunnels run `" + strings.Join(quicZtunnelArgs(), " ") +
				"`: direct, mesh (HTTP/2 HBONE) and mesh-quic interleaved, 5 runs each, on a clean underlay, then with loss on it. docs/quic.md has the design and how to read each figure.\n\n" +
				quicHypotheses + "\n" + quicTable
		}
		// make soak's figures live in the same file; keep them.
		if prev, err := os.ReadFile(o.doc); err == nil {
			doc = bench.CarrySection(doc, string(prev), "soak")
		}
		if err := os.WriteFile(o.doc, []byte(doc), 0o644); err != nil {
			return err
		}
		say("wrote %s (run took %s)", o.doc, time.Since(started).Round(time.Second))
	}
	return nil
}

// runL4 measures the data-path figures of every variant (per-connection
// RSS, throughput, latency, saturation, new connections)
// and the per-request counts.
func runL4(ctx context.Context, o options, s *setup, d durations, r *results) error {
	variants := s.variants
	// Per-connection memory first, on idle processes: RSS with the
	// connections open minus RSS idle.
	say("RSS with %d open idle connections", d.idleConns)
	for _, v := range variants[1:] {
		before := rssOf(v.procs)
		cs, err := bench.IdleConns(ctx, v.dial, d.idleConns)
		if err != nil {
			return fmt.Errorf("%s: idle connections: %w", v.name, err)
		}
		time.Sleep(time.Second)
		after := rssOf(v.procs)
		for i := range v.procs {
			r.perConn = append(r.perConn, perConn{v.procs[i].Name, before[i], after[i], d.idleConns})
		}
		for _, c := range cs {
			c.Close()
		}
	}
	time.Sleep(time.Second)

	say("warming up every variant")
	for _, v := range variants {
		if _, err := bench.Throughput(ctx, v.dial, 64<<20, time.Second); err != nil {
			return fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
		if _, err := bench.ClosedLoop(ctx, v.dial, 2, 200*time.Millisecond); err != nil {
			return fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
	}

	say("single-stream throughput: %d runs × %d variants, %s or %d MiB each", o.runs, len(variants), d.throughput, d.maxBytes>>20)
	err := interleave(ctx, o.runs, variants, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res, err := bench.Throughput(ctx, v.dial, d.maxBytes, d.throughput)
		if err != nil {
			return err
		}
		r.add("throughput", v.name, res.BytesPerSecond()*8/1e9)
		gb := float64(res.Bytes) / 1e9
		for i, c := range cpuAfter(v.procs, cpu) {
			r.add(fmt.Sprintf("cpu/GB/%d", i), v.name, c.Seconds()/gb)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("throughput: %w", err)
	}

	say("1 KiB request/response at 1000 rps (open loop, 4 connections): %d runs × %d variants, %s each", o.runs, len(variants), d.latency)
	err = interleave(ctx, o.runs, variants, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res, err := bench.OpenLoop(ctx, v.dial, 4, 1000, d.latency)
		if err != nil {
			return err
		}
		addFixedRate(r, v, res, cpuAfter(v.procs, cpu))
		return nil
	})
	if err != nil {
		return fmt.Errorf("latency at 1000 rps: %w", err)
	}

	say("1 KiB request/response at saturation (closed loop, 8 connections): %d runs × %d variants, %s each", o.runs, len(variants), d.saturation)
	err = interleave(ctx, o.runs, variants, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res, err := bench.ClosedLoop(ctx, v.dial, 8, d.saturation)
		if err != nil {
			return err
		}
		addLatency(r, "sat", v.name, res)
		r.add("sat-rps", v.name, res.RPS())
		for i, c := range cpuAfter(v.procs, cpu) {
			r.add(fmt.Sprintf("cpu/1000req-sat/%d", i), v.name, c.Seconds()/(float64(res.Requests)/1000))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("saturation: %w", err)
	}

	say("new connections per second (16 workers; connect, read 1 byte and the server's close): %d runs × %d variants, %s each", o.runs, len(variants), d.conns)
	err = interleave(ctx, o.runs, variants, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res := bench.NewConns(ctx, v.dial, 16, d.conns)
		if res.Conns == 0 {
			return fmt.Errorf("no connection succeeded (%d errors)", res.Errors)
		}
		r.add("conns", v.name, res.PerSecond())
		r.add("conn-errors", v.name, float64(res.Errors))
		r.add("conn-success", v.name, 100*float64(res.Conns)/float64(res.Conns+res.Errors))
		for i, c := range cpuAfter(v.procs, cpu) {
			r.add(fmt.Sprintf("cpu/1000conns/%d", i), v.name, c.Seconds()/(float64(res.Conns)/1000))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("new connections: %w", err)
	}
	time.Sleep(time.Second) // let closed connections drain

	if err := measurePerCall(ctx, o, s, d, r); err != nil {
		say("per-request counts failed: %v", err)
		r.perCallErr = err.Error()
	}
	return nil
}

func setupLoopback(ctx context.Context, o options, base byte) (s *setup, err error) {
	meshCfg := bench.MeshConfig{BinDir: o.bin, Dir: filepath.Join(o.out, "mesh"), Base: base}
	server := meshCfg.Addr(2, 10)
	say("topology: loopback, pods in 127.%d.0.0/16; server pod %s (node-b), client pod %s (node-a)", base, server, meshCfg.Addr(1, 10))

	apps, err := bench.StartApps(server.String())
	if err != nil {
		return nil, fmt.Errorf("applications: %w", err)
	}
	say("starting istiod-lite and two ztunnels (separate processes) with 100 pods on node-a")
	mesh, err := bench.StartMesh(ctx, meshCfg)
	if err != nil {
		apps.Close()
		return nil, err
	}
	say("mesh ready in %s", mesh.Started.Round(time.Millisecond))
	say("starting the stunnel4 pair (TLS 1.3, mutual auth, ECDSA P-256)")
	peer, err := bench.StartPeer(ctx, bench.PeerConfig{Stunnel: o.stunnel, Dir: filepath.Join(o.out, "peer"),
		Client: meshCfg.Addr(3, 1), Server: meshCfg.Addr(3, 2), Backend: server})
	if err != nil {
		mesh.Stop()
		apps.Close()
		return nil, err
	}
	say("starting the floor relays (plain TCP relays in Go)")
	floor, err := bench.StartFloor(ctx, bench.FloorConfig{Bin: o.floor, Dir: filepath.Join(o.out, "floor"),
		Client: meshCfg.Addr(4, 1), Server: meshCfg.Addr(4, 2), Backend: server})
	if err != nil {
		peer.Stop()
		mesh.Stop()
		apps.Close()
		return nil, err
	}
	adminOf := func(addr string) adminGet {
		return func(ctx context.Context, path string) ([]byte, error) { return fetch(ctx, "http://"+addr+path) }
	}
	return &setup{
		variants: []variant{
			{"direct", mesh.DirectDial, nil},
			{"mesh", mesh.Dial, []*bench.Process{mesh.ZtA, mesh.ZtB}},
			{"peer", peer.Dial, []*bench.Process{peer.Client, peer.Server}},
			{"floor", floor.Dial, []*bench.Process{floor.Client, floor.Server}},
		},
		idle: []*bench.Process{mesh.ZtA, mesh.ZtB, mesh.Istiod, peer.Client, peer.Server, floor.Client, floor.Server},
		profile: func(ctx context.Context, d durations) ([]profileOut, error) {
			return profile(ctx, o, mesh, d)
		},
		admin: map[string][]adminGet{
			"mesh":  {adminOf(mesh.AdminA), adminOf(mesh.AdminB)},
			"floor": {floor.AdminClient, floor.AdminServer},
		},
		stop: func() {
			floor.Stop()
			mesh.Stop()
			peer.Stop()
			apps.Close()
		},
		describe: fmt.Sprintf("loopback, pods in 127.%d.0.0/16", base),
	}, nil
}

// floorPackage is the floor variant's relay.
const floorPackage = "github.com/ambient-go/mesh/tests/cmd/bench/floorrelay"

// adminGet fetches a path from a proxy's pprof server.
type adminGet func(ctx context.Context, path string) ([]byte, error)

func orDef(v, d int) string {
	if v == 0 {
		v = d
	}
	return fmt.Sprintf("%d", v)
}

// interleave runs f for every variant in turn, runs times over.
func interleave(ctx context.Context, runs int, vs []variant, f func(variant) error) error {
	for range runs {
		for _, v := range vs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := f(v); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	return nil
}

func cpuBefore(ps []*bench.Process) []time.Duration {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		out[i], _ = p.CPU()
	}
	return out
}

func cpuAfter(ps []*bench.Process, before []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		c, _ := p.CPU()
		out[i] = c - before[i]
	}
	return out
}

func rssOf(ps []*bench.Process) []int64 {
	out := make([]int64, len(ps))
	for i, p := range ps {
		s, _ := p.Sample()
		out[i] = s.RSS
	}
	return out
}

func addLatency(r *results, key, v string, res bench.LoadResult) {
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	r.add(key+"-p50", v, us(res.P50))
	r.add(key+"-p90", v, us(res.P90))
	r.add(key+"-p99", v, us(res.P99))
}

// profile takes a CPU profile of both ztunnels (their admin
// /debug/pprof/profile) during a mesh throughput run and during a mesh
// saturation run, and summarises each with go tool pprof -top.
func profile(ctx context.Context, o options, mesh *bench.Mesh, d durations) ([]profileOut, error) {
	get := map[string]func(ctx context.Context, path string) ([]byte, error){}
	for node, admin := range map[string]string{"node-a": mesh.AdminA, "node-b": mesh.AdminB} {
		get[node] = func(ctx context.Context, path string) ([]byte, error) {
			return fetch(ctx, "http://"+admin+path)
		}
	}
	return profileWith(ctx, o, mesh.Dial, d, get)
}

// profileWith is profile with the mesh reached by dial and each node's
// admin server by get.
func profileWith(ctx context.Context, o options, dial bench.Dialer, d durations, get map[string]func(ctx context.Context, path string) ([]byte, error)) ([]profileOut, error) {
	var outs []profileOut
	secs := int(d.profile.Seconds())
	for _, load := range []struct {
		name string
		run  func() error
	}{
		{"throughput", func() error {
			_, err := bench.Throughput(ctx, dial, math.MaxInt64, d.profile-200*time.Millisecond)
			return err
		}},
		{"saturation", func() error {
			_, err := bench.ClosedLoop(ctx, dial, 8, d.profile-200*time.Millisecond)
			return err
		}},
	} {
		type got struct {
			node, file string
			err        error
		}
		ch := make(chan got, len(get))
		for node, g := range get {
			go func() {
				file := filepath.Join(o.out, fmt.Sprintf("ztunnel-%s-%s.pprof", node, load.name))
				b, err := g(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs))
				if err == nil {
					err = os.WriteFile(file, b, 0o644)
				}
				ch <- got{node, file, err}
			}()
		}
		time.Sleep(100 * time.Millisecond)
		if err := load.run(); err != nil {
			return outs, fmt.Errorf("%s: %w", load.name, err)
		}
		for range get {
			g := <-ch
			if g.err != nil {
				return outs, g.err
			}
			top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=18", filepath.Join(o.bin, "ztunnel"), g.file).Output()
			if err != nil {
				return outs, fmt.Errorf("go tool pprof %s: %w", g.file, err)
			}
			shares, err := profileShares(ctx, filepath.Join(o.bin, "ztunnel"), g.file)
			if err != nil {
				return outs, err
			}
			outs = append(outs, profileOut{load: load.name, node: g.node, file: g.file, top: string(top), shares: shares})
		}
	}
	return outs, nil
}

func fetch(ctx context.Context, url string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// randomBase picks X of 127.X.0.0/16 so as not to collide with the
// harness (30..229 too, but per process) or the demo (127.10).
func randomBase() byte {
	n, _ := rand.Int(rand.Reader, big.NewInt(190))
	return byte(30 + n.Int64())
}

// raiseFileLimit lifts the soft limit on open files to the hard limit;
// children (stunnel) inherit it, for the 1,000 idle connections.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
