package logstream

import (
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

func TestMatcher(t *testing.T) {
	clientToEcho := &logsv1.Record{
		Time:        timestamppb.New(t0),
		Proxy:       "node-b",
		ProxyKind:   logsv1.ProxyKind_ZTUNNEL,
		Source:      &logsv1.Endpoint{Addr: "127.10.1.10:40000", Workload: "client", Namespace: "demo", Identity: "spiffe://cluster.local/ns/demo/sa/client", App: "client"},
		Destination: &logsv1.Endpoint{Addr: "127.10.2.10:8080", Workload: "echo-0", Namespace: "demo", Identity: "spiffe://cluster.local/ns/demo/sa/echo", App: "echo"},
		DstService:  "echo.demo.svc.cluster.local",
		Direction:   logsv1.Direction_INBOUND,
		Verdict:     logsv1.Verdict_ALLOW,
	}
	request := &logsv1.Record{
		Time:        timestamppb.New(t0),
		ProxyKind:   logsv1.ProxyKind_WAYPOINT,
		Source:      &logsv1.Endpoint{Addr: "127.10.1.10:40001", Workload: "client", Namespace: "demo"},
		Destination: &logsv1.Endpoint{Addr: "127.10.2.11:8080", Workload: "echo-1", Namespace: "other"},
		Verdict:     logsv1.Verdict_DENY,
		Http:        &logsv1.HTTP{Method: "GET", Path: "/admin/x", Status: 403},
	}
	for _, tc := range []struct {
		name string
		req  *logsv1.WatchRequest
		rec  *logsv1.Record
		want bool
	}{
		{"no filter", &logsv1.WatchRequest{}, clientToEcho, true},
		{"namespace either end", wl(&logsv1.Filter{Namespace: []string{"other"}}), request, true},
		{"source namespace only", wl(&logsv1.Filter{SourceNamespace: []string{"other"}}), request, false},
		{"values of one field OR'd", wl(&logsv1.Filter{Namespace: []string{"x", "demo"}}), clientToEcho, true},
		{"fields AND'd", wl(&logsv1.Filter{Namespace: []string{"demo"}, Verdict: []logsv1.Verdict{logsv1.Verdict_DENY}}), clientToEcho, false},
		{"filters OR'd", &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Namespace: []string{"x"}}, {Pod: []string{"echo-0"}}}}, clientToEcho, true},
		{"pod with namespace", wl(&logsv1.Filter{Pod: []string{"demo/echo-0"}}), clientToEcho, true},
		{"pod in another namespace", wl(&logsv1.Filter{Pod: []string{"x/echo-0"}}), clientToEcho, false},
		{"workload by app", wl(&logsv1.Filter{DestinationWorkload: []string{"echo"}}), clientToEcho, true},
		{"workload is not the source", wl(&logsv1.Filter{SourceWorkload: []string{"echo"}}), clientToEcho, false},
		{"identity short form", wl(&logsv1.Filter{SourceIdentity: []string{"ns/demo/sa/client"}}), clientToEcho, true},
		{"identity full", wl(&logsv1.Filter{Identity: []string{"spiffe://cluster.local/ns/demo/sa/echo"}}), clientToEcho, true},
		{"identity suffix is whole segments", wl(&logsv1.Filter{Identity: []string{"sa/cho"}}), clientToEcho, false},
		{"ip cidr", wl(&logsv1.Filter{SourceIp: []string{"127.10.1.0/24"}}), clientToEcho, true},
		{"ip other", wl(&logsv1.Filter{DestinationIp: []string{"127.10.1.10"}}), clientToEcho, false},
		{"service prefix", wl(&logsv1.Filter{Service: []string{"echo.demo"}}), clientToEcho, true},
		{"service not a prefix of a label", wl(&logsv1.Filter{Service: []string{"ech"}}), clientToEcho, false},
		{"port", wl(&logsv1.Filter{Port: []uint32{8080}}), clientToEcho, true},
		{"port other", wl(&logsv1.Filter{Port: []uint32{80}}), clientToEcho, false},
		{"direction", wl(&logsv1.Filter{Direction: []logsv1.Direction{logsv1.Direction_OUTBOUND}}), clientToEcho, false},
		{"verdict deny", wl(&logsv1.Filter{Verdict: []logsv1.Verdict{logsv1.Verdict_DENY}}), request, true},
		{"http method any case", wl(&logsv1.Filter{HttpMethod: []string{"get"}}), request, true},
		{"http method on a TCP record", wl(&logsv1.Filter{HttpMethod: []string{"GET"}}), clientToEcho, false},
		{"http path regexp anchored", wl(&logsv1.Filter{HttpPath: []string{"/admin"}}), request, true},
		{"http path not at the start", wl(&logsv1.Filter{HttpPath: []string{"admin"}}), request, false},
		{"http status class", wl(&logsv1.Filter{HttpStatus: []string{"4+"}}), request, true},
		{"http status exact other", wl(&logsv1.Filter{HttpStatus: []string{"404"}}), request, false},
		{"proxy", wl(&logsv1.Filter{Proxy: []string{"node-a"}}), clientToEcho, false},
		{"proxy kind", wl(&logsv1.Filter{ProxyKind: []logsv1.ProxyKind{logsv1.ProxyKind_ZTUNNEL}}), clientToEcho, true},
		{"blacklist (--not)", &logsv1.WatchRequest{Blacklist: []*logsv1.Filter{{Pod: []string{"echo-0"}}}}, clientToEcho, false},
		{"blacklist other", &logsv1.WatchRequest{Blacklist: []*logsv1.Filter{{Pod: []string{"echo-1"}}}}, clientToEcho, true},
		{"since later", &logsv1.WatchRequest{Since: timestamppb.New(t0.Add(1))}, clientToEcho, false},
		{"since equal", &logsv1.WatchRequest{Since: timestamppb.New(t0)}, clientToEcho, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Compile(tc.req)
			if err != nil {
				t.Fatalf("Compile(%v): %v", tc.req, err)
			}
			if got := m.Match(tc.rec); got != tc.want {
				t.Errorf("Match(%v) with %v = %v, want %v", tc.rec, tc.req, got, tc.want)
			}
		})
	}
}

func TestCompileRejects(t *testing.T) {
	for _, f := range []*logsv1.Filter{
		{HttpPath: []string{"("}},
		{HttpStatus: []string{"6+"}},
		{HttpStatus: []string{"abc"}},
		{Ip: []string{"10.0.0.300"}},
	} {
		if _, err := Compile(wl(f)); err == nil {
			t.Errorf("Compile(%v) = nil error, want one", f)
		}
	}
}

func TestNamespaces(t *testing.T) {
	for _, tc := range []struct {
		req  *logsv1.WatchRequest
		want []string
	}{
		{&logsv1.WatchRequest{}, nil},
		{wl(&logsv1.Filter{Namespace: []string{"b", "a"}}), []string{"a", "b"}},
		{&logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Namespace: []string{"a"}}, {Pod: []string{"x"}}}}, nil},
		{&logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Namespace: []string{"a"}}, {SourceNamespace: []string{"a", "c"}}}}, []string{"a", "c"}},
	} {
		got := Namespaces(tc.req)
		if len(got) != len(tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("Namespaces(%v) = %q, want %q", tc.req, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("Namespaces(%v) = %q, want %q", tc.req, got, tc.want)
			}
		}
	}
}

func wl(f *logsv1.Filter) *logsv1.WatchRequest {
	return &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{f}}
}
