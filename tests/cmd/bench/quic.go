package main

// HBONE over QUIC (issue 16, docs/quic.md): -only quic builds its own
// netns cluster whose ztunnels run --quic prefer for the namespace
// bench-quic only, so that three variants share the nodes and run
// interleaved: direct (plain pods), mesh (HBONE over HTTP/2 over TCP) and
// mesh-quic (HBONE over HTTP/3 over QUIC). Each figure runs on a clean
// underlay, then on a lossy one (tc netem on both nodes' underlay links:
// 1 % loss and 2 ms delay each way). -lossy makes the other runs' netns
// underlay lossy too (lossyUnderlay, called by setupNetns).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/tests/bench"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// netem is the lossy underlay: per direction, as a link with 1 % loss and
// 2 ms of delay (Debian iproute2's tc).
var netemArgs = []string{"netem", "loss", "1%", "delay", "2ms"}

var lossy bool

func init() {
	flag.BoolVar(&lossy, "lossy", false, "netns topology: every node's underlay link drops 1% and delays 2 ms (tc netem); -only quic measures both clean and lossy")
}

// quicNamespace holds mesh-quic's pods; only its pods prefer QUIC.
const quicNamespace = "bench-quic"

// quicZtunnelArgs are the ztunnel flags of the clusters that measure QUIC.
func quicZtunnelArgs() []string {
	return []string{"--quic", "prefer", "--quic-namespaces", quicNamespace}
}

// underlayMode says how the last setNetem made the underlay lossy: netem
// (loss and delay) or, on a kernel without sch_netem, nftables (loss
// only); "" when it is clean.
var underlayMode string

// setNetem adds (on) or removes the netem qdisc on every node's underlay
// link, in the underlay namespace: traffic between two nodes crosses two
// such links, one per direction. A kernel without sch_netem (CONFIG_
// NET_SCH_NETEM unset) gets the loss alone, from nftables (lossByNftables).
func setNetem(ctx context.Context, c *cluster.Cluster, on bool) error {
	if underlayMode == "nftables" {
		underlayMode = ""
		if err := lossByNftables(c, false); err != nil {
			return err
		}
	}
	tc, err := exec.LookPath("tc")
	if err != nil {
		return fmt.Errorf("tc (Debian iproute2) is needed for a lossy underlay: %w", err)
	}
	for _, n := range c.Nodes {
		args := []string{"qdisc", "del", "dev", n.UnderlayLink, "root"}
		if on {
			args = append([]string{"qdisc", "replace", "dev", n.UnderlayLink, "root"}, netemArgs...)
		}
		cmd := exec.CommandContext(ctx, tc, args...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := c.Topo.Underlay.Start(cmd); err != nil {
			return err
		}
		if err := cmd.Wait(); err != nil {
			if !on && (strings.Contains(out.String(), "No such file") || strings.Contains(out.String(), "Cannot delete qdisc with handle of zero")) {
				continue // nothing to remove
			}
			if on && strings.Contains(out.String(), "qdisc kind is unknown") {
				say("this kernel has no netem qdisc: 1%% loss from nftables, no added delay")
				underlayMode = "nftables"
				return lossByNftables(c, true)
			}
			return fmt.Errorf("tc %s: %w: %s", strings.Join(args, " "), err, out.String())
		}
	}
	underlayMode = ""
	if on {
		underlayMode = "netem"
	}
	return nil
}

// lossTable is lossByNftables' table in the underlay namespace.
const lossTable = "bench-loss"

// lossByNftables drops 1 % of the frames entering the underlay from each
// node (a netdev ingress chain per node link, numgen random), or removes
// the table.
func lossByNftables(c *cluster.Cluster, on bool) error {
	h, err := c.Topo.Underlay.Open()
	if err != nil {
		return err
	}
	defer h.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	t := nft.AddTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: lossTable})
	nft.DelTable(t)
	if on {
		t = nft.AddTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: lossTable})
		for _, n := range c.Nodes {
			ch := nft.AddChain(&nftables.Chain{Name: "in-" + n.UnderlayLink, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Device: n.UnderlayLink})
			nft.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
				&expr.Numgen{Register: 1, Modulus: 100, Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: binaryutil.NativeEndian.PutUint32(1)},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
	}
	if err := nft.Flush(); err != nil {
		return fmt.Errorf("nftables loss in the underlay: %w", err)
	}
	return nil
}

// lossyUnderlay makes c's underlay lossy when -lossy is set.
func lossyUnderlay(ctx context.Context, c *cluster.Cluster) error {
	if !lossy {
		return nil
	}
	say("lossy underlay: tc %s on every node's underlay link", strings.Join(netemArgs, " "))
	return setNetem(ctx, c, true)
}

// quicSetup is -only quic's cluster.
type quicSetup struct {
	c        *cluster.Cluster
	variants []variant
	stop     func()
}

func setupQUIC(ctx context.Context, o options) (s *quicSetup, err error) {
	tb, err := newBenchTB(filepath.Join(o.out, "netns-quic"))
	if err != nil {
		return nil, err
	}
	var stops []func()
	s = &quicSetup{stop: func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		if err := tb.close(); err != nil {
			say("netns teardown: %v", err)
		}
	}}
	defer func() {
		if err != nil {
			s.stop()
			s = nil
		}
	}()
	var pods1, pods2 []*cluster.Pod
	err = withTB(func() error {
		s.c = cluster.New(tb, cluster.Options{Nodes: 2, LogLevel: "info", ZtunnelArgs: quicZtunnelArgs()})
		s.c.Namespace("bench-direct", map[string]string{})
		s.c.Namespace("bench-mesh", ambientLabels)
		s.c.Namespace(quicNamespace, ambientLabels)
		var err error
		if pods1, err = s.c.Node(1).AddPods([]cluster.PodSpec{
			{Namespace: "bench-direct", Name: "direct-client"},
			{Namespace: "bench-mesh", Name: "mesh-client"},
			{Namespace: quicNamespace, Name: "quic-client"},
		}); err != nil {
			return err
		}
		pods2, err = s.c.Node(2).AddPods([]cluster.PodSpec{
			{Namespace: "bench-direct", Name: "direct-server"},
			{Namespace: "bench-mesh", Name: "mesh-server"},
			{Namespace: quicNamespace, Name: "quic-server"},
		})
		return err
	})
	if err != nil {
		return s, fmt.Errorf("netns cluster: %w", err)
	}
	for _, srv := range pods2 {
		apps, err := bench.StartAppsWith(srv.Listen, srv.IP.String())
		if err != nil {
			return s, fmt.Errorf("applications in %s: %w", srv.Key(), err)
		}
		stops = append(stops, func() { apps.Close() })
	}
	dialer := func(src *cluster.Pod, dst netip.Addr) bench.Dialer {
		return func(ctx context.Context, port uint16) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return src.Dial(ctx, "tcp", netip.AddrPortFrom(dst, port).String())
		}
	}
	zt := []*bench.Process{
		bench.External("ztunnel node-1", s.c.Node(1).Ztunnel().Pid()),
		bench.External("ztunnel node-2", s.c.Node(2).Ztunnel().Pid()),
	}
	s.variants = []variant{
		{"direct", dialer(pods1[0], pods2[0].IP), nil},
		{"mesh", dialer(pods1[1], pods2[1].IP), zt},
		{"mesh-quic", dialer(pods1[2], pods2[2].IP), zt},
	}
	return s, nil
}

// runQUIC is -only quic: the figures of docs/quic.md, clean then lossy.
func runQUIC(ctx context.Context, o options) error {
	if o.topology != "netns" && os.Geteuid() != 0 {
		return errors.New("-only quic needs the netns topology (root)")
	}
	raiseFileLimit()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	d := durations{throughput: 2 * time.Second, latency: 3 * time.Second, maxBytes: 4 << 30}
	if o.quick {
		d = durations{throughput: 500 * time.Millisecond, latency: time.Second, maxBytes: 1 << 30}
		o.runs = min(o.runs, 2)
	}
	table, err := measureQUIC(ctx, o, d)
	if err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(table)
	out := filepath.Join(o.out, "quic.md")
	if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
		return err
	}
	say("table written to %s (docs/quic.md says how to read it)", out)
	return nil
}

// measureQUIC runs the QUIC figures on a cluster of their own, clean then
// lossy, and returns their table.
func measureQUIC(ctx context.Context, o options, d durations) (string, error) {
	say("HBONE over QUIC: a netns cluster whose ztunnels run %s", strings.Join(quicZtunnelArgs(), " "))
	s, err := setupQUIC(ctx, o)
	if err != nil {
		return "", err
	}
	defer s.stop()
	r := &results{series: map[string]map[string][]float64{}}
	var lossyMode string
	names := []string{"direct", "mesh", "mesh-quic"}
	for _, phase := range []string{"clean", "lossy"} {
		if phase == "lossy" {
			say("lossy underlay: tc %s on every node's underlay link", strings.Join(netemArgs, " "))
			if err := setNetem(ctx, s.c, true); err != nil {
				return "", err
			}
		}
		if phase == "lossy" {
			lossyMode = map[string]string{"netem": "tc " + strings.Join(netemArgs, " ") + " per direction",
				"nftables": "1% loss per direction by nftables (no netem in this kernel), no added delay"}[underlayMode]
		}
		if err := quicFigures(ctx, o, d, s.variants, r, phase); err != nil {
			return "", fmt.Errorf("%s underlay: %w", phase, err)
		}
	}
	if err := setNetem(ctx, s.c, false); err != nil {
		say("removing netem: %v", err)
	}
	return bench.Markdown(quicRows(r), names) + "\nlossy underlay: " + lossyMode + "\n", nil
}

// quicHypotheses are docs/quic.md's expectations, written before the
// figures were first measured; make bench prints them above the figures
// they are to be checked against.
const quicHypotheses = `Hypotheses (docs/quic.md, written before the first measurement), to read
against the table:

1. Loss: small requests sharing a pooled connection with a bulk transfer
   see a p99 over QUIC ≤ 0.5× that of HTTP/2 over TCP (a lost TCP segment
   stalls every tunnel of the connection, a lost QUIC packet one stream).
   The target row.
2. No loss: small requests about equal or slightly slower over QUIC.
3. Throughput and CPU per GB: QUIC slower and 2–4× the CPU per GB
   (user-space packets of ~1.4 KB against TCP's offloads): where QUIC loses.
4. Single stream under loss: both suffer; QUIC may keep more of its
   throughput, but its lower ceiling may dominate.
`

// quicFigures measures one phase: single-stream throughput and ztunnel CPU
// per GB; 1 KiB request/response at 1000 rps; and the same requests at
// 200 rps while a bulk transfer shares their pooled HBONE connection (the
// same client pod to the same server pod: one pool key).
func quicFigures(ctx context.Context, o options, d durations, vs []variant, r *results, phase string) error {
	key := func(f string) string { return phase + "/" + f }
	say("[%s] single-stream throughput: %d runs × %d variants", phase, o.runs, len(vs))
	if err := interleave(ctx, o.runs, vs, func(v variant) error {
		cpu := cpuBefore(v.procs)
		res, err := bench.Throughput(ctx, v.dial, d.maxBytes, d.throughput)
		if err != nil {
			return err
		}
		r.add(key("throughput"), v.name, res.BytesPerSecond()*8/1e9)
		gb := float64(res.Bytes) / 1e9
		var total float64
		for _, c := range cpuAfter(v.procs, cpu) {
			total += c.Seconds()
		}
		if len(v.procs) > 0 {
			r.add(key("cpu/GB"), v.name, total/gb)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("throughput: %w", err)
	}

	say("[%s] 1 KiB request/response at 1000 rps (4 connections): %d runs × %d variants", phase, o.runs, len(vs))
	if err := interleave(ctx, o.runs, vs, func(v variant) error {
		res, err := bench.OpenLoop(ctx, v.dial, 4, 1000, d.latency)
		if err != nil {
			return err
		}
		addLatency(r, key("rr"), v.name, res)
		return nil
	}); err != nil {
		return fmt.Errorf("request/response: %w", err)
	}

	say("[%s] 1 KiB request/response at 200 rps beside a bulk transfer on the same pooled connection: %d runs × %d variants", phase, o.runs, len(vs))
	if err := interleave(ctx, o.runs, vs, func(v variant) error {
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		bulk := make(chan error, 1)
		go func() {
			_, err := bench.Throughput(bctx, v.dial, d.maxBytes, d.latency+time.Second)
			bulk <- err
		}()
		time.Sleep(300 * time.Millisecond) // the transfer fills the windows first
		res, err := bench.OpenLoop(ctx, v.dial, 4, 200, d.latency)
		if berr := <-bulk; berr != nil && err == nil {
			err = fmt.Errorf("bulk transfer: %w", berr)
		}
		if err != nil {
			return err
		}
		addLatency(r, key("hol"), v.name, res)
		return nil
	}); err != nil {
		return fmt.Errorf("requests beside a bulk transfer: %w", err)
	}
	return nil
}

// quicRows are the table of -only quic, medians per variant, with the
// ratio mesh-quic/mesh and the target for the lossy p99.
func quicRows(r *results) []bench.Row {
	var rows []bench.Row
	for _, phase := range []string{"clean", "lossy"} {
		for _, f := range []struct{ key, figure, unit string }{
			{"throughput", "single-stream throughput", "Gbit/s"},
			{"cpu/GB", "ztunnels' CPU per GB (both nodes)", "s/GB"},
			{"rr-p50", "1 KiB at 1000 rps, p50", "µs"},
			{"rr-p99", "1 KiB at 1000 rps, p99", "µs"},
			{"hol-p50", "1 KiB at 200 rps beside a bulk transfer, p50", "µs"},
			{"hol-p99", "1 KiB at 200 rps beside a bulk transfer, p99", "µs"},
		} {
			k := phase + "/" + f.key
			row := bench.Row{Figure: phase + ": " + f.figure, Unit: f.unit, Values: map[string]float64{}}
			for _, v := range []string{"direct", "mesh", "mesh-quic"} {
				row.Values[v] = r.med(k, v)
			}
			ratio := bench.Ratio(row.Values["mesh-quic"], row.Values["mesh"])
			row.Ratios = []string{fmt.Sprintf("mesh-quic/mesh %s×", bench.FormatValue(ratio))}
			if phase == "lossy" && f.key == "hol-p99" {
				row.Target = "mesh-quic ≤ 0.5× mesh"
				row.Verdict = bench.Check(ratio <= 0.5)
			}
			rows = append(rows, row)
		}
	}
	return rows
}
