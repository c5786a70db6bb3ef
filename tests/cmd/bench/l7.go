package main

// The L7 figures (netns topology): HTTP/1.1 requests of 1 KiB answered
// with 1 KiB through the mesh with and without the waypoint, and through
// the stunnel pair with and without HAProxy in mode http, placed where the
// waypoint is. The waypoint is compared with HAProxy: the CPU of the
// middle proxy per 1000 requests, the latency each adds over its own L4
// path, and the middle proxy's memory.

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

// l7Columns are the variants of the L7 table, in order.
var l7Columns = []string{"direct", "mesh", "mesh+waypoint", "peer", "peer+haproxy"}

// l7Rates are the fixed request rates of the open-loop HTTP load.
var l7Rates = []int{1000, 3000}

// l7RouteRate is the one rate the routed variants (l7routes.go) run at.
const l7RouteRate = 1000

// l7Conns is the number of persistent HTTP/1.1 connections of each load.
const l7Conns = 8

// l7Results is what the L7 figures record besides the series.
type l7Results struct {
	counted, sent float64       // requests the waypoint counted / sent through it
	run           time.Duration // of each fixed-rate run
	profiles      []l7Profile
}

type l7Profile struct{ proc, load, file, top string }

func runL7(ctx context.Context, o options, s *setup, d durations, r *results) error {
	r.l7 = &l7Results{run: d.latency}
	say("L7: warming up the HTTP paths (%s, %s)", strings.Join(l7Columns, ", "), strings.Join(l7RouteColumns[1:], ", "))
	for _, v := range append(slices.Clone(s.l7), s.l7Routes...) {
		if _, err := bench.HTTPClosedLoop(ctx, v.dial, 2, 300*time.Millisecond); err != nil {
			return fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
	}
	before, err := s.waypoint.Requests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	record := func(key string, v variant, res bench.LoadResult, cpu []time.Duration, peak []int64) {
		addLatency(r, key, v.name, res)
		var all float64
		for i, c := range cpu {
			per := c.Seconds() / (float64(res.Requests) / 1000)
			r.add(fmt.Sprintf("%s-cpu/%d", key, i), v.name, per)
			all += per
		}
		if len(cpu) > 0 {
			r.add(key+"-cpuall", v.name, all)
		}
		for i, p := range peak {
			r.add(fmt.Sprintf("%s-rss/%d", key, i), v.name, float64(p)/(1<<20))
		}
		if slices.Contains(v.procs, s.waypoint.Proc) {
			r.l7.sent += float64(res.Requests)
		}
	}
	for _, rate := range l7Rates {
		// The routed variants run at l7RouteRate only, interleaved with
		// the others.
		vs := s.l7
		if rate == l7RouteRate {
			vs = append(slices.Clone(s.l7), s.l7Routes...)
		}
		say("L7: HTTP 1 KiB POST at %d rps (open loop, %d connections): %d runs × %d variants, %s each", rate, l7Conns, o.runs, len(vs), d.latency)
		key := fmt.Sprintf("http%d", rate)
		err := interleave(ctx, o.runs, vs, func(v variant) error {
			cpu := cpuBefore(v.procs)
			stop := bench.PeakRSS(v.procs, 100*time.Millisecond)
			res, err := bench.HTTPOpenLoop(ctx, v.dial, l7Conns, float64(rate), d.latency)
			peak := stop()
			if err != nil {
				return err
			}
			r.add(key+"-late", v.name, float64(res.Late)/1e3)
			record(key, v, res, cpuAfter(v.procs, cpu), peak)
			return nil
		})
		if err != nil {
			return fmt.Errorf("HTTP at %d rps: %w", rate, err)
		}
	}
	say("L7: HTTP 1 KiB POST at saturation (closed loop, %d connections): %d runs × %d variants, %s each", l7Conns, o.runs, len(s.l7), d.saturation)
	err = interleave(ctx, o.runs, s.l7, func(v variant) error {
		cpu := cpuBefore(v.procs)
		stop := bench.PeakRSS(v.procs, 100*time.Millisecond)
		res, err := bench.HTTPClosedLoop(ctx, v.dial, l7Conns, d.saturation)
		peak := stop()
		if err != nil {
			return err
		}
		r.add("httpsat-rps", v.name, res.RPS())
		record("httpsat", v, res, cpuAfter(v.procs, cpu), peak)
		return nil
	})
	if err != nil {
		return fmt.Errorf("HTTP at saturation: %w", err)
	}
	after, err := s.waypoint.Requests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	r.l7.counted = after - before
	if r.l7.counted < r.l7.sent {
		return fmt.Errorf("the waypoint counted %.0f requests of the %.0f sent to the Service bound to it", r.l7.counted, r.l7.sent)
	}

	// Where the middle proxies' time goes: perf, since neither has a
	// pprof endpoint.
	for _, v := range s.l7 {
		if v.name != "mesh+waypoint" && v.name != "peer+haproxy" {
			continue
		}
		mid := v.procs[len(v.procs)-1]
		say("L7: profiling %s with perf during an HTTP saturation run (%s)", mid.Name, d.profile)
		file := filepath.Join(o.out, mid.Name+"-http-saturation.perf")
		type got struct {
			top string
			err error
		}
		ch := make(chan got, 1)
		go func() {
			top, err := bench.PerfTop(ctx, mid.Pid(), d.profile, file)
			ch <- got{top, err}
		}()
		type counted struct {
			n   map[string]float64
			err error
		}
		stat := make(chan counted, 1)
		go func() {
			n, err := bench.PerfStat(ctx, mid.Pid(), d.profile, "raw_syscalls:sys_enter", "context-switches")
			stat <- counted{n, err}
		}()
		time.Sleep(200 * time.Millisecond)
		res, err := bench.HTTPClosedLoop(ctx, v.dial, l7Conns, d.profile)
		if err != nil {
			return fmt.Errorf("%s: profile load: %w", v.name, err)
		}
		// perf counts over whole seconds from its start, the load runs
		// d.profile from 200 ms later: the rate is per request of the load,
		// with requests counted over the same span.
		if c := <-stat; c.err != nil {
			say("perf stat of %s failed: %v", mid.Name, c.err)
		} else if res.Requests > 0 {
			r.add("perf-syscalls", v.name, c.n["raw_syscalls:sys_enter"]/float64(res.Requests))
			r.add("perf-cs", v.name, c.n["context-switches"]/float64(res.Requests))
		}
		g := <-ch
		if g.err != nil {
			say("perf profile of %s failed: %v", mid.Name, g.err)
			continue
		}
		r.l7.profiles = append(r.l7.profiles, l7Profile{proc: mid.Name, load: "HTTP saturation", file: file, top: g.top})

		// The same counts at 1000 rps, where the CPU target is: an idle
		// process woken for each request pays differently.
		say("L7: counting system calls and context switches of %s at 1000 rps (%s)", mid.Name, d.profile)
		stat = make(chan counted, 1)
		go func() {
			n, err := bench.PerfStat(ctx, mid.Pid(), d.profile, "raw_syscalls:sys_enter", "context-switches")
			stat <- counted{n, err}
		}()
		time.Sleep(200 * time.Millisecond)
		res, err = bench.HTTPOpenLoop(ctx, v.dial, l7Conns, 1000, d.profile)
		if err != nil {
			return fmt.Errorf("%s: profile load: %w", v.name, err)
		}
		if c := <-stat; c.err != nil {
			say("perf stat of %s failed: %v", mid.Name, c.err)
		} else if res.Requests > 0 {
			r.add("perf1000-syscalls", v.name, c.n["raw_syscalls:sys_enter"]/float64(res.Requests))
			r.add("perf1000-cs", v.name, c.n["context-switches"]/float64(res.Requests))
		}
	}
	return nil
}

// l7Rows are the L7 table's rows; none when the L7 figures did not run.
func (r *results) l7Rows() []bench.Row {
	if r.l7 == nil {
		return nil
	}
	const wp, hp = "mesh+waypoint", "peer+haproxy"
	var rows []bench.Row
	for _, rate := range l7Rates {
		key := fmt.Sprintf("http%d", rate)
		for _, p := range []string{"p50", "p90", "p99"} {
			vals := r.medians(key + "-" + p)
			wpAdd, hpAdd := vals[wp]-vals["mesh"], vals[hp]-vals["peer"]
			row := bench.Row{
				Figure: fmt.Sprintf("HTTP 1 KiB POST latency %s at %d rps", p, rate), Unit: "µs", Values: vals,
				Ratios: []string{fmt.Sprintf("waypoint %+.0f µs over mesh", wpAdd), fmt.Sprintf("HAProxy %+.0f µs over peer", hpAdd),
					ratio("added waypoint/HAProxy", wpAdd, hpAdd)},
			}
			if p == "p50" {
				row.Target = "waypoint's added p50 ≤ HAProxy's"
				row.Verdict = bench.Check(wpAdd <= hpAdd)
			}
			rows = append(rows, row)
		}
	}
	late := map[string]float64{}
	for _, rate := range l7Rates {
		for v, x := range r.medians(fmt.Sprintf("http%d-late", rate)) {
			late[v] = max(late[v], x)
		}
	}
	rows = append(rows, bench.Row{Figure: "(open-loop generator's own release lateness, p99, worst rate; not charged)", Unit: "µs", Values: late})
	sat := r.medians("httpsat-rps")
	rows = append(rows, bench.Row{
		Figure: fmt.Sprintf("HTTP 1 KiB POST at saturation (%d conns)", l7Conns), Unit: "req/s", Values: sat,
		Ratios: []string{ratio("mesh+waypoint/mesh", sat[wp], sat["mesh"]), ratio("peer+haproxy/peer", sat[hp], sat["peer"]),
			ratio("mesh+waypoint/peer+haproxy", sat[wp], sat[hp])},
	})
	for _, p := range []string{"p50", "p99"} {
		vals := r.medians("httpsat-" + p)
		rows = append(rows, bench.Row{Figure: "HTTP latency " + p + " at saturation", Unit: "µs", Values: vals,
			Ratios: []string{fmt.Sprintf("waypoint %+.0f µs over mesh", vals[wp]-vals["mesh"]), fmt.Sprintf("HAProxy %+.0f µs over peer", vals[hp]-vals["peer"])}})
	}
	loads := []struct{ key, name string }{{"http1000", "at 1000 rps"}, {"http3000", "at 3000 rps"}, {"httpsat", "at saturation"}}
	for _, l := range loads {
		v := r.medians(l.key + "-cpu/2")
		row := bench.Row{
			Figure: "CPU per 1000 requests " + l.name + ", middle proxy (waypoint, HAProxy)", Unit: "CPU-s", Values: v,
			Ratios: []string{ratio("waypoint/HAProxy", v[wp], v[hp])},
		}
		if l.key == "http1000" {
			row.Target, row.Verdict = "waypoint ≤ HAProxy", bench.Check(v[wp] <= v[hp])
		}
		rows = append(rows, row)
	}
	for _, l := range []struct{ key, name string }{{"perf1000", "at 1000 rps"}, {"perf", "at saturation"}} {
		st := r.medians(l.key + "-syscalls")
		if len(st) == 0 {
			continue
		}
		cs := r.medians(l.key + "-cs")
		rows = append(rows, bench.Row{
			Figure: "system calls per request " + l.name + ", middle proxy (perf stat, profiling run)", Unit: "calls", Values: st,
			Ratios: []string{ratio("waypoint/HAProxy", st[wp], st[hp])},
		}, bench.Row{
			Figure: "context switches per request " + l.name + ", middle proxy (perf stat, profiling run)", Unit: "switches", Values: cs,
			Ratios: []string{ratio("waypoint/HAProxy", cs[wp], cs[hp])},
		})
	}
	for i, side := range []string{"source", "destination"} {
		v := r.medians(fmt.Sprintf("http1000-cpu/%d", i))
		rows = append(rows, bench.Row{
			Figure: "CPU per 1000 requests at 1000 rps, " + side + " proxy (ztunnel, stunnel)", Unit: "CPU-s", Values: v,
			Ratios: []string{ratio("mesh/peer", v["mesh"], v["peer"]), ratio("mesh+waypoint/peer+haproxy", v[wp], v[hp])},
		})
	}
	for _, l := range loads {
		v := r.medians(l.key + "-cpuall")
		rows = append(rows, bench.Row{
			Figure: "CPU per 1000 requests " + l.name + ", all proxies of the path", Unit: "CPU-s", Values: v,
			Ratios: []string{ratio("mesh+waypoint/peer+haproxy", v[wp], v[hp]), ratio("mesh/peer", v["mesh"], v["peer"])},
		})
	}
	rss := map[string]int64{}
	for _, p := range r.idleRSS {
		rss[p.name] = p.rss
	}
	mb := func(b int64) float64 { return float64(b) / (1 << 20) }
	rows = append(rows, bench.Row{
		Figure: "RSS idle, middle proxy", Unit: "MiB",
		Values: map[string]float64{wp: mb(rss["waypoint"]), hp: mb(rss["haproxy"])},
		Target: "waypoint ≤ 40 MB", Verdict: bench.Check(rss["waypoint"] > 0 && float64(rss["waypoint"]) <= 40e6),
	})
	for _, l := range []struct{ key, name string }{{"http3000", "at 3000 rps"}, {"httpsat", "at saturation"}} {
		v := r.medians(l.key + "-rss/2")
		rows = append(rows, bench.Row{Figure: "RSS under load (peak of each run) " + l.name + ", middle proxy", Unit: "MiB", Values: v,
			Ratios: []string{ratio("waypoint/HAProxy", v[wp], v[hp])}})
	}
	return rows
}

// l7Document is the report's L7 section.
func (r *results) l7Document(o options, table string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
## L7: waypoint and HAProxy

The same HTTP load through five paths (netns topology, variants
interleaved, %d runs each, medians):

- **direct**: direct-client → direct-server's HTTP application (plain TCP).
- **mesh**: mesh-client → Service mesh-http (VIP %s, appProtocol http, no
  waypoint) → ztunnel node-1 → HBONE → ztunnel node-2 → mesh-server.
- **mesh+waypoint**: mesh-client → Service mesh-http-waypoint (VIP %s,
  labelled istio.io/use-waypoint=%s) → ztunnel node-1 → HBONE to the
  waypoint (Gateway bench-mesh/%s of class istio-waypoint, its own process
  in its own pod on node-2, istio.io/dataplane-mode=none, identity
  spiffe://cluster.local/ns/bench-mesh/sa/%s obtained with node-2's token by
  impersonation, --log-level info: one access log line per request) →
  HTTP/1.1 parsed, policy, endpoint picked → pooled HBONE → ztunnel node-2
  → mesh-server.
- **peer**: direct-client → stunnel client → TLS 1.3 mTLS → stunnel server →
  direct-server (the L4 peer of the main table, carrying HTTP).
- **peer+haproxy**: direct-client → stunnel client → TLS 1.3 mTLS →
  %s (mode http, its own process in its own pod on node-2, where the
  waypoint is; client certificate required; routes by path, use_backend
  on path_beg; one log line per request, option httplog on stdout) →
  re-encrypted TLS 1.3 with HAProxy's client certificate → stunnel server
  → direct-server.

Both middle proxies terminate mTLS, parse HTTP/1.1, pick an upstream and
originate mTLS again; both L4 paths keep their connections. HAProxy runs
with its default threads (one per core); the waypoint with Go's default
GOMAXPROCS (one per core).

`, o.runs, svcVIP, svcWaypointVIP, waypointGateway, waypointGateway, waypointGateway, bench.HAProxyVersion(o.haproxy))
	b.WriteString(table)
	fmt.Fprintf(&b, `
The "middle proxy" is the waypoint or HAProxy; the source and destination
proxies are the two ztunnels or the two stunnels; "all proxies" sums
every proxy process of the path. CPU is each process's on-CPU time over
each run in nanoseconds: its CPU-time clock (clock_gettime of
clock_getcpuclockid(pid)), every thread's time, exited threads included
(stunnel runs a thread per connection).
System calls (every
kind, raw_syscalls:sys_enter) and context switches are counted by perf stat
on the middle proxy during the profiling run (a run of its own, so perf's
overhead is not charged to the figures above). Loads: an open-loop
generator (as in the main table) releasing 1 KiB POSTs to %s at 1000 and
3000 requests per second over %d persistent HTTP/1.1 connections, %s per
run; and %d connections back to back for the saturation figures. Each
answer must be a 200 with a 1 KiB body on a kept-alive connection, or the
run fails. RSS idle is read after start-up and the check requests, before
any load; RSS under load is the largest of samples taken every 100 ms
during each run (median over the runs). The waypoint counted %.0f
requests in its istio_requests_total over the figures, for %.0f sent
through it.
`, bench.HTTPPath, l7Conns, r.l7.run, l7Conns, r.l7.counted, r.l7.sent)
	b.WriteString(r.l7RouteDocument(o))
	if len(r.l7.profiles) > 0 {
		b.WriteString("\nProfiles of the middle proxies (perf record -g -F 499 during an HTTP saturation run; perf report --children by symbol, each symbol with what it called, entries ≥ 3 %, the first 45; files in _out/bench/):\n")
		for _, p := range r.l7.profiles {
			fmt.Fprintf(&b, "\n<details><summary>%s, %s (perf report)</summary>\n\n```\n%s```\n</details>\n", p.proc, p.load, p.top)
		}
	}
	return b.String()
}
