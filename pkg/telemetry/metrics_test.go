package telemetry

import (
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func fullLabels() Labels {
	return Labels{
		Reporter:                     ReporterDestination,
		SourceWorkload:               "sleep",
		SourceCanonicalService:       "sleep",
		SourceCanonicalRevision:      "v1",
		SourceWorkloadNamespace:      "default",
		SourcePrincipal:              "spiffe://cluster.local/ns/default/sa/sleep",
		SourceApp:                    "sleep",
		SourceVersion:                "v1",
		SourceCluster:                "Kubernetes",
		DestinationService:           "echo.default.svc.cluster.local",
		DestinationServiceNamespace:  "default",
		DestinationServiceName:       "echo",
		DestinationWorkload:          "echo",
		DestinationCanonicalService:  "echo",
		DestinationCanonicalRevision: "v2",
		DestinationWorkloadNamespace: "default",
		DestinationPrincipal:         "spiffe://cluster.local/ns/default/sa/echo",
		DestinationApp:               "echo",
		DestinationVersion:           "v2",
		DestinationCluster:           "Kubernetes",
		RequestProtocol:              ProtocolTCP,
		ResponseFlags:                FlagNone,
		ConnectionSecurityPolicy:     PolicyMutualTLS,
	}
}

// labelMap gathers reg and returns the labels of each series of metric name.
func labelMaps(t *testing.T, reg *prometheus.Registry, name string) []map[string]string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	var out []map[string]string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			lm := map[string]string{}
			for _, lp := range m.GetLabel() {
				lm[lp.GetName()] = lp.GetValue()
			}
			out = append(out, lm)
		}
	}
	return out
}

func TestLabelValuesOrder(t *testing.T) {
	// Every field of Labels maps to exactly one label, in declaration order.
	l := fullLabels()
	got := l.values()
	if len(got) != len(labelNames) {
		t.Fatalf("len(values()) = %d, want %d", len(got), len(labelNames))
	}
	want := []string{
		"destination", "sleep", "sleep", "v1", "default",
		"spiffe://cluster.local/ns/default/sa/sleep", "sleep", "v1", "Kubernetes",
		"echo.default.svc.cluster.local", "default", "echo", "echo", "echo", "v2", "default",
		"spiffe://cluster.local/ns/default/sa/echo", "echo", "v2", "Kubernetes",
		"tcp", "-", "mutual_tls",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("values() mismatch (-want +got):\n%s", diff)
	}
}

func TestLabels(t *testing.T) {
	full := fullLabels()
	fullMap := map[string]string{}
	for i, v := range full.values() {
		fullMap[labelNames[i]] = v
	}
	emptyMap := map[string]string{}
	for _, n := range labelNames {
		emptyMap[n] = "unknown"
	}
	emptyMap["request_protocol"] = "tcp"
	emptyMap["response_flags"] = "-"

	for _, tc := range []struct {
		name   string
		labels Labels
		want   map[string]string
	}{
		{name: "all set", labels: full, want: fullMap},
		{name: "empty is unknown", labels: Labels{}, want: emptyMap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := NewMetrics(reg)
			c := m.Open(&tc.labels)
			c.AddSent(1)
			c.AddReceived(1)
			c.Close()
			for _, name := range []string{ConnectionsOpenedName, ConnectionsClosedName, SentBytesName, ReceivedBytesName} {
				got := labelMaps(t, reg, name)
				if diff := cmp.Diff([]map[string]string{tc.want}, got); diff != "" {
					t.Errorf("%s labels mismatch (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func TestCounts(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	a := fullLabels()
	b := fullLabels()
	b.Reporter = ReporterSource

	c1 := m.Open(&a)
	c2 := m.Open(&a)
	c3 := m.Open(&b)
	c1.AddSent(100)
	c1.AddSent(20)
	c1.AddReceived(7)
	c2.AddReceived(3)
	c3.AddSent(5)
	c1.Close()
	c1.Close() // idempotent
	c3.Close()

	av, bv := a.values(), b.values()
	for _, tc := range []struct {
		name string
		vec  *prometheus.CounterVec
		lv   []string
		want float64
	}{
		{name: "opened a", vec: m.opened, lv: av, want: 2},
		{name: "opened b", vec: m.opened, lv: bv, want: 1},
		{name: "closed a", vec: m.closed, lv: av, want: 1},
		{name: "closed b", vec: m.closed, lv: bv, want: 1},
		{name: "sent a", vec: m.sent, lv: av, want: 120},
		{name: "received a", vec: m.received, lv: av, want: 10},
		{name: "sent b", vec: m.sent, lv: bv, want: 5},
		{name: "received b", vec: m.received, lv: bv, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := testutil.ToFloat64(tc.vec.WithLabelValues(tc.lv...)); got != tc.want {
				t.Errorf("counter = %v, want %v", got, tc.want)
			}
		})
	}
	if got, want := c1.Sent(), int64(120); got != want {
		t.Errorf("c1.Sent() = %d, want %d", got, want)
	}
	if got, want := c1.Received(), int64(7); got != want {
		t.Errorf("c1.Received() = %d, want %d", got, want)
	}
	if got, want := testutil.CollectAndCount(m.opened), 2; got != want {
		t.Errorf("opened series = %d, want %d", got, want)
	}
}

func TestCloseWithFlags(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	c := m.Open(&Labels{Reporter: ReporterDestination, SourceWorkload: "sleep"})
	c.CloseWithFlags(FlagDeny)
	c.Close() // already closed: not counted again

	// The series of the labels given to Open exists from Open on (at 0 for
	// closed); the closed connection is counted under response_flags="DENY".

	const want = `
# HELP istio_tcp_connections_closed_total The total number of TCP connections closed
# TYPE istio_tcp_connections_closed_total counter
istio_tcp_connections_closed_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="destination",request_protocol="tcp",response_flags="-",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="sleep",source_workload_namespace="unknown"} 0
istio_tcp_connections_closed_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="destination",request_protocol="tcp",response_flags="DENY",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="sleep",source_workload_namespace="unknown"} 1
# HELP istio_tcp_connections_opened_total The total number of TCP connections opened
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{connection_security_policy="unknown",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="destination",request_protocol="tcp",response_flags="-",source_app="unknown",source_canonical_revision="unknown",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="sleep",source_workload_namespace="unknown"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), ConnectionsOpenedName, ConnectionsClosedName); err != nil {
		t.Error(err)
	}
}

func TestNilSafe(t *testing.T) {
	var m *Metrics
	c := m.Open(&Labels{})
	c.AddSent(1)
	c.AddReceived(1)
	c.Close()
	c.CloseWithFlags(FlagDeny)
	if c.Sent() != 0 || c.Received() != 0 {
		t.Errorf("nil Conn counts = %d, %d, want 0, 0", c.Sent(), c.Received())
	}
}

func TestConcurrent(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	l := fullLabels()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c := m.Open(&l)
				c.AddSent(1)
				c.AddReceived(2)
				c.Close()
			}
		})
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.closed.WithLabelValues(l.values()...)); got != 800 {
		t.Errorf("closed = %v, want 800", got)
	}
	if got := testutil.ToFloat64(m.received.WithLabelValues(l.values()...)); got != 1600 {
		t.Errorf("received = %v, want 1600", got)
	}
}

func TestOpenAllocs(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	l := fullLabels()
	m.Open(&l).Close() // create the series
	allocs := testing.AllocsPerRun(100, func() {
		c := m.Open(&l)
		c.AddSent(10)
		c.AddReceived(10)
		c.Close()
	})
	if allocs > 1 {
		t.Errorf("Open/Add/Close allocs = %v, want <= 1", allocs)
	}
}

func BenchmarkConn(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	l := fullLabels()
	b.ReportAllocs()
	for b.Loop() {
		c := m.Open(&l)
		c.AddSent(10)
		c.AddReceived(10)
		c.Close()
	}
}
