package main

// The L7 figures of routing at the waypoint (issue 12): mesh+waypoint with
// an HTTPRoute on the Service, of 1 rule and of 100 rules, at 1000 rps.
// Both routes send the bench's request to the same Service; in the
// 100-rule route the rule it matches is the last of the waypoint's list,
// so every request is checked against the 99 others first.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
	"github.com/ambient-go/mesh/tests/netns"
)

// l7Route is one routed variant: a Service bound to the waypoint with an
// HTTPRoute of rules rules attached to it.
type l7Route struct {
	variant, service, route string
	rules                   int
	vip                     netip.Addr
}

var l7Routes = []l7Route{
	{"waypoint+1 rule", "mesh-http-route1", "bench-route-1", 1, netns.VIP(4)},
	{"waypoint+100 rules", "mesh-http-route100", "bench-route-100", 100, netns.VIP(5)},
}

// l7RouteColumns are the variants of the routes' table.
var l7RouteColumns = []string{"mesh+waypoint", l7Routes[0].variant, l7Routes[1].variant}

// The 100-rule route, besides the rule the bench's requests match
// (PathPrefix routePrefix, to the Service): routeExact rules of an Exact
// path the requests do not have, then rules of PathPrefix routePrefix
// and a header the requests do not carry. Istio's precedence (and
// istiod-lite's, istiod-lite/model/route.go) puts Exact paths first, then
// the longest prefix, then more header matches: both kinds come before
// the rule that matches, whatever their order in the route. Each of them
// redirects (302), so that a request that does match one tells.
const (
	routePrefix = "/echo"
	routeExact  = 50
	routeHeader = "x-bench-route"
)

// l7RoutesYAML is the Services and HTTPRoutes of l7Routes.
func l7RoutesYAML() string {
	var b strings.Builder
	for _, rt := range l7Routes {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: bench-mesh
  labels:
    istio.io/use-waypoint: %[2]s
spec:
  clusterIP: %[3]s
  selector:
    app: mesh-server
  ports:
  - name: http
    port: %[4]d
    targetPort: %[4]d
    appProtocol: http
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: %[5]s
  namespace: bench-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: %[1]s
    port: %[4]d
  rules:
  - matches:
    - path: {type: PathPrefix, value: %[6]s}
    backendRefs:
    - name: %[1]s
      port: %[4]d
`, rt.service, waypointGateway, rt.vip, bench.HTTPPort, rt.route, routePrefix)
		const redirect = `    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /elsewhere}, statusCode: 302}
`
		for i := 1; i < rt.rules; i++ {
			if i <= routeExact {
				fmt.Fprintf(&b, "  - matches:\n    - path: {type: Exact, value: /other/%d}\n%s", i, redirect)
				continue
			}
			fmt.Fprintf(&b, "  - matches:\n    - path: {type: PathPrefix, value: %s}\n      headers:\n      - {name: %s, value: r%d}\n%s",
				routePrefix, routeHeader, i, redirect)
		}
	}
	return b.String()
}

// checkRoutePath waits (20 s at most) until the waypoint holds rt's route
// as the figures need it — rt.rules entries, none invalid, the one the
// bench's requests match last — and a request through it is answered and
// counted by the waypoint; then, with more than one rule, that a request
// matching an earlier rule (another path, or the marker header) is
// redirected: the route is applied, not merely held.
func checkRoutePath(ctx context.Context, wp *bench.Waypoint, dial bench.Dialer, rt l7Route) error {
	key := "bench-mesh/" + rt.service + ".bench-mesh.svc.cluster.local"
	var last error
	if err := bench.WaitFor(ctx, 20*time.Second, rt.route+" at the waypoint", func() bool {
		b, err := wp.ConfigDump(ctx)
		if err != nil {
			last = err
			return false
		}
		last = routeHeld(b, key, rt)
		return last == nil
	}); err != nil {
		return fmt.Errorf("%w: %v", err, last)
	}
	before, err := wp.Requests(ctx)
	if err != nil {
		return fmt.Errorf("waypoint metrics: %w", err)
	}
	if err := bench.HTTPCheck(ctx, dial); err != nil {
		return fmt.Errorf("%s: %w", rt.service, err)
	}
	if after, err := wp.Requests(ctx); err != nil || after <= before {
		return fmt.Errorf("%s: answered, but the waypoint counted no request (%v → %v, %v)", rt.service, before, after, err)
	}
	if rt.rules == 1 {
		return nil
	}
	for _, req := range []struct{ path, header string }{
		{"/other/1", ""}, {fmt.Sprintf("/other/%d", routeExact), ""},
		{bench.HTTPPath, fmt.Sprintf("%s: r%d", routeHeader, routeExact+1)}, {bench.HTTPPath, fmt.Sprintf("%s: r%d", routeHeader, rt.rules-1)},
	} {
		code, err := getStatus(ctx, dial, req.path, req.header)
		if err != nil {
			return fmt.Errorf("%s: GET %s (%s): %w", rt.service, req.path, req.header, err)
		}
		if code != http.StatusFound {
			return fmt.Errorf("%s: GET %s (%s) answered %d, want the route's 302", rt.service, req.path, req.header, code)
		}
	}
	return nil
}

// routeHeld checks the waypoint's config dump for rt's entries on the
// Service key.
func routeHeld(dump []byte, key string, rt l7Route) error {
	var d struct {
		Routes []struct {
			Service string `json:"service"`
			HTTP    []struct {
				Route   string `json:"route"`
				Rule    uint32 `json:"rule"`
				Invalid string `json:"invalid"`
				Match   struct {
					Path *struct {
						Type  string `json:"type"`
						Value string `json:"value"`
					} `json:"path"`
					Headers []json.RawMessage `json:"headers"`
				} `json:"match"`
			} `json:"http"`
		} `json:"waypointRoutes"`
	}
	if err := json.Unmarshal(dump, &d); err != nil {
		return fmt.Errorf("config dump: %w", err)
	}
	for _, rs := range d.Routes {
		if rs.Service != key {
			continue
		}
		if len(rs.HTTP) != rt.rules {
			return fmt.Errorf("%s: %d entries, want %d", key, len(rs.HTTP), rt.rules)
		}
		for i, e := range rs.HTTP {
			if e.Invalid != "" {
				return fmt.Errorf("%s: entry %d (rule %d) invalid: %s", key, i, e.Rule, e.Invalid)
			}
		}
		e := rs.HTTP[len(rs.HTTP)-1]
		if e.Route != "bench-mesh/"+rt.route || e.Rule != 0 || e.Match.Path == nil || e.Match.Path.Type != "PREFIX" ||
			e.Match.Path.Value != routePrefix || len(e.Match.Headers) != 0 {
			return fmt.Errorf("%s: the last entry is %s rule %d, not the rule the bench's requests match (%s rule 0)", key, e.Route, e.Rule, rt.route)
		}
		return nil
	}
	return fmt.Errorf("the waypoint holds no routes for %s", key)
}

// getStatus sends a GET of path (with header, "Name: value", when not
// empty) over a new connection and returns the answer's status code.
func getStatus(ctx context.Context, dial bench.Dialer, path, header string) (int, error) {
	c, err := dial(ctx, bench.HTTPPort)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
	if header != "" {
		req += header + "\r\n"
	}
	if _, err := c.Write([]byte(req + "\r\n")); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// l7RouteRows are the routes' table; none when the routed variants did
// not run.
func (r *results) l7RouteRows() []bench.Row {
	if r.l7 == nil || r.series[fmt.Sprintf("http%d-cpu/2", l7RouteRate)][l7Routes[0].variant] == nil {
		return nil
	}
	key := fmt.Sprintf("http%d", l7RouteRate)
	one, hundred := l7Routes[0].variant, l7Routes[1].variant
	// CPU-s per 1000 requests is ms per request: ×1000 for µs.
	us := func(m map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for k, v := range m {
			out[k] = v * 1000
		}
		return out
	}
	cpu := us(r.medians(key + "-cpu/2"))
	grow := bench.Ratio(cpu[hundred], cpu[one])
	rows := []bench.Row{{
		Figure: fmt.Sprintf("CPU per request at %d rps, waypoint", l7RouteRate), Unit: "µs", Values: cpu,
		Ratios: []string{ratio("100 rules/1 rule", cpu[hundred], cpu[one]), ratio("1 rule/no route", cpu[one], cpu["mesh+waypoint"])},
		Target: "100 rules/1 rule < 1.10×", Verdict: bench.Check(grow < 1.10),
	}}
	all := us(r.medians(key + "-cpuall"))
	rows = append(rows, bench.Row{
		Figure: fmt.Sprintf("CPU per request at %d rps, all proxies of the path", l7RouteRate), Unit: "µs", Values: all,
		Ratios: []string{ratio("100 rules/1 rule", all[hundred], all[one])},
	})
	for _, p := range []string{"p50", "p99"} {
		v := r.medians(key + "-" + p)
		rows = append(rows, bench.Row{
			Figure: fmt.Sprintf("HTTP 1 KiB POST latency %s at %d rps", p, l7RouteRate), Unit: "µs", Values: v,
			Ratios: []string{fmt.Sprintf("100 rules %+.0f µs over 1 rule", v[hundred]-v[one]), fmt.Sprintf("1 rule %+.0f µs over no route", v[one]-v["mesh+waypoint"])},
		})
	}
	return rows
}

// l7RouteDocument is the report's part on the routed variants.
func (r *results) l7RouteDocument(o options) string {
	rows := r.l7RouteRows()
	if len(rows) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, `
### Routes at the waypoint

mesh+waypoint (no route on its Service, from the table above) against two
more Services bound to the same waypoint, each with an HTTPRoute attached
(parentRef the Service, port %[1]d; local mode, in istiod-lite's config
directory with the Gateway), sending the bench's requests to the same
Service (mesh-server):

- **%[2]s**: Service %[3]s (VIP %[4]s), HTTPRoute %[5]s of one rule,
  PathPrefix %[6]s → the Service.
- **%[7]s**: Service %[8]s (VIP %[9]s), HTTPRoute %[10]s of 100 rules: the
  same rule, then %[11]d of an Exact path (/other/N) and %[12]d of PathPrefix
  %[6]s with a header match (%[13]s: rN), each redirecting (302). By the
  spec's precedence (Exact first, then the longest prefix, then more header
  matches) the rule the requests match is the last of the waypoint's list
  although it is written first, so every request is tried against the 99
  others before it. Before the figures the bench checks, in the waypoint's
  /config_dump, that it holds the 100 entries in that order with none
  invalid, and that a request to /other/1 or with the header is
  redirected. The Gateway API CRD allows at most 16 rules per HTTPRoute;
  local mode does not apply that limit, and on a cluster the same 100
  entries come from 7 routes.

Both run at %[14]d rps only, interleaved with the five variants above
(%[15]d runs each, medians; the mesh+waypoint column is the same runs as
above). CPU per request is the process's CPU over each run divided by its
requests. Routed requests carry Istio's default retry policy (their body
held for a retry), so "1 rule/no route" includes that.

`, bench.HTTPPort, l7Routes[0].variant, l7Routes[0].service, l7Routes[0].vip, l7Routes[0].route, routePrefix,
		l7Routes[1].variant, l7Routes[1].service, l7Routes[1].vip, l7Routes[1].route, routeExact, l7Routes[1].rules-1-routeExact, routeHeader,
		l7RouteRate, o.runs)
	b.WriteString(bench.Markdown(rows, l7RouteColumns))
	return b.String()
}
