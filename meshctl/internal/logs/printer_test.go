package logs

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 123e6, time.UTC)

// stream is a sample of what the relay sends: connections at both ends,
// an early deny, a waypoint request, a loss and a proxy rejoining.
func stream() []*logsv1.WatchResponse {
	rec := func(r *logsv1.Record) *logsv1.WatchResponse {
		return &logsv1.WatchResponse{Event: &logsv1.WatchResponse_Record{Record: r}}
	}
	client := &logsv1.Endpoint{Addr: "127.10.1.10:40000", Workload: "client", Namespace: "demo", Identity: "spiffe://cluster.local/ns/demo/sa/client", App: "client"}
	echo := &logsv1.Endpoint{Addr: "127.10.2.10:9000", Workload: "echo-0", Namespace: "demo", Identity: "spiffe://cluster.local/ns/demo/sa/echo", App: "echo"}
	return []*logsv1.WatchResponse{
		rec(&logsv1.Record{
			Time: timestamppb.New(t0), Proxy: "node-a", ProxyKind: logsv1.ProxyKind_ZTUNNEL,
			Source: client, Destination: echo, DstHboneAddr: "127.10.2.10:9000", DstService: "echo.demo.svc.cluster.local",
			Direction: logsv1.Direction_OUTBOUND, Verdict: logsv1.Verdict_ALLOW, BytesSent: 12, BytesRecv: 34,
			Duration: durationpb.New(5 * time.Millisecond),
		}),
		rec(&logsv1.Record{
			Time: timestamppb.New(t0.Add(time.Millisecond)), Proxy: "node-b", ProxyKind: logsv1.ProxyKind_ZTUNNEL,
			Source: client, Destination: echo, DstService: "echo.demo.svc.cluster.local",
			Direction: logsv1.Direction_INBOUND, Verdict: logsv1.Verdict_ALLOW, BytesSent: 34, BytesRecv: 12,
			Duration: durationpb.New(4 * time.Millisecond),
		}),
		rec(&logsv1.Record{
			Time: timestamppb.New(t0.Add(2 * time.Second)), Proxy: "node-b", ProxyKind: logsv1.ProxyKind_ZTUNNEL,
			Source: &logsv1.Endpoint{Addr: "127.10.1.11:40100", Identity: "spiffe://cluster.local/ns/other/sa/default"}, Destination: echo,
			Direction: logsv1.Direction_INBOUND, Verdict: logsv1.Verdict_DENY, ResponseFlags: "DENY", Policy: "demo/deny-other",
			Error: "connection denied by policy demo/deny-other", Duration: durationpb.New(0),
		}),
		rec(&logsv1.Record{
			Time: timestamppb.New(t0.Add(3 * time.Second)), Proxy: "demo/waypoint", ProxyKind: logsv1.ProxyKind_WAYPOINT,
			Source: client, Destination: echo, DstService: "echo-l7.demo.svc.cluster.local",
			Direction: logsv1.Direction_INBOUND, Verdict: logsv1.Verdict_DENY, ResponseFlags: "DENY",
			Duration: durationpb.New(time.Millisecond),
			Http:     &logsv1.HTTP{Method: "GET", Path: "/admin", Status: 403, Protocol: "HTTP/1.1"},
		}),
		{Event: &logsv1.WatchResponse_Lost{Lost: &logsv1.Lost{Source: logsv1.Lost_PROXY, Proxy: "node-a", Count: 32}}},
		{Event: &logsv1.WatchResponse_ProxyStatus{ProxyStatus: &logsv1.ProxyStatus{State: logsv1.ProxyStatus_CONNECTED, Proxy: "node-b", ProxyKind: logsv1.ProxyKind_ZTUNNEL, Instance: "5f2c"}}},
	}
}

func TestPrinterGolden(t *testing.T) {
	for _, tc := range []struct {
		format string
		color  bool
		golden string
	}{
		{Compact, false, "compact.golden"},
		{Compact, true, "compact-color.golden"},
		{Dict, false, "dict.golden"},
		{JSON, false, "json.golden"},
		{Table, false, "table.golden"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var buf bytes.Buffer
			p, err := NewPrinter(&buf, tc.format, tc.color, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range stream() {
				if err := p.Write(r); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.golden, buf.String())
		})
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("output differs from %s (-want +got):\n%s", path, diff)
	}
}

func TestPrinterRejectsUnknownFormat(t *testing.T) {
	if _, err := NewPrinter(&bytes.Buffer{}, "yaml", false, nil); err == nil || !strings.Contains(err.Error(), "compact, dict, json, table") {
		t.Errorf("NewPrinter(yaml) = %v, want an error listing the formats", err)
	}
}

// The JSON output filtered offline: --input-file gives what the same
// flags would have asked of the mesh.
func TestReplay(t *testing.T) {
	var saved bytes.Buffer
	p, _ := NewPrinter(&saved, JSON, false, time.UTC)
	for _, r := range stream() {
		p.Write(r)
	}
	p.Close()
	for _, tc := range []struct {
		name string
		req  *logsv1.WatchRequest
		want string
	}{
		{"deny only", &logsv1.WatchRequest{Whitelist: []*logsv1.Filter{{Verdict: []logsv1.Verdict{logsv1.Verdict_DENY}}}}, "replay-deny.golden"},
		{"last 2 with events", &logsv1.WatchRequest{Last: 2}, "replay-last2.golden"},
		{"not the waypoint", &logsv1.WatchRequest{Blacklist: []*logsv1.Filter{{ProxyKind: []logsv1.ProxyKind{logsv1.ProxyKind_WAYPOINT}}}, Whitelist: []*logsv1.Filter{{Proxy: []string{"node-b", "demo/waypoint"}}}}, "replay-notwaypoint.golden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			p, _ := NewPrinter(&out, Compact, false, time.UTC)
			if err := Replay(bytes.NewReader(saved.Bytes()), tc.req, p); err != nil {
				t.Fatal(err)
			}
			p.Close()
			golden(t, tc.want, out.String())
		})
	}
	if err := Replay(strings.NewReader("{not json\n"), &logsv1.WatchRequest{}, p); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("Replay(bad JSON) = %v, want an error naming line 1", err)
	}
}
