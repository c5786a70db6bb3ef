package proxy

import (
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// routeFilters are an entry's (or a backend's) HTTPRoute filters,
// compiled: header names canonical, the path prefix a PREFIX path
// modifier replaces taken from the entry's match.
type routeFilters struct {
	request  *headerModifier
	response *headerModifier
	redirect *redirect
	rewrite  *rewrite
	mirrors  []*mirror
	cors     *corsPolicy
}

type headerModifier struct {
	set, add []headerValue
	remove   []string
}

type headerValue struct{ name, value string }

type pathModifier struct {
	full   bool
	value  string
	prefix string // the matched prefix a PREFIX modifier replaces ("" for "/")
}

type redirect struct {
	scheme, hostname string
	port             uint16
	path             *pathModifier
	code             int
}

type rewrite struct {
	hostname string
	path     *pathModifier
}

type mirror struct {
	backend    *routeBackend
	perMillion uint32
}

type corsPolicy struct {
	origins                                 []string // exact, "*", or with one '*' wildcard
	methods, headers, expose, maxAge        string   // joined for the answer
	allowMethodsAll, allowHeadersAll, creds bool
}

func compileFilters(fs []*waypoint.HTTPFilter, path pathMatch) routeFilters {
	var out routeFilters
	for _, f := range fs {
		switch k := f.GetKind().(type) {
		case *waypoint.HTTPFilter_RequestHeaderModifier:
			out.request = compileHeaderModifier(k.RequestHeaderModifier)
		case *waypoint.HTTPFilter_ResponseHeaderModifier:
			out.response = compileHeaderModifier(k.ResponseHeaderModifier)
		case *waypoint.HTTPFilter_RequestRedirect:
			rr := k.RequestRedirect
			rd := &redirect{scheme: rr.GetScheme(), hostname: rr.GetHostname(), port: uint16(rr.GetPort()), path: compilePathModifier(rr.GetPath(), path), code: int(rr.GetStatusCode())}
			if rd.code == 0 {
				rd.code = http.StatusFound
			}
			out.redirect = rd
		case *waypoint.HTTPFilter_UrlRewrite:
			out.rewrite = &rewrite{hostname: k.UrlRewrite.GetHostname(), path: compilePathModifier(k.UrlRewrite.GetPath(), path)}
		case *waypoint.HTTPFilter_RequestMirror:
			bs := compileBackends([]*waypoint.Backend{k.RequestMirror.GetBackend()})
			if len(bs.all) == 1 && bs.all[0].invalid == "" {
				out.mirrors = append(out.mirrors, &mirror{backend: bs.all[0], perMillion: k.RequestMirror.GetPerMillion()})
			}
		case *waypoint.HTTPFilter_Cors:
			out.cors = compileCORS(k.Cors)
		}
	}
	return out
}

func compileHeaderModifier(m *waypoint.HeaderModifier) *headerModifier {
	hm := &headerModifier{}
	for _, h := range m.GetSet() {
		hm.set = append(hm.set, headerValue{http.CanonicalHeaderKey(h.GetName()), h.GetValue()})
	}
	for _, h := range m.GetAdd() {
		hm.add = append(hm.add, headerValue{http.CanonicalHeaderKey(h.GetName()), h.GetValue()})
	}
	for _, n := range m.GetRemove() {
		hm.remove = append(hm.remove, http.CanonicalHeaderKey(n))
	}
	return hm
}

func compilePathModifier(m *waypoint.PathModifier, path pathMatch) *pathModifier {
	if m == nil {
		return nil
	}
	pm := &pathModifier{full: m.GetType() == waypoint.PathModifier_FULL, value: m.GetValue()}
	if !pm.full && path.kind == waypoint.StringMatch_PREFIX {
		pm.prefix = path.value
	}
	return pm
}

func compileCORS(c *waypoint.CORS) *corsPolicy {
	p := &corsPolicy{origins: c.GetAllowOrigins(), creds: c.GetAllowCredentials()}
	for _, m := range c.GetAllowMethods() {
		p.allowMethodsAll = p.allowMethodsAll || m == "*"
	}
	for _, h := range c.GetAllowHeaders() {
		p.allowHeadersAll = p.allowHeadersAll || h == "*"
	}
	p.methods = strings.Join(c.GetAllowMethods(), ", ")
	p.headers = strings.Join(c.GetAllowHeaders(), ", ")
	p.expose = strings.Join(c.GetExposeHeaders(), ", ")
	if c.GetMaxAgeSeconds() > 0 {
		p.maxAge = strconv.FormatUint(uint64(c.GetMaxAgeSeconds()), 10)
	}
	return p
}

// apply modifies h: set replaces, add appends, remove deletes.
func (m *headerModifier) apply(h http.Header) {
	if m == nil {
		return
	}
	for _, v := range m.set {
		h[v.name] = []string{v.value}
	}
	for _, v := range m.add {
		h[v.name] = append(h[v.name], v.value)
	}
	for _, n := range m.remove {
		delete(h, n)
	}
}

// applyRequest applies m to the request: a set or added Host changes
// r.Host, which net/http keeps apart from the header.
func (m *headerModifier) applyRequest(r *http.Request) {
	if m == nil {
		return
	}
	m.apply(r.Header)
	if hv, ok := r.Header["Host"]; ok {
		if len(hv) > 0 {
			r.Host = hv[len(hv)-1]
		}
		delete(r.Header, "Host")
	}
}

// replace returns path with the modifier applied: the whole path, or the
// matched prefix replaced (Gateway API ReplacePrefixMatch: "/foo" → "/bar"
// turns "/foo/x" into "/bar/x"; → "/" turns it into "/x").
func (pm *pathModifier) replace(path string) string {
	if pm == nil {
		return path
	}
	if pm.full {
		return pm.value
	}
	rest := strings.TrimPrefix(path, pm.prefix) // element-wise: "" or "/..."
	repl := strings.TrimSuffix(pm.value, "/")
	out := repl + rest
	if out == "" {
		return "/"
	}
	if out[0] != '/' {
		out = "/" + out
	}
	return out
}

// setPath replaces r's path (escaped, as in the request line), keeping
// its query.
func setPath(r *http.Request, path string) {
	u, err := neturl.ParseRequestURI(path)
	if err != nil || u.RawQuery != "" || u.Opaque != "" {
		r.URL.Path, r.URL.RawPath = path, "" // not a plain path: sent as given, escaped where needed
	} else {
		r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	}
	_, q, hasQuery := strings.Cut(r.RequestURI, "?")
	r.RequestURI = r.URL.EscapedPath()
	if hasQuery {
		r.RequestURI += "?" + q
	}
}

// applyRewrite rewrites r's Host and path.
func (rw *rewrite) apply(r *http.Request, v *requestView) {
	if rw == nil {
		return
	}
	if rw.hostname != "" {
		r.Host = rw.hostname
	}
	if rw.path != nil {
		setPath(r, rw.path.replace(v.path))
	}
}

// location returns the Location of a redirect of r (Gateway API
// HTTPRequestRedirectFilter): scheme and hostname as set or the
// request's; the port as set, else the scheme's well-known port when the
// scheme is set, else the Service port the request came to (the mesh's
// listener port); a well-known port is left out.
func (rd *redirect) location(r *http.Request, v *requestView, servicePort uint16) string {
	reqScheme := "http"
	if r.TLS != nil {
		reqScheme = "https"
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	scheme := reqScheme
	var port uint16
	switch {
	case rd.port != 0:
		port = rd.port
	case rd.scheme != "":
		port = wellKnownPort(rd.scheme)
	default:
		port = servicePort // the mesh's "listener port"
	}
	if rd.scheme != "" {
		scheme = rd.scheme
	}
	if rd.hostname != "" {
		host = rd.hostname
	}
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]" // an IPv6 literal
	}
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != 0 && port != wellKnownPort(scheme) {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(int(port)))
	}
	b.WriteString(rd.path.replace(v.path))
	if q := r.URL.RawQuery; q != "" {
		b.WriteByte('?')
		b.WriteString(q)
	}
	return b.String()
}

func wellKnownPort(scheme string) uint16 {
	switch strings.ToLower(scheme) {
	case "http":
		return 80
	case "https":
		return 443
	}
	return 0
}

// originAllowed reports whether origin is one the policy allows: "*",
// an exact origin, or a pattern with one '*' ("https://*.example.com").
func (c *corsPolicy) originAllowed(origin string) bool {
	for _, o := range c.origins {
		if o == "*" || o == origin {
			return true
		}
		if pre, suf, ok := strings.Cut(o, "*"); ok && len(origin) >= len(pre)+len(suf) &&
			strings.HasPrefix(origin, pre) && strings.HasSuffix(origin, suf) {
			return true
		}
	}
	return false
}

// isPreflight reports whether r is a CORS preflight request.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != ""
}

// preflight writes the waypoint's answer to a preflight from an allowed
// origin (as Envoy's CORS filter: 200, no body).
func (c *corsPolicy) preflight(w http.ResponseWriter, r *http.Request, origin string) {
	h := w.Header()
	c.allowOrigin(h, origin)
	if c.allowMethodsAll {
		h.Set("Access-Control-Allow-Methods", r.Header.Get("Access-Control-Request-Method"))
	} else if c.methods != "" {
		h.Set("Access-Control-Allow-Methods", c.methods)
	}
	if c.allowHeadersAll {
		if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
			h.Set("Access-Control-Allow-Headers", rh)
		}
	} else if c.headers != "" {
		h.Set("Access-Control-Allow-Headers", c.headers)
	}
	if c.maxAge != "" {
		h.Set("Access-Control-Max-Age", c.maxAge)
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// allowOrigin sets the headers of an answer to an allowed origin.
func (c *corsPolicy) allowOrigin(h http.Header, origin string) {
	h.Set("Access-Control-Allow-Origin", origin)
	if c.creds {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
}

// actual sets the headers of an answer to a CORS request (not a
// preflight) from an allowed origin.
func (c *corsPolicy) actual(h http.Header, origin string) {
	c.allowOrigin(h, origin)
	if c.expose != "" {
		h.Set("Access-Control-Expose-Headers", c.expose)
	}
}
