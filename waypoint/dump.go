package waypoint

import (
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/state"
)

type configDump struct {
	Identity string `json:"identity"`
	Hostname string `json:"hostname"`
	// Gateway is the waypoint's Gateway, "namespace/name": the target its
	// gateway-bound L7 policies name. Pod is its replica's pod name.
	Gateway string     `json:"gateway"`
	Pod     string     `json:"pod"`
	State   state.Dump `json:"state"`
	// Policies are the names of the L7 policies held, sorted;
	// Authorizations the same policies as received
	// (ambientgo.waypoint.Authorization in the protos' JSON form), which
	// meshctl explain evaluates with the waypoint's own evaluator.
	Policies       []string          `json:"waypointPolicies"`
	Authorizations []json.RawMessage `json:"waypointAuthorizations"`
	// Routes are the Services' routes held (ambientgo.waypoint.Routes in
	// the protos' JSON form), sorted by Service key.
	Routes       []json.RawMessage          `json:"waypointRoutes"`
	Certificates []identity.CertificateInfo `json:"certificates"`
}

// configDump is what /config_dump shows: the state from istiod-lite, the L7
// policies held and the certificate.
func (w *Waypoint) configDump() any {
	out := configDump{
		Identity:       w.id.String(),
		Hostname:       w.proxy.Hostname(),
		Gateway:        w.cfg.Namespace + "/" + w.cfg.Gateway,
		Pod:            w.cfg.PodName,
		State:          w.store.Dump(),
		Authorizations: []json.RawMessage{},
		Routes:         []json.RawMessage{},
		Certificates:   identity.Infos(w.certs.Certificates()),
	}
	w.l7.mu.Lock()
	out.Policies = w.l7.sortedLocked()
	for _, name := range out.Policies {
		if b, err := protojson.Marshal(w.l7.raw[name]); err == nil {
			out.Authorizations = append(out.Authorizations, b)
		}
	}
	for _, name := range w.l7.sortedRoutesLocked() {
		if b, err := protojson.Marshal(w.l7.routesRaw[name]); err == nil {
			out.Routes = append(out.Routes, b)
		}
	}
	w.l7.mu.Unlock()
	return out
}
