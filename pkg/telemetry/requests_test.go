package telemetry

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRequestLabelNames(t *testing.T) {
	got := RequestLabelNames()
	want := append(LabelNames()[:21:21], "response_code", "grpc_response_status", "response_flags", "connection_security_policy")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("RequestLabelNames() mismatch (-want +got):\n%s", diff)
	}
}

func TestRequestsObserve(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels RequestLabels
		want   map[string]string // labels that differ from "unknown"
	}{
		{
			name:   "http defaults",
			labels: RequestLabels{Labels: Labels{Reporter: ReporterWaypoint}, ResponseCode: 200},
			want:   map[string]string{"reporter": "waypoint", "request_protocol": "http", "response_code": "200", "grpc_response_status": "", "response_flags": "-"},
		},
		{
			name: "grpc denied",
			labels: RequestLabels{
				Labels:       Labels{Reporter: ReporterWaypoint, RequestProtocol: ProtocolGRPC, ResponseFlags: FlagDeny, ConnectionSecurityPolicy: PolicyMutualTLS},
				ResponseCode: 403, GRPCStatus: "7",
			},
			want: map[string]string{"reporter": "waypoint", "request_protocol": "grpc", "response_code": "403", "grpc_response_status": "7", "response_flags": "DENY", "connection_security_policy": "mutual_tls"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := NewRequests(reg)
			m.Observe(&tc.labels, 12*time.Millisecond, 10, 2000)
			m.Observe(&tc.labels, 3*time.Millisecond, 0, 5)
			want := map[string]string{}
			for _, n := range requestLabelNames {
				want[n] = "unknown"
			}
			for k, v := range tc.want {
				want[k] = v
			}
			for _, name := range []string{RequestsTotalName, RequestDurationName, RequestBytesName, ResponseBytesName} {
				if diff := cmp.Diff([]map[string]string{want}, labelMaps(t, reg, name)); diff != "" {
					t.Errorf("%s labels mismatch (-want +got):\n%s", name, diff)
				}
			}
			v := tc.labels
			if got := testutil.ToFloat64(m.total.WithLabelValues(v.values()...)); got != 2 {
				t.Errorf("%s = %v, want 2", RequestsTotalName, got)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			sums := map[string]float64{}
			for _, mf := range mfs {
				if h := mf.GetMetric()[0].GetHistogram(); h != nil {
					sums[mf.GetName()] = h.GetSampleSum()
				}
			}
			wantSums := map[string]float64{RequestDurationName: 15, RequestBytesName: 10, ResponseBytesName: 2005}
			if diff := cmp.Diff(wantSums, sums); diff != "" {
				t.Errorf("histogram sums mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNilRequests(t *testing.T) {
	var m *Requests
	m.Observe(&RequestLabels{}, time.Second, 1, 1) // must not panic
}

// TestRequestsSeriesPerLabelSet: label sets that differ only in the
// request's own labels (response code, gRPC status, flags) or in an empty
// versus "unknown" value are counted apart, respectively together, with
// the series cache as without it.
func TestRequestsSeriesPerLabelSet(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewRequests(reg)
	base := Labels{Reporter: ReporterWaypoint}
	for _, l := range []RequestLabels{
		{Labels: base, ResponseCode: 200},
		{Labels: base, ResponseCode: 503},
		{Labels: base, ResponseCode: 503},
		{Labels: Labels{Reporter: ReporterWaypoint, SourceWorkload: Unknown, RequestProtocol: ProtocolHTTP}, ResponseCode: 200},
		{Labels: Labels{Reporter: ReporterWaypoint, RequestProtocol: ProtocolGRPC}, ResponseCode: 200, GRPCStatus: "0"},
		{Labels: Labels{Reporter: ReporterWaypoint, RequestProtocol: ProtocolGRPC}, ResponseCode: 200, GRPCStatus: "14"},
		{Labels: Labels{Reporter: ReporterWaypoint, ResponseFlags: FlagDeny}, ResponseCode: 200},
	} {
		m.Observe(&l, time.Millisecond, 1, 1)
	}
	got := map[string]float64{}
	for _, l := range []RequestLabels{
		{Labels: base, ResponseCode: 200},
		{Labels: base, ResponseCode: 503},
		{Labels: Labels{Reporter: ReporterWaypoint, RequestProtocol: ProtocolGRPC}, ResponseCode: 200, GRPCStatus: "0"},
		{Labels: Labels{Reporter: ReporterWaypoint, RequestProtocol: ProtocolGRPC}, ResponseCode: 200, GRPCStatus: "14"},
		{Labels: Labels{Reporter: ReporterWaypoint, ResponseFlags: FlagDeny}, ResponseCode: 200},
	} {
		v := l.values()
		got[strings.Join(v, ",")] = testutil.ToFloat64(m.total.WithLabelValues(v...))
	}
	var sum float64
	for _, v := range got {
		sum += v
	}
	if len(got) != 5 || sum != 7 || testutil.CollectAndCount(m.total) != 5 {
		t.Errorf("series %v (%d collected), want 5 series adding up to 7 (200: 2, 503: 2, the others 1)", got, testutil.CollectAndCount(m.total))
	}
}
