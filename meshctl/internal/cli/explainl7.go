package cli

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// The waypoint hop of explain: the L7 policies a waypoint holds (read from
// its /config_dump), which of them apply to the destination, and, given a
// request (--method, --path, --header, --host, or --tcp), the decision of
// pkg/authz's L7 evaluator, the code the waypoint runs for every request
// (waypoint/proxy http.go and tcp.go), on the attributes the waypoint would
// give it.

// L7Request is the request explain decides at a waypoint.
type L7Request struct {
	// TCP: a stream that is not HTTP (the waypoint's EvaluateTCP).
	TCP    bool   `json:"tcp,omitempty"`
	Method string `json:"method,omitempty"`
	Host   string `json:"host,omitempty"`
	Path   string `json:"path,omitempty"`
	// Headers have canonical keys, as net/http gives them to the waypoint.
	Headers http.Header `json:"headers,omitempty"`
}

// L7Policy is one L7 policy a waypoint holds.
type L7Policy struct {
	Name    string   `json:"name"` // namespace/name
	Action  string   `json:"action"`
	DryRun  bool     `json:"dryRun,omitempty"`
	Targets []string `json:"targets"`
	// Applies reports whether the policy binds to the path's destination
	// (its Service, the waypoint's Gateway, or every waypoint).
	Applies bool `json:"applies"`
	// Matches says, in the policy's own terms, which requests it matches.
	Matches string `json:"matches"`
}

// requestFlags are explain's request flags.
type requestFlags struct {
	method, path, host string
	headers            []string
	tcp                bool
}

func (f *requestFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.method, "method", "", "decide this request at the waypoint: its method (default GET when a request flag is given)")
	fs.StringVar(&f.path, "path", "", "decide this request at the waypoint: its path, query included (default /)")
	fs.StringVar(&f.host, "host", "", "decide this request at the waypoint: its Host (default DST, without :80)")
	fs.StringArrayVar(&f.headers, "header", nil, "decide this request at the waypoint: a header NAME=VALUE (repeatable)")
	fs.BoolVar(&f.tcp, "tcp", false, "decide a stream that is not HTTP at the waypoint (its L7 policies' rules for TCP)")
}

// request returns the request the flags describe, nil when none is given;
// dstHost and port are DST's, for the default Host.
func (f *requestFlags) request(dstHost string, port uint16) (*L7Request, error) {
	if f.tcp {
		if f.method != "" || f.path != "" || f.host != "" || len(f.headers) > 0 {
			return nil, fmt.Errorf("--tcp takes no --method, --path, --host or --header")
		}
		return &L7Request{TCP: true}, nil
	}
	if f.method == "" && f.path == "" && f.host == "" && len(f.headers) == 0 {
		return nil, nil
	}
	r := &L7Request{Method: f.method, Path: f.path, Host: f.host}
	if r.Method == "" {
		r.Method = http.MethodGet
	}
	if r.Path == "" {
		r.Path = "/"
	}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, ": \t") {
			return nil, fmt.Errorf("--header %q: want NAME=VALUE", h)
		}
		if strings.EqualFold(k, "host") { // net/http moves Host out of the headers
			if r.Host == "" {
				r.Host = v
			}
			continue
		}
		if r.Headers == nil {
			r.Headers = http.Header{}
		}
		r.Headers.Add(k, v)
	}
	if r.Host == "" {
		r.Host = dstHost
		if port != 80 {
			r.Host = net.JoinHostPort(dstHost, strconv.Itoa(int(port)))
		}
	}
	return r, nil
}

// l7Hop fills the waypoint hop h from the waypoint's dump: the policies,
// which apply, and the decision of req (nil: none asked). attrs holds what
// the waypoint knows of every request of this path; it returns the
// decision's verdict ("" when none was made).
func l7Hop(h *Hop, pols []*waypoint.Authorization, req *L7Request, attrs authz.Request) string {
	h.L7Policies = []L7Policy{}
	for _, a := range pols {
		p := L7Policy{Name: authz.L7Key(a), Action: a.GetAction().String(), DryRun: a.GetDryRun(), Matches: describeRules(a)}
		for _, t := range a.GetTargets() {
			switch k := t.GetKind().(type) {
			case *waypoint.Target_AllWaypoints:
				if k.AllWaypoints {
					p.Targets = append(p.Targets, "every waypoint")
					p.Applies = true
				}
			case *waypoint.Target_Gateway:
				p.Targets = append(p.Targets, "Gateway "+k.Gateway)
				p.Applies = p.Applies || attrs.Gateway != "" && k.Gateway == attrs.Gateway
			case *waypoint.Target_Service:
				p.Targets = append(p.Targets, "Service "+k.Service)
				p.Applies = p.Applies || attrs.Service != "" && k.Service == attrs.Service
			}
		}
		h.L7Policies = append(h.L7Policies, p)
		if p.Applies {
			desc := fmt.Sprintf("%s (%s, %s)", p.Name, p.Action, strings.Join(p.Targets, ", "))
			if p.DryRun {
				desc += " dry-run"
			}
			h.Policies = append(h.Policies, desc)
		}
	}
	slices.SortFunc(h.L7Policies, func(a, b L7Policy) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(h.Policies)
	if req == nil {
		return ""
	}
	h.Request = req
	r := attrs
	var dec authz.L7Decision
	compiled := authz.CompileL7(pols)
	if req.TCP {
		dec = compiled.EvaluateTCP(&r)
	} else {
		r.Method, r.Host, r.Path, r.Header = req.Method, req.Host, req.Path, req.Headers
		if r.Header == nil {
			r.Header = http.Header{}
		}
		if first, ok := firstForwardedFor(r.Header); ok {
			r.Remote = first
		}
		dec = compiled.Evaluate(&r)
	}
	what := "request"
	if req.TCP {
		what = "stream"
	}
	verdict := verdictWord(dec.Allow)
	h.Decision = verdict
	if !dec.Allow && !req.TCP {
		code := http.StatusForbidden
		if dec.Reason == authz.InvalidPath {
			code = http.StatusBadRequest
		}
		h.Decision += " " + strconv.Itoa(code)
	}
	h.Decision += " (" + dec.Reason.String() + ")"
	h.DecidedBy = dec.Policy
	if dec.DryRun {
		shadow := dec.Shadow.Reason.String()
		if dec.Shadow.Policy != "" {
			shadow += ": " + dec.Shadow.Policy
		}
		h.Does = append(h.Does, fmt.Sprintf("with its dry-run L7 policies enforced it would %s this %s (%s)", verdictWord(dec.Shadow.Allow), what, shadow))
	}
	if len(dec.Audit) > 0 {
		h.Does = append(h.Does, "AUDIT policies that match it: "+strings.Join(dec.Audit, ", "))
	}
	return verdict
}

// firstForwardedFor is the waypoint's remote.ip: the first address of
// X-Forwarded-For, if it parses (waypoint/proxy http.go).
func firstForwardedFor(h http.Header) (netip.Addr, bool) {
	first, _, _ := strings.Cut(h.Get("X-Forwarded-For"), ",")
	a, err := netip.ParseAddr(strings.TrimSpace(first))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// describeRules says which requests policy a matches, in its own terms:
// rules OR'd, each "from ... to ... when ...".
func describeRules(a *waypoint.Authorization) string {
	if len(a.GetRules()) == 0 {
		return "nothing (no rules)"
	}
	var rules []string
	for _, r := range a.GetRules() {
		var parts []string
		var from []string
		for _, s := range r.GetFrom() {
			from = append(from, fields(
				"principals", s.GetPrincipals(), "notPrincipals", s.GetNotPrincipals(),
				"namespaces", s.GetNamespaces(), "notNamespaces", s.GetNotNamespaces(),
				"serviceAccounts", s.GetServiceAccounts(), "notServiceAccounts", s.GetNotServiceAccounts(),
				"ipBlocks", s.GetIpBlocks(), "notIpBlocks", s.GetNotIpBlocks(),
				"remoteIpBlocks", s.GetRemoteIpBlocks(), "notRemoteIpBlocks", s.GetNotRemoteIpBlocks()))
		}
		if len(from) > 0 {
			parts = append(parts, "from "+strings.Join(from, " or "))
		}
		var to []string
		for _, o := range r.GetTo() {
			to = append(to, fields(
				"hosts", o.GetHosts(), "notHosts", o.GetNotHosts(),
				"ports", o.GetPorts(), "notPorts", o.GetNotPorts(),
				"methods", o.GetMethods(), "notMethods", o.GetNotMethods(),
				"paths", o.GetPaths(), "notPaths", o.GetNotPaths()))
		}
		if len(to) > 0 {
			parts = append(parts, "to "+strings.Join(to, " or "))
		}
		var when []string
		for _, c := range r.GetWhen() {
			if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
				when = append(when, c.GetKey()+" (any value)")
				continue
			}
			when = append(when, fields(c.GetKey(), c.GetValues(), "not "+c.GetKey(), c.GetNotValues()))
		}
		if len(when) > 0 {
			parts = append(parts, "when "+strings.Join(when, " and "))
		}
		if len(parts) == 0 {
			rules = append(rules, "every request")
			continue
		}
		rules = append(rules, strings.Join(parts, " "))
	}
	if len(rules) == 1 {
		return rules[0]
	}
	return "(" + strings.Join(rules, ") or (") + ")"
}

// fields renders name/values pairs ("paths=/admin,/debug"), skipping
// empty ones; "any" when all are empty.
func fields(kv ...any) string {
	var out []string
	for i := 0; i+1 < len(kv); i += 2 {
		if vs := kv[i+1].([]string); len(vs) > 0 {
			out = append(out, kv[i].(string)+"="+strings.Join(vs, ","))
		}
	}
	if len(out) == 0 {
		return "any"
	}
	return strings.Join(out, " ")
}
