package main

// Per request, what each proxy does: system calls, context switches,
// goroutine wake-ups, payload-sized copies and bytes through read/write,
// during a fixed number of requests (the 1000 rps load of the latency
// figure: 1 KiB request, 1 KiB answer, 4 connections).

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

// perCallColumns are the variants the per-request table shows.
var perCallColumns = []string{"mesh", "peer", "floor"}

// perCallRate and perCallConns are the load of the counts.
const (
	perCallRate  = 1000
	perCallConns = 4
)

// measurePerCall runs, for each proxied variant, two loads of
// perCallRate×d.latency requests: one under perf stat (system calls,
// context switches, runtime.memmove of ≥ bench.CopyThreshold bytes for Go
// binaries) with /proc/<pid>/io read around it, and one under a Go
// execution trace (Go proxies only), in separate runs so that neither
// tool's own work is counted by the other. perf's own span is longer than
// the load by its start-up and stop: the idle rate of each counter,
// measured for a second before, is subtracted for the difference.
func measurePerCall(ctx context.Context, o options, s *setup, d durations, r *results) error {
	r.perCallN = int(perCallRate * d.latency.Seconds())
	say("per-request counts: %d requests at %d rps (%d connections) under perf stat, then under a Go execution trace, per variant", r.perCallN, perCallRate, perCallConns)
	var probes []*bench.MemmoveProbe
	defer func() {
		for _, p := range probes {
			p.Remove()
		}
	}()
	for _, v := range s.variants {
		if len(v.procs) == 0 {
			continue
		}
		admin := s.admin[v.name]
		// Go proxies (those with a pprof server) get the memmove probe.
		pr := make([]*bench.MemmoveProbe, len(v.procs))
		for i, p := range v.procs {
			if i >= len(admin) {
				continue
			}
			probe, err := bench.AddMemmoveProbe(p.Pid())
			if err != nil {
				say("no memmove probe on %s (copies not counted): %v", p.Name, err)
				continue
			}
			probes = append(probes, probe)
			pr[i] = probe
		}

		// Idle rates.
		idle := make([]map[string]float64, len(v.procs))
		cs, err := startCountings(v.procs, pr)
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		time.Sleep(time.Second)
		for i, c := range cs {
			n, span, err := c.Stop()
			if err != nil {
				return fmt.Errorf("%s: idle count: %w", v.name, err)
			}
			idle[i] = map[string]float64{}
			for k, x := range n {
				idle[i][k] = x / span.Seconds()
			}
		}

		// The counted load.
		cs, err = startCountings(v.procs, pr)
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		time.Sleep(300 * time.Millisecond) // perf attached
		io0 := make([][2]int64, len(v.procs))
		for i, p := range v.procs {
			io0[i][0], io0[i][1], _ = bench.IOChars(p.Pid())
		}
		t0 := time.Now()
		res, err := bench.OpenLoop(ctx, v.dial, perCallConns, perCallRate, d.latency)
		load := time.Since(t0)
		for i, p := range v.procs {
			rc, wc, _ := bench.IOChars(p.Pid())
			r.add(fmt.Sprintf("pc-io/%d", i), v.name, float64(rc-io0[i][0]+wc-io0[i][1])/1024/float64(max(res.Requests, 1)))
		}
		for i, c := range cs {
			n, span, serr := c.Stop()
			if serr != nil {
				return fmt.Errorf("%s: perf stat: %w", v.name, serr)
			}
			if err != nil {
				continue
			}
			extra := max(0, (span - load).Seconds())
			per := func(ev string) float64 {
				return max(0, n[ev]-idle[i][ev]*extra) / float64(res.Requests)
			}
			r.add(fmt.Sprintf("pc-syscalls/%d", i), v.name, per(bench.EventSyscalls))
			r.add(fmt.Sprintf("pc-switches/%d", i), v.name, per(bench.EventSwitches))
			if pr[i] != nil {
				r.add(fmt.Sprintf("pc-copies/%d", i), v.name, per(pr[i].Event))
			}
		}
		if err != nil {
			return fmt.Errorf("%s: counted load: %w", v.name, err)
		}

		// The traced load.
		if len(admin) == 0 {
			continue
		}
		secs := int(math.Ceil(d.latency.Seconds())) + 2
		wait := fetchAdmin(ctx, admin, fmt.Sprintf("/debug/pprof/trace?seconds=%d", secs), func(i int) string {
			return filepath.Join(o.out, fmt.Sprintf("%s-%d-1000rps.trace", v.name, i))
		})
		time.Sleep(500 * time.Millisecond) // tracing started
		from := bench.Mono()
		res, err = bench.OpenLoop(ctx, v.dial, perCallConns, perCallRate, d.latency)
		to := bench.Mono()
		if err != nil {
			return fmt.Errorf("%s: traced load: %w", v.name, err)
		}
		for i := range admin {
			file, err := wait(i)
			if err != nil {
				return fmt.Errorf("%s: trace: %w", v.name, err)
			}
			tc, err := bench.CountTrace(ctx, file, from, to)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			r.add(fmt.Sprintf("pc-wakeups/%d", i), v.name, float64(tc.Wakeups)/float64(res.Requests))
			r.add(fmt.Sprintf("pc-created/%d", i), v.name, float64(tc.Created)/float64(res.Requests))
		}
	}
	return nil
}

func startCountings(procs []*bench.Process, probes []*bench.MemmoveProbe) ([]*bench.Counting, error) {
	var cs []*bench.Counting
	for i, p := range procs {
		c, err := bench.StartCounting(p.Pid(), probes[i])
		if err != nil {
			for _, c := range cs {
				c.Stop()
			}
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// perCallRows is the per-request table; none when the counts did not run.
func (r *results) perCallRows() []bench.Row {
	if len(r.series["pc-syscalls/0"]) == 0 {
		return nil
	}
	var rows []bench.Row
	for i, side := range []string{"source", "destination"} {
		for _, f := range []struct{ key, name, unit string }{
			{"pc-syscalls", "system calls", "calls"},
			{"pc-switches", "context switches", "switches"},
			{"pc-wakeups", "goroutine wake-ups (Waiting→Runnable)", "wake-ups"},
			{"pc-created", "goroutines created", "goroutines"},
			{"pc-copies", fmt.Sprintf("user-space copies of ≥ %d B (runtime.memmove)", bench.CopyThreshold), "copies"},
			{"pc-io", "bytes through read/write system calls (rchar+wchar)", "KiB"},
		} {
			v := r.medians(fmt.Sprintf("%s/%d", f.key, i))
			if len(v) == 0 {
				continue
			}
			rows = append(rows, bench.Row{
				Figure: fmt.Sprintf("%s per request, %s proxy", f.name, side), Unit: f.unit, Values: v,
				Ratios: ratios(v, "mesh/floor", "mesh", "floor", "mesh/peer", "mesh", "peer"),
			})
		}
	}
	return rows
}

// ratios prints name a/b for each (name, a, b) triple whose values are
// both present.
func ratios(v map[string]float64, triples ...string) []string {
	var out []string
	for i := 0; i+2 < len(triples); i += 3 {
		a, okA := v[triples[i+1]]
		b, okB := v[triples[i+2]]
		if okA && okB && b >= 0.05 { // a ratio to about nothing says nothing
			out = append(out, ratio(triples[i], a, b))
		}
	}
	return out
}

// fetchAdmin fetches path from every Go proxy's admin port at once (a
// trace or profile that lasts while the caller runs its load), each into
// the file named by file(i). wait(i) returns proxy i's file once written.
func fetchAdmin(ctx context.Context, admin []adminGet, path string, file func(i int) string) (wait func(i int) (string, error)) {
	errs := make([]chan error, len(admin))
	for i, get := range admin {
		errs[i] = make(chan error, 1)
		go func() {
			b, err := get(ctx, path)
			if err == nil {
				err = os.WriteFile(file(i), b, 0o644)
			}
			errs[i] <- err
		}()
	}
	return func(i int) (string, error) { return file(i), <-errs[i] }
}
