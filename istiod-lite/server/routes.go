package server

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// RouteStatuses returns the status of every HTTPRoute, GRPCRoute and
// TCPRoute attached to a Service (or a waypoint), sorted by kind,
// namespace and name. Local mode has no API server to write them to; they
// are logged when they change.
func (s *Server) RouteStatuses() []*model.RouteStatus {
	m := s.routeStatuses.Load()
	if m == nil {
		return nil
	}
	out := make([]*model.RouteStatus, 0, len(*m))
	for _, k := range slices.Sorted(maps.Keys(*m)) {
		out = append(out, (*m)[k])
	}
	return out
}

// logRouteStatuses stores the route statuses and logs each route whose
// conditions changed: a warning when one is not as wanted.
func (s *Server) logRouteStatuses(statuses map[string]*model.RouteStatus) {
	s.routeStatuses.Store(&statuses)
	if s.routeLogged == nil {
		s.routeLogged = map[string]string{}
	}
	for k := range s.routeLogged {
		if _, ok := statuses[k]; !ok {
			delete(s.routeLogged, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(statuses)) {
		st := statuses[k]
		var conds []string
		for _, p := range st.Parents {
			for _, c := range p.Conditions {
				conds = append(conds, string(p.ParentRef.Name)+": "+c.Type+"="+string(c.Status)+" "+c.Reason)
			}
		}
		rejected := st.Rejected()
		sig := fmt.Sprint(conds, rejected)
		if s.routeLogged[k] == sig {
			continue
		}
		s.routeLogged[k] = sig
		level := slog.LevelInfo
		if len(rejected) > 0 {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "route status", "kind", st.Kind, "namespace", st.Namespace, "name", st.Name,
			"conditions", conds, "problems", rejected)
	}
}
