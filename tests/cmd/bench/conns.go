package main

// -only conns (netns topology): the new-connections figure alone, then
// what each proxy does per new connection: system calls and context
// switches (perf stat), goroutine wake-ups and creations (a Go execution
// trace), the system calls by name (strace -c -f), and a CPU profile of
// both ztunnels (pprof) and of the destination ztunnel with kernel stacks
// (perf record), all during the same kind of load as the figure.

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
)

// connsWorkers is the figure's number of connecting workers.
const connsWorkers = 16

func runConns(ctx context.Context, o options) error {
	if o.topology != "netns" {
		return fmt.Errorf("-only conns: needs -topology netns")
	}
	raiseFileLimit()
	dur, countDur := 2*time.Second, 2*time.Second
	if o.quick {
		dur = 500 * time.Millisecond
	}
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	if o.floor == "" {
		o.floor = filepath.Join(o.bin, "floorrelay")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.floor, floorPackage)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w: %s", floorPackage, err, out)
		}
	}
	say("machine: %s", bench.ReadMachine())
	s, err := setupNetns(ctx, o, 100)
	if err != nil {
		return err
	}
	defer s.stop()
	r := &results{series: map[string]map[string][]float64{}}

	say("warming up every variant")
	for _, v := range s.variants {
		bench.NewConns(ctx, v.dial, connsWorkers, 300*time.Millisecond)
	}
	say("new connections per second (%d workers): %d runs × %d variants, %s each", connsWorkers, o.runs, len(s.variants), dur)
	err = interleave(ctx, o.runs, s.variants, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res := bench.NewConns(ctx, v.dial, connsWorkers, dur)
		if res.Conns == 0 {
			return fmt.Errorf("no connection succeeded (%d errors)", res.Errors)
		}
		r.add("conns", v.name, res.PerSecond())
		r.add("conn-errors", v.name, float64(res.Errors))
		for i, c := range cpuAfter(v.procs, cpu) {
			r.add(fmt.Sprintf("cpu/1000conns/%d", i), v.name, c.Seconds()/(float64(res.Conns)/1000))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("new connections: %w", err)
	}
	cs := r.series["conns"]
	fmt.Println()
	for _, v := range s.variants {
		fmt.Printf("%-7s conn/s median %7.0f  runs %v  errors %v", v.name, r.med("conns", v.name), rounded(cs[v.name]), r.series["conn-errors"][v.name])
		for i := range v.procs {
			fmt.Printf("  cpu-s/1000 #%d %.3f", i, r.med(fmt.Sprintf("cpu/1000conns/%d", i), v.name))
		}
		fmt.Println()
	}
	m := r.medians("conns")
	fmt.Printf("mesh/direct %.2f×  mesh/floor %.2f×  floor/direct %.2f×\n\n", m["mesh"]/m["direct"], m["mesh"]/m["floor"], m["floor"]/m["direct"])

	for _, v := range s.variants {
		if len(v.procs) == 0 || (v.name != "mesh" && v.name != "floor") {
			continue
		}
		if err := connCounts(ctx, o, s, v, countDur); err != nil {
			say("%s: per-connection counts failed: %v", v.name, err)
		}
	}
	return nil
}

func rounded(xs []float64) []float64 {
	out := slices.Clone(xs)
	for i, x := range out {
		out[i] = math.Round(x)
	}
	return out
}

// connCounts prints, per new connection of variant v, each proxy's
// system calls and context switches (perf stat), goroutine wake-ups and
// creations (execution trace, Go proxies), system calls by name (strace),
// and the CPU profiles (pprof, and perf with kernel stacks).
func connCounts(ctx context.Context, o options, s *setup, v variant, d time.Duration) error {
	say("%s: per new connection, %d workers for %s under each tool", v.name, connsWorkers, d)
	// perf stat.
	cs, err := startCountings(v.procs, make([]*bench.MemmoveProbe, len(v.procs)))
	if err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	res := bench.NewConns(ctx, v.dial, connsWorkers, d)
	load := time.Since(t0)
	for i, c := range cs {
		n, span, err := c.Stop()
		if err != nil {
			return err
		}
		// perf counted a little longer than the load: near-idle time.
		_ = span
		fmt.Printf("%s #%d (%s): %d conns in %s: %.1f syscalls, %.2f context switches per connection\n",
			v.name, i, v.procs[i].Name, res.Conns, load.Round(time.Millisecond),
			n[bench.EventSyscalls]/float64(res.Conns), n[bench.EventSwitches]/float64(res.Conns))
	}

	// Execution trace and CPU profile (Go proxies with a pprof server).
	admin := s.admin[v.name]
	for _, kind := range []string{"trace", "profile"} {
		if len(admin) == 0 {
			break
		}
		secs := int(math.Ceil(d.Seconds())) + 1
		wait := fetchAdmin(ctx, admin, fmt.Sprintf("/debug/pprof/%s?seconds=%d", kind, secs), func(i int) string {
			return filepath.Join(o.out, fmt.Sprintf("%s-%d-conns.%s", v.name, i, kind))
		})
		time.Sleep(300 * time.Millisecond)
		from := bench.Mono()
		res := bench.NewConns(ctx, v.dial, connsWorkers, d)
		to := bench.Mono()
		for i := range admin {
			file, err := wait(i)
			if err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			if kind == "trace" {
				tc, err := bench.CountTrace(ctx, file, from, to)
				if err != nil {
					return err
				}
				fmt.Printf("%s #%d: %.2f goroutine wake-ups, %.2f goroutines created per connection (%d conns)\n",
					v.name, i, float64(tc.Wakeups)/float64(res.Conns), float64(tc.Created)/float64(res.Conns), res.Conns)
				continue
			}
			bin := filepath.Join(o.bin, "ztunnel")
			if v.name == "floor" {
				bin = o.floor
			}
			top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=45", bin, file).Output()
			if err != nil {
				return fmt.Errorf("go tool pprof %s: %w", file, err)
			}
			fmt.Printf("%s #%d CPU profile (%d conns), %s:\n%s\n", v.name, i, res.Conns, file, top)
		}
	}

	// perf record with kernel stacks, last proxy (the destination side).
	last := v.procs[len(v.procs)-1]
	perfFile := filepath.Join(o.out, v.name+"-dst-conns.perf")
	done := make(chan struct{})
	var top string
	var perr error
	go func() {
		defer close(done)
		top, perr = bench.PerfTop(ctx, last.Pid(), d, perfFile)
	}()
	time.Sleep(300 * time.Millisecond)
	bench.NewConns(ctx, v.dial, connsWorkers, d)
	<-done
	if perr != nil {
		say("perf record: %v", perr)
	} else {
		fmt.Printf("%s destination, perf (kernel and user stacks), %s:\n%s\n", v.name, perfFile, top)
	}

	// strace -c -f: system calls by name (strace slows the proxies; the
	// counts per connection hold).
	var straces []*exec.Cmd
	var outs []string
	for i, p := range v.procs {
		f := filepath.Join(o.out, fmt.Sprintf("%s-%d-conns.strace", v.name, i))
		outs = append(outs, f)
		cmd := exec.CommandContext(ctx, "strace", "-c", "-f", "-o", f, "-p", fmt.Sprint(p.Pid()))
		if err := cmd.Start(); err != nil {
			return err
		}
		straces = append(straces, cmd)
	}
	time.Sleep(time.Second)
	res = bench.NewConns(ctx, v.dial, connsWorkers, d)
	for _, cmd := range straces {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	for i, f := range outs {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		fmt.Printf("%s #%d strace -c -f (%d conns):\n%s\n", v.name, i, res.Conns, perConnStrace(string(b), res.Conns))
	}
	return nil
}

// perConnStrace rewrites strace -c's table with a calls-per-connection
// column.
func perConnStrace(table string, conns int) string {
	var b strings.Builder
	for line := range strings.Lines(table) {
		f := strings.Fields(line)
		// % time, seconds, usecs/call, calls, [errors], syscall
		if len(f) >= 5 && f[0] != "%" && !strings.HasPrefix(f[0], "-") {
			var calls float64
			if _, err := fmt.Sscan(f[3], &calls); err == nil {
				fmt.Fprintf(&b, "%8.2f/conn  %s", calls/float64(max(conns, 1)), line)
				continue
			}
		}
		b.WriteString("              " + line)
	}
	return b.String()
}
