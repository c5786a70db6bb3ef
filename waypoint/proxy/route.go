package proxy

import (
	"math/bits"
	"net/http"
	neturl "net/url"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Routes is the compiled routing of the services this waypoint serves:
// the ambientgo.waypoint.Routes resources istiod-lite translates from the
// HTTPRoutes, GRPCRoutes and TCPRoutes attached to each Service, with
// every regular expression compiled once. It is immutable; the waypoint
// swaps a whole new one in on every update (Config.Routes). A Service
// without an entry is served as without routes: every request to one of
// its own endpoints.
//
// A Service's consumer routes (entries with a consumer namespace: routes
// of another namespace attached to it, GEP-1294) apply only to clients of
// that namespace, known by the HBONE peer's identity, and instead of the
// producer routes, port by port.
type Routes struct {
	services map[string]*serviceRoutes // by Service key, namespace/hostname
}

// serviceRoutes is one Service's routes.
type serviceRoutes struct {
	key string
	// routeGroup holds the producer routes, for every client.
	routeGroup
	// consumers holds the consumer routes by client namespace; nil when
	// the Service has none (then no client's identity is looked at).
	consumers map[string]*routeGroup
}

// routeGroup is the routes of one group: a Service's producer routes, or
// its consumer routes of one namespace.
type routeGroup struct {
	http []*httpRoute // in istiod-lite's precedence order
	tcp  []*tcpRoute
	// httpPorts are the ports some HTTP entry names; httpAnyPort: an entry
	// with port 0. A request on such a port that no entry matches is
	// answered 404.
	httpPorts   map[uint16]bool
	httpAnyPort bool
}

// httpRoute is one compiled HTTPRouteEntry.
type httpRoute struct {
	name    string // route "namespace/name", for the access log
	kind    string
	rule    uint32
	port    uint16 // 0: every port
	path    pathMatch
	headers []headerMatch
	query   []headerMatch
	method  string
	filters routeFilters
	// backends is nil for a redirect.
	backends *backendSet
	// invalid: the rule cannot be served; 500 with this message.
	invalid string

	requestTimeout, backendTimeout uint32 // milliseconds; 0: none
	retry                          retryPolicy
}

// tcpRoute is one compiled TCPRouteEntry.
type tcpRoute struct {
	name     string
	port     uint16
	backends *backendSet
}

// pathMatch matches a request's path (without its query).
type pathMatch struct {
	kind  waypoint.StringMatch_Type
	any   bool   // no path match
	value string // EXACT; PREFIX without its trailing '/'
	re    *regexp.Regexp
}

// headerMatch matches one header (name canonical) or query parameter.
type headerMatch struct {
	name  string
	value string
	re    *regexp.Regexp // REGEX; nil: exact
}

// CompileRoutes compiles rs. An entry that cannot be compiled (a regular
// expression RE2 rejects) is kept, marked invalid: it answers 500 where it
// matches, as the spec asks of a rule an implementation drops.
func CompileRoutes(rs []*waypoint.Routes) *Routes {
	out := &Routes{services: make(map[string]*serviceRoutes, len(rs))}
	for _, r := range rs {
		if r == nil || r.GetService() == "" {
			continue
		}
		sr := &serviceRoutes{key: r.GetService(), routeGroup: routeGroup{httpPorts: map[uint16]bool{}}}
		for _, e := range r.GetHttp() {
			hr := compileHTTPRoute(e)
			g := sr.group(e.GetConsumerNamespace())
			g.http = append(g.http, hr)
			if hr.port == 0 {
				g.httpAnyPort = true
			} else {
				g.httpPorts[hr.port] = true
			}
		}
		for _, e := range r.GetTcp() {
			g := sr.group(e.GetConsumerNamespace())
			g.tcp = append(g.tcp, &tcpRoute{name: e.GetRoute(), port: uint16(e.GetPort()), backends: compileBackends(e.GetBackends())})
		}
		out.services[sr.key] = sr
	}
	return out
}

func compileHTTPRoute(e *waypoint.HTTPRouteEntry) *httpRoute {
	hr := &httpRoute{
		name:           e.GetRoute(),
		kind:           e.GetKind(),
		rule:           e.GetRule(),
		port:           uint16(e.GetPort()),
		method:         e.GetMatch().GetMethod(),
		invalid:        e.GetInvalid(),
		requestTimeout: e.GetRequestTimeoutMs(),
		backendTimeout: e.GetBackendRequestTimeoutMs(),
		retry:          compileRetry(e.GetRetry()),
	}
	var err error
	invalid := func(what string, e error) {
		if hr.invalid == "" {
			hr.invalid = what + ": " + e.Error()
		}
	}
	if hr.path, err = compilePath(e.GetMatch().GetPath()); err != nil {
		invalid("path match", err)
	}
	for _, h := range e.GetMatch().GetHeaders() {
		m, err := compileHeaderMatch(h, true)
		if err != nil {
			invalid("header match", err)
		}
		hr.headers = append(hr.headers, m)
	}
	for _, q := range e.GetMatch().GetQueryParams() {
		m, err := compileHeaderMatch(q, false)
		if err != nil {
			invalid("query match", err)
		}
		hr.query = append(hr.query, m)
	}
	hr.filters = compileFilters(e.GetFilters(), hr.path)
	if hr.filters.redirect == nil {
		hr.backends = compileBackends(e.GetBackends())
		for _, b := range hr.backends.all {
			b.filters = compileFilters(b.filters0, hr.path)
		}
	}
	return hr
}

// fullMatch compiles an RE2 expression that must match a whole value.
func fullMatch(expr string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + expr + `)$`)
}

func compilePath(m *waypoint.StringMatch) (pathMatch, error) {
	if m == nil {
		return pathMatch{any: true}, nil
	}
	pm := pathMatch{kind: m.GetType(), value: m.GetValue()}
	switch m.GetType() {
	case waypoint.StringMatch_PREFIX:
		pm.value = strings.TrimSuffix(pm.value, "/")
		pm.any = pm.value == ""
	case waypoint.StringMatch_REGEX:
		re, err := fullMatch(m.GetValue())
		if err != nil {
			return pathMatch{}, err
		}
		pm.re = re
	}
	return pm, nil
}

func compileHeaderMatch(h *waypoint.HeaderMatch, header bool) (headerMatch, error) {
	m := headerMatch{name: h.GetName(), value: h.GetValue().GetValue()}
	if header {
		m.name = http.CanonicalHeaderKey(m.name)
	}
	if h.GetValue().GetType() == waypoint.StringMatch_REGEX {
		re, err := fullMatch(m.value)
		if err != nil {
			return m, err
		}
		m.re = re
	}
	return m, nil
}

// matches reports whether the path (without query) fits.
func (m *pathMatch) matches(path string) bool {
	switch {
	case m.any:
		return true
	case m.kind == waypoint.StringMatch_EXACT:
		return path == m.value
	case m.kind == waypoint.StringMatch_PREFIX:
		// Element-wise: "/foo" matches "/foo" and "/foo/bar", not "/foobar".
		return strings.HasPrefix(path, m.value) && (len(path) == len(m.value) || path[len(m.value)] == '/')
	case m.re != nil:
		return m.re.MatchString(path)
	}
	return false
}

func (m *headerMatch) matches(v string) bool {
	if m.re != nil {
		return m.re.MatchString(v)
	}
	return v == m.value
}

// requestView is what route matching reads of a request; the query is
// parsed at most once, and only for an entry that matches on it.
type requestView struct {
	r      *http.Request
	path   string // normalized, without query
	query  neturl.Values
	parsed bool
}

func newRequestView(r *http.Request) *requestView {
	v := new(requestView)
	v.init(r)
	return v
}

func (v *requestView) init(r *http.Request) {
	path, _, _ := strings.Cut(r.RequestURI, "?")
	if path == "" || path[0] != '/' {
		path = r.URL.EscapedPath()
	}
	*v = requestView{r: r, path: path}
}

func (v *requestView) queryValue(name string) (string, bool) {
	if !v.parsed {
		v.query, _ = neturl.ParseQuery(v.r.URL.RawQuery)
		v.parsed = true
	}
	vs, ok := v.query[name]
	if !ok || len(vs) == 0 {
		return "", false
	}
	return vs[0], true // the first value, as Envoy's query parameter matcher
}

// matches reports whether the entry takes the request on service port port.
func (hr *httpRoute) matches(v *requestView, port uint16) bool {
	if hr.port != 0 && hr.port != port {
		return false
	}
	if hr.method != "" && v.r.Method != hr.method {
		return false
	}
	if !hr.path.matches(v.path) {
		return false
	}
	for i := range hr.headers {
		m := &hr.headers[i]
		vs, ok := v.r.Header[m.name]
		if !ok {
			return false
		}
		val := vs[0]
		if len(vs) > 1 {
			val = strings.Join(vs, ",") // Envoy matches the values joined
		}
		if !m.matches(val) {
			return false
		}
	}
	for i := range hr.query {
		m := &hr.query[i]
		val, ok := v.queryValue(m.name)
		if !ok || !m.matches(val) {
			return false
		}
	}
	return true
}

// group returns the group of consumer namespace ns ("": the producer
// routes), making it if need be.
func (sr *serviceRoutes) group(ns string) *routeGroup {
	if ns == "" {
		return &sr.routeGroup
	}
	g := sr.consumers[ns]
	if g == nil {
		if sr.consumers == nil {
			sr.consumers = map[string]*routeGroup{}
		}
		g = &routeGroup{httpPorts: map[uint16]bool{}}
		sr.consumers[ns] = g
	}
	return g
}

// consumer returns the consumer routes of the namespace of client src,
// or nil.
func (sr *serviceRoutes) consumer(src spiffeid.ID) *routeGroup {
	if sr.consumers == nil {
		return nil
	}
	return sr.consumers[sourceNamespace(src)]
}

// httpFor returns the group whose HTTP routes serve a request from client
// src to port: the consumer routes of src's namespace when they route
// port, else the producer routes.
func (sr *serviceRoutes) httpFor(src spiffeid.ID, port uint16) *routeGroup {
	if g := sr.consumer(src); g != nil && g.routesHTTP(port) {
		return g
	}
	return &sr.routeGroup
}

// routeTCPFor returns the TCP entry of a stream from client src to port:
// of src's namespace's consumer routes when one fits, else of the producer
// routes; nil when none fits.
func (sr *serviceRoutes) routeTCPFor(src spiffeid.ID, port uint16) *tcpRoute {
	if g := sr.consumer(src); g != nil {
		if tr := g.routeTCP(port); tr != nil {
			return tr
		}
	}
	return sr.routeTCP(port)
}

// sourceNamespace returns the namespace of a workload identity
// (spiffe://<td>/ns/<ns>/sa/<sa>), or "" for another kind of ID. It
// allocates nothing.
func sourceNamespace(id spiffeid.ID) string {
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	if !ok {
		return ""
	}
	ns, _, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return ns
}

// routesHTTP reports whether the group has an HTTP entry for port.
func (g *routeGroup) routesHTTP(port uint16) bool {
	return g.httpAnyPort || g.httpPorts[port]
}

// routeHTTP returns the entry that takes a request to port, and whether
// the group routes that port at all (false: serve it without routes).
func (g *routeGroup) routeHTTP(v *requestView, port uint16) (hr *httpRoute, routed bool) {
	if !g.routesHTTP(port) {
		return nil, false
	}
	for _, hr := range g.http {
		if hr.matches(v, port) {
			return hr, true
		}
	}
	return nil, true
}

// routeTCP returns the first TCP entry for port, or nil.
func (g *routeGroup) routeTCP(port uint16) *tcpRoute {
	for _, tr := range g.tcp {
		if tr.port == 0 || tr.port == port {
			return tr
		}
	}
	return nil
}

// routeBackend is one compiled Backend.
type routeBackend struct {
	key      string // namespace/hostname
	hostname string
	port     uint16
	weight   uint64
	invalid  string
	filters  routeFilters
	filters0 []*waypoint.HTTPFilter
}

// backendSet picks backends by weight. The pick is deterministic and
// evenly spread: the n-th request takes the slot (n·stride) mod total of
// the weights laid end to end, where stride is coprime with total, so
// every run of total requests gives each backend exactly its weight (a
// 90/10 split is 90/10 over every 100 requests), interleaved rather than
// in blocks.
type backendSet struct {
	all    []*routeBackend // every backend, for their filters
	picks  []*routeBackend // weight > 0
	cum    []uint64        // cumulative weights of picks
	total  uint64
	stride uint64
	n      atomic.Uint64
}

func compileBackends(bs []*waypoint.Backend) *backendSet {
	set := &backendSet{}
	for _, b := range bs {
		rb := &routeBackend{key: b.GetService(), port: uint16(b.GetPort()), weight: uint64(b.GetWeight()), invalid: b.GetInvalid(), filters0: b.GetFilters()}
		if _, host, ok := strings.Cut(rb.key, "/"); ok {
			rb.hostname = host
		} else if rb.invalid == "" {
			rb.invalid = "backend without service"
		}
		set.all = append(set.all, rb)
		if rb.weight > 0 {
			set.total += rb.weight
			set.picks = append(set.picks, rb)
			set.cum = append(set.cum, set.total)
		}
	}
	set.stride = coprimeStride(set.total)
	return set
}

// coprimeStride returns a stride near the golden ratio of total that is
// coprime with it (1 for small totals).
func coprimeStride(total uint64) uint64 {
	if total < 3 {
		return 1
	}
	s := total*618/1000 | 1
	for gcd(s, total) != 1 {
		s++
	}
	return s
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// pick returns the next backend by weight; nil when no backend has a
// weight (the spec's 500).
func (s *backendSet) pick() *routeBackend {
	switch len(s.picks) {
	case 0:
		return nil
	case 1:
		return s.picks[0]
	}
	n := s.n.Add(1) - 1
	hi, lo := bits.Mul64(n%s.total, s.stride)
	slot := bits.Rem64(hi, lo, s.total)
	for i, c := range s.cum {
		if slot < c {
			return s.picks[i]
		}
	}
	return s.picks[len(s.picks)-1]
}

// servicePort returns the port to use on backend b for a request that came
// to the Service on port.
func (b *routeBackend) servicePort(port uint16) uint16 {
	if b.port != 0 {
		return b.port
	}
	return port
}
