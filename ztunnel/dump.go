package ztunnel

import (
	"encoding/base64"
	"encoding/json"
	"net/netip"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/ztunnel/proxy"
)

type listenerDump struct {
	Address string `json:"address"`
	UID     string `json:"uid"`
	HBONE   string `json:"hbone"`
	SOCKS5  string `json:"socks5"`
}

type configDump struct {
	Node         string                     `json:"node"`
	Workloads    []json.RawMessage          `json:"workloads"`
	Services     []json.RawMessage          `json:"services"`
	Policies     []json.RawMessage          `json:"policies"`
	Certificates []identity.CertificateInfo `json:"certificates"`
	Listeners    []listenerDump             `json:"listeners"`
	// Connections are the connections the proxy carries now (istioctl's
	// ztunnel-config connections).
	Connections []proxy.Connection `json:"connections"`
}

// configDump is what /config_dump shows: the state from istiod-lite (in
// the protos' JSON form), the certificates held, the pod listeners and the
// open connections.
func (z *Ztunnel) configDump() any {
	d := z.store.Dump()
	out := configDump{
		Node:         z.cfg.Node,
		Workloads:    []json.RawMessage{},
		Services:     []json.RawMessage{},
		Policies:     []json.RawMessage{},
		Certificates: identity.Infos(z.certs.Certificates()),
		Listeners:    []listenerDump{},
		Connections:  z.proxy.Connections(),
	}
	if out.Connections == nil {
		out.Connections = []proxy.Connection{}
	}
	for _, w := range d.Workloads {
		out.Workloads = append(out.Workloads, withIPs(protoJSON(w)))
	}
	for _, s := range d.Services {
		out.Services = append(out.Services, withIPs(protoJSON(s)))
	}
	for _, p := range d.Policies {
		out.Policies = append(out.Policies, protoJSON(p))
	}
	out.Listeners = append(out.Listeners, z.dp.listeners()...)
	return out
}

// withIPs shows the addresses of a workload or service as IPs rather than
// the base64 of their bytes.
func withIPs(raw json.RawMessage) json.RawMessage {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	addrs, _ := m["addresses"].([]any)
	for i, a := range addrs {
		switch a := a.(type) {
		case string: // Workload: bytes
			addrs[i] = ipString(a)
		case map[string]any: // Service: NetworkAddress
			if s, ok := a["address"].(string); ok {
				a["address"] = ipString(s)
			}
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return b
}

func ipString(b64 string) string {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return b64
	}
	if a, ok := netip.AddrFromSlice(b); ok {
		return a.String()
	}
	return b64
}

func protoJSON(m proto.Message) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return b
}
