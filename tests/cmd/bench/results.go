package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

type results struct {
	// series: figure key → variant → one value per run.
	series   map[string]map[string][]float64
	idleRSS  []procRSS
	perConn  []perConn
	profiles []profileOut
	cp       *bench.ControlPlaneResult
	l7       *l7Results // nil: the L7 figures did not run
	// perCallN is the number of requests of each per-request count;
	// perCallErr why the counts failed (empty: they did not).
	perCallN   int
	perCallErr string
	profileDur time.Duration
}

type procRSS struct {
	name string
	rss  int64
}

type perConn struct {
	name          string
	before, after int64
	conns         int
}

func (p perConn) kb() float64 { return float64(p.after-p.before) / float64(p.conns) / 1024 }

type profileOut struct {
	load, node, file, top string
	shares                string // where the samples went, derived from the profile
}

func (r *results) add(key, variant string, v float64) {
	m := r.series[key]
	if m == nil {
		m = map[string][]float64{}
		r.series[key] = m
	}
	m[variant] = append(m[variant], v)
}

// med is the median of key for variant, NaN when absent.
func (r *results) med(key, variant string) float64 {
	return bench.Median(r.series[key][variant])
}

func (r *results) medians(key string) map[string]float64 {
	out := map[string]float64{}
	for v := range r.series[key] {
		out[v] = r.med(key, v)
	}
	return out
}

func ratio(name string, a, b float64) string {
	return fmt.Sprintf("%s %.2f×", name, bench.Ratio(a, b))
}

func (r *results) rows() []bench.Row {
	var rows []bench.Row
	tp := r.medians("throughput")
	mesh, direct, peer := tp["mesh"], tp["direct"], tp["peer"]
	rows = append(rows, bench.Row{
		Figure: "single-stream throughput", Unit: "Gbit/s", Values: tp,
		Ratios: []string{ratio("mesh/direct", mesh, direct), ratio("mesh/peer", mesh, peer), ratio("mesh/floor", mesh, tp["floor"]),
			ratio("peer/direct", peer, direct), ratio("floor/direct", tp["floor"], direct)},
		Target:  "mesh ≥ 1.2× peer and ≥ 0.35× direct",
		Verdict: bench.Check(bench.Ratio(mesh, peer) >= 1.2 && bench.Ratio(mesh, direct) >= 0.35),
	})
	for _, p := range []struct {
		key    string
		target bool
	}{{"p50", true}, {"p90", false}, {"p99", true}} {
		vals := r.medians("fixed-" + p.key)
		added := vals["mesh"] - vals["direct"]
		peerAdded, floorAdded := vals["peer"]-vals["direct"], vals["floor"]-vals["direct"]
		row := bench.Row{
			Figure: "1 KiB req/resp latency " + p.key + " at 1000 rps", Unit: "µs", Values: vals,
			Ratios: []string{fmt.Sprintf("added: mesh %+.0f µs, peer %+.0f µs, floor %+.0f µs", added, peerAdded, floorAdded),
				ratio("added mesh/peer", added, peerAdded), ratio("added mesh/floor", added, floorAdded)},
		}
		if p.target {
			row.Target = "mesh's added ≤ peer's and ≤ 2× floor's"
			row.Verdict = bench.Check(added <= peerAdded && added <= 2*floorAdded)
		}
		rows = append(rows, row)
	}
	rows = append(rows, bench.Row{
		Figure: "(open-loop generator's own release lateness, p99; not charged)", Unit: "µs", Values: r.medians("late"),
	})
	sat := r.medians("sat-rps")
	rows = append(rows, bench.Row{
		Figure: "1 KiB req/resp at saturation (8 conns)", Unit: "req/s", Values: sat,
		Ratios: []string{ratio("mesh/direct", sat["mesh"], sat["direct"]), ratio("mesh/peer", sat["mesh"], sat["peer"]), ratio("mesh/floor", sat["mesh"], sat["floor"])},
	})
	for _, p := range []string{"p50", "p99"} {
		vals := r.medians("sat-" + p)
		rows = append(rows, bench.Row{
			Figure: "latency " + p + " at saturation", Unit: "µs", Values: vals,
			Ratios: []string{ratio("mesh/direct", vals["mesh"], vals["direct"]), ratio("mesh/floor", vals["mesh"], vals["floor"])},
		})
	}
	cs := r.medians("conns")
	rows = append(rows, bench.Row{
		Figure: "new connections (connect, 1 B from server, server closes; 16 workers)", Unit: "conn/s", Values: cs,
		Ratios: []string{ratio("mesh/direct", cs["mesh"], cs["direct"]), ratio("mesh/peer", cs["mesh"], cs["peer"]), ratio("mesh/floor", cs["mesh"], cs["floor"])},
		Target: "mesh ≥ 0.8× direct", Verdict: bench.Check(bench.Ratio(cs["mesh"], cs["direct"]) >= 0.8),
	})
	ok := r.medians("conn-success")
	rows = append(rows, bench.Row{
		Figure: "new connections that succeeded", Unit: "%", Values: ok,
		Target: "mesh ≥ 99.9 %", Verdict: bench.Check(ok["mesh"] >= 99.9),
	})
	var connCPU [2]map[string]float64
	for i, side := range []string{"source", "destination"} {
		connCPU[i] = r.medians(fmt.Sprintf("cpu/1000conns/%d", i))
		rows = append(rows, bench.Row{
			Figure: "CPU per 1000 new connections, " + side + " proxy", Unit: "CPU-s", Values: connCPU[i],
			Ratios: []string{ratio("mesh/peer", connCPU[i]["mesh"], connCPU[i]["peer"]), ratio("mesh/floor", connCPU[i]["mesh"], connCPU[i]["floor"])},
		})
	}
	// A destination that binds the client's address for each dial pays
	// for every TIME_WAIT socket of that address (issue 9): it must cost
	// no more than twice the source.
	rows = append(rows, bench.Row{
		Figure: "CPU per new connection, destination/source proxy", Unit: "×",
		Values: map[string]float64{
			"mesh":  connCPU[1]["mesh"] / connCPU[0]["mesh"],
			"peer":  connCPU[1]["peer"] / connCPU[0]["peer"],
			"floor": connCPU[1]["floor"] / connCPU[0]["floor"],
		},
		Target: "mesh ≤ 2×", Verdict: bench.Check(connCPU[1]["mesh"] <= 2*connCPU[0]["mesh"]),
	})
	for i, side := range []string{"source", "destination"} {
		v := r.medians(fmt.Sprintf("cpu/GB/%d", i))
		rows = append(rows, bench.Row{
			Figure: "CPU per GB, " + side + " proxy", Unit: "CPU-s/GB", Values: v,
			Ratios: []string{ratio("mesh/peer", v["mesh"], v["peer"]), ratio("mesh/floor", v["mesh"], v["floor"])},
		})
	}
	for i, side := range []string{"source", "destination"} {
		v := r.medians(fmt.Sprintf("cpu/1000req/%d", i))
		rows = append(rows, bench.Row{
			Figure: "CPU per 1000 requests at 1000 rps (= vCPU per 1000 rps), " + side + " proxy", Unit: "CPU-s", Values: v,
			Ratios: []string{ratio("mesh/peer", v["mesh"], v["peer"]), ratio("mesh/floor", v["mesh"], v["floor"])},
			Target: "ztunnel ≤ stunnel", Verdict: bench.Check(v["mesh"] <= v["peer"]),
		})
	}
	for i, side := range []string{"source", "destination"} {
		v := r.medians(fmt.Sprintf("cpu/1000req-sat/%d", i))
		rows = append(rows, bench.Row{
			Figure: "CPU per 1000 requests at saturation, " + side + " proxy", Unit: "CPU-s", Values: v,
			Ratios: []string{ratio("mesh/peer", v["mesh"], v["peer"]), ratio("mesh/floor", v["mesh"], v["floor"])},
		})
	}
	rss := map[string]int64{}
	for _, p := range r.idleRSS {
		rss[p.name] = p.rss
	}
	mb := func(b int64) float64 { return float64(b) / (1 << 20) }
	// The ztunnels are node-a and node-b on loopback, node-1 and node-2 in
	// the netns topology.
	ztSrc, ztDst := "ztunnel node-a", "ztunnel node-b"
	if _, ok := rss["ztunnel node-1"]; ok {
		ztSrc, ztDst = "ztunnel node-1", "ztunnel node-2"
	}
	rows = append(rows, bench.Row{
		Figure: "RSS idle, source proxy (" + strings.TrimPrefix(ztSrc, "ztunnel ") + ": 100 local pods)", Unit: "MiB",
		Values: map[string]float64{"mesh": mb(rss[ztSrc]), "peer": mb(rss["stunnel client"]), "floor": mb(rss["floor client"])},
		Target: "ztunnel ≤ 15 MiB", Verdict: bench.Check(rss[ztSrc] <= 15<<20),
	}, bench.Row{
		Figure: "RSS idle, destination proxy (" + strings.TrimPrefix(ztDst, "ztunnel ") + ": 1 pod)", Unit: "MiB",
		Values: map[string]float64{"mesh": mb(rss[ztDst]), "peer": mb(rss["stunnel server"]), "floor": mb(rss["floor server"])},
	})
	pc := map[string]float64{}
	for _, p := range r.perConn {
		pc[p.name] = p.kb()
	}
	for _, side := range []struct{ name, zt, st, fl string }{{"source", ztSrc, "stunnel client", "floor client"}, {"destination", ztDst, "stunnel server", "floor server"}} {
		if len(pc) == 0 {
			break
		}
		rows = append(rows, bench.Row{
			Figure: "RSS per open idle connection, " + side.name + " proxy", Unit: "KiB",
			Values: map[string]float64{"mesh": pc[side.zt], "peer": pc[side.st], "floor": pc[side.fl]},
			Target: "ztunnel ≤ 40 KB", Verdict: bench.Check(pc[side.zt]*1024 <= 40e3),
		})
	}
	if cp := r.cp; cp != nil {
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		full := bench.MedianDuration(cp.FullSync)
		changeMS := func(d time.Duration) float64 {
			if len(cp.ChangeAll) == 0 {
				return math.NaN() // no change reached every client in time
			}
			return ms(d)
		}
		rows = append(rows,
			bench.Row{Figure: "control plane: full sync of a new client (applied to a state.Store)", Unit: "ms",
				Values: map[string]float64{"mesh": ms(full)}, Target: "< 1 s", Verdict: bench.Check(full < time.Second)},
			bench.Row{Figure: "control plane: one pod change (file edit) to all clients, p50", Unit: "ms",
				Values: map[string]float64{"mesh": changeMS(cp.Change.P50)}, Ratios: []string{fmt.Sprintf("%d of %d changes missed by some client within 10 s", cp.Lost, cp.Lost+len(cp.ChangeAll))}},
			bench.Row{Figure: "control plane: one pod change (file edit) to all clients, p99", Unit: "ms",
				Values: map[string]float64{"mesh": changeMS(cp.Change.P99)}, Target: "< 100 ms", Verdict: bench.Check(cp.Change.P99 < 100*time.Millisecond && cp.Lost == 0)},
			bench.Row{Figure: "control plane: istiod-lite RSS, clients connected (peak)", Unit: "MiB",
				Values: map[string]float64{"mesh": mb(cp.RSS)}, Ratios: []string{fmt.Sprintf("peak %.0f MiB", mb(cp.HWM))},
				Target: "< 300 MB", Verdict: bench.Check(float64(cp.RSS) < 300e6 && float64(cp.HWM) < 300e6)},
		)
	}
	return rows
}

func (r *results) document(ctx context.Context, m bench.Machine, started time.Time, took time.Duration, o options, table, pcTable, l7Table string) string {
	topo, variants, conns := o.topology+` — pods are 127.X.0.0/16 addresses, the two "nodes" share the
  kernel; istiod-lite, the two ztunnels and the two stunnels are separate
  processes whose CPU and RSS are read from /proc; the load generators and the
  applications run in the bench process, on the same cores.
`, `- **direct**: the client dials the server pod from the client pod's address.
- **mesh**: client → SOCKS5 listener of the client pod (local mode's stand-in
  for capture) → source ztunnel (node-a) → HBONE (HTTP/2 CONNECT over mTLS,
  TLS 1.3, ECDSA P-256, pooled) → destination ztunnel (node-b) → server.
  Node-a carries 100 ambient pods (listeners bound for each).
- **peer**: client → stunnel4 client → TLS 1.3 mutual auth (ECDSA P-256,
  TLS_AES_128_GCM_SHA256, the suite Go picks too) → stunnel4 server → server.
`+floorVariant, `  Through the mesh each connection also does the SOCKS5 handshake (one more
  round trip to the local ztunnel) and a new HBONE stream on the pooled
  HTTP/2 connection; the TLS handshake happens once per pool connection.
`
	if o.topology == "netns" {
		topo, variants, conns = netnsTopology, netnsVariants+floorVariant, netnsConns
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Performance

Measured by `+"`make bench`"+` (tests/cmd/bench, package tests/bench); this file is
rewritten by every run. Do not edit the figures by hand.

- **machine**: %s
- **software**: %s
- **date**: %s (the run took %s)
- **topology**: %s- **runs**: every figure runs the variants interleaved (direct, mesh, peer,
  floor, direct, ...), %d runs each; the table shows medians.
- **rerun**: `+"`make bench`"+` (a few minutes; the netns topology as root, loopback otherwise); quicker trial: `+"`make build && go run ./tests/cmd/bench -quick -doc '' [-topology netns]`"+`.
- **changes to the data path** and their measured ratios are recorded by
  hand in [optimisations.md](optimisations.md), not by this run.

## Variants

%s
## Results

`, m, versions(ctx, o), started.UTC().Format("2006-01-02 15:04 UTC"), took.Round(time.Second), topo, o.runs, variants)
	b.WriteString(table)
	fmt.Fprintf(&b, `
Ratios compare medians measured in the same run; "added" is a variant's
latency minus direct's, and "added mesh/floor" how many times the floor's
two plain relays the mesh adds. "—": not applicable (the direct path has
no proxy) or not measured. CPU is the on-CPU time of each proxy process over
each run in nanoseconds: its CPU-time clock (clock_gettime of
clock_getcpuclockid(pid)), every thread's time, exited threads included
(stunnel runs a thread per connection);
the source proxy is
the client node's ztunnel or the stunnel client, the destination proxy the
server node's ztunnel or the stunnel server.

How each figure is measured:

- **throughput**: one connection, 128 KiB writes for 2 s (or 4 GiB), then
  half-close; the time runs until the server confirms the byte count.
- **latency at 1000 rps**: an open-loop generator releases one 1 KiB request
  every millisecond, on schedule whatever the answers do, to the first free
  of 4 persistent connections, and measures each response from the request's
  release, so a stall also delays (and counts against) every request that
  should have been sent during it — no coordinated omission. A release is the
  scheduled time, or the moment the generator wakes when its own timer is
  late (Go timers have 1 ms granularity on an idle runtime; that lateness is
  shown in its own row and not charged to any variant). 3 s per run.
- **saturation**: 8 connections send requests back to back for 2 s; latency
  from each request's send.
- **new connections**: 16 workers connect, read one byte and the server's
  close, and close, for 2 s (the server closes first, so TIME_WAIT does not
  eat the client's ephemeral ports).
%s- **RSS per idle connection**: RSS of each proxy after opening 1,000
  connections (each checked with a 1-byte echo) minus before, divided by
  1,000. RSS idle is read after start-up, before any traffic.
`, conns)
	b.WriteString(r.perCallDocument(pcTable))
	if l7Table != "" {
		b.WriteString(r.l7Document(o, l7Table))
	}
	if cp := r.cp; cp != nil {
		fmt.Fprintf(&b, `
## Control plane

istiod-lite (a separate process, local mode) serves a directory of %d
resources (10,000 pods in files of 100, 2,000 services) to 100 simulated
ztunnels: pkg/xds delta ADS clients in the bench process, over plaintext
gRPC on loopback.

| figure | value |
|---|---:|
| resources in a full sync | %d |
| istiod-lite start to first full sync (YAML parse, model, first encode) | %s |
| 100 clients connecting at once, all synced | %s |
| full sync of one new client, applied to a state.Store (median of %d) | %s |
| one pod change (file edit) to all 100 clients: p50 / p90 / p99 / max (%d changes) | %s / %s / %s / %s |
| one pod change to each client (all client×change pairs): p50 / p99 | %s / %s |
| changes some client missed (10 s) | %d |
| istiod-lite RSS with 100 clients, idle / peak | %.0f MiB / %.0f MiB |
| istiod-lite CPU: load / 100-client sync / per change | %s / %s / %s |

A change is timed from the file's rename into place to the moment the
client's handler sees the update. It includes the watcher's 20 ms debounce
(localdir.DefaultDebounce), re-reading the changed file, the model's
incremental build (model.Builder reuses the resources of unchanged objects),
the diff, and the push to every client.
`, cp.Resources, cp.Resources, cp.Load.Round(time.Millisecond), cp.HerdSync.Round(time.Millisecond),
			len(cp.FullSync), bench.MedianDuration(cp.FullSync).Round(time.Millisecond),
			cp.Change.Count, rd(cp.Change.P50), rd(cp.Change.P90), rd(cp.Change.P99), rd(cp.Change.Max),
			rd(cp.ChangeEach.P50), rd(cp.ChangeEach.P99), cp.Lost,
			float64(cp.RSS)/(1<<20), float64(cp.HWM)/(1<<20),
			cp.CPULoad.Round(10*time.Millisecond), cp.CPUHerd.Round(10*time.Millisecond), cp.CPUPerChange.Round(time.Millisecond))
	}
	b.WriteString("\n## Data-path profile\n\n")
	if len(r.profiles) == 0 {
		b.WriteString("No profile was taken in this run.\n")
	} else {
		fmt.Fprintf(&b, `CPU profiles of each ztunnel (its admin /debug/pprof/profile) during a
mesh throughput run and a mesh saturation run of %s each (files in
%s). Shares are of each profile's samples with a matching frame (go tool
pprof -focus), so one sample can count in several.

`, r.profileDur, o.out)
		for _, p := range r.profiles {
			fmt.Fprintf(&b, "- **ztunnel %s, %s run**: %s\n", p.node, p.load, p.shares)
		}
		for _, p := range r.profiles {
			fmt.Fprintf(&b, "\n<details><summary>ztunnel %s, %s run (go tool pprof -top)</summary>\n\n```\n%s```\n</details>\n", p.node, p.load, trimTop(p.top))
		}
	}
	return b.String()
}

// floorVariant describes the floor in both topologies.
const floorVariant = `- **floor**: client → a plain TCP relay in Go where the client's ztunnel is
  (in the netns topology: inside the client pod's namespace) → plain TCP →
  a second relay where the server's ztunnel is (inside the server pod's
  namespace) → server. Each relay (tests/cmd/bench/floorrelay) accepts,
  dials, and copies both ways through a 32 KiB user-space buffer with
  half-close: no TLS, no HTTP/2, no splice(2). What the floor adds over
  direct is the cost of two user-space hops on this machine.
`

// perCallDocument is the report's per-request section.
func (r *results) perCallDocument(table string) string {
	var b strings.Builder
	b.WriteString("\n## Per request, each proxy\n\n")
	if table == "" {
		fmt.Fprintf(&b, "Not measured in this run (%s).\n", orStr(r.perCallErr, "no proxied variant"))
		return b.String()
	}
	fmt.Fprintf(&b, `What each proxy did per request during %d requests of the 1000 rps load
(1 KiB request, 1 KiB echo, %d persistent connections), counted in runs of
their own after the figures above:

- **system calls** (raw_syscalls:sys_enter) and **context switches**: perf
  stat on every thread of the process; perf's span is a little longer than
  the load, and each counter's idle rate, measured for a second just
  before, is subtracted for the difference.
- **user-space copies**: calls of runtime.memmove moving at least %d bytes
  (a perf uprobe on the Go binary, filtered in the kernel on the length
  register), in the same run; Go proxies only. Encryption in place and
  copies inlined by the compiler are not counted.
- **bytes through read/write**: /proc/<pid>/io rchar+wchar over the load;
  a plain relay moves 4 KiB per request (1 KiB read and written each way).
- **goroutine wake-ups** (Waiting→Runnable) and **goroutines created**: a
  Go execution trace from the proxy's pprof server (ztunnel's admin
  server, the floor relays' -admin) during a second load, counted between
  the load's first and last request (CLOCK_MONOTONIC, the trace's Sync
  events); Go proxies only.

`, r.perCallN, perCallConns, bench.CopyThreshold)
	b.WriteString(table)
	return b.String()
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func rd(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }

// trimTop drops pprof's header lines up to the table.
func trimTop(s string) string {
	if i := strings.Index(s, "      flat"); i >= 0 {
		if j := strings.LastIndex(s[:i], "\n"); j >= 0 {
			return s[:j+1] + s[i:]
		}
	}
	return s
}
