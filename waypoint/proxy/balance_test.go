package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// The balancer over a real store: Service lb (VIP 127.0.8.1, port 80) with
// endpoints named by uid, each at 127.0.8.<n>:8080.

const lbPort = 80

// lbStore returns a store holding Service lb whose endpoints are eps
// (uid → status).
func lbStore(t *testing.T, eps map[string]workloadapi.WorkloadStatus) (*state.Store, *state.Service) {
	t.Helper()
	s := state.NewStore()
	key := "default/lb.default.svc.cluster.local"
	updated := []*adspb.Resource{resource(t, key, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: "lb", Namespace: "default", Hostname: "lb.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr("127.0.8.1").AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: lbPort, TargetPort: 8080}},
	}}})}
	for uid, st := range eps {
		updated = append(updated, lbWorkload(t, uid, st))
	}
	if err := s.OnUpdate(workloadapi.AddressTypeURL, updated, nil); err != nil {
		t.Fatalf("OnUpdate() error = %v", err)
	}
	return s, s.ServiceByVIP(netip.MustParseAddr("127.0.8.1"))
}

// lbIP is the address of endpoint uid "e<n>": 127.0.8.<n+10>.
func lbIP(uid string) netip.Addr {
	var n int
	fmt.Sscanf(uid, "e%d", &n)
	return netip.AddrFrom4([4]byte{127, 0, 8, byte(n + 10)})
}

func lbWorkload(t *testing.T, uid string, st workloadapi.WorkloadStatus) *adspb.Resource {
	return resource(t, uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "default", Status: st,
		Addresses: [][]byte{lbIP(uid).AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Services: map[string]*workloadapi.PortList{"default/lb.default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: lbPort, TargetPort: 8080}}}},
	}}})
}

func healthy(uids ...string) map[string]workloadapi.WorkloadStatus {
	m := map[string]workloadapi.WorkloadStatus{}
	for _, u := range uids {
		m[u] = workloadapi.WorkloadStatus_HEALTHY
	}
	return m
}

// fakeClock is the balancer's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testBalancer(s *state.Store, policy LBPolicy) (*balancer, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	b := newBalancer(s, policy, NewLBMetrics(nil), slog.New(slog.DiscardHandler))
	b.now = clock.now
	return b, clock
}

// picks counts, by uid, where n picks (each released at once as
// connected) go.
func picks(t *testing.T, b *balancer, svc *state.Service, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		w, _, l, err := b.pick(svc, lbPort)
		if err != nil {
			t.Fatalf("pick() error = %v", err)
		}
		got[w.Uid]++
		b.done(l, outcomeConnected)
	}
	return got
}

// leaseOf is a lease on endpoint uid, as pick would give it.
func leaseOf(b *balancer, svc *state.Service, uid string) lease {
	h := b.host(state.Endpoint{Workload: &state.Workload{Addrs: []netip.Addr{lbIP(uid)}}, Port: 8080})
	h.active.Add(1)
	return lease{h: h, svc: svc, port: lbPort}
}

// fail reports n connection failures of uid.
func fail(b *balancer, svc *state.Service, uid string, n int) {
	for range n {
		b.done(leaseOf(b, svc, uid), outcomeConnectFailed)
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	// e1 holds a request: of two random draws (with replacement) it wins
	// only when both are e1, a quarter of the picks; round robin gives it
	// half whatever its load.
	s, svc := lbStore(t, healthy("e1", "e2"))
	for _, tc := range []struct {
		policy   LBPolicy
		min, max int // e1's picks of 1000
	}{
		{LeastRequest, 150, 350},
		{RoundRobin, 500, 500},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			b, _ := testBalancer(s, tc.policy)
			held := leaseOf(b, svc, "e1")
			got := picks(t, b, svc, 1000)
			if got["e1"] < tc.min || got["e1"] > tc.max {
				t.Errorf("picks with a request held on e1 = %v, want e1 in [%d, %d]", got, tc.min, tc.max)
			}
			b.done(held, outcomeConnected)
		})
	}
}

func TestLeastRequestBusiestNeverBeatsIdle(t *testing.T) {
	// Three endpoints, e1 and e2 busy: a pick lands on a busy one only
	// when both draws are busy ones, never when either is e3.
	s, svc := lbStore(t, healthy("e1", "e2", "e3"))
	b, _ := testBalancer(s, LeastRequest)
	for range 5 {
		leaseOf(b, svc, "e1")
		leaseOf(b, svc, "e2")
	}
	got := picks(t, b, svc, 900)
	// e3 is drawn at least once in 1 - (2/3)² = 5/9 of the picks.
	if got["e3"] < 400 {
		t.Errorf("picks = %v, want e3 (idle) in at least 400 of 900 (expected 500)", got)
	}
}

func TestActiveRequestsReturnToZero(t *testing.T) {
	s, svc := lbStore(t, healthy("e1", "e2", "e3"))
	b, _ := testBalancer(s, LeastRequest)
	for _, o := range []outcome{outcomeConnected, outcomeConnectFailed, outcomeUnknown} {
		var ls []lease
		for range 30 {
			_, _, l, err := b.pick(svc, lbPort)
			if err != nil {
				t.Fatal(err)
			}
			ls = append(ls, l)
		}
		if got := totalActive(b); got != 30 {
			t.Errorf("active after 30 picks = %d, want 30", got)
		}
		for _, l := range ls {
			b.done(l, o)
		}
		if got := activeByHost(b); !noneActive(got) {
			t.Errorf("active after releasing with outcome %d = %v, want all 0", o, got)
		}
	}
	b.done(lease{}, outcomeConnectFailed) // the zero lease: nothing
}

func totalActive(b *balancer) int64 {
	var n int64
	for _, v := range activeByHost(b) {
		n += v
	}
	return n
}

func activeByHost(b *balancer) map[netip.AddrPort]int64 {
	out := map[netip.AddrPort]int64{}
	for k, h := range *b.hosts.Load() {
		out[k] = h.active.Load()
	}
	return out
}

func noneActive(m map[netip.AddrPort]int64) bool {
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

func TestPickAllocations(t *testing.T) {
	s, svc := lbStore(t, healthy("e1", "e2", "e3"))
	for _, policy := range []LBPolicy{LeastRequest, RoundRobin} {
		b, _ := testBalancer(s, policy)
		fail(b, svc, "e2", consecutiveConnectFailures) // an ejected endpoint on the way too
		picks(t, b, svc, 10)                           // hosts known, store cache filled
		n := testing.AllocsPerRun(1000, func() {
			_, _, l, _ := b.pick(svc, lbPort)
			b.done(l, outcomeConnected)
		})
		if n != 0 {
			t.Errorf("%s: pick and done allocate %v times, want 0", policy, n)
		}
	}
}

func TestOnlyHealthyEndpoints(t *testing.T) {
	s, svc := lbStore(t, map[string]workloadapi.WorkloadStatus{
		"e1": workloadapi.WorkloadStatus_HEALTHY,
		"e2": workloadapi.WorkloadStatus_UNHEALTHY,
		"e3": workloadapi.WorkloadStatus_HEALTHY,
	})
	for _, policy := range []LBPolicy{LeastRequest, RoundRobin} {
		b, _ := testBalancer(s, policy)
		got := picks(t, b, svc, 300)
		if got["e2"] != 0 || got["e1"] == 0 || got["e3"] == 0 {
			t.Errorf("%s: picks = %v, want e1 and e3 only", policy, got)
		}
	}
	none, svc2 := lbStore(t, map[string]workloadapi.WorkloadStatus{"e1": workloadapi.WorkloadStatus_UNHEALTHY})
	b, _ := testBalancer(none, LeastRequest)
	if _, _, _, err := b.pick(svc2, lbPort); !errors.Is(err, state.ErrNoEndpoints) {
		t.Errorf("pick() with no healthy endpoint error = %v, want ErrNoEndpoints", err)
	}
	if _, _, _, err := b.pick(svc2, 81); !errors.Is(err, state.ErrNoPort) {
		t.Errorf("pick() of an unknown port error = %v, want ErrNoPort", err)
	}
}

func TestOutlierEjection(t *testing.T) {
	for _, policy := range []LBPolicy{LeastRequest, RoundRobin} {
		t.Run(string(policy), func(t *testing.T) {
			s, svc := lbStore(t, healthy("e1", "e2", "e3"))
			b, clock := testBalancer(s, policy)

			fail(b, svc, "e1", consecutiveConnectFailures-1)
			b.done(leaseOf(b, svc, "e1"), outcomeConnected) // a success ends the streak
			fail(b, svc, "e1", consecutiveConnectFailures-1)
			if got := testutil.ToFloat64(b.metrics.ejections); got != 0 {
				t.Fatalf("%s after %d failures, a success, %d failures = %v, want 0", OutlierEjectionsName, consecutiveConnectFailures-1, consecutiveConnectFailures-1, got)
			}
			fail(b, svc, "e1", 1)
			if got := picks(t, b, svc, 300); got["e1"] != 0 {
				t.Fatalf("picks after %d consecutive failures = %v, want none to e1", consecutiveConnectFailures, got)
			}
			if got := testutil.ToFloat64(b.metrics.ejections); got != 1 {
				t.Errorf("%s = %v, want 1", OutlierEjectionsName, got)
			}

			// Back after the base ejection time; a second ejection in a
			// row lasts twice as long.
			clock.advance(baseEjectionTime - time.Second)
			if got := picks(t, b, svc, 300); got["e1"] != 0 {
				t.Fatalf("picks 1s before the ejection ends = %v, want none to e1", got)
			}
			clock.advance(time.Second)
			if got := picks(t, b, svc, 300); got["e1"] == 0 {
				t.Fatalf("picks when the ejection ends = %v, want some to e1", got)
			}
			fail(b, svc, "e1", consecutiveConnectFailures)
			clock.advance(2*baseEjectionTime - time.Second)
			if got := picks(t, b, svc, 300); got["e1"] != 0 {
				t.Fatalf("picks 1s before the second ejection ends = %v, want none to e1", got)
			}
			clock.advance(time.Second)
			if got := picks(t, b, svc, 300); got["e1"] == 0 {
				t.Fatalf("picks when the second ejection ends = %v, want some to e1", got)
			}

			// Long in service: the count decays, the next ejection is
			// the base time again.
			clock.advance(10 * ejectionDecay)
			fail(b, svc, "e1", consecutiveConnectFailures)
			clock.advance(baseEjectionTime)
			if got := picks(t, b, svc, 300); got["e1"] == 0 {
				t.Errorf("picks one base time after an ejection following a long healthy spell = %v, want some to e1", got)
			}
		})
	}
}

func TestEjectionTimeCapped(t *testing.T) {
	s, svc := lbStore(t, healthy("e1", "e2"))
	b, clock := testBalancer(s, LeastRequest)
	var got []time.Duration
	for range 12 {
		fail(b, svc, "e1", consecutiveConnectFailures)
		h := b.lookup(state.Endpoint{Workload: &state.Workload{Addrs: []netip.Addr{lbIP("e1")}}, Port: 8080})
		d := time.Duration(h.ejectedUntil.Load() - clock.now().UnixNano())
		got = append(got, d)
		clock.advance(d)
	}
	want := []time.Duration{30 * time.Second, 60 * time.Second, 90 * time.Second, 120 * time.Second, 150 * time.Second,
		180 * time.Second, 210 * time.Second, 240 * time.Second, 270 * time.Second, 300 * time.Second, 300 * time.Second, 300 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ejection times in a row mismatch (-want +got):\n%s", diff)
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	// 10 % of a Service's endpoints, but always one: one of 3, two of 20.
	for _, tc := range []struct {
		endpoints, failing, wantEjected int
	}{
		{1, 1, 1},
		{3, 2, 1},
		{3, 3, 1},
		{20, 3, 2},
	} {
		t.Run(fmt.Sprintf("%d of %d failing", tc.failing, tc.endpoints), func(t *testing.T) {
			var uids []string
			for i := range tc.endpoints {
				uids = append(uids, fmt.Sprintf("e%d", i+1))
			}
			s, svc := lbStore(t, healthy(uids...))
			b, _ := testBalancer(s, LeastRequest)
			for _, uid := range uids[:tc.failing] {
				fail(b, svc, uid, consecutiveConnectFailures)
			}
			if got := testutil.ToFloat64(b.metrics.ejections); int(got) != tc.wantEjected {
				t.Errorf("ejections = %v, want %d", got, tc.wantEjected)
			}
		})
	}
}

func TestPanicWhenAllEjected(t *testing.T) {
	// A single endpoint is ejected, yet picked: better an endpoint that
	// failed than none (Envoy's panic mode). So are the ejected ones left
	// when the others leave the Service.
	for _, policy := range []LBPolicy{LeastRequest, RoundRobin} {
		t.Run(string(policy), func(t *testing.T) {
			s, svc := lbStore(t, healthy("e1"))
			b, _ := testBalancer(s, policy)
			fail(b, svc, "e1", consecutiveConnectFailures)
			if testutil.ToFloat64(b.metrics.ejections) != 1 {
				t.Fatal("e1 was not ejected: the test shows nothing")
			}
			if got := picks(t, b, svc, 10); got["e1"] != 10 {
				t.Errorf("picks with the only endpoint ejected = %v, want all to e1", got)
			}

			s, svc = lbStore(t, healthy("e1", "e2", "e3"))
			b, _ = testBalancer(s, policy)
			fail(b, svc, "e1", consecutiveConnectFailures)
			if err := s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{"e2", "e3"}); err != nil {
				t.Fatal(err)
			}
			if got := picks(t, b, svc, 10); got["e1"] != 10 {
				t.Errorf("picks with the others gone = %v, want all to e1", got)
			}
		})
	}
}

func TestRoundRobinSkipsEjected(t *testing.T) {
	s, svc := lbStore(t, healthy("e1", "e2", "e3"))
	b, _ := testBalancer(s, RoundRobin)
	fail(b, svc, "e2", consecutiveConnectFailures)
	if diff := cmp.Diff(map[string]int{"e1": 50, "e3": 50}, picks(t, b, svc, 100)); diff != "" {
		t.Errorf("round robin picks with e2 ejected mismatch (-want +got):\n%s", diff)
	}
}

func TestPickAvoidingTriedHosts(t *testing.T) {
	s, svc := lbStore(t, healthy("e1", "e2"))
	for _, policy := range []LBPolicy{LeastRequest, RoundRobin} {
		b, _ := testBalancer(s, policy)
		tried := leaseOf(b, svc, "e1")
		b.done(tried, outcomeUnknown)
		other := 0
		for range 100 {
			w, _, l, err := b.pickAvoiding(svc, lbPort, []*host{tried.h})
			if err != nil {
				t.Fatal(err)
			}
			if w.Uid == "e2" {
				other++
			}
			b.done(l, outcomeConnected)
		}
		// Five picks each: e1 five times in a row is 1/32 for least
		// request (never for round robin).
		if other < 90 {
			t.Errorf("%s: retries to the untried endpoint = %d of 100, want at least 90", policy, other)
		}
		if !noneActive(activeByHost(b)) {
			t.Errorf("%s: active after retries = %v, want all 0", policy, activeByHost(b))
		}
	}
}

func TestHostsPruned(t *testing.T) {
	// Hosts of endpoints that left the store are dropped at the next
	// pick after the update, unless a request still holds them.
	s, svc := lbStore(t, healthy("e1", "e2", "e3"))
	b, _ := testBalancer(s, LeastRequest)
	picks(t, b, svc, 100)
	held := leaseOf(b, svc, "e3")
	if err := s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{"e2", "e3"}); err != nil {
		t.Fatal(err)
	}
	picks(t, b, svc, 1)
	want := map[netip.AddrPort]int64{
		netip.AddrPortFrom(lbIP("e1"), 8080): 0,
		netip.AddrPortFrom(lbIP("e3"), 8080): 1,
	}
	if diff := cmp.Diff(want, activeByHost(b)); diff != "" {
		t.Errorf("hosts after e2 and e3 left, e3 held mismatch (-want +got):\n%s", diff)
	}
	b.done(held, outcomeConnected)
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{lbWorkload(t, "e4", workloadapi.WorkloadStatus_HEALTHY)}, nil); err != nil {
		t.Fatal(err)
	}
	picks(t, b, svc, 1)
	if got := len(activeByHost(b)); got > 2 {
		t.Errorf("hosts after e3's request ended and e4 came = %v, want e1 and e4 at most", activeByHost(b))
	}
}

func TestTryOutcome(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want outcome
	}{
		{"answer", live, nil, outcomeConnected},
		{"connect failure", live, &dialError{errors.New("connection refused")}, outcomeConnectFailed},
		{"wrapped connect failure", live, fmt.Errorf("round trip: %w", &dialError{errors.New("503")}), outcomeConnectFailed},
		{"reset after connecting", live, errors.New("connection reset"), outcomeUnknown},
		{"client gone while connecting", done, &dialError{context.Canceled}, outcomeUnknown},
	} {
		if got := tryOutcome(tc.ctx, tc.err); got != tc.want {
			t.Errorf("tryOutcome(%s) = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestFailuresWhileEjectedStartNoStreak(t *testing.T) {
	// Requests sent before the ejection fail after it: once the endpoint
	// is back, a single failure does not eject it again.
	s, svc := lbStore(t, healthy("e1", "e2"))
	b, clock := testBalancer(s, LeastRequest)
	fail(b, svc, "e1", 2*consecutiveConnectFailures)
	clock.advance(baseEjectionTime)
	fail(b, svc, "e1", 1)
	if got := testutil.ToFloat64(b.metrics.ejections); got != 1 {
		t.Errorf("%s = %v, want 1 (one failure after the ejection ended)", OutlierEjectionsName, got)
	}
}
