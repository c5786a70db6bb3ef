package adspb_test

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestDecodesAsEnvoy: every field of our messages, set, decodes into
// go-control-plane's Envoy message (what istiod-lite's server reads) as the
// same field, and Envoy's message, with only those fields set, decodes into
// ours unchanged.
func TestDecodesAsEnvoy(t *testing.T) {
	detail := mustAny(t, structpb.NewStringValue("detail"))
	payload := mustAny(t, structpb.NewStringValue("payload"))
	tests := []struct {
		name  string
		ours  proto.Message
		envoy proto.Message
	}{
		{
			name: "request",
			ours: &adspb.DeltaDiscoveryRequest{
				Node:                     &adspb.Node{Id: "ztunnel~1", Cluster: "Kubernetes"},
				TypeUrl:                  "type.googleapis.com/istio.workload.Address",
				ResourceNamesSubscribe:   []string{"a", "b"},
				ResourceNamesUnsubscribe: []string{"c"},
				InitialResourceVersions:  map[string]string{"a": "v1", "b": "v2"},
				ResponseNonce:            "n1",
				ErrorDetail:              &adspb.Status{Code: 3, Message: "bad", Details: []*anypb.Any{detail}},
			},
			envoy: &discoveryv3.DeltaDiscoveryRequest{
				Node:                     &corev3.Node{Id: "ztunnel~1", Cluster: "Kubernetes"},
				TypeUrl:                  "type.googleapis.com/istio.workload.Address",
				ResourceNamesSubscribe:   []string{"a", "b"},
				ResourceNamesUnsubscribe: []string{"c"},
				InitialResourceVersions:  map[string]string{"a": "v1", "b": "v2"},
				ResponseNonce:            "n1",
				ErrorDetail:              &status.Status{Code: 3, Message: "bad", Details: []*anypb.Any{detail}},
			},
		},
		{
			name: "response",
			ours: &adspb.DeltaDiscoveryResponse{
				SystemVersionInfo: "sys",
				Resources:         []*adspb.Resource{{Version: "v1", Resource: payload, Name: "a", Aliases: []string{"x"}}},
				TypeUrl:           "type.googleapis.com/istio.workload.Address",
				Nonce:             "n2",
				RemovedResources:  []string{"b"},
			},
			envoy: &discoveryv3.DeltaDiscoveryResponse{
				SystemVersionInfo: "sys",
				Resources:         []*discoveryv3.Resource{{Version: "v1", Resource: payload, Name: "a", Aliases: []string{"x"}}},
				TypeUrl:           "type.googleapis.com/istio.workload.Address",
				Nonce:             "n2",
				RemovedResources:  []string{"b"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name+" ours to envoy", func(t *testing.T) {
			got := roundTrip(t, tt.ours, tt.envoy.ProtoReflect().New().Interface())
			if diff := cmp.Diff(tt.envoy, got, protocmp.Transform()); diff != "" {
				t.Errorf("decoded as Envoy's (-want +got):\n%s", diff)
			}
			if n := len(got.ProtoReflect().GetUnknown()); n != 0 {
				t.Errorf("Envoy's message has %d bytes of unknown fields, want 0", n)
			}
		})
		t.Run(tt.name+" envoy to ours", func(t *testing.T) {
			got := roundTrip(t, tt.envoy, tt.ours.ProtoReflect().New().Interface())
			if diff := cmp.Diff(tt.ours, got, protocmp.Transform()); diff != "" {
				t.Errorf("decoded as ours (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKeepsEnvoyOnlyFields: fields of Envoy's response we do not declare
// arrive as unknown fields, do not disturb the ones we read, and survive a
// re-encode.
func TestKeepsEnvoyOnlyFields(t *testing.T) {
	envoy := &discoveryv3.DeltaDiscoveryResponse{
		TypeUrl: "type.googleapis.com/istio.workload.Address",
		Nonce:   "n3",
		Resources: []*discoveryv3.Resource{{
			Name: "a", Version: "v1",
			Ttl:          durationpb.New(5),
			CacheControl: &discoveryv3.Resource_CacheControl{DoNotCache: true},
		}},
		ControlPlane: &corev3.ControlPlane{Identifier: "istiod"},
	}
	ours := roundTrip(t, envoy, &adspb.DeltaDiscoveryResponse{}).(*adspb.DeltaDiscoveryResponse)
	want := &adspb.DeltaDiscoveryResponse{
		TypeUrl:   "type.googleapis.com/istio.workload.Address",
		Nonce:     "n3",
		Resources: []*adspb.Resource{{Name: "a", Version: "v1"}},
	}
	if diff := cmp.Diff(want, ours, protocmp.Transform(), protocmp.IgnoreUnknown()); diff != "" {
		t.Errorf("decoded as ours (-want +got):\n%s", diff)
	}
	back := roundTrip(t, ours, &discoveryv3.DeltaDiscoveryResponse{})
	if diff := cmp.Diff(envoy, back, protocmp.Transform()); diff != "" {
		t.Errorf("re-encoded as Envoy's (-want +got):\n%s", diff)
	}
}

func roundTrip(t *testing.T, from, to proto.Message) proto.Message {
	t.Helper()
	b, err := proto.Marshal(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(b, to); err != nil {
		t.Fatal(err)
	}
	return to
}
