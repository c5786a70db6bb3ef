package soak

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/bench"
)

// Resource limits: a figure at the end may exceed its value after
// warm-up by 10 % plus this slack. The slack covers what one sample of a
// process under load varies by without any leak: a few connections in
// flight more or less (each is a handful of goroutines and two or three
// descriptors), and the Go heap's growth before the next GC cycle.
const (
	rssSlack       = 8 << 20
	goroutineSlack = 20
	fdSlack        = 10
	resourceGrowth = 0.10
)

func within(base, end, slack int64) bool {
	return float64(end) <= float64(base)*(1+resourceGrowth)+float64(slack)
}

// report checks what the run saw, logs the tables and, with SOAK_REPORT,
// writes them as Markdown.
func (sk *soak) report(ran time.Duration, base, final map[string]usage) {
	t := sk.t
	ok, fails, wrong, skippedShort := sk.tr.snapshot()
	byFault, errorsBy, outside := sk.attribute(fails)
	runEnd := time.Now()
	sk.checkSwaps(runEnd)
	sk.checkBlocks()

	var b bytes.Buffer
	fmt.Fprintf(&b, "### Traffic\n\n| traffic | succeeded | failed | inside fault windows | outside |\n|---|---:|---:|---:|---:|\n")
	outsideBy := map[string]int{}
	for _, f := range outside {
		outsideBy[f.kind]++
	}
	failedBy := map[string]int{}
	for _, f := range fails {
		failedBy[f.kind]++
	}
	for _, k := range kinds {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d |\n", k, ok[k], failedBy[k], failedBy[k]-outsideBy[k], outsideBy[k])
	}
	fmt.Fprintf(&b, "\nShort connections not started because %d were in flight: %d. Answers from a pod that no longer held the address: %d.\n",
		maxShortInFlight, skippedShort, len(wrong))

	fmt.Fprintf(&b, "\n### Faults\n\n| fault | times | skipped | window (total) | grace | failures inside (by traffic) | errors seen (first 3 kinds) |\n|---|---:|---:|---:|---:|---|---|\n")
	sp := specs(sk.s)
	for _, f := range faults {
		var n int
		var total time.Duration
		for _, w := range sk.windows {
			if w.fault == f {
				n++
				total += w.end.Sub(w.start)
			}
		}
		var parts []string
		for _, k := range kinds {
			if c := byFault[f][k]; c > 0 {
				parts = append(parts, fmt.Sprintf("%s: %d", strings.SplitN(k, " (", 2)[0], c))
			}
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %v | %v | %s | %s |\n", f, n, sk.skipped[f], total.Round(100*time.Millisecond), sp[f].grace,
			strings.Join(parts, ", "), shortErr(strings.Join(errorsBy[f], "; ")))
	}

	fmt.Fprintf(&b, "\n### Pod swaps (istio/ztunnel#1637)\n\n| swap | at | records after it naming the new identity: node-1 outbound | node-2 inbound | naming another |\n|---|---|---:|---:|---:|\n")
	for _, r := range sk.swapRecs {
		fmt.Fprintf(&b, "| %s → %s (%s) | %v | %d | %d | %d |\n", r.oldPod, r.newPod, r.ip, r.w.start.Sub(sk.begin).Round(time.Second),
			r.outbnd, r.inbound, len(r.wrongOu)+len(r.wrongIn))
	}

	fmt.Fprintf(&b, "\n### Blocks of 15008\n\n| at | held | packets dropped | node-1 CONNECT failures (metric) | node-1 access log records with an error (of them CONNECT) | errors logged |\n|---|---:|---:|---:|---:|---|\n")
	for _, r := range sk.blocks {
		fmt.Fprintf(&b, "| %v | %v | %d | %v | %d (%d) | %s |\n", r.w.start.Sub(sk.begin).Round(time.Second), r.w.end.Sub(r.w.start).Round(100*time.Millisecond),
			r.dropped, r.connectFailsDelta, r.errorRecords, r.connectRecords, shortErr(strings.Join(r.errors, "; ")))
	}

	rot, _ := sk.certs.rotations()
	fmt.Fprintf(&b, "\n### Certificates\n\nTTL %v; certificates renewed (beyond each identity's first), as polled every 2 s from /config_dump: node-1 %d, node-2 %d.\n",
		sk.s.CertTTL, rot["node-1"], rot["node-2"])
	for _, node := range []string{"node-1", "node-2"} {
		if rot[node] == 0 {
			t.Errorf("%s: no certificate rotation seen in %v with a TTL of %v", node, ran.Round(time.Second), sk.s.CertTTL)
		}
	}

	fmt.Fprintf(&b, "\n### Resources (after warm-up → end; median of 3 samples)\n\n| process | pid | RSS | goroutines | open fds | within 10 %% + slack |\n|---|---|---:|---:|---:|---|\n")
	for _, name := range processNames {
		s, e := base[name], final[name]
		okRes := within(s.rss, e.rss, rssSlack) && within(int64(s.goroutines), int64(e.goroutines), goroutineSlack) && within(int64(s.fds), int64(e.fds), fdSlack)
		verdict := "yes"
		if !okRes {
			verdict = "**no**"
			t.Errorf("%s: at the end RSS %s, %d goroutines, %d fds; after warm-up %s, %d, %d: more than 10 %% + (%s, %d, %d) above",
				name, mib(e.rss), e.goroutines, e.fds, mib(s.rss), s.goroutines, s.fds, mib(rssSlack), goroutineSlack, fdSlack)
		}
		pid := fmt.Sprintf("%d", s.pid)
		if e.pid != s.pid {
			pid = fmt.Sprintf("%d → %d", s.pid, e.pid)
		}
		fmt.Fprintf(&b, "| %s | %s | %s → %s | %d → %d | %d → %d | %s |\n", name, pid, mib(s.rss), mib(e.rss), s.goroutines, e.goroutines, s.fds, e.fds, verdict)
	}

	if len(outside) > 0 {
		fmt.Fprintf(&b, "\n### Failures outside the windows\n\nGrouped into spans (failures less than 2 s apart), with the errors the clients saw and the errors in the ztunnels' access logs meanwhile (node-1 outbound, node-2 inbound).\n\n")
		for _, sp := range sk.spans(outside) {
			fmt.Fprintf(&b, "- %v–%v: %d failures, to %s; clients: %s; node-1: %s; node-2: %s\n", sp.start.Sub(sk.begin).Round(100*time.Millisecond),
				sp.end.Sub(sk.begin).Round(100*time.Millisecond), sp.n, strings.Join(sp.targets, ", "),
				shortErr(strings.Join(sp.errs, "; ")), shortErr(strings.Join(sp.node1, "; ")), shortErr(strings.Join(sp.node2, "; ")))
		}
		t.Errorf("%d failures outside the fault windows (see the table)", len(outside))
	}
	// istiod-lite down stops configuration and certificates, never
	// traffic: the data plane runs on what it has.
	if n := byFault[faultIstiod]; len(n) > 0 {
		t.Errorf("failures while istiod-lite was down or just back: %v", n)
	}
	if len(wrong) > 0 {
		t.Errorf("%d answers from a pod that no longer held the address, first: %s", len(wrong), wrong[0].err)
	}
	for _, k := range kinds {
		if ok[k] == 0 {
			t.Errorf("no %s succeeded", k)
		}
	}

	var timeline bytes.Buffer
	for _, w := range sk.windows {
		fmt.Fprintf(&timeline, "- %v–%v %s %s\n", w.start.Sub(sk.begin).Round(100*time.Millisecond), w.end.Sub(sk.begin).Round(100*time.Millisecond), w.fault, w.note)
	}
	t.Logf("soak ran %v\n%s\nTimeline:\n%s", ran.Round(time.Second), b.String(), timeline.String())
	if sk.s.Report != "" {
		if err := os.WriteFile(sk.s.Report, []byte(sk.document(ran, b.String(), timeline.String())), 0o644); err != nil {
			t.Errorf("writing %s: %v", sk.s.Report, err)
		} else {
			t.Logf("wrote %s", sk.s.Report)
		}
	}
	if sk.s.PerfDoc != "" {
		sk.writePerfSection(ran, b.String())
	}
}

// writePerfSection sets the "soak" block of the performance document
// (make bench carries it over when it rewrites the file).
func (sk *soak) writePerfSection(ran time.Duration, tables string) {
	verdict := "passed"
	if sk.t.Failed() {
		verdict = "failed"
	}
	doc, err := os.ReadFile(sk.s.PerfDoc)
	if err != nil {
		sk.t.Errorf("reading %s: %v", sk.s.PerfDoc, err)
		return
	}
	body := fmt.Sprintf("## Soak (make soak)\n\nWritten by `make soak` on %s, commit %s, after %v of mixed traffic under faults "+
		"(%s; what runs and the timeline: [soak.md](soak.md)).\n\n%s",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), commit(), ran.Round(time.Second), verdict, strings.TrimLeft(tables, "\n"))
	if err := os.WriteFile(sk.s.PerfDoc, []byte(bench.ReplaceSection(string(doc), "soak", body)), 0o644); err != nil {
		sk.t.Errorf("writing %s: %v", sk.s.PerfDoc, err)
		return
	}
	sk.t.Logf("wrote the soak block of %s", sk.s.PerfDoc)
}

// document is docs/soak.md.
func (sk *soak) document(ran time.Duration, tables, timeline string) string {
	verdict := "passed"
	if sk.t.Failed() {
		verdict = "**failed** (see the tables)"
	}
	sp := specs(sk.s)
	var d bytes.Buffer
	fmt.Fprintf(&d, `# Soak test

Written by `+"`make soak`"+` (tests/soak, `+"`SOAK_DURATION=%v`"+`); do not edit by hand. `+"`make test`"+` runs a
short variant (about 80 s, each fault once) as root.

- **date**: %s
- **machine**: %s
- **commit**: %s
- **ran**: %v; result: %s

## What runs

The netns topology (tests/netns/cluster): istiod-lite as its own process in the underlay namespace, one
ztunnel per node (in-pod mode, pods added through the CNI plugin), all traffic inside 198.18.0.0/15. A
client pod on node-1 talks to three server pods on node-2 (srv-0, srv-1 and the pod swapped), round
robin: %d long streams (one ping line every %v each, the answer checked), short connections (connect,
one line, close; one every %v, at most %d in flight), and 1 KiB request/response on %d persistent
connections (%d/s in all). Each server answers with its pod's name, so an answer from a pod that no longer
holds the address is seen. Every dial and request times out after %v. Workload certificates live %v
(the ztunnels renew them half-way). The ztunnels run with their default flags: while 15008 is blocked, a
pooled HBONE connection's probe (a PING sent while CONNECTs wait on a quiet connection;
`+"`--hbone-probe-timeout`"+` 3 s) finds it dead and fails its CONNECTs with response_flags CONNECT before the
clients' timeout; new HBONE connections wait for their TCP connect (`+"`--connect-timeout`"+` 10 s), and the
record of one whose client gave up first says so.

Faults, one at a time (a fault due while another's window and grace last waits; in a long run, one that
would not end before the duration is skipped): %s

A failure counts as explained by a fault when its span (start of the dial or request → its failure)
meets the fault's window extended by the grace period, and the fault hits its target (a pod swap hits
only the swapped address). Grace periods: pod swap and handover %v (one operation timeout), istiod-lite
%v (the ztunnels' clients reconnect with back-off), 15008 blocked %v (TCP connections whose segments
were dropped retransmit with exponential back-off, so pooled HBONE connections resume up to tens of
seconds after the rule goes). Resources: RSS, goroutines and open descriptors of each process after the
warm-up (%v) and at the end (after %v without faults), each the median of 3 samples a second apart;
the end may exceed the start by 10 %% plus %s, %d goroutines, %d descriptors. A replaced process (node-2's
ztunnel after a handover, istiod-lite after a restart) is measured as its successor: its figures cover
the time since it started; node-1's ztunnel runs the whole time.

## Figures

%s
## Timeline

%s`,
		sk.s.Duration, time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), commit(), ran.Round(time.Second), verdict,
		streamsPerTarget*3, streamInterval, shortInterval, maxShortInFlight, persistentPerTarget*3, persistentTotalRate, ioTimeout, sk.s.CertTTL,
		faultList(sk.s, sp),
		sp[faultSwap].grace, sp[faultIstiod].grace, sp[faultBlock].grace, sk.s.WarmUp, sk.s.Settle, mib(rssSlack), goroutineSlack, fdSlack,
		tables, timeline)
	return d.String()
}

func faultList(s settings, sp map[string]faultSpec) string {
	var parts []string
	for _, f := range faults {
		p := sp[f]
		desc := f
		if p.hold > 0 {
			desc += fmt.Sprintf(" for %v", p.hold)
		}
		switch {
		case !s.Long:
			desc += ", once"
		case p.period > 0:
			desc += fmt.Sprintf(", every %v from %v", p.period, p.first)
		default:
			desc += fmt.Sprintf(", once at %v", p.first)
		}
		parts = append(parts, desc)
	}
	return strings.Join(parts, "; ") + "."
}

func machine() string {
	var u unix.Utsname
	kernel := "?"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average at the end " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%s, %d CPUs, %s RAM, Linux %s, %s/%s, %s%s", cpu, runtime.NumCPU(), mem, kernel, runtime.GOOS, runtime.GOARCH, runtime.Version(), load)
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// span is a run of failures outside the windows.
type span struct {
	start, end   time.Time
	n            int
	targets      []string
	errs         []string // client errors, by kind
	node1, node2 []string // access log errors meanwhile, by kind
}

// spans groups failures (any order) into runs less than 2 s apart and
// finds what the ztunnels logged meanwhile.
func (sk *soak) spans(fails []failure) []span {
	sorted := slices.Clone(fails)
	slices.SortFunc(sorted, func(a, b failure) int { return a.start.Compare(b.start) })
	var out []span
	for _, f := range sorted {
		if len(out) == 0 || f.start.After(out[len(out)-1].end.Add(2*time.Second)) {
			out = append(out, span{start: f.start, end: f.end})
		}
		sp := &out[len(out)-1]
		sp.n++
		if f.end.After(sp.end) {
			sp.end = f.end
		}
		addKind(&sp.targets, f.target.String())
		addKind(&sp.errs, errorKind(f.err))
	}
	n1 := accessRecords(sk.c.Node(1).Ztunnel(), accesslog.Outbound)
	var n2 []logRecord
	for _, z := range sk.node2 {
		n2 = append(n2, accessRecords(z, accesslog.Inbound)...)
	}
	for i := range out {
		sp := &out[i]
		for _, recs := range []struct {
			recs []logRecord
			into *[]string
		}{{n1, &sp.node1}, {n2, &sp.node2}} {
			for _, l := range recs.recs {
				if e := l.String(accesslog.KeyError); e != "" && !l.end.Before(sp.start.Add(-time.Second)) && !l.end.After(sp.end.Add(time.Second)) {
					addKind(recs.into, errorKind(e)+" ("+l.String(accesslog.KeyDstIdentity)+")")
				}
			}
		}
	}
	return out
}

// addKind adds k to a short list of distinct kinds.
func addKind(list *[]string, k string) {
	if len(*list) < 4 && !slices.Contains(*list, k) {
		*list = append(*list, k)
	}
}
