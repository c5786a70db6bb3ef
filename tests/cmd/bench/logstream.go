package main

// Access-log streaming (issue 13, docs/observability.md): -only logstream
// builds its own netns cluster and measures what a follower of every
// record costs the ztunnels: their CPU per 1000 requests at 1000 rps, a
// connection per request (each gives one access-log record at each end),
// without a follower and with `meshctl logs -f -A -o json` running in the
// underlay namespace and reading everything it is sent (its output
// counted, then discarded). The two variants run interleaved.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/tests/bench"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

const (
	logstreamToken    = "bench-logstream-token"
	logstreamRate     = 1000 // requests (connections) per second
	logstreamWorkers  = 32
	meshctlPackage    = "github.com/ambient-go/mesh/meshctl/cmd/meshctl"
	logstreamFollower = "follower"
	logstreamNone     = "no follower"
)

// runLogstream is -only logstream.
func runLogstream(ctx context.Context, o options) error {
	if o.topology != "netns" && os.Geteuid() != 0 {
		return errors.New("-only logstream needs the netns topology (root)")
	}
	raiseFileLimit()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	dur := 3 * time.Second
	if o.quick {
		dur = time.Second
		o.runs = min(o.runs, 2)
	}
	meshctl := filepath.Join(o.bin, "meshctl")
	if _, err := os.Stat(meshctl); err != nil {
		say("building meshctl into %s", meshctl)
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", meshctl, meshctlPackage).CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w: %s", meshctlPackage, err, out)
		}
	}

	tb, err := newBenchTB(filepath.Join(o.out, "netns-logstream"))
	if err != nil {
		return err
	}
	defer func() {
		if err := tb.close(); err != nil {
			say("netns teardown: %v", err)
		}
	}()
	var c *cluster.Cluster
	var client, server *cluster.Pod
	if err := withTB(func() error {
		c = cluster.New(tb, cluster.Options{Nodes: 2, LogLevel: "info"})
		c.Write("meshctl-tokens.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: meshctl-tokens, namespace: istio-system}\nstringData: {bench: "+logstreamToken+"}\n")
		c.Namespace("bench-mesh", ambientLabels)
		var err error
		if client, err = c.Node(1).AddPod(cluster.PodSpec{Namespace: "bench-mesh", Name: "mesh-client"}); err != nil {
			return err
		}
		server, err = c.Node(2).AddPod(cluster.PodSpec{Namespace: "bench-mesh", Name: "mesh-server"})
		return err
	}); err != nil {
		return fmt.Errorf("netns cluster: %w", err)
	}
	apps, err := bench.StartAppsWith(server.Listen, server.IP.String())
	if err != nil {
		return fmt.Errorf("applications in %s: %w", server.Key(), err)
	}
	defer apps.Close()
	root := filepath.Join(o.out, "root-cert.pem")
	if err := os.WriteFile(root, c.Istiod.RootPEM(), 0o644); err != nil {
		return err
	}
	dial := func(ctx context.Context, port uint16) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return client.Dial(ctx, "tcp", netip.AddrPortFrom(server.IP, port).String())
	}
	zt := []*bench.Process{
		bench.External("ztunnel node-1", c.Node(1).Ztunnel().Pid()),
		bench.External("ztunnel node-2", c.Node(2).Ztunnel().Pid()),
	}
	vs := []variant{{logstreamNone, dial, zt}, {logstreamFollower, dial, zt}}
	// Warm up: the pooled HBONE connection, the certificates.
	if res := pacedConns(ctx, dial, 100, time.Second); res.Errors > 0 {
		return fmt.Errorf("warm-up: %d of %d connections failed", res.Errors, res.Conns+res.Errors)
	}

	say("ztunnels' CPU per 1000 requests at %d rps (a connection each), without and with a meshctl logs -f -A -o json follower: %d runs × 2 variants, %s each", logstreamRate, o.runs, dur)
	r := &results{series: map[string]map[string][]float64{}}
	err = interleave(ctx, o.runs, vs, func(v variant) error {
		var lines *lineCounter
		if v.name == logstreamFollower {
			stop, n, err := startFollower(ctx, c, meshctl, root)
			if err != nil {
				return err
			}
			defer stop()
			lines = n
		}
		before := lines.count()
		cpu := cpuBefore(v.procs)
		res := pacedConns(ctx, v.dial, logstreamRate, dur)
		var total float64
		for _, d := range cpuAfter(v.procs, cpu) {
			total += d.Seconds()
		}
		if res.Errors > 0 {
			return fmt.Errorf("%d of %d connections failed", res.Errors, res.Conns+res.Errors)
		}
		r.add("cpu", v.name, total/float64(res.Conns)*1000)
		r.add("rate", v.name, res.PerSecond())
		if lines != nil {
			// The follower prints each record after the relay's merge
			// window (1 s): wait for the run's records to come out.
			want := before + int64(2*res.Conns)
			deadline := time.Now().Add(5 * time.Second)
			for lines.count() < want && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			r.add("streamed", v.name, float64(lines.count()-before)/float64(2*res.Conns))
		}
		return nil
	})
	if err != nil {
		return err
	}
	rows := logstreamRows(r)
	table := bench.Markdown(rows, []string{logstreamNone, logstreamFollower})
	fmt.Println()
	fmt.Print(table)
	for _, name := range []string{logstreamNone, logstreamFollower} {
		fmt.Printf("CPU-s per 1000 requests, each run, %s: %.3f\n", name, r.series["cpu"][name])
	}
	for _, row := range rows {
		if row.Verdict != "" {
			fmt.Printf("%-4s %s\n", row.Verdict, row.Figure)
		}
	}
	out := filepath.Join(o.out, "logstream.md")
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		return err
	}
	say("table written to %s", out)
	return nil
}

// logstreamRows: the CPU figure with its target, the rate achieved and
// the share of the records the follower printed.
func logstreamRows(r *results) []bench.Row {
	cpu := bench.Row{Figure: fmt.Sprintf("ztunnels' CPU per 1000 requests at %d rps (both nodes; a connection per request)", logstreamRate),
		Unit: "CPU-s", Values: r.medians("cpu")}
	ratio := bench.Ratio(cpu.Values[logstreamFollower], cpu.Values[logstreamNone])
	cpu.Ratios = []string{fmt.Sprintf("follower/none %s×", bench.FormatValue(ratio))}
	cpu.Target = "≤ 1.05× (streaming every record costs ≤ 5 % more)"
	cpu.Verdict = bench.Check(ratio <= 1.05)
	return []bench.Row{
		cpu,
		{Figure: "requests per second achieved", Unit: "req/s", Values: r.medians("rate")},
		{Figure: "records the follower printed, per record logged", Unit: "ratio", Values: r.medians("streamed")},
	}
}

// startFollower runs meshctl logs -f -A -o json in the underlay namespace,
// counting the lines it prints, and returns once both ztunnels serve its
// stream.
func startFollower(ctx context.Context, c *cluster.Cluster, meshctl, root string) (stop func(), lines *lineCounter, err error) {
	fctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(fctx, meshctl, "--istiod", c.IstiodAddr().String(), "--istiod-ca", root,
		"--istiod-token", logstreamToken, "logs", "-f", "-A", "-o", "json")
	lines = &lineCounter{}
	cmd.Stdout, cmd.Stderr = lines, os.Stderr
	if err := c.Topo.Underlay.Start(cmd); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("meshctl logs: %w", err)
	}
	re := regexp.MustCompile(`(?m)^` + logstream.WatchersName + ` (\S+)`)
	// waitWatchers waits until both ztunnels serve n log streams.
	waitWatchers := func(n float64) error {
		deadline := time.Now().Add(20 * time.Second)
		for i := 1; i <= 2; i++ {
			for {
				got, err := nodeMetric(ctx, c, i, re)
				if err == nil && got == n {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("node-%d's ztunnel does not serve %v log streams (%v, %v)", i, n, got, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		return nil
	}
	stop = func() {
		cancel()
		_ = cmd.Wait()
		if err := waitWatchers(0); err != nil {
			say("after the follower: %v", err)
		}
	}
	if err := waitWatchers(1); err != nil {
		stop()
		return nil, nil, err
	}
	return stop, lines, nil
}

func nodeMetric(ctx context.Context, c *cluster.Cluster, i int, re *regexp.Regexp) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := cluster.HTTPClient{NS: c.Node(i).NS}.Get(ctx, "http://"+cluster.MetricsAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no %s", re)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// lineCounter counts the lines written to it and discards them.
type lineCounter struct{ n atomic.Int64 }

func (l *lineCounter) Write(p []byte) (int, error) {
	var n int64
	for _, b := range p {
		if b == '\n' {
			n++
		}
	}
	l.n.Add(n)
	return len(p), nil
}

func (l *lineCounter) count() int64 {
	if l == nil {
		return 0
	}
	return l.n.Load()
}

var _ io.Writer = (*lineCounter)(nil)

// pacedConns opens connections to the greet application at rate per
// second for duration (open loop: started on schedule by a pool of
// workers), each read to the server's close.
func pacedConns(ctx context.Context, dial bench.Dialer, rate int, duration time.Duration) bench.ConnResult {
	total := int(float64(rate) * duration.Seconds())
	tokens := make(chan struct{}, logstreamWorkers)
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for range logstreamWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
				if err := greetOnce(ctx, dial); err != nil {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		tokens <- struct{}{}
	}
	close(tokens)
	wg.Wait()
	return bench.ConnResult{Conns: int(ok.Load()), Errors: int(failed.Load()), Elapsed: time.Since(start)}
}

// greetOnce is one request: a connection to the greet application, its
// byte and its close.
func greetOnce(ctx context.Context, dial bench.Dialer) error {
	c, err := dial(ctx, bench.GreetPort)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [2]byte
	n, err := io.ReadFull(c, b[:])
	if n == 1 && errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return fmt.Errorf("greet: read %d bytes: %w", n, err)
}
