package proxy

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// series is one TCP metric's value under one response_flags label.
type series struct {
	Name, Flags string
	Value       float64
}

// tcpSeries returns the TCP metric series of reg that are not zero.
func tcpSeries(t *testing.T, reg *prometheus.Registry) []series {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []series
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			s := series{Name: mf.GetName(), Value: m.GetCounter().GetValue()}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "response_flags" {
					s.Flags = lp.GetValue()
				}
			}
			if s.Value != 0 {
				out = append(out, s)
			}
		}
	}
	return out
}

// TestConnResult: whatever a hop does with a connection's result, the
// connection is counted opened and closed once, under the labels it had
// when opened, and logged at most once, with the response flags it had
// when finished.
func TestConnResult(t *testing.T) {
	src := &state.Workload{Workload: &workloadapi.Workload{Name: "client", Namespace: "demo"}}
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	errBoom := errors.New("boom")
	tests := []struct {
		name        string
		do          func(ctx context.Context, r *connResult)
		wantRecords []accesslog.Record
		wantSeries  []series
	}{
		{
			name: "relayed",
			do: func(ctx context.Context, r *connResult) {
				r.open()
				r.relayed(5, 7)
				r.finish(ctx, nil)
			},
			wantRecords: []accesslog.Record{{BytesSent: 5, BytesRecv: 7}},
			wantSeries: []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagNone, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagNone, 1},
				{telemetry.ReceivedBytesName, telemetry.FlagNone, 5},
				{telemetry.SentBytesName, telemetry.FlagNone, 7},
			},
		},
		{
			name: "failed before open: opened and closed at finish",
			do: func(ctx context.Context, r *connResult) {
				r.setFlags(telemetry.FlagConnect)
				r.finish(ctx, errBoom)
			},
			wantRecords: []accesslog.Record{{Err: errBoom, ResponseFlags: telemetry.FlagConnect}},
			wantSeries: []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagConnect, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagConnect, 1},
			},
		},
		{
			name: "flags set after open reach only the record",
			do: func(ctx context.Context, r *connResult) {
				r.open()
				r.setFlags(telemetry.FlagDeny)
				r.setPolicy("demo/deny")
				r.finish(ctx, ErrPolicyChange)
			},
			wantRecords: []accesslog.Record{{Err: ErrPolicyChange, ResponseFlags: telemetry.FlagDeny, Policy: "demo/deny"}},
			wantSeries: []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagNone, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagNone, 1},
			},
		},
		{
			name: "finished twice: counted and logged once",
			do: func(ctx context.Context, r *connResult) {
				r.finish(ctx, nil)
				r.finish(ctx, errBoom)
				r.discard()
			},
			wantRecords: []accesslog.Record{{}},
			wantSeries: []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagNone, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagNone, 1},
			},
		},
		{
			name: "discarded: closed, not logged",
			do: func(ctx context.Context, r *connResult) {
				r.open()
				r.discard()
				r.finish(ctx, nil)
			},
			wantSeries: []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagNone, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagNone, 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			access := accesslog.New(nil)
			recs, unsub := access.Subscribe(10)
			defer unsub()
			p := &Proxy{cfg: Config{Metrics: telemetry.NewMetrics(reg), AccessLog: access}}

			tc.do(context.Background(), p.outboundResult(src, client))

			var got []accesslog.Record
			for len(recs) > 0 {
				got = append(got, <-recs)
			}
			var want []accesslog.Record
			for _, w := range tc.wantRecords {
				w.Direction, w.SrcAddr, w.SrcWorkload, w.SrcNamespace = accesslog.Outbound, client, src.Name, src.Namespace
				want = append(want, w)
			}
			opts := cmp.Options{
				cmpopts.IgnoreFields(accesslog.Record{}, "Start", "Duration", "SrcIdentity"),
				cmpopts.EquateErrors(),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
			}
			if diff := cmp.Diff(want, got, opts); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantSeries, tcpSeries(t, reg), cmpopts.SortSlices(func(a, b series) bool { return a.Name < b.Name })); diff != "" {
				t.Errorf("TCP metrics (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConnResultBytes: the record's bytes are the local workload's, as
// Istio's ztunnel logs them (outbound: the client's; inbound: the
// server's), while the metrics count the request as received and the
// response as sent at both ends.
func TestConnResultBytes(t *testing.T) {
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	src := &state.Workload{Workload: &workloadapi.Workload{Name: "client", Namespace: "demo"}}
	for _, tc := range []struct {
		direction          string
		wantSent, wantRecv int64
	}{
		{accesslog.Outbound, 5, 7}, // the client sent the 5-byte request
		{accesslog.Inbound, 7, 5},  // the server sent the 7-byte response
	} {
		t.Run(tc.direction, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			access := accesslog.New(nil)
			recs, unsub := access.Subscribe(1)
			defer unsub()
			p := &Proxy{cfg: Config{Metrics: telemetry.NewMetrics(reg), AccessLog: access}}
			r := p.outboundResult(src, client)
			if tc.direction == accesslog.Inbound {
				r = p.inboundResult(client, "", telemetry.PolicyUnknown)
			}
			r.open()
			r.relayed(5, 7) // 5 bytes to the server, 7 back
			r.finish(context.Background(), nil)
			rec := <-recs
			if rec.BytesSent != tc.wantSent || rec.BytesRecv != tc.wantRecv {
				t.Errorf("%s record: bytes_sent %d, bytes_recv %d; want %d, %d", tc.direction, rec.BytesSent, rec.BytesRecv, tc.wantSent, tc.wantRecv)
			}
			want := []series{
				{telemetry.ConnectionsClosedName, telemetry.FlagNone, 1},
				{telemetry.ConnectionsOpenedName, telemetry.FlagNone, 1},
				{telemetry.ReceivedBytesName, telemetry.FlagNone, 5},
				{telemetry.SentBytesName, telemetry.FlagNone, 7},
			}
			if diff := cmp.Diff(want, tcpSeries(t, reg), cmpopts.SortSlices(func(a, b series) bool { return a.Name < b.Name })); diff != "" {
				t.Errorf("TCP metrics (-want +got):\n%s", diff)
			}
		})
	}
}
