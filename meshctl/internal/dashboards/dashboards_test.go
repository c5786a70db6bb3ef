package dashboards

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/meshctl/internal/meshtest"
	"github.com/ambient-go/mesh/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const dashboardFile = "../../../deploy/observability/mesh-dashboard.json"

// targetLabels are the labels the scrape configuration adds
// (prometheus-scrape.yaml) on top of what the proxies export.
var targetLabels = []string{"job", "instance", "pod", "namespace", "node", "gateway"}

// grafanaVars replaces Grafana's template variables by values, as Grafana
// does before sending a query.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${datasource}", "x", "$namespace", ".*", "$workload", ".*",
)

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// queries returns every PromQL query of the dashboard: the panels'
// targets and the selectors of label_values() variables.
func queries(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		q, ok := v.Query.(map[string]any)
		if !ok {
			continue
		}
		s, _ := q["query"].(string)
		if m := labelValues.FindStringSubmatch(s); m != nil {
			out["variable "+v.Name] = m[1]
		}
	}
	return out
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// exported returns the metric names ztunnel and the waypoint export, with
// the label names of each, scraped from a running mesh after traffic of
// every kind went through it (vectors show only the series used).
func exported(t *testing.T) map[string][]string {
	t.Helper()
	m, _ := meshtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		src netip.Addr
		vip netip.Addr
	}{
		{m.PodIP(0, 0), m.VIP(1)}, // through the waypoint: request metrics
		{m.PodIP(0, 0), m.VIP(0)}, // direct: TCP metrics
		{m.PodIP(0, 1), m.VIP(0)}, // denied: a response flag
	} {
		c := harness.HTTPClient(tc.src)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(tc.vip, 80).String()+"/", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
		c.CloseIdleConnections()
	}
	out := map[string][]string{}
	addrs := []string{
		m.Ztunnel("node-a").Admin().MetricsAddr().String(),
		m.Ztunnel("node-b").Admin().MetricsAddr().String(),
		m.Waypoint("demo", "waypoint").Admin().MetricsAddr().String(),
	}
	// The records reach the registries when the connections close: wait
	// until the request, TCP and flag metrics are all there.
	want := []string{"istio_requests_total", "istio_request_duration_milliseconds_bucket", "istio_tcp_connections_closed_total", "process_cpu_seconds_total"}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		clear(out)
		for _, a := range addrs {
			scrape(t, ctx, a, out)
		}
		missing := slices.DeleteFunc(slices.Clone(want), func(n string) bool { _, ok := out[n]; return ok })
		if len(missing) == 0 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxies never exported %v", missing)
		}
	}
}

func scrape(t *testing.T, ctx context.Context, addr string, out map[string][]string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats/prometheus", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scraping %s: %v", addr, err)
	}
	add := func(name string, labels []string) {
		for _, l := range labels {
			if !slices.Contains(out[name], l) {
				out[name] = append(out[name], l)
			}
		}
		if _, ok := out[name]; !ok {
			out[name] = []string{}
		}
	}
	for name, f := range fams {
		var labels []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName())
			}
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			add(name+"_bucket", append(slices.Clone(labels), "le"))
			add(name+"_sum", labels)
			add(name+"_count", labels)
		case dto.MetricType_SUMMARY:
			add(name, append(slices.Clone(labels), "quantile"))
			add(name+"_sum", labels)
			add(name+"_count", labels)
		default:
			add(name, labels)
		}
	}
}

// TestDashboardQueries: every query parses, and every selector names a
// metric the proxies export and labels that metric carries (or that the
// scrape adds).
func TestDashboardQueries(t *testing.T) {
	qs := queries(t, dashboardFile)
	if len(qs) < 15 {
		t.Fatalf("%s holds %d queries, want the whole dashboard (at least 15)", dashboardFile, len(qs))
	}
	metrics := exported(t)
	p := parser.NewParser(parser.Options{})
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range qs {
			if !yield(k) {
				return
			}
		}
	}) {
		q := grafanaVars.Replace(qs[name])
		expr, err := p.ParseExpr(q)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", name, qs[name], err)
			continue
		}
		selectors := 0
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			selectors++
			labels, ok := metrics[vs.Name]
			if !ok {
				t.Errorf("%s: metric %q is not exported by ztunnel or the waypoint", name, vs.Name)
				return nil
			}
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel || slices.Contains(targetLabels, m.Name) || slices.Contains(labels, m.Name) {
					continue
				}
				t.Errorf("%s: metric %s has no label %q (it has %v)", name, vs.Name, m.Name, labels)
			}
			return nil
		})
		if selectors == 0 {
			t.Errorf("%s: %q selects no metric", name, qs[name])
		}
	}
}

// TestQueriesFromDashboard: the extraction above sees a broken query and
// an unknown metric (so that TestDashboardQueries can fail).
func TestQueriesFromDashboard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.json")
	os.WriteFile(path, []byte(`{"panels":[{"type":"row","panels":[{"title":"p","targets":[{"refId":"A","expr":"rate(x_total[$__rate_interval]"}]}]}],
"templating":{"list":[{"name":"ns","query":{"query":"label_values(y_total{a=\"$namespace\"}, b)"}}]}}`), 0o644)
	qs := queries(t, path)
	want := map[string]string{"p A": "rate(x_total[$__rate_interval]", "variable ns": `y_total{a="$namespace"}`}
	if len(qs) != len(want) || qs["p A"] != want["p A"] || qs["variable ns"] != want["variable ns"] {
		t.Fatalf("queries() = %v, want %v", qs, want)
	}
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(qs["p A"])); err == nil {
		t.Errorf("the unbalanced query parsed")
	}
}
