package waypoint

import (
	"encoding/json"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/state"
)

// certificateDump describes the waypoint's certificate in /config_dump (the
// shape of ztunnel's).
type certificateDump struct {
	Identity  string    `json:"identity"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	Issuer    string    `json:"issuer"`
}

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
	Certificates   []certificateDump `json:"certificates"`
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
		Certificates:   []certificateDump{},
	}
	w.l7.mu.Lock()
	out.Policies = w.l7.sortedLocked()
	for _, name := range out.Policies {
		if b, err := protojson.Marshal(w.l7.raw[name]); err == nil {
			out.Authorizations = append(out.Authorizations, b)
		}
	}
	w.l7.mu.Unlock()
	for _, c := range w.certs.Certificates() {
		out.Certificates = append(out.Certificates, certificateDump{
			Identity:  c.ID.String(),
			Serial:    c.Leaf.SerialNumber.Text(16),
			NotBefore: c.Leaf.NotBefore,
			NotAfter:  c.Leaf.NotAfter,
			Issuer:    c.Leaf.Issuer.String(),
		})
	}
	return out
}
