package model

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// Builders for route test inputs: namespace demo uses waypoint wp; its
// Services echo (ports 80 "http", 9090 "grpc"), v1, v2 (port 80) are
// bound to it. Namespace other has no waypoint: its Service remote is not.

const echoKey = "demo/echo.demo.svc.cluster.local"

var routeEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func namedPort(name string, p int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: p, TargetPort: intstr.FromInt32(p)}
}

// routeInputs is the base snapshot plus the given routes and grants.
func routeInputs(extra func(*Inputs)) *Inputs {
	gw, wsvc, wpod := readyWaypoint("demo", "wp", "10.96.0.10", "10.1.0.10")
	in := &Inputs{
		Namespaces: []*corev1.Namespace{
			namespace("demo", map[string]string{LabelUseWaypoint: "wp"}),
			namespace("other", nil),
		},
		Gateways: []*gatewayv1.Gateway{gw},
		Services: []*corev1.Service{wsvc,
			service("demo", "echo", map[string]string{"app": "echo"}, []string{"10.96.0.1"}, namedPort("http", 80), namedPort("grpc", 9090)),
			service("demo", "v1", map[string]string{"app": "v1"}, []string{"10.96.0.2"}, namedPort("http", 80)),
			service("demo", "v2", map[string]string{"app": "v2"}, []string{"10.96.0.3"}, namedPort("http", 80)),
			service("other", "remote", map[string]string{"app": "remote"}, []string{"10.96.0.4"}, namedPort("http", 80)),
		},
		Pods: []*corev1.Pod{wpod},
	}
	if extra != nil {
		extra(in)
	}
	return in
}

type hrOpt func(*gatewayv1.HTTPRoute)

// httpRoute is an HTTPRoute in demo attached to Service echo, created
// age minutes after routeEpoch, with the given rules.
func httpRoute(name string, age int, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Generation: 4,
			CreationTimestamp: metav1.NewTime(routeEpoch.Add(time.Duration(age) * time.Minute))},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("echo")}},
			Rules:           rules,
		},
	}
}

func svcParent(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: gatewayv1.ObjectName(name)}
}

func backendRef(ns, name string, port int32, weight *int32) gatewayv1.HTTPBackendRef {
	ref := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: objRef(ns, name, port), Weight: weight}}
	return ref
}

func objRef(ns, name string, port int32) gatewayv1.BackendObjectReference {
	ref := gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name)}
	if port != 0 {
		ref.Port = ptr.To(port)
	}
	if ns != "" {
		ref.Namespace = ptr.To(gatewayv1.Namespace(ns))
	}
	return ref
}

// toV1 is a rule sending everything to v1:80 with the given matches.
func toV1(matches ...gatewayv1.HTTPRouteMatch) gatewayv1.HTTPRouteRule {
	return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)}}
}

func pathMatch(t gatewayv1.PathMatchType, v string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: &t, Value: &v}}
}

// Expected values.

func be(name string, port, weight uint32) *waypoint.Backend {
	return &waypoint.Backend{Service: "demo/" + name + ".demo.svc.cluster.local", Port: port, Weight: weight}
}

func sm(t waypoint.StringMatch_Type, v string) *waypoint.StringMatch {
	return &waypoint.StringMatch{Type: t, Value: v}
}

var (
	exact  = waypoint.StringMatch_EXACT
	prefix = waypoint.StringMatch_PREFIX
	regex  = waypoint.StringMatch_REGEX
)

func defaultRetry() *waypoint.Retry { return &waypoint.Retry{Attempts: 2, Codes: []uint32{503}} }

// entry is the expected entry of rule of HTTPRoute demo/route, to v1:80
// unless changed by the options.
func entry(route string, rule uint32, m *waypoint.HTTPMatch, opts ...func(*waypoint.HTTPRouteEntry)) *waypoint.HTTPRouteEntry {
	e := &waypoint.HTTPRouteEntry{Route: "demo/" + route, Kind: KindHTTPRoute, Rule: rule, Match: m,
		Backends: []*waypoint.Backend{be("v1", 80, 1)}, Retry: defaultRetry()}
	for _, o := range opts {
		o(e)
	}
	return e
}

func pathOnly(t waypoint.StringMatch_Type, v string) *waypoint.HTTPMatch {
	return &waypoint.HTTPMatch{Path: sm(t, v)}
}

func filters(f ...*waypoint.HTTPFilter) func(*waypoint.HTTPRouteEntry) {
	return func(e *waypoint.HTTPRouteEntry) { e.Filters = f }
}

func backends(b ...*waypoint.Backend) func(*waypoint.HTTPRouteEntry) {
	return func(e *waypoint.HTTPRouteEntry) { e.Backends = b }
}

func invalid(msg string) func(*waypoint.HTTPRouteEntry) {
	return func(e *waypoint.HTTPRouteEntry) { e.Invalid = msg }
}

func TestBuildRoutesHTTP(t *testing.T) {
	tests := []struct {
		name   string
		routes []*gatewayv1.HTTPRoute
		grants []*gatewayv1.ReferenceGrant
		want   []*waypoint.HTTPRouteEntry
	}{
		{
			name:   "a rule without matches matches every path",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, toV1())},
			want:   []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"))},
		},
		{
			name: "path types, default PathPrefix /",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0,
				toV1(pathMatch(gatewayv1.PathMatchExact, "/exact")),
				toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/pre")),
				toV1(pathMatch(gatewayv1.PathMatchRegularExpression, "/re/[0-9]+")),
				toV1(gatewayv1.HTTPRouteMatch{Method: ptr.To(gatewayv1.HTTPMethodGet)}),
			)},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(exact, "/exact")),
				entry("r", 1, pathOnly(prefix, "/pre")),
				entry("r", 3, &waypoint.HTTPMatch{Path: sm(prefix, "/"), Method: "GET"}),
				entry("r", 2, pathOnly(regex, "/re/[0-9]+")),
			},
		},
		{
			name: "headers exact and regex, first of a name counts; query params; method",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, toV1(gatewayv1.HTTPRouteMatch{
				Headers: []gatewayv1.HTTPHeaderMatch{
					{Name: "Version", Value: "v2"},
					{Name: "version", Value: "v3"},
					{Name: "x-re", Type: ptr.To(gatewayv1.HeaderMatchRegularExpression), Value: "a.*"},
				},
				QueryParams: []gatewayv1.HTTPQueryParamMatch{
					{Name: "q", Value: "1"},
					{Name: "r", Type: ptr.To(gatewayv1.QueryParamMatchRegularExpression), Value: "[ab]"},
				},
				Method: ptr.To(gatewayv1.HTTPMethodPost),
			}))},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, &waypoint.HTTPMatch{
				Path: sm(prefix, "/"),
				Headers: []*waypoint.HeaderMatch{
					{Name: "Version", Value: sm(exact, "v2")},
					{Name: "x-re", Value: sm(regex, "a.*")},
				},
				QueryParams: []*waypoint.HeaderMatch{
					{Name: "q", Value: sm(exact, "1")},
					{Name: "r", Value: sm(regex, "[ab]")},
				},
				Method: "POST",
			})},
		},
		{
			name:   "several matches of a rule are separate entries, each at its place",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/a"), pathMatch(gatewayv1.PathMatchExact, "/b")))},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(exact, "/b")),
				entry("r", 0, pathOnly(prefix, "/a")),
			},
		},
		{
			name: "precedence: exact beats a longer prefix",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 0, toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/longer/prefix"))),
				httpRoute("b", 1, toV1(pathMatch(gatewayv1.PathMatchExact, "/x"))),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, pathOnly(exact, "/x")),
				entry("a", 0, pathOnly(prefix, "/longer/prefix")),
			},
		},
		{
			name: "precedence: the longest prefix first",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 0, toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/a"))),
				httpRoute("b", 1, toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/a/b"))),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, pathOnly(prefix, "/a/b")),
				entry("a", 0, pathOnly(prefix, "/a")),
			},
		},
		{
			name: "precedence: a method match beats more headers",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 0, toV1(gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "h", Value: "1"}, {Name: "i", Value: "2"}}})),
				httpRoute("b", 1, toV1(gatewayv1.HTTPRouteMatch{Method: ptr.To(gatewayv1.HTTPMethodGet)})),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, &waypoint.HTTPMatch{Path: sm(prefix, "/"), Method: "GET"}),
				entry("a", 0, &waypoint.HTTPMatch{Path: sm(prefix, "/"), Headers: []*waypoint.HeaderMatch{{Name: "h", Value: sm(exact, "1")}, {Name: "i", Value: sm(exact, "2")}}}),
			},
		},
		{
			name: "precedence: more headers beat more query params",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 0, toV1(gatewayv1.HTTPRouteMatch{QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "1"}, {Name: "r", Value: "2"}}})),
				httpRoute("b", 1, toV1(gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "h", Value: "1"}}})),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, &waypoint.HTTPMatch{Path: sm(prefix, "/"), Headers: []*waypoint.HeaderMatch{{Name: "h", Value: sm(exact, "1")}}}),
				entry("a", 0, &waypoint.HTTPMatch{Path: sm(prefix, "/"), QueryParams: []*waypoint.HeaderMatch{{Name: "q", Value: sm(exact, "1")}, {Name: "r", Value: sm(exact, "2")}}}),
			},
		},
		{
			name: "precedence: more query params first",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 0, toV1(gatewayv1.HTTPRouteMatch{})),
				httpRoute("b", 1, toV1(gatewayv1.HTTPRouteMatch{QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "1"}}})),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, &waypoint.HTTPMatch{Path: sm(prefix, "/"), QueryParams: []*waypoint.HeaderMatch{{Name: "q", Value: sm(exact, "1")}}}),
				entry("a", 0, pathOnly(prefix, "/")),
			},
		},
		{
			name: "precedence: on a tie, the oldest route first",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("a", 5, toV1()),
				httpRoute("b", 1, toV1()),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("b", 0, pathOnly(prefix, "/")),
				entry("a", 0, pathOnly(prefix, "/")),
			},
		},
		{
			name: "precedence: on a tie of age, namespace/name order",
			routes: []*gatewayv1.HTTPRoute{
				httpRoute("b", 0, toV1()),
				httpRoute("a", 0, toV1()),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("a", 0, pathOnly(prefix, "/")),
				entry("b", 0, pathOnly(prefix, "/")),
			},
		},
		{
			name: "precedence: within a route, rule order, then match order",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0,
				toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/y"), pathMatch(gatewayv1.PathMatchPathPrefix, "/x")),
				toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/w")),
			)},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(prefix, "/y")),
				entry("r", 0, pathOnly(prefix, "/x")),
				entry("r", 1, pathOnly(prefix, "/w")),
			},
		},
		{
			name: "weights: default 1, 0 kept",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("", "v1", 80, nil), backendRef("", "v2", 80, ptr.To[int32](0)), backendRef("", "echo", 80, ptr.To[int32](9)),
			}})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(be("v1", 80, 1), be("v2", 80, 0), be("echo", 80, 9)))},
		},
		{
			name: "weights: all 0 answers 500",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("", "v1", 80, ptr.To[int32](0)),
			}})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(be("v1", 80, 0)), invalid("every backend has weight 0"))},
		},
		{
			name:   "no backendRefs answers 500",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{})},
			want:   []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(), invalid("no backends"))},
		},
		{
			name: "invalid backends keep their weight",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("", "v1", 80, ptr.To[int32](3)),
				backendRef("", "missing", 80, ptr.To[int32](2)),
				backendRef("", "v2", 81, nil),
				backendRef("", "v2", 0, nil),
				{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
					Group: ptr.To[gatewayv1.Group]("example.com"), Kind: ptr.To[gatewayv1.Kind]("Bucket"), Name: "b"}}},
				backendRef("other", "remote", 80, nil),
			}})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(
				be("v1", 80, 3),
				&waypoint.Backend{Weight: 2, Invalid: "backend Service demo/missing not found"},
				&waypoint.Backend{Weight: 1, Invalid: "backend Service demo/v2 has no port 81"},
				&waypoint.Backend{Weight: 1, Invalid: "backendRef to Service demo/v2 has no port"},
				&waypoint.Backend{Weight: 1, Invalid: `backendRef b: kind Bucket of group "example.com" is not supported (only Service)`},
				&waypoint.Backend{Weight: 1, Invalid: "backendRef to Service other/remote not permitted by any ReferenceGrant"},
			))},
		},
		{
			name: "a cross-namespace backend with a ReferenceGrant",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("other", "remote", 80, nil),
			}})},
			grants: []*gatewayv1.ReferenceGrant{referenceGrant("other", "demo", KindHTTPRoute, "remote")},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(
				&waypoint.Backend{Service: "other/remote.other.svc.cluster.local", Port: 80, Weight: 1}))},
		},
		{
			name: "a ReferenceGrant for another kind, namespace or name does not permit",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("other", "remote", 80, nil),
			}})},
			grants: []*gatewayv1.ReferenceGrant{
				referenceGrant("other", "demo", KindGRPCRoute, "remote"),
				referenceGrant("other", "elsewhere", KindHTTPRoute, "remote"),
				referenceGrant("other", "demo", KindHTTPRoute, "not-remote"),
				referenceGrant("demo", "demo", KindHTTPRoute, "remote"),
			},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), backends(
				&waypoint.Backend{Weight: 1, Invalid: "backendRef to Service other/remote not permitted by any ReferenceGrant"}))},
		},
		{
			name: "header modifiers, rule and backend level",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Filters: []gatewayv1.HTTPRouteFilter{
					{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
						Set: []gatewayv1.HTTPHeader{{Name: "s", Value: "1"}}, Add: []gatewayv1.HTTPHeader{{Name: "a", Value: "2"}}, Remove: []string{"r"}}},
					{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{
						Set: []gatewayv1.HTTPHeader{{Name: "x", Value: "y"}}}},
				},
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: backendRef("", "v1", 80, nil).BackendRef, Filters: []gatewayv1.HTTPRouteFilter{
					{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Remove: []string{"b"}}},
				}}},
			})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"),
				filters(
					&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &waypoint.HeaderModifier{
						Set: []*waypoint.Header{{Name: "s", Value: "1"}}, Add: []*waypoint.Header{{Name: "a", Value: "2"}}, Remove: []string{"r"}}}},
					&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_ResponseHeaderModifier{ResponseHeaderModifier: &waypoint.HeaderModifier{
						Set: []*waypoint.Header{{Name: "x", Value: "y"}}}}},
				),
				backends(&waypoint.Backend{Service: "demo/v1.demo.svc.cluster.local", Port: 80, Weight: 1, Filters: []*waypoint.HTTPFilter{
					{Kind: &waypoint.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &waypoint.HeaderModifier{Remove: []string{"b"}}}},
				}}),
			)},
		},
		{
			name: "RequestRedirect without backends, default 302",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0,
				gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/old")}, Filters: []gatewayv1.HTTPRouteFilter{
					{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
						Scheme: ptr.To("https"), Hostname: ptr.To[gatewayv1.PreciseHostname]("example.com"), Port: ptr.To[int32](8443), StatusCode: ptr.To(301),
						Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr.To("/new")}}},
				}},
				gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{
					{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
						Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr.To("/full")}}},
				}},
			)},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(prefix, "/old"), backends(), filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestRedirect{RequestRedirect: &waypoint.RequestRedirect{
					Scheme: "https", Hostname: "example.com", Port: 8443, StatusCode: 301, Path: &waypoint.PathModifier{Type: waypoint.PathModifier_PREFIX, Value: "/new"}}}})),
				entry("r", 1, pathOnly(prefix, "/"), backends(), filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestRedirect{RequestRedirect: &waypoint.RequestRedirect{
					StatusCode: 302, Path: &waypoint.PathModifier{Type: waypoint.PathModifier_FULL, Value: "/full"}}}})),
			},
		},
		{
			name: "URLRewrite; ReplacePrefixMatch with an exact match is invalid",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/p"), pathMatch(gatewayv1.PathMatchExact, "/e")},
				Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
					Hostname: ptr.To[gatewayv1.PreciseHostname]("rewritten"),
					Path:     &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr.To("/q")}}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			})},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(exact, "/e"), filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_UrlRewrite{UrlRewrite: &waypoint.URLRewrite{
					Hostname: "rewritten", Path: &waypoint.PathModifier{Type: waypoint.PathModifier_PREFIX, Value: "/q"}}}}),
					invalid("ReplacePrefixMatch is only valid with a PathPrefix match")),
				entry("r", 0, pathOnly(prefix, "/p"), filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_UrlRewrite{UrlRewrite: &waypoint.URLRewrite{
					Hostname: "rewritten", Path: &waypoint.PathModifier{Type: waypoint.PathModifier_PREFIX, Value: "/q"}}}})),
			},
		},
		{
			name: "RequestMirror: percent, fraction, every request",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Filters: []gatewayv1.HTTPRouteFilter{
					{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: objRef("", "v2", 80), Percent: ptr.To[int32](25)}},
					{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: objRef("", "v2", 80),
						Fraction: &gatewayv1.Fraction{Numerator: 1, Denominator: ptr.To[int32](3)}}},
					{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: objRef("", "missing", 80)}},
				},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), filters(
				&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestMirror{RequestMirror: &waypoint.RequestMirror{Backend: be("v2", 80, 0), PerMillion: 250_000}}},
				&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestMirror{RequestMirror: &waypoint.RequestMirror{Backend: be("v2", 80, 0), PerMillion: 333_333}}},
				&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestMirror{RequestMirror: &waypoint.RequestMirror{
					Backend: &waypoint.Backend{Invalid: "backend Service demo/missing not found"}, PerMillion: 1_000_000}}},
			))},
		},
		{
			name: "CORS",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterCORS, CORS: &gatewayv1.HTTPCORSFilter{
					AllowOrigins: []gatewayv1.CORSOrigin{"https://a.example"}, AllowMethods: []gatewayv1.HTTPMethodWithWildcard{"GET", "POST"},
					AllowHeaders: []gatewayv1.HTTPHeaderName{"x-a"}, ExposeHeaders: []gatewayv1.HTTPHeaderName{"x-b"},
					AllowCredentials: ptr.To(true), MaxAge: 60}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_Cors{Cors: &waypoint.CORS{
				AllowOrigins: []string{"https://a.example"}, AllowMethods: []string{"GET", "POST"}, AllowHeaders: []string{"x-a"},
				ExposeHeaders: []string{"x-b"}, AllowCredentials: true, MaxAgeSeconds: 60}}}))},
		},
		{
			name: "an unsupported filter makes its rule answer 500",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef,
					ExtensionRef: &gatewayv1.LocalObjectReference{Group: "example.com", Kind: "Thing", Name: "t"}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			})},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(prefix, "/"), invalid(`filter type "ExtensionRef" is not supported`))},
		},
		{
			name:   "an invalid regular expression makes its rule answer 500",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0, toV1(pathMatch(gatewayv1.PathMatchRegularExpression, "/(")))},
			want: []*waypoint.HTTPRouteEntry{entry("r", 0, pathOnly(regex, "/("),
				invalid("invalid regular expression \"/(\": error parsing regexp: missing closing ): `/(`"))},
		},
		{
			name: "timeouts and retry",
			routes: []*gatewayv1.HTTPRoute{httpRoute("r", 0,
				gatewayv1.HTTPRouteRule{
					BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
					Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: ptr.To[gatewayv1.Duration]("10s"), BackendRequest: ptr.To[gatewayv1.Duration]("1m500ms")},
					Retry:       &gatewayv1.HTTPRouteRetry{Attempts: ptr.To(3), Codes: []gatewayv1.HTTPRouteRetryStatusCode{500, 502}, Backoff: ptr.To[gatewayv1.Duration]("100ms")},
				},
				gatewayv1.HTTPRouteRule{
					Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/none")},
					BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
					Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: ptr.To[gatewayv1.Duration]("0s")},
					Retry:       &gatewayv1.HTTPRouteRetry{Attempts: ptr.To(0)},
				},
				gatewayv1.HTTPRouteRule{
					Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/codes")},
					BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
					Retry:       &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503}},
				},
			)},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 2, pathOnly(prefix, "/codes"), func(e *waypoint.HTTPRouteEntry) { e.Retry = &waypoint.Retry{Attempts: 2, Codes: []uint32{503}} }),
				entry("r", 1, pathOnly(prefix, "/none"), func(e *waypoint.HTTPRouteEntry) { e.Retry = &waypoint.Retry{} }),
				entry("r", 0, pathOnly(prefix, "/"), func(e *waypoint.HTTPRouteEntry) {
					e.RequestTimeoutMs, e.BackendRequestTimeoutMs = 10_000, 60_500
					e.Retry = &waypoint.Retry{Attempts: 3, Codes: []uint32{500, 502}, BackoffMs: 100}
				}),
			},
		},
		{
			name: "a parentRef port or sectionName gives the entry's port",
			routes: []*gatewayv1.HTTPRoute{func() *gatewayv1.HTTPRoute {
				r := httpRoute("r", 0, toV1())
				byPort, byName := svcParent("echo"), svcParent("echo")
				byPort.Port = ptr.To[int32](80)
				byName.SectionName = ptr.To[gatewayv1.SectionName]("grpc")
				r.Spec.ParentRefs = []gatewayv1.ParentReference{byPort, byName}
				return r
			}()},
			want: []*waypoint.HTTPRouteEntry{
				entry("r", 0, pathOnly(prefix, "/"), func(e *waypoint.HTTPRouteEntry) { e.Port = 80 }),
				entry("r", 0, pathOnly(prefix, "/"), func(e *waypoint.HTTPRouteEntry) { e.Port = 9090 }),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := routeInputs(func(in *Inputs) {
				in.HTTPRoutes = tt.routes
				in.ReferenceGrants = tt.grants
			})
			got := Build(in, Options{}).WaypointRoutes
			want := map[string]*waypoint.Routes{echoKey: {Service: echoKey, Http: tt.want}}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Build(routes).WaypointRoutes (-want +got):\n%s", diff)
			}
		})
	}
}

func referenceGrant(ns, fromNS, fromKind, toName string) *gatewayv1.ReferenceGrant {
	return &gatewayv1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "grant-" + fromNS + "-" + toName},
		Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: "gateway.networking.k8s.io", Kind: gatewayv1.Kind(fromKind), Namespace: gatewayv1.Namespace(fromNS)}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service", Name: ptr.To(gatewayv1.ObjectName(toName))}},
		},
	}
}

func grpcRoute(name string, rules ...gatewayv1.GRPCRouteRule) *gatewayv1.GRPCRoute {
	return &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Generation: 2, CreationTimestamp: metav1.NewTime(routeEpoch)},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("echo")}},
			Rules:           rules,
		},
	}
}

func grpcRule(m gatewayv1.GRPCRouteMatch) gatewayv1.GRPCRouteRule {
	return gatewayv1.GRPCRouteRule{Matches: []gatewayv1.GRPCRouteMatch{m},
		BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: backendRef("", "v1", 80, nil).BackendRef}}}
}

func grpcMethod(t gatewayv1.GRPCMethodMatchType, svc, method string) gatewayv1.GRPCRouteMatch {
	m := &gatewayv1.GRPCMethodMatch{Type: &t}
	if svc != "" {
		m.Service = &svc
	}
	if method != "" {
		m.Method = &method
	}
	return gatewayv1.GRPCRouteMatch{Method: m}
}

func TestBuildRoutesGRPC(t *testing.T) {
	grpcEntry := func(rule uint32, m *waypoint.HTTPMatch, opts ...func(*waypoint.HTTPRouteEntry)) *waypoint.HTTPRouteEntry {
		e := entry("g", rule, m, opts...)
		e.Kind = KindGRPCRoute
		return e
	}
	route := grpcRoute("g",
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchExact, "pkg.Svc", "Get")),
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchExact, "pkg.Svc", "")),
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchExact, "", "Get.x")),
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchRegularExpression, "pkg\\..*", "")),
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchRegularExpression, "", "G.t")),
		grpcRule(grpcMethod(gatewayv1.GRPCMethodMatchRegularExpression, "pkg.Svc", "G.*")),
		grpcRule(gatewayv1.GRPCRouteMatch{Headers: []gatewayv1.GRPCHeaderMatch{
			{Name: "env", Value: "canary"}, {Name: "user", Type: ptr.To(gatewayv1.GRPCHeaderMatchRegularExpression), Value: "a.*"}}}),
		gatewayv1.GRPCRouteRule{
			Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestHeaderModifier,
				RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Set: []gatewayv1.HTTPHeader{{Name: "x", Value: "1"}}}}},
			BackendRefs: []gatewayv1.GRPCBackendRef{
				{BackendRef: backendRef("", "v1", 80, ptr.To[int32](9)).BackendRef},
				{BackendRef: backendRef("", "v2", 80, ptr.To[int32](1)).BackendRef},
			},
		},
	)
	want := []*waypoint.HTTPRouteEntry{
		grpcEntry(0, pathOnly(exact, "/pkg.Svc/Get")),
		grpcEntry(1, pathOnly(prefix, "/pkg.Svc/")),
		grpcEntry(5, pathOnly(regex, "/pkg.Svc/G.*")),
		grpcEntry(3, pathOnly(regex, "/pkg\\..*/.+")),
		grpcEntry(2, pathOnly(regex, `/[^/]+/Get\.x`)),
		grpcEntry(4, pathOnly(regex, "/[^/]+/G.t")),
		grpcEntry(6, &waypoint.HTTPMatch{Headers: []*waypoint.HeaderMatch{{Name: "env", Value: sm(exact, "canary")}, {Name: "user", Value: sm(regex, "a.*")}}}),
		grpcEntry(7, &waypoint.HTTPMatch{},
			filters(&waypoint.HTTPFilter{Kind: &waypoint.HTTPFilter_RequestHeaderModifier{RequestHeaderModifier: &waypoint.HeaderModifier{Set: []*waypoint.Header{{Name: "x", Value: "1"}}}}}),
			backends(be("v1", 80, 9), be("v2", 80, 1))),
	}
	got := Build(routeInputs(func(in *Inputs) { in.GRPCRoutes = []*gatewayv1.GRPCRoute{route} }), Options{}).WaypointRoutes
	if diff := cmp.Diff(map[string]*waypoint.Routes{echoKey: {Service: echoKey, Http: want}}, got, protocmp.Transform()); diff != "" {
		t.Errorf("Build(GRPCRoute).WaypointRoutes (-want +got):\n%s", diff)
	}
}

func tcpRoute(name string, age int, refs ...gatewayv1.BackendRef) *gatewayv1.TCPRoute {
	p := svcParent("echo")
	p.Port = ptr.To[int32](9090)
	return &gatewayv1.TCPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Generation: 1, CreationTimestamp: metav1.NewTime(routeEpoch.Add(time.Duration(age) * time.Minute))},
		Spec: gatewayv1.TCPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{p}},
			Rules:           []gatewayv1.TCPRouteRule{{BackendRefs: refs}},
		},
	}
}

func TestBuildRoutesTCP(t *testing.T) {
	routes := []*gatewayv1.TCPRoute{
		tcpRoute("young", 5, backendRef("", "v1", 80, nil).BackendRef),
		tcpRoute("old", 1, backendRef("", "v1", 80, ptr.To[int32](90)).BackendRef, backendRef("", "v2", 80, ptr.To[int32](10)).BackendRef,
			backendRef("", "gone", 80, ptr.To[int32](0)).BackendRef),
	}
	want := map[string]*waypoint.Routes{echoKey: {Service: echoKey, Tcp: []*waypoint.TCPRouteEntry{
		{Route: "demo/old", Port: 9090, Backends: []*waypoint.Backend{be("v1", 80, 90), be("v2", 80, 10),
			{Invalid: "backend Service demo/gone not found"}}},
		{Route: "demo/young", Port: 9090, Backends: []*waypoint.Backend{be("v1", 80, 1)}},
	}}}
	got := Build(routeInputs(func(in *Inputs) { in.TCPRoutes = routes }), Options{}).WaypointRoutes
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Build(TCPRoutes).WaypointRoutes (-want +got):\n%s", diff)
	}
}

// consumer moves r into namespace ns, keeping its parentRefs on demo's
// Services: a consumer route of ns.
func consumer[R *gatewayv1.HTTPRoute | *gatewayv1.TCPRoute](r R, ns string) R {
	var meta *metav1.ObjectMeta
	var refs []gatewayv1.ParentReference
	switch r := any(r).(type) {
	case *gatewayv1.HTTPRoute:
		meta, refs = &r.ObjectMeta, r.Spec.ParentRefs
	case *gatewayv1.TCPRoute:
		meta, refs = &r.ObjectMeta, r.Spec.ParentRefs
	}
	meta.Namespace = ns
	for i := range refs {
		refs[i].Namespace = ptr.To[gatewayv1.Namespace]("demo")
	}
	return r
}

// consumerEntry is entry for route ns/route, a consumer route of ns.
func consumerEntry(ns, route string, rule uint32, m *waypoint.HTTPMatch, opts ...func(*waypoint.HTTPRouteEntry)) *waypoint.HTTPRouteEntry {
	e := entry(route, rule, m, opts...)
	e.Route, e.ConsumerNamespace = ns+"/"+route, ns
	return e
}

func TestBuildRoutesConsumer(t *testing.T) {
	toEcho := func(matches ...gatewayv1.HTTPRouteMatch) gatewayv1.HTTPRouteRule {
		return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("demo", "echo", 80, nil)}}
	}
	echoBE := be("echo", 80, 1)
	tests := []struct {
		name   string
		routes []*gatewayv1.HTTPRoute
		want   []*waypoint.HTTPRouteEntry
	}{
		{
			name: "a consumer route alone: its entries carry its namespace",
			routes: []*gatewayv1.HTTPRoute{
				consumer(httpRoute("c", 0, toEcho()), "shop"),
			},
			want: []*waypoint.HTTPRouteEntry{consumerEntry("shop", "c", 0, pathOnly(prefix, "/"), backends(echoBE))},
		},
		{
			name: "producer and consumer routes on one Service: the producer group first, whatever the precedence and age",
			routes: []*gatewayv1.HTTPRoute{
				consumer(httpRoute("c", 0, toEcho(pathMatch(gatewayv1.PathMatchExact, "/exact"))), "shop"),
				httpRoute("p", 5, toV1()),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("p", 0, pathOnly(prefix, "/")),
				consumerEntry("shop", "c", 0, pathOnly(exact, "/exact"), backends(echoBE)),
			},
		},
		{
			name: "two consumer namespaces: grouped by namespace name, by precedence within a group",
			routes: []*gatewayv1.HTTPRoute{
				consumer(httpRoute("w", 0, toEcho(pathMatch(gatewayv1.PathMatchExact, "/w"))), "web"),
				consumer(httpRoute("s1", 1, toEcho()), "shop"),
				consumer(httpRoute("s2", 2, toEcho(pathMatch(gatewayv1.PathMatchPathPrefix, "/long/prefix"))), "shop"),
				httpRoute("p", 3, toV1(pathMatch(gatewayv1.PathMatchPathPrefix, "/p"))),
			},
			want: []*waypoint.HTTPRouteEntry{
				entry("p", 0, pathOnly(prefix, "/p")),
				consumerEntry("shop", "s2", 0, pathOnly(prefix, "/long/prefix"), backends(echoBE)),
				consumerEntry("shop", "s1", 0, pathOnly(prefix, "/"), backends(echoBE)),
				consumerEntry("web", "w", 0, pathOnly(exact, "/w"), backends(echoBE)),
			},
		},
		{
			name: "a consumer route's backends: the parent Service and its own namespace need no ReferenceGrant, another Service of the parent's namespace does",
			routes: []*gatewayv1.HTTPRoute{consumer(httpRoute("c", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("demo", "echo", 80, nil),
				backendRef("", "local", 80, nil),
				backendRef("demo", "v1", 80, nil),
			}}), "shop")},
			want: []*waypoint.HTTPRouteEntry{consumerEntry("shop", "c", 0, pathOnly(prefix, "/"), backends(
				echoBE,
				&waypoint.Backend{Service: "shop/local.shop.svc.cluster.local", Port: 80, Weight: 1},
				&waypoint.Backend{Weight: 1, Invalid: "backendRef to Service demo/v1 not permitted by any ReferenceGrant"},
			))},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := routeInputs(func(in *Inputs) {
				in.Namespaces = append(in.Namespaces, namespace("shop", nil), namespace("web", nil))
				in.Services = append(in.Services, service("shop", "local", map[string]string{"app": "local"}, []string{"10.96.0.5"}, namedPort("http", 80)))
				in.HTTPRoutes = tt.routes
			})
			out := Build(in, Options{})
			want := map[string]*waypoint.Routes{echoKey: {Service: echoKey, Http: tt.want}}
			if diff := cmp.Diff(want, out.WaypointRoutes, protocmp.Transform()); diff != "" {
				t.Errorf("Build(consumer routes).WaypointRoutes (-want +got):\n%s", diff)
			}
			for _, r := range tt.routes {
				st := out.RouteStatuses["HTTPRoute/"+r.Namespace+"/"+r.Name]
				if st == nil || len(st.Parents) != 1 || st.Parents[0].Conditions[0] != acceptedOK {
					t.Errorf("Build().RouteStatuses[HTTPRoute/%s/%s] = %+v, want Accepted=True", r.Namespace, r.Name, st)
				}
			}
		})
	}
}

func TestBuildRoutesTCPConsumer(t *testing.T) {
	routes := []*gatewayv1.TCPRoute{
		consumer(tcpRoute("c", 0, backendRef("demo", "v1", 80, nil).BackendRef, backendRef("demo", "echo", 9090, nil).BackendRef), "shop"),
		tcpRoute("p", 5, backendRef("", "v2", 80, nil).BackendRef),
	}
	want := map[string]*waypoint.Routes{echoKey: {Service: echoKey, Tcp: []*waypoint.TCPRouteEntry{
		{Route: "demo/p", Port: 9090, Backends: []*waypoint.Backend{be("v2", 80, 1)}},
		{Route: "shop/c", Port: 9090, ConsumerNamespace: "shop", Backends: []*waypoint.Backend{
			{Weight: 1, Invalid: "backendRef to Service demo/v1 not permitted by any ReferenceGrant"}, be("echo", 9090, 1)}},
	}}}
	got := Build(routeInputs(func(in *Inputs) { in.TCPRoutes = routes }), Options{}).WaypointRoutes
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Build(TCPRoutes).WaypointRoutes (-want +got):\n%s", diff)
	}
}

// routeCond is a condition of generation 4 (httpRoute's).
func routeCond(typ string, ok bool, reason, msg string) metav1.Condition {
	s := metav1.ConditionTrue
	if !ok {
		s = metav1.ConditionFalse
	}
	return metav1.Condition{Type: typ, Status: s, ObservedGeneration: 4, Reason: reason, Message: msg}
}

var (
	acceptedOK = routeCond("Accepted", true, "Accepted", "Route was valid")
	resolvedOK = routeCond("ResolvedRefs", true, "ResolvedRefs", "All references resolved")
)

func TestRouteStatus(t *testing.T) {
	withParent := func(r *gatewayv1.HTTPRoute, refs ...gatewayv1.ParentReference) *gatewayv1.HTTPRoute {
		r.Spec.ParentRefs = refs
		return r
	}
	ns := func(p gatewayv1.ParentReference, ns string) gatewayv1.ParentReference {
		p.Namespace = ptr.To(gatewayv1.Namespace(ns))
		return p
	}
	unlabelled := func(in *Inputs) {
		in.Namespaces[0].Labels = nil
	}
	tests := []struct {
		name   string
		route  *gatewayv1.HTTPRoute
		modify func(*Inputs)
		want   []metav1.Condition // of the route's single parent; nil: no status
		served bool               // echo has a Routes resource
	}{
		{
			name:   "accepted",
			route:  httpRoute("r", 0, toV1()),
			want:   []metav1.Condition{acceptedOK, resolvedOK},
			served: true,
		},
		{
			name:   "a parent Service without waypoint: Istio's MissingUseWaypointLabel",
			route:  httpRoute("r", 0, toV1()),
			modify: unlabelled,
			want: []metav1.Condition{routeCond("Accepted", false, "MissingUseWaypointLabel",
				"istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected"), resolvedOK},
		},
		{
			name:  "a parent Service whose waypoint is not ready",
			route: httpRoute("r", 0, toV1()),
			modify: func(in *Inputs) {
				in.Namespaces[0].Labels[LabelUseWaypoint] = "missing"
			},
			want: []metav1.Condition{routeCond("Accepted", false, "WaypointIsNotReady",
				`Service is not bound to a waypoint: waypoint "demo/missing" is not ready; the route is not applied`), resolvedOK},
		},
		{
			name:  "a parent Service that does not exist",
			route: withParent(httpRoute("r", 0, toV1()), svcParent("nope")),
			want:  []metav1.Condition{routeCond("Accepted", false, "NoMatchingParent", "parent not found: Service demo/nope"), resolvedOK},
		},
		{
			name: "a parent port the Service lacks",
			route: withParent(httpRoute("r", 0, toV1()), func() gatewayv1.ParentReference {
				p := svcParent("echo")
				p.Port = ptr.To[int32](81)
				return p
			}()),
			want: []metav1.Condition{routeCond("Accepted", false, "NoMatchingParent",
				"Service demo/echo has no port matching the parentRef's port or sectionName"), resolvedOK},
		},
		{
			name:  "a consumer route to a Service without waypoint",
			route: withParent(httpRoute("r", 0, toV1()), ns(svcParent("remote"), "other")),
			want: []metav1.Condition{routeCond("Accepted", false, "MissingUseWaypointLabel",
				"istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected"), resolvedOK},
		},
		{
			name: "a waypoint Gateway parent",
			route: withParent(httpRoute("r", 0, toV1()), gatewayv1.ParentReference{
				Group: ptr.To[gatewayv1.Group]("gateway.networking.k8s.io"), Kind: ptr.To[gatewayv1.Kind]("Gateway"), Name: "wp"}),
			want: []metav1.Condition{routeCond("Accepted", false, "UnsupportedValue",
				"routes attached to a waypoint Gateway are not supported; attach the route to the Service (parentRef kind Service)"), resolvedOK},
		},
		{
			name:  "another controller's Gateway parent: no status",
			route: withParent(httpRoute("r", 0, toV1()), gatewayv1.ParentReference{Name: "ingress"}),
		},
		{
			name: "BackendNotFound",
			route: httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{
				backendRef("", "v1", 80, nil), backendRef("", "missing", 80, nil)}}),
			want:   []metav1.Condition{acceptedOK, routeCond("ResolvedRefs", false, "BackendNotFound", "backend Service demo/missing not found")},
			served: true,
		},
		{
			name:   "RefNotPermitted",
			route:  httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("other", "remote", 80, nil)}}),
			want:   []metav1.Condition{acceptedOK, routeCond("ResolvedRefs", false, "RefNotPermitted", "backendRef to Service other/remote not permitted by any ReferenceGrant")},
			served: true,
		},
		{
			name: "InvalidKind",
			route: httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Kind: ptr.To[gatewayv1.Kind]("ConfigMap"), Name: "c"}}}}}),
			want:   []metav1.Condition{acceptedOK, routeCond("ResolvedRefs", false, "InvalidKind", `backendRef c: kind ConfigMap of group "" is not supported (only Service)`)},
			served: true,
		},
		{
			name: "UnsupportedValue on some rules: PartiallyInvalid",
			route: httpRoute("r", 0, toV1(), gatewayv1.HTTPRouteRule{
				Filters:     []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExternalAuth}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			}),
			want: []metav1.Condition{acceptedOK, resolvedOK, routeCond("PartiallyInvalid", true, "UnsupportedValue",
				`1 of 2 rules are not valid and answer 500: filter type "ExternalAuth" is not supported`)},
			served: true,
		},
		{
			name: "UnsupportedValue on every rule: not accepted",
			route: httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Filters:     []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("", "v1", 80, nil)},
			}),
			want: []metav1.Condition{routeCond("Accepted", false, "UnsupportedValue",
				`no rule is valid: filter type "ExtensionRef" is not supported`), resolvedOK},
			served: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := routeInputs(func(in *Inputs) {
				in.HTTPRoutes = []*gatewayv1.HTTPRoute{tt.route}
				if tt.modify != nil {
					tt.modify(in)
				}
			})
			out := Build(in, Options{})
			st := out.RouteStatuses["HTTPRoute/demo/r"]
			if tt.want == nil {
				if st != nil {
					t.Errorf("Build().RouteStatuses[HTTPRoute/demo/r] = %v, want none", st)
				}
			} else {
				want := &RouteStatus{Kind: KindHTTPRoute, Namespace: "demo", Name: "r", Generation: 4, Parents: []gatewayv1.RouteParentStatus{{
					ParentRef: tt.route.Spec.ParentRefs[0], ControllerName: "istio.io/gateway-controller", Conditions: tt.want}}}
				if diff := cmp.Diff(want, st); diff != "" {
					t.Errorf("Build().RouteStatuses[HTTPRoute/demo/r] (-want +got):\n%s", diff)
				}
			}
			if _, got := out.WaypointRoutes[echoKey]; got != tt.served {
				t.Errorf("Build().WaypointRoutes has %s: %v, want %v", echoKey, got, tt.served)
			}
		})
	}
}

// FuzzHTTPRoute decodes arbitrary YAML or JSON into the spec of an
// HTTPRoute and a GRPCRoute (inputs that are not a spec are skipped) and
// builds them against routeInputs.
//
// Property: no panic, and
//   - the translation is deterministic;
//   - every Routes resource marshals, belongs to a Service bound to the
//     waypoint, and each of its entries names its route and kind, has a
//     match, and has backends, a redirect or an invalid message;
//   - every route with a Service parentRef has a status with one parent
//     per such parentRef, each with Accepted and ResolvedRefs.
func FuzzHTTPRoute(f *testing.F) {
	for _, s := range []string{
		`{parentRefs: [{group: "", kind: Service, name: echo}], rules: [{backendRefs: [{name: v1, port: 80}]}]}`,
		`{parentRefs: [{group: "", kind: Service, name: echo, port: 80}], rules: [{matches: [{path: {type: RegularExpression, value: "/("}}, {headers: [{name: a, value: b}], method: GET}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, fraction: {numerator: 5, denominator: 0}}}]}]}`,
		`{parentRefs: [{group: "", kind: Service, name: echo, sectionName: grpc}], rules: [{matches: [{method: {service: a.B}}], backendRefs: [{name: v1, namespace: other, port: 80, weight: 0}]}]}`,
		`{parentRefs: [{group: "", kind: Service, name: nope}], rules: [{filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]}]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		if len(spec) > maxFuzzSpec {
			return
		}
		var hs gatewayv1.HTTPRouteSpec
		var gs gatewayv1.GRPCRouteSpec
		errH, errG := yaml.Unmarshal([]byte(spec), &hs), yaml.Unmarshal([]byte(spec), &gs)
		if errH != nil && errG != nil {
			return
		}
		build := func() *Output {
			return Build(routeInputs(func(in *Inputs) {
				if errH == nil {
					in.HTTPRoutes = []*gatewayv1.HTTPRoute{{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "h", Generation: 1}, Spec: *hs.DeepCopy()}}
				}
				if errG == nil {
					in.GRPCRoutes = []*gatewayv1.GRPCRoute{{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "g", Generation: 1}, Spec: *gs.DeepCopy()}}
				}
			}), Options{})
		}
		out := build()
		again := build()
		if diff := cmp.Diff(out.WaypointRoutes, again.WaypointRoutes, protocmp.Transform()); diff != "" {
			t.Fatalf("Build not deterministic (-first +second):\n%s", diff)
		}
		if diff := cmp.Diff(out.RouteStatuses, again.RouteStatuses); diff != "" {
			t.Fatalf("Build statuses not deterministic (-first +second):\n%s", diff)
		}
		for k, rs := range out.WaypointRoutes {
			if k != echoKey && !strings.HasPrefix(k, "demo/v") {
				t.Fatalf("Routes for %s, which is not a Service bound to the waypoint", k)
			}
			if _, err := proto.Marshal(rs); err != nil {
				t.Fatalf("Routes %s does not marshal: %v", k, err)
			}
			for _, e := range rs.Http {
				redirect := slices.ContainsFunc(e.Filters, func(f *waypoint.HTTPFilter) bool { return f.GetRequestRedirect() != nil })
				if e.Route == "" || e.Kind == "" || e.Match == nil || (len(e.Backends) == 0 && !redirect && e.Invalid == "") {
					t.Fatalf("entry %v lacks a route, kind, match, or something to do", e)
				}
			}
		}
		check := func(kind, name string, refs []gatewayv1.ParentReference) {
			n := 0
			for _, r := range refs {
				if r.Kind != nil && *r.Kind == "Service" && r.Group != nil && (*r.Group == "" || *r.Group == "core") {
					n++
				}
			}
			st := out.RouteStatuses[kind+"/demo/"+name]
			if n == 0 {
				return // a waypoint Gateway parent may still have one
			}
			if st == nil || len(st.Parents) < n {
				t.Fatalf("%s status %v, want at least %d parents", kind, st, n)
			}
			for _, p := range st.Parents {
				if len(p.Conditions) < 2 || p.Conditions[0].Type != "Accepted" || p.Conditions[1].Type != "ResolvedRefs" {
					t.Fatalf("%s parent %v lacks Accepted and ResolvedRefs", kind, p)
				}
			}
		}
		if errH == nil {
			check(KindHTTPRoute, "h", hs.ParentRefs)
		}
		if errG == nil {
			check(KindGRPCRoute, "g", gs.ParentRefs)
		}
	})
}
