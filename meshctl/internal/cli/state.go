package cli

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// meshConfig is a ztunnel's configuration decoded into the Workload API
// protos.
type meshConfig struct {
	Workloads []*workloadapi.Workload
	Services  []*workloadapi.Service
	Policies  []*security.Authorization
}

// decode turns the JSON sections of d into protos. A ztunnel's dump shows
// the top-level addresses as IP text; they are turned back into bytes.
func (d *configDump) decode() (*meshConfig, error) {
	var c meshConfig
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for _, raw := range d.Workloads {
		w := new(workloadapi.Workload)
		if err := opts.Unmarshal(ipsToBytes(raw), w); err != nil {
			return nil, fmt.Errorf("config dump: workload: %w", err)
		}
		c.Workloads = append(c.Workloads, w)
	}
	for _, raw := range d.Services {
		s := new(workloadapi.Service)
		if err := opts.Unmarshal(ipsToBytes(raw), s); err != nil {
			return nil, fmt.Errorf("config dump: service: %w", err)
		}
		c.Services = append(c.Services, s)
	}
	for _, raw := range d.Policies {
		p := new(security.Authorization)
		if err := opts.Unmarshal(raw, p); err != nil {
			return nil, fmt.Errorf("config dump: policy: %w", err)
		}
		c.Policies = append(c.Policies, p)
	}
	return &c, nil
}

// ipsToBytes rewrites the "addresses" of a workload (IP strings) or a
// service ({address: IP}) as the base64 of the address bytes, protojson's
// form of bytes. Values that are not IPs are left as they are.
func ipsToBytes(raw json.RawMessage) json.RawMessage {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return raw
	}
	addrs, _ := m["addresses"].([]any)
	for i, a := range addrs {
		switch a := a.(type) {
		case string:
			addrs[i] = ipBase64(a)
		case map[string]any:
			if s, ok := a["address"].(string); ok {
				a["address"] = ipBase64(s)
			}
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return b
}

func ipBase64(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return s
	}
	return base64.StdEncoding.EncodeToString(a.AsSlice())
}

// store loads c into a pkg/state Store, the data path's own view, so that
// lookups (services by VIP or hostname, waypoints) are the ztunnel's.
func (c *meshConfig) store() (*state.Store, error) {
	s := state.NewStore()
	var addrs []*adspb.Resource
	for _, w := range c.Workloads {
		a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, &adspb.Resource{Name: w.GetUid(), Resource: a})
	}
	for _, svc := range c.Services {
		a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Service{Service: svc}})
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, &adspb.Resource{Name: svc.GetNamespace() + "/" + svc.GetHostname(), Resource: a})
	}
	if err := s.OnUpdate(workloadapi.AddressTypeURL, addrs, nil); err != nil {
		return nil, fmt.Errorf("loading addresses: %w", err)
	}
	var pols []*adspb.Resource
	for _, p := range c.Policies {
		a, err := anypb.New(p)
		if err != nil {
			return nil, err
		}
		pols = append(pols, &adspb.Resource{Name: p.GetNamespace() + "/" + p.GetName(), Resource: a})
	}
	if err := s.OnUpdate(workloadapi.AuthorizationTypeURL, pols, nil); err != nil {
		return nil, fmt.Errorf("loading policies: %w", err)
	}
	return s, nil
}
