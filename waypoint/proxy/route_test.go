package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	wp "github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

func exact(v string) *wp.StringMatch  { return &wp.StringMatch{Type: wp.StringMatch_EXACT, Value: v} }
func prefix(v string) *wp.StringMatch { return &wp.StringMatch{Type: wp.StringMatch_PREFIX, Value: v} }
func regex(v string) *wp.StringMatch  { return &wp.StringMatch{Type: wp.StringMatch_REGEX, Value: v} }

func TestHTTPRouteMatches(t *testing.T) {
	tests := []struct {
		name   string
		entry  *wp.HTTPRouteEntry
		method string
		target string // path and query
		header http.Header
		port   uint16
		want   bool
	}{
		{name: "no match takes all", entry: &wp.HTTPRouteEntry{}, target: "/anything", want: true},
		{name: "exact", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: exact("/foo")}}, target: "/foo", want: true},
		{name: "exact ignores the query", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: exact("/foo")}}, target: "/foo?x=1", want: true},
		{name: "exact is not a prefix", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: exact("/foo")}}, target: "/foo/bar", want: false},
		{name: "exact trailing slash differs", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: exact("/foo")}}, target: "/foo/", want: false},
		{name: "prefix itself", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/foo")}}, target: "/foo", want: true},
		{name: "prefix element", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/foo")}}, target: "/foo/bar", want: true},
		{name: "prefix is element-wise", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/foo")}}, target: "/foobar", want: false},
		{name: "prefix with trailing slash", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/foo/")}}, target: "/foo", want: true},
		{name: "prefix with trailing slash, element", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/foo/")}}, target: "/foo/x", want: true},
		{name: "prefix /", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: prefix("/")}}, target: "/x/y", want: true},
		{name: "regex whole path", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: regex(`/v[0-9]+/items`)}}, target: "/v2/items", want: true},
		{name: "regex must match all", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: regex(`/v[0-9]+`)}}, target: "/v2/items", want: false},
		{name: "regex alternation is anchored", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Path: regex(`/a|/b`)}}, target: "/b/c", want: false},
		{name: "header exact, name case-insensitive", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Headers: []*wp.HeaderMatch{{Name: "x-version", Value: exact("v2")}}}},
			target: "/", header: http.Header{"X-Version": {"v2"}}, want: true},
		{name: "header value is case-sensitive", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Headers: []*wp.HeaderMatch{{Name: "X-Version", Value: exact("v2")}}}},
			target: "/", header: http.Header{"X-Version": {"V2"}}, want: false},
		{name: "header missing", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Headers: []*wp.HeaderMatch{{Name: "X-Version", Value: exact("v2")}}}},
			target: "/", want: false},
		{name: "header regex", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Headers: []*wp.HeaderMatch{{Name: "User", Value: regex("jason|ann")}}}},
			target: "/", header: http.Header{"User": {"ann"}}, want: true},
		{name: "every header must match", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Headers: []*wp.HeaderMatch{{Name: "A", Value: exact("1")}, {Name: "B", Value: exact("2")}}}},
			target: "/", header: http.Header{"A": {"1"}, "B": {"3"}}, want: false},
		{name: "query exact", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{QueryParams: []*wp.HeaderMatch{{Name: "animal", Value: exact("whale")}}}},
			target: "/?animal=whale", want: true},
		{name: "query names are case-sensitive", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{QueryParams: []*wp.HeaderMatch{{Name: "animal", Value: exact("whale")}}}},
			target: "/?Animal=whale", want: false},
		{name: "query first value", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{QueryParams: []*wp.HeaderMatch{{Name: "animal", Value: exact("whale")}}}},
			target: "/?animal=dolphin&animal=whale", want: false},
		{name: "query regex", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{QueryParams: []*wp.HeaderMatch{{Name: "n", Value: regex("[0-9]+")}}}},
			target: "/?n=42", want: true},
		{name: "method", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Method: "POST"}}, method: "POST", target: "/", want: true},
		{name: "method differs", entry: &wp.HTTPRouteEntry{Match: &wp.HTTPMatch{Method: "POST"}}, method: "GET", target: "/", want: false},
		{name: "port", entry: &wp.HTTPRouteEntry{Port: 80}, target: "/", port: 80, want: true},
		{name: "other port", entry: &wp.HTTPRouteEntry{Port: 8080}, target: "/", port: 80, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			r := httptest.NewRequest(method, tt.target, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			port := tt.port
			if port == 0 {
				port = 80
			}
			hr := compileHTTPRoute(tt.entry)
			if hr.invalid != "" {
				t.Fatalf("compileHTTPRoute() invalid: %s", hr.invalid)
			}
			if got := hr.matches(newRequestView(r), port); got != tt.want {
				t.Errorf("matches(%s %s %v) = %v, want %v", method, tt.target, tt.header, got, tt.want)
			}
		})
	}
}

func TestCompileRoutesInvalidRegex(t *testing.T) {
	rt := CompileRoutes([]*wp.Routes{{Service: "default/a", Http: []*wp.HTTPRouteEntry{{Match: &wp.HTTPMatch{Path: regex("(")}}}}})
	if got := rt.services["default/a"].http[0].invalid; got == "" {
		t.Errorf("CompileRoutes(path regex %q): entry not invalid, want invalid", "(")
	}
}

func TestRouteHTTPOrder(t *testing.T) {
	rt := CompileRoutes([]*wp.Routes{{Service: "default/a", Http: []*wp.HTTPRouteEntry{
		{Route: "default/exact", Port: 80, Match: &wp.HTTPMatch{Path: exact("/v2")}},
		{Route: "default/header", Port: 80, Match: &wp.HTTPMatch{Path: prefix("/"), Headers: []*wp.HeaderMatch{{Name: "X", Value: exact("1")}}}},
		{Route: "default/prefix", Port: 80, Match: &wp.HTTPMatch{Path: prefix("/api")}},
	}}})
	sr := rt.services["default/a"]
	tests := []struct {
		target     string
		header     http.Header
		port       uint16
		wantRoute  string
		wantRouted bool
	}{
		{target: "/v2", header: http.Header{"X": {"1"}}, port: 80, wantRoute: "default/exact", wantRouted: true},
		{target: "/v3", header: http.Header{"X": {"1"}}, port: 80, wantRoute: "default/header", wantRouted: true},
		{target: "/api/x", port: 80, wantRoute: "default/prefix", wantRouted: true},
		{target: "/other", port: 80, wantRoute: "", wantRouted: true}, // 404
		{target: "/v2", port: 9090, wantRoute: "", wantRouted: false}, // no routes on that port
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, tt.target, nil)
		for k, v := range tt.header {
			r.Header[k] = v
		}
		hr, routed := sr.routeHTTP(newRequestView(r), tt.port)
		got := ""
		if hr != nil {
			got = hr.name
		}
		if got != tt.wantRoute || routed != tt.wantRouted {
			t.Errorf("routeHTTP(%s %v, port %d) = %q, %v, want %q, %v", tt.target, tt.header, tt.port, got, routed, tt.wantRoute, tt.wantRouted)
		}
	}
}

func TestBackendPickWeights(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
		n       int
		want    []int
	}{
		{name: "90/10", weights: []uint32{90, 10}, n: 1000, want: []int{900, 100}},
		{name: "zero weight never", weights: []uint32{0, 1, 0}, n: 100, want: []int{0, 100, 0}},
		{name: "three way", weights: []uint32{1, 2, 3}, n: 600, want: []int{100, 200, 300}},
		{name: "equal", weights: []uint32{1, 1}, n: 10, want: []int{5, 5}},
		{name: "large", weights: []uint32{999_999, 1}, n: 1_000_000, want: []int{999_999, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var bs []*wp.Backend
			index := map[string]int{}
			for i, w := range tt.weights {
				key := "default/b" + string(rune('0'+i))
				bs = append(bs, &wp.Backend{Service: key, Port: 80, Weight: w})
				index[key] = i
			}
			set := compileBackends(bs)
			got := make([]int, len(tt.weights))
			for range tt.n {
				got[index[set.pick().key]]++
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("picks over %d requests (-want +got):\n%s", tt.n, diff)
			}
		})
	}
}

func TestBackendPickSpread(t *testing.T) {
	// The 10 of a 90/10 split are spread over every 100 picks, not in a
	// block: no run of the 90-weight backend is longer than 20.
	set := compileBackends([]*wp.Backend{{Service: "default/a", Weight: 90}, {Service: "default/b", Weight: 10}})
	run, longest := 0, 0
	for range 1000 {
		if set.pick().key == "default/a" {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if longest > 20 {
		t.Errorf("longest run of the 90-weight backend = %d, want at most 20", longest)
	}
}

func TestBackendPickAllZero(t *testing.T) {
	set := compileBackends([]*wp.Backend{{Service: "default/a", Weight: 0}})
	if got := set.pick(); got != nil {
		t.Errorf("pick() over zero weights = %v, want nil", got.key)
	}
}

func TestPathModifierReplace(t *testing.T) {
	tests := []struct {
		name        string
		matchPrefix string
		mod         *wp.PathModifier
		path        string
		want        string
	}{
		{name: "full", matchPrefix: "/foo", mod: &wp.PathModifier{Type: wp.PathModifier_FULL, Value: "/bar"}, path: "/foo/x", want: "/bar"},
		{name: "prefix", matchPrefix: "/foo", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/bar"}, path: "/foo/x", want: "/bar/x"},
		{name: "prefix whole", matchPrefix: "/foo", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/bar"}, path: "/foo", want: "/bar"},
		{name: "prefix to /", matchPrefix: "/strip", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/"}, path: "/strip/three", want: "/three"},
		{name: "prefix to / whole", matchPrefix: "/strip", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/"}, path: "/strip", want: "/"},
		{name: "prefix with trailing slashes", matchPrefix: "/foo/", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/bar/"}, path: "/foo/x", want: "/bar/x"},
		{name: "prefix /", matchPrefix: "/", mod: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/v2"}, path: "/x", want: "/v2/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pm, err := compilePath(prefix(tt.matchPrefix))
			if err != nil {
				t.Fatal(err)
			}
			if got := compilePathModifier(tt.mod, pm).replace(tt.path); got != tt.want {
				t.Errorf("replace(%q) with %v after prefix %q = %q, want %q", tt.path, tt.mod, tt.matchPrefix, got, tt.want)
			}
		})
	}
}

func TestRedirectLocation(t *testing.T) {
	tests := []struct {
		name   string
		rd     *wp.RequestRedirect
		target string
		host   string
		port   uint16
		want   string
	}{
		{name: "hostname", rd: &wp.RequestRedirect{Hostname: "example.org"}, target: "/a?b=c", host: "echo:80", port: 80, want: "http://example.org/a?b=c"},
		{name: "service port kept", rd: &wp.RequestRedirect{Hostname: "example.org"}, target: "/a", host: "echo:8080", port: 8080, want: "http://example.org:8080/a"},
		{name: "scheme https: its port", rd: &wp.RequestRedirect{Scheme: "https"}, target: "/a", host: "echo:8080", port: 8080, want: "https://echo/a"},
		{name: "explicit port", rd: &wp.RequestRedirect{Port: 8443, Scheme: "https"}, target: "/a", host: "echo", port: 80, want: "https://echo:8443/a"},
		{name: "well-known explicit port left out", rd: &wp.RequestRedirect{Port: 80}, target: "/a", host: "echo:8080", port: 8080, want: "http://echo/a"},
		{name: "full path", rd: &wp.RequestRedirect{Path: &wp.PathModifier{Type: wp.PathModifier_FULL, Value: "/new"}}, target: "/old/x?q=1", host: "echo", port: 80, want: "http://echo/new?q=1"},
		{name: "prefix path", rd: &wp.RequestRedirect{Path: &wp.PathModifier{Type: wp.PathModifier_PREFIX, Value: "/new"}}, target: "/old/x", host: "echo", port: 80, want: "http://echo/new/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pm, _ := compilePath(prefix("/old"))
			rd := compileFilters([]*wp.HTTPFilter{{Kind: &wp.HTTPFilter_RequestRedirect{RequestRedirect: tt.rd}}}, pm).redirect
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.Host = tt.host
			if got := rd.location(r, newRequestView(r), tt.port); got != tt.want {
				t.Errorf("location(%v, %s %s) = %q, want %q", tt.rd, tt.host, tt.target, got, tt.want)
			}
		})
	}
}

func TestCORSOriginAllowed(t *testing.T) {
	c := compileCORS(&wp.CORS{AllowOrigins: []string{"https://www.foo.com", "https://*.bar.com"}})
	for origin, want := range map[string]bool{
		"https://www.foo.com": true,
		"https://www.foo.org": false,
		"https://a.bar.com":   true,
		"http://a.bar.com":    false,
		"https://bar.com":     false,
	} {
		if got := c.originAllowed(origin); got != want {
			t.Errorf("originAllowed(%q) = %v, want %v", origin, got, want)
		}
	}
}

func TestHeaderModifier(t *testing.T) {
	m := compileHeaderModifier(&wp.HeaderModifier{
		Set:    []*wp.Header{{Name: "x-set", Value: "new"}},
		Add:    []*wp.Header{{Name: "x-add", Value: "two"}},
		Remove: []string{"x-remove"},
	})
	h := http.Header{"X-Set": {"old"}, "X-Add": {"one"}, "X-Remove": {"gone"}, "X-Keep": {"k"}}
	m.apply(h)
	want := http.Header{"X-Set": {"new"}, "X-Add": {"one", "two"}, "X-Keep": {"k"}}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Errorf("apply() (-want +got):\n%s", diff)
	}
}

func TestSetPath(t *testing.T) {
	for _, tt := range []struct{ target, path, want string }{
		{"/a?x=1", "/b", "/b?x=1"},
		{"/a", "/b%2Fc", "/b%2Fc"},
		{"/a", "/b c", "/b%20c"},
	} {
		r := httptest.NewRequest(http.MethodGet, tt.target, nil)
		setPath(r, tt.path)
		if got := r.URL.RequestURI(); got != tt.want || r.RequestURI != tt.want {
			t.Errorf("setPath(%s, %q): URL %q, RequestURI %q, want %q", tt.target, tt.path, got, r.RequestURI, tt.want)
		}
	}
}
