package state

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// op is one xDS delta in a conflict scenario: a workload (re)sent with
// its IPs, or removed.
type op struct {
	uid    string
	ips    []string // nil with remove
	remove bool
	status workloadapi.WorkloadStatus
}

func add(uid string, ips ...string) op { return op{uid: uid, ips: ips} }
func del(uid string) op                { return op{uid: uid, remove: true} }

func workloadIPs(uid string, status workloadapi.WorkloadStatus, ips ...string) *workloadapi.Address {
	a := workload(uid, "127.0.0.1", status)
	w := a.GetWorkload()
	w.Addresses = nil
	for _, ip := range ips {
		w.Addresses = append(w.Addresses, netip.MustParseAddr(ip).AsSlice())
	}
	return a
}

func (o op) apply(t *testing.T, s *Store) {
	t.Helper()
	var err error
	if o.remove {
		err = s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{o.uid})
	} else {
		st := o.status
		if st == 0 {
			st = workloadapi.WorkloadStatus_HEALTHY
		}
		err = s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{res(t, o.uid, workloadIPs(o.uid, st, o.ips...))}, nil)
	}
	if err != nil {
		t.Fatalf("OnUpdate(%+v) = %v", o, err)
	}
}

func owner(s *Store, ip string) string {
	if w := s.WorkloadByAddr(netip.MustParseAddr(ip)); w != nil {
		return w.Uid
	}
	return ""
}

// TestAddressConflicts is issue 9 item 3: whatever order adds and removes
// of workloads sharing an IP arrive in, the IP resolves to a workload that
// still claims it (never to nothing, which would send traffic to an
// in-mesh pod in plaintext), by the rule of addrWins.
func TestAddressConflicts(t *testing.T) {
	const ip = "127.1.0.1"
	tests := []struct {
		name string
		ops  []op
		want map[string]string // ip → uid ("" = none)
	}{
		{name: "add A, add B, remove B: A again", ops: []op{add("a", ip), add("b", ip), del("b")}, want: map[string]string{ip: "a"}},
		{name: "add B, add A, remove B: A", ops: []op{add("b", ip), add("a", ip), del("b")}, want: map[string]string{ip: "a"}},
		{name: "add A, add B, remove A: B", ops: []op{add("a", ip), add("b", ip), del("a")}, want: map[string]string{ip: "b"}},
		{name: "conflict resolves to the lowest uid whatever the order (a first)", ops: []op{add("a", ip), add("b", ip)}, want: map[string]string{ip: "a"}},
		{name: "conflict resolves to the lowest uid whatever the order (b first)", ops: []op{add("b", ip), add("a", ip)}, want: map[string]string{ip: "a"}},
		{name: "healthy wins over unhealthy", ops: []op{add("b", ip), {uid: "a", ips: []string{ip}, status: workloadapi.WorkloadStatus_UNHEALTHY}},
			want: map[string]string{ip: "b"}},
		{name: "A moves away from the shared IP: B", ops: []op{add("a", ip), add("b", ip), add("a", "127.1.0.2")},
			want: map[string]string{ip: "b", "127.1.0.2": "a"}},
		{name: "B moves onto A's IP and away again", ops: []op{add("a", ip), add("b", "127.1.0.2"), add("b", ip), add("b", "127.1.0.3")},
			want: map[string]string{ip: "a", "127.1.0.2": "", "127.1.0.3": "b"}},
		{name: "three claimants, two leave", ops: []op{add("c", ip), add("a", ip), add("b", ip), del("a"), del("c")}, want: map[string]string{ip: "b"}},
		{name: "all leave", ops: []op{add("a", ip), add("b", ip), del("a"), del("b")}, want: map[string]string{ip: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore()
			for _, o := range tt.ops {
				o.apply(t, s)
			}
			for ip, want := range tt.want {
				if got := owner(s, ip); got != want {
					t.Errorf("WorkloadByAddr(%s) = %q, want %q", ip, got, want)
				}
			}
		})
	}
}

// TestAddressIndexRandomOrder applies random sequences of adds, moves and
// removes of a few workloads over a few IPs, and after each step compares
// the address index with one rebuilt from the remaining workloads alone.
func TestAddressIndexRandomOrder(t *testing.T) {
	ips := []string{"127.1.0.1", "127.1.0.2", "127.1.0.3"}
	uids := []string{"w0", "w1", "w2", "w3"}
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		s := NewStore()
		var trace []op
		for range 40 {
			uid := uids[r.IntN(len(uids))]
			var o op
			if r.IntN(3) == 0 {
				o = del(uid)
			} else {
				o = op{uid: uid, status: workloadapi.WorkloadStatus(1 + r.IntN(2))}
				for _, ip := range ips {
					if r.IntN(2) == 0 {
						o.ips = append(o.ips, ip)
					}
				}
			}
			o.apply(t, s)
			trace = append(trace, o)

			fresh := NewStore()
			for _, w := range s.Dump().Workloads {
				st := w.Status
				var wips []string
				for _, a := range w.Addresses {
					ip, _ := netip.AddrFromSlice(a)
					wips = append(wips, ip.String())
				}
				op{uid: w.Uid, ips: wips, status: st}.apply(t, fresh)
			}
			for _, ip := range ips {
				if got, want := owner(s, ip), owner(fresh, ip); got != want {
					t.Fatalf("seed %d: after %v: WorkloadByAddr(%s) = %q, want %q (a fresh rebuild)", seed, trace, ip, got, want)
				}
			}
		}
	}
}

// TestServiceVIPConflicts: two services claiming one VIP, then one leaving,
// leave the VIP to the other.
func TestServiceVIPConflicts(t *testing.T) {
	svc := func(ns, vip string) *adspb.Resource {
		a := service(vip, 80, 8080)
		a.GetService().Namespace = ns
		a.GetService().Hostname = "svc." + ns + ".svc.cluster.local"
		return res(t, ns+"/svc."+ns+".svc.cluster.local", a)
	}
	vip := netip.MustParseAddr("127.1.100.1")
	for _, order := range [][]string{{"a", "b"}, {"b", "a"}} {
		for _, gone := range order {
			t.Run(fmt.Sprintf("add %v, remove %s", order, gone), func(t *testing.T) {
				s := NewStore()
				for _, ns := range order {
					if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{svc(ns, vip.String())}, nil); err != nil {
						t.Fatal(err)
					}
				}
				if got := s.ServiceByVIP(vip); got == nil || got.Namespace != "a" {
					t.Errorf("ServiceByVIP during the conflict = %v, want the one of namespace a (lowest key)", got)
				}
				if err := s.OnUpdate(workloadapi.AddressTypeURL, nil, []string{gone + "/svc." + gone + ".svc.cluster.local"}); err != nil {
					t.Fatal(err)
				}
				want := slices.DeleteFunc(slices.Clone(order), func(s string) bool { return s == gone })[0]
				if got := s.ServiceByVIP(vip); got == nil || got.Namespace != want {
					t.Errorf("ServiceByVIP after removing %s = %v, want the one of namespace %s", gone, got, want)
				}
			})
		}
	}
}

// TestMalformedInputIsRejected is issue 9 item 10: xDS input that would
// have panicked (a malformed trust domain, a nil workload) is an error,
// the update is NACKed and the state kept.
func TestMalformedInputIsRejected(t *testing.T) {
	s := NewStore()
	good := res(t, "w1", workload("w1", "127.1.0.1", workloadapi.WorkloadStatus_HEALTHY))
	if err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{good}, nil); err != nil {
		t.Fatal(err)
	}
	badTD := workload("w2", "127.1.0.2", workloadapi.WorkloadStatus_HEALTHY)
	badTD.GetWorkload().TrustDomain = "Not A Trust Domain!"
	badNS := workload("w3", "127.1.0.3", workloadapi.WorkloadStatus_HEALTHY)
	badNS.GetWorkload().Namespace = "a/b"
	nilWorkload := &workloadapi.Address{Type: &workloadapi.Address_Workload{}}
	nilService := &workloadapi.Address{Type: &workloadapi.Address_Service{}}
	for name, r := range map[string]*adspb.Resource{
		"malformed trust domain": res(t, "w2", badTD),
		"namespace with a slash": res(t, "w3", badNS),
		"nil workload":           {Name: "x", Resource: mustAny(t, nilWorkload)},
		"nil service":            {Name: "y", Resource: mustAny(t, nilService)},
		"wrong type":             {Name: "z", Resource: mustAny(t, &workloadapi.Workload{Uid: "z"})},
	} {
		t.Run(name, func(t *testing.T) {
			err := s.OnUpdate(workloadapi.AddressTypeURL, []*adspb.Resource{r}, []string{"w1"})
			if err == nil {
				t.Errorf("OnUpdate(%s) = nil, want an error (NACK)", name)
			}
			if owner(s, "127.1.0.1") != "w1" {
				t.Errorf("a rejected update removed w1")
			}
		})
	}
}

func mustAny(t *testing.T, m interface{ ProtoReflect() protoreflect.Message }) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestConflictLoggedOnce: a conflict is logged when it appears and when it
// is resolved, not again on every update that leaves it as it was.
func TestConflictLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	s := NewStore()
	s.SetLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	const ip = "127.1.0.1"
	for _, o := range []op{add("a", ip), add("b", ip), add("a", ip), add("b", ip, "127.1.0.9"), del("b")} {
		o.apply(t, s)
	}
	if n := strings.Count(buf.String(), "address claimed more than once"); n != 1 {
		t.Errorf("conflict logged %d times, want 1:\n%s", n, buf.String())
	}
	if n := strings.Count(buf.String(), "address conflict resolved"); n != 1 {
		t.Errorf("resolution logged %d times, want 1:\n%s", n, buf.String())
	}
	add("c", ip).apply(t, s)
	want := []Conflict{{Kind: "workload address", Address: ip, Winner: "a", Losers: []string{"c"}}}
	if diff := cmp.Diff(want, s.Dump().Conflicts); diff != "" {
		t.Errorf("Dump().Conflicts (-want +got):\n%s", diff)
	}
}
