package main

import (
	"fmt"
	"net/http"
	"strings"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
)

// Routes: for each HTTPRoute of the example attached to a Service, the demo
// sends one request that a header match of the route takes somewhere else
// than the Service's own pods, and prints it with the header, so that the
// answer (who served it) and the waypoint's record (route_name) show the
// route at work.

// routedTarget is a request a route's header match takes.
type routedTarget struct {
	route         string // namespace/name of the HTTPRoute
	host          string // the parent Service's hostname
	clusterIP     string // its cluster IP
	port          int32  // the parentRef's port, or the Service's first
	header, value string
}

// target renders t as traffic's target: host:port/ [header: value].
func (t routedTarget) target(host string) string {
	return fmt.Sprintf("%s:%d/ [%s: %s]", host, t.port, t.header, t.value)
}

// routedTargets returns, for each HTTPRoute of the example whose parent is
// a Service of it, the first exact header match of its rules.
func routedTargets(snap *localdir.Snapshot) []routedTarget {
	var out []routedTarget
	for _, r := range snap.Inputs.HTTPRoutes {
		h, v, ok := firstHeaderMatch(r)
		if !ok {
			continue
		}
		for _, p := range r.Spec.ParentRefs {
			if p.Kind == nil || *p.Kind != "Service" {
				continue
			}
			for _, s := range snap.Inputs.Services {
				if s.Namespace != r.Namespace || s.Name != string(p.Name) || len(s.Spec.Ports) == 0 {
					continue
				}
				port := s.Spec.Ports[0].Port
				if p.Port != nil {
					port = int32(*p.Port)
				}
				out = append(out, routedTarget{route: r.Namespace + "/" + r.Name, host: s.Name + "." + s.Namespace + ".svc.cluster.local",
					clusterIP: s.Spec.ClusterIP, port: port, header: h, value: v})
			}
		}
	}
	return out
}

func firstHeaderMatch(r *gatewayv1.HTTPRoute) (name, value string, ok bool) {
	for _, rule := range r.Spec.Rules {
		for _, m := range rule.Matches {
			for _, h := range m.Headers {
				if h.Type == nil || *h.Type == gatewayv1.HeaderMatchExact {
					return string(h.Name), h.Value, true
				}
			}
		}
	}
	return "", "", false
}

// splitTarget splits a target into host:port/path and the header its
// " [name: value]" suffix names, if any.
func splitTarget(target string) (string, http.Header) {
	t, hdr, ok := strings.Cut(target, " [")
	if !ok {
		return target, nil
	}
	name, value, _ := strings.Cut(strings.TrimSuffix(hdr, "]"), ":")
	return t, http.Header{http.CanonicalHeaderKey(strings.TrimSpace(name)): {strings.TrimSpace(value)}}
}
