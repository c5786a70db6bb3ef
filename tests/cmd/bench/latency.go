package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

// runLatency measures only the figures at 1000 rps (-only latency): the
// open loop's latency and each proxy's CPU per 1000 requests, as runL4
// does after the same warm-up, plus how many requests overlapped another
// and the latency of those that did not. For iterating on those figures
// in runs of a minute.
func runLatency(ctx context.Context, o options, s *setup, d durations, r *results) error {
	say("warming up every variant")
	for _, v := range s.variants {
		if _, err := bench.Throughput(ctx, v.dial, 64<<20, time.Second); err != nil {
			return fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
		if _, err := bench.ClosedLoop(ctx, v.dial, 2, 200*time.Millisecond); err != nil {
			return fmt.Errorf("%s: warm-up: %w", v.name, err)
		}
	}
	say("1 KiB request/response at 1000 rps (open loop, 4 connections): %d runs × %d variants, %s each", o.runs, len(s.variants), d.latency)
	runs := map[string]int{}
	err := interleave(ctx, o.runs, s.variants, func(v variant) error {
		runs[v.name]++
		var fetched func() error
		if o.adminFetch != "" && runs[v.name] == o.runs {
			fetched = fetchDuring(ctx, o, v.name, s.admin[v.name])
		}
		cpu := cpuBefore(v.procs)
		res, err := bench.OpenLoop(ctx, v.dial, 4, 1000, d.latency)
		if fetched != nil {
			if err := fetched(); err != nil {
				say("%s: fetching %s: %v", v.name, o.adminFetch, err)
			}
		}
		if err != nil {
			return err
		}
		addLatency(r, "solo", v.name, bench.LoadResult{Latencies: res.Solo})
		r.add("overlapped", v.name, 100*float64(res.Overlapped)/float64(res.Requests))
		addFixedRate(r, v, res, cpuAfter(v.procs, cpu))
		return nil
	})
	if err != nil {
		return fmt.Errorf("latency at 1000 rps: %w", err)
	}
	return nil
}

// fetchDuring starts fetching o.adminFetch from each of gets (a variant's
// Go proxies) and returns a func that waits for them and saves each
// answer in o.out as <variant>-<i>.out.
func fetchDuring(ctx context.Context, o options, name string, gets []adminGet) func() error {
	wait := fetchAdmin(ctx, gets, o.adminFetch, func(i int) string {
		return filepath.Join(o.out, fmt.Sprintf("%s-%d.out", name, i))
	})
	return func() error {
		var all []error
		for i := range gets {
			_, err := wait(i)
			all = append(all, err)
		}
		return errors.Join(all...)
	}
}

// latencyRows are the rows of -only latency: the main table's rows at
// 1000 rps, the overlap and the latency of requests that overlapped no
// other.
func (r *results) latencyRows() []bench.Row {
	var rows []bench.Row
	for _, row := range r.rows() {
		if strings.Contains(row.Figure, "at 1000 rps") || strings.Contains(row.Figure, "lateness") {
			rows = append(rows, row)
		}
	}
	rows = append(rows, bench.Row{Figure: "requests that overlapped another", Unit: "%", Values: r.medians("overlapped")})
	for _, p := range []string{"p50", "p99"} {
		vals := r.medians("solo-" + p)
		added := vals["mesh"] - vals["direct"]
		peerAdded, floorAdded := vals["peer"]-vals["direct"], vals["floor"]-vals["direct"]
		rows = append(rows, bench.Row{
			Figure: "latency " + p + " of requests that overlapped no other", Unit: "µs", Values: vals,
			Ratios: []string{fmt.Sprintf("added: mesh %+.0f µs, peer %+.0f µs, floor %+.0f µs", added, peerAdded, floorAdded),
				ratio("added mesh/peer", added, peerAdded), ratio("added mesh/floor", added, floorAdded)},
		})
	}
	return rows
}

// addFixedRate records a 1000 rps run's latency, the generator's lateness
// and each proxy's CPU per 1000 requests (cpu: cpuAfter's).
func addFixedRate(r *results, v variant, res bench.LoadResult, cpu []time.Duration) {
	addLatency(r, "fixed", v.name, res)
	r.add("late", v.name, float64(res.Late)/1e3)
	for i, c := range cpu {
		r.add(fmt.Sprintf("cpu/1000req/%d", i), v.name, c.Seconds()/(float64(res.Requests)/1000))
	}
}
