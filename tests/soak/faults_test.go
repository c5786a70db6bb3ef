package soak

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// Faults.
const (
	faultIstiod   = "istiod-lite stopped and restarted"
	faultSwap     = "server pod deleted, new pod (new service account) on its IP"
	faultHandover = "node-2's ztunnel handed over"
	faultBlock    = "15008 blocked on node-2 (nftables drop)"
)

var faults = []string{faultIstiod, faultSwap, faultHandover, faultBlock}

// faultSpec is how one fault runs in a short or a long run.
type faultSpec struct {
	// hold is how long the fault lasts once applied (istiod-lite down,
	// the port blocked); zero for the others, whose window is what the
	// action took.
	hold time.Duration
	// grace extends the window after its end: failures that start in it
	// are the fault's. See gracePeriods.
	grace time.Duration
	// period repeats the fault in a long run, from first on; zero: once,
	// at first. A short run has each fault once, one after the other.
	first, period time.Duration
}

// specs returns each fault's spec.
//
// Grace periods: 5 s after a pod swap or a handover (a client that saw
// its connection reset reconnects within its next tick; 5 s is the
// operations' timeout, so an operation started just before the end is
// still the fault's); 10 s after istiod-lite's restart (the ztunnels'
// xDS and CA clients reconnect with back-off); 30 s after the block of
// 15008 (TCP connections whose segments were dropped retransmit with
// exponential back-off: after a 10 s block the next retransmission may
// come ~13 s after it ends, after a minute's block ~40 s; pooled HBONE
// connections resume then, or are replaced once they fail).
func specs(s settings) map[string]faultSpec {
	if !s.Long {
		return map[string]faultSpec{
			faultIstiod:   {hold: 5 * time.Second, grace: 10 * time.Second},
			faultSwap:     {grace: 5 * time.Second},
			faultHandover: {grace: 5 * time.Second},
			faultBlock:    {hold: 10 * time.Second, grace: 30 * time.Second},
		}
	}
	return map[string]faultSpec{
		faultIstiod:   {hold: 10 * time.Second, grace: 10 * time.Second, first: 150 * time.Second, period: 5 * time.Minute},
		faultSwap:     {grace: 5 * time.Second, first: time.Minute + 20*time.Second, period: time.Minute},
		faultHandover: {grace: 5 * time.Second, first: 5*time.Minute + 40*time.Second, period: 10 * time.Minute},
		faultBlock:    {hold: time.Minute, grace: 60 * time.Second, first: s.Duration/2 - 30*time.Second},
	}
}

// window is one fault's time span and what it hit.
type window struct {
	fault string
	// scope is the target the fault hits; invalid: every target.
	scope      netip.Addr
	start, end time.Time
	grace      time.Duration
	note       string
}

// explains reports whether the window accounts for f: the same target
// (or every target), and f's span meets the window extended by its
// grace.
func (w *window) explains(f failure) bool {
	if w.scope.IsValid() && w.scope != f.target {
		return false
	}
	return !f.end.Before(w.start) && !f.start.After(w.end.Add(w.grace))
}

// event is a fault due at an offset from the start.
type event struct {
	fault string
	at    time.Duration
}

// schedule lists the faults in time order. A short run has each fault
// once, right after the warm-up; a long run repeats them on their periods.
func schedule(s settings, sp map[string]faultSpec) []event {
	if !s.Long {
		var evs []event
		for _, f := range faults {
			evs = append(evs, event{f, s.WarmUp})
		}
		return evs
	}
	var evs []event
	for _, f := range faults {
		p := sp[f]
		for at := p.first; at < s.Duration; at += p.period {
			evs = append(evs, event{f, at})
			if p.period == 0 {
				break
			}
		}
	}
	order := map[string]int{}
	for i, f := range faults {
		order[f] = i
	}
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].at != evs[j].at {
			return evs[i].at < evs[j].at
		}
		return order[evs[i].fault] < order[evs[j].fault]
	})
	return evs
}

// runFaults applies the schedule, one fault at a time: a fault due while
// the previous one's window or grace lasts waits for it to end; in a long
// run, one that would not end (with its grace and the settle time) before
// the run's duration is skipped. It returns when the final sample may be
// taken.
func (sk *soak) runFaults() time.Time {
	sp := specs(sk.s)
	deadline := sk.begin.Add(sk.s.Duration)
	free := sk.begin.Add(sk.s.WarmUp) // when the next fault may start
	for _, ev := range schedule(sk.s, sp) {
		p := sp[ev.fault]
		at := sk.begin.Add(ev.at)
		if at.Before(free) {
			at = free
		}
		if sk.s.Long && at.Add(p.hold+p.grace+10*time.Second+sk.s.Settle).After(deadline) {
			sk.skipped[ev.fault]++
			continue
		}
		sk.sleepUntil(at)
		var w *window
		switch ev.fault {
		case faultIstiod:
			w = sk.restartIstiod(p)
		case faultSwap:
			w = sk.swapPod(p)
		case faultHandover:
			w = sk.handOver(p)
		case faultBlock:
			w = sk.block(p)
		}
		w.grace = p.grace
		sk.windows = append(sk.windows, w)
		sk.t.Logf("%s: %s, %v → %v (+%v grace) %s", w.start.Sub(sk.begin).Round(time.Second), w.fault,
			w.start.Format("15:04:05.000"), w.end.Format("15:04:05.000"), w.grace, w.note)
		free = w.end.Add(w.grace)
	}
	end := free.Add(sk.s.Settle)
	if end.Before(deadline) {
		end = deadline
	}
	return end
}

// restartIstiod stops istiod-lite, waits p.hold, and starts it again on
// the same state directory (same root): the ztunnels' xDS streams and
// certificate refreshes fail meanwhile and resume after.
func (sk *soak) restartIstiod(p faultSpec) *window {
	w := &window{fault: faultIstiod, start: time.Now()}
	if err := sk.c.StopIstiod(); err != nil {
		sk.t.Errorf("stopping istiod-lite: %v", err)
	}
	time.Sleep(p.hold)
	sk.c.StartIstiod()
	w.end = time.Now()
	w.note = fmt.Sprintf("(down %v, pid %d)", p.hold, sk.c.IstiodProcess().Pid())
	return w
}

// swapRecord is one pod swap, for the identity checks.
type swapRecord struct {
	ip               netip.Addr
	oldPod, newPod   string // namespace/name
	oldID, newID     string // SPIFFE IDs
	w                *window
	inbound, outbnd  int // records after the window naming the new identity
	wrongIn, wrongOu []string
}

// swapPod deletes the pod holding swapIP (its app first, as the kubelet
// kills the containers before the sandbox goes) and creates one with
// another name and service account at the same address, then waits until
// both ztunnels know the new workload and no longer the old one.
func (sk *soak) swapPod(p faultSpec) *window {
	t := sk.t
	n1, n2 := sk.c.Node(1), sk.c.Node(2)
	old := sk.swap
	w := &window{fault: faultSwap, scope: sk.swapIP, start: time.Now()}
	sk.appsMu.Lock()
	if a := sk.apps[sk.swapIP]; a != nil {
		a.Close()
		delete(sk.apps, sk.swapIP)
	}
	sk.appsMu.Unlock()
	if err := old.Delete(); err != nil {
		t.Fatalf("deleting %s: %v", old.Key(), err)
	}
	sk.swaps++
	spec := cluster.PodSpec{Namespace: namespace, Name: fmt.Sprintf("swap-%d", sk.swaps), ServiceAccount: fmt.Sprintf("swap-sa-%d", sk.swaps)}
	// From the old pod's deletion on, only the new one may answer: named
	// before it can answer (its app answers as soon as it starts, before
	// the ztunnels' wait below ends).
	sk.tr.setName(sk.swapIP, spec.Name, time.Now())
	np, err := n2.AddPodAt(spec, sk.swapIP)
	if err != nil {
		t.Fatalf("pod %s at %s: %v", spec.Name, sk.swapIP, err)
	}
	a, err := startApp(np)
	if err != nil {
		t.Fatal(err)
	}
	sk.appsMu.Lock()
	sk.apps[sk.swapIP] = a
	sk.appsMu.Unlock()
	sk.swap = np
	for _, z := range []*cluster.Ztunnel{n1.Ztunnel(), n2.Ztunnel()} {
		if err := z.WaitWorkloads(context.Background(), 20*time.Second, []string{np.Key()}, []string{old.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	w.end = time.Now()
	sk.swapRecs = append(sk.swapRecs, swapRecord{ip: sk.swapIP, oldPod: old.Key(), newPod: np.Key(),
		oldID: identity(old.Spec.ServiceAccount), newID: identity(spec.ServiceAccount), w: w})
	w.note = fmt.Sprintf("(%s → %s at %s)", old.Spec.Name, spec.Name, sk.swapIP)
	return w
}

// handOver replaces node-2's ztunnel (Node.HandOverZtunnel).
func (sk *soak) handOver(p faultSpec) *window {
	w := &window{fault: faultHandover, start: time.Now()}
	z, h, err := sk.c.Node(2).HandOverZtunnel()
	if err != nil {
		sk.t.Fatalf("handover: %v", err)
	}
	sk.node2 = append(sk.node2, z)
	w.start, w.end = h.Started, h.Exited
	w.note = fmt.Sprintf("(ready after %v, old one exited %v after SIGTERM)", h.Ready.Sub(h.Started).Round(time.Millisecond),
		h.Exited.Sub(h.Terminated).Round(time.Millisecond))
	return w
}

// blockRecord is one block of 15008, for its checks.
type blockRecord struct {
	w                 *window
	dropped           uint64
	connectFailsDelta float64 // node-1's source-side connections closed with response_flags CONNECT
	errorRecords      int     // node-1's outbound access log records with an error in the window
	connectRecords    int     // those of them with response_flags CONNECT
	errors            []string
}

// connectFailures is node-1's count of outbound connections that could
// not be established (Istio's response flag for it).
func (sk *soak) connectFailures() float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := sk.c.Node(1).Ztunnel().Metrics(ctx)
	if err != nil {
		sk.t.Errorf("node-1 metrics: %v", err)
		return 0
	}
	v, _ := cluster.MetricSum(b, "istio_tcp_connections_closed_total", `reporter="source"`, `response_flags="CONNECT"`)
	return v
}

// block drops TCP and UDP to 15008 in node-2's namespace for p.hold: every
// HBONE connection to node-2's pods stalls or fails.
func (sk *soak) block(p faultSpec) *window {
	t := sk.t
	before := sk.connectFailures()
	w := &window{fault: faultBlock, start: time.Now()}
	b, err := blockPort(sk.c.Node(2).NS, 15008)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.remove(); err != nil {
			t.Errorf("removing the block: %v", err)
		}
	})
	time.Sleep(p.hold)
	rec := blockRecord{w: w}
	if rec.dropped, err = b.dropped(); err != nil {
		t.Errorf("reading the drop counters: %v", err)
	}
	if err := b.remove(); err != nil {
		t.Errorf("removing the block: %v", err)
	}
	w.end = time.Now()
	// Connections stalled by the block end at the clients' timeout.
	time.Sleep(min(p.grace, ioTimeout+time.Second))
	rec.connectFailsDelta = sk.connectFailures() - before
	sk.blocks = append(sk.blocks, rec)
	w.note = fmt.Sprintf("(%d packets dropped)", rec.dropped)
	return w
}

// logRecord is an access log record with its span.
type logRecord struct {
	cluster.Log
	start, end time.Time
}

// accessRecords returns the access log records ("connection complete") of
// z's logs in a direction.
func accessRecords(z *cluster.Ztunnel, direction string) []logRecord {
	var out []logRecord
	for _, l := range z.Logs() {
		if l.String("msg") != accesslog.Message || l.String(accesslog.KeyDirection) != direction {
			continue
		}
		end, err := time.Parse(time.RFC3339Nano, l.String("time"))
		if err != nil {
			continue
		}
		d, _ := time.ParseDuration(l.String(accesslog.KeyDuration))
		out = append(out, logRecord{Log: l, start: end.Add(-d), end: end})
	}
	return out
}

// checkSwaps checks the access logs after each swap: every connection to
// the reused address that started after the swap's window and grace (and
// before the next swap) names the new pod's identity as its destination,
// in node-1's outbound records and node-2's inbound ones (pooled HBONE
// connections to the old pod must not carry it: istio/ztunnel#1637), and
// there is at least one of each.
func (sk *soak) checkSwaps(runEnd time.Time) {
	out := accessRecords(sk.c.Node(1).Ztunnel(), accesslog.Outbound)
	var in []logRecord
	for _, z := range sk.node2 {
		in = append(in, accessRecords(z, accesslog.Inbound)...)
	}
	for i := range sk.swapRecs {
		r := &sk.swapRecs[i]
		from := r.w.end.Add(r.w.grace)
		until := runEnd
		if i+1 < len(sk.swapRecs) {
			until = sk.swapRecs[i+1].w.start
		}
		dst := netip.AddrPortFrom(r.ip, appPort).String()
		check := func(recs []logRecord, n *int, wrong *[]string) {
			for _, l := range recs {
				// Outbound records have the HBONE address (…:15008) as
				// dst.addr and the application's as dst.hbone_addr.
				if l.start.Before(from) || !l.start.Before(until) ||
					l.String(accesslog.KeyDstAddr) != dst && l.String(accesslog.KeyDstHBONEAddr) != dst {
					continue
				}
				if id := l.String(accesslog.KeyDstIdentity); id == r.newID {
					*n++
				} else if len(*wrong) < 5 {
					*wrong = append(*wrong, fmt.Sprintf("%s dst.identity=%q error=%q", l.start.Format("15:04:05.000"), id, l.String(accesslog.KeyError)))
				}
			}
		}
		check(out, &r.outbnd, &r.wrongOu)
		check(in, &r.inbound, &r.wrongIn)
		if len(r.wrongOu) > 0 || len(r.wrongIn) > 0 {
			sk.t.Errorf("swap %s → %s at %s: connections after the swap not to %s: node-1 outbound %v; node-2 inbound %v",
				r.oldPod, r.newPod, r.ip, r.newID, r.wrongOu, r.wrongIn)
		}
		if r.outbnd == 0 || r.inbound == 0 {
			sk.t.Errorf("swap %s → %s at %s: %d outbound and %d inbound records name %s after the swap; want some of each",
				r.oldPod, r.newPod, r.ip, r.outbnd, r.inbound, r.newID)
		}
	}
}

// checkBlocks checks each block of 15008: packets dropped, node-1's
// access log has failed outbound connections with an error during the
// window (and its grace), and its metrics counted connections that could
// not be established.
func (sk *soak) checkBlocks() {
	out := accessRecords(sk.c.Node(1).Ztunnel(), accesslog.Outbound)
	for i := range sk.blocks {
		b := &sk.blocks[i]
		seen := map[string]bool{}
		for _, l := range out {
			e := l.String(accesslog.KeyError)
			if e == "" || l.end.Before(b.w.start) || l.start.After(b.w.end.Add(b.w.grace)) {
				continue
			}
			b.errorRecords++
			if l.String(accesslog.KeyResponseFlags) == "CONNECT" {
				b.connectRecords++
			}
			key := fmt.Sprintf("%s (response_flags %s)", e, l.String(accesslog.KeyResponseFlags))
			if !seen[key] && len(b.errors) < 4 {
				seen[key] = true
				b.errors = append(b.errors, key)
			}
		}
		if b.dropped == 0 {
			sk.t.Errorf("block at %s: the rules dropped nothing", b.w.start.Format("15:04:05"))
		}
		if b.errorRecords == 0 {
			sk.t.Errorf("block at %s: no outbound access log record with an error on node-1", b.w.start.Format("15:04:05"))
		}
		if b.connectRecords == 0 {
			sk.t.Errorf("block at %s: none of node-1's %d outbound records with an error has response_flags CONNECT", b.w.start.Format("15:04:05"), b.errorRecords)
		}
		if b.connectFailsDelta < 1 {
			sk.t.Errorf("block at %s: node-1's istio_tcp_connections_closed_total{reporter=source,response_flags=CONNECT} grew by %v, want ≥ 1",
				b.w.start.Format("15:04:05"), b.connectFailsDelta)
		}
	}
}

// attribute sorts failures by the window that explains each, and
// gives the first few kinds of error of each fault (addresses and ports
// left out).
func (sk *soak) attribute(fails []failure) (byFault map[string]map[string]int, errorsBy map[string][]string, outside []failure) {
	byFault = map[string]map[string]int{}
	errorsBy = map[string][]string{}
	seen := map[string]bool{}
	for _, f := range fails {
		explained := false
		// Latest first: a failure that meets two windows (the grace of one
		// runs up to the next fault's start) is the later fault's.
		for _, w := range slices.Backward(sk.windows) {
			if w.explains(f) {
				if byFault[w.fault] == nil {
					byFault[w.fault] = map[string]int{}
				}
				byFault[w.fault][f.kind]++
				explained = true
				e := errorKind(f.err)
				if !seen[w.fault+e] && len(errorsBy[w.fault]) < 3 {
					seen[w.fault+e] = true
					errorsBy[w.fault] = append(errorsBy[w.fault], e)
				}
				break
			}
		}
		if !explained {
			outside = append(outside, f)
		}
	}
	return byFault, errorsBy, outside
}

var addrRE = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+|\d+\.\d+\.\d+\.\d+`)

// errorKind is an error without its addresses, to group errors.
func errorKind(e string) string { return addrRE.ReplaceAllString(e, "…") }

func shortErr(s string) string {
	if len(s) > 140 {
		return s[:140] + "…"
	}
	return strings.ReplaceAll(s, "|", "/")
}
