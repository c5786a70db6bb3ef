package xds_test

import (
	"context"
	"net"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// serveDebug serves srv's ADS and debug services on a loopback port and
// returns a CSDS client of it.
func serveDebug(t *testing.T, srv *xds.Server, cfg xds.DebugConfig) (string, statusv3.ClientStatusDiscoveryServiceClient) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	srv.RegisterDebug(g, cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		<-done
	})
	return lis.Addr().String(), statusv3.NewClientStatusDiscoveryServiceClient(conn)
}

func withToken(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

// TestClientStatus drives one proxy's stream through the states the debug
// service reports: sent but not ACKed (STALE), ACKed (SYNCED), a change
// not yet ACKed (STALE, still at the old version), NACKed (ERROR).
func TestClientStatus(t *testing.T) {
	srv := xds.NewServer(xds.ServerConfig{})
	srv.Set(addrType, messages(workloads(2)))
	addr, csds := serveDebug(t, srv, xds.DebugConfig{Authorize: xds.TokenAuthorizer(func() []string { return []string{"op-token"} })})
	const nodeID = "ztunnel~127.0.0.1~ztunnel-node-a.istio-system~istio-system.svc.cluster.local"
	s := rawStream(t, addr)

	recv := func() *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		return resp
	}
	send := func(req *discoveryv3.DeltaDiscoveryRequest) {
		t.Helper()
		if err := s.Send(req); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	// fetch polls the status until the addresses type reaches want (the
	// server handles the stream's requests asynchronously).
	fetch := func(want statusv3.ConfigStatus) *statusv3.ClientConfig_GenericXdsConfig {
		t.Helper()
		var last *statusv3.ClientStatusResponse
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			resp, err := csds.FetchClientStatus(withToken("op-token"), &statusv3.ClientStatusRequest{})
			if err != nil {
				t.Fatalf("FetchClientStatus: %v", err)
			}
			last = resp
			if len(resp.GetConfig()) == 1 && len(resp.Config[0].GetGenericXdsConfigs()) == 1 &&
				resp.Config[0].GenericXdsConfigs[0].GetConfigStatus() == want {
				if got := resp.Config[0].GetNode().GetId(); got != nodeID {
					t.Errorf("node id = %q, want %q", got, nodeID)
				}
				return resp.Config[0].GenericXdsConfigs[0]
			}
		}
		t.Fatalf("FetchClientStatus never reported %v; last answer: %v", want, last)
		return nil
	}
	ignore := protocmp.IgnoreFields(&statusv3.ClientConfig_GenericXdsConfig{}, "last_updated")
	ignoreErrTime := protocmp.IgnoreFields(&adminv3.UpdateFailureState{}, "last_update_attempt")

	send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: nodeID}, TypeUrl: addrType})
	first := recv()
	got := fetch(statusv3.ConfigStatus_STALE)
	want := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: addrType, ConfigStatus: statusv3.ConfigStatus_STALE, ClientStatus: adminv3.ClientResourceStatus_REQUESTED}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignore); diff != "" {
		t.Errorf("before the ACK (-want +got):\n%s", diff)
	}

	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: addrType, ResponseNonce: first.GetNonce()})
	got = fetch(statusv3.ConfigStatus_SYNCED)
	want = &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: addrType, VersionInfo: "1", ConfigStatus: statusv3.ConfigStatus_SYNCED, ClientStatus: adminv3.ClientResourceStatus_ACKED}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignore); diff != "" {
		t.Errorf("after the ACK (-want +got):\n%s", diff)
	}
	if got.GetLastUpdated() == nil {
		t.Errorf("after the ACK: last_updated is unset")
	}

	srv.Set(addrType, messages(workloads(3)))
	second := recv()
	got = fetch(statusv3.ConfigStatus_STALE)
	want = &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: addrType, VersionInfo: "1", ConfigStatus: statusv3.ConfigStatus_STALE, ClientStatus: adminv3.ClientResourceStatus_REQUESTED}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignore); diff != "" {
		t.Errorf("after a change, before its ACK (-want +got):\n%s", diff)
	}

	send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: addrType, ResponseNonce: second.GetNonce(), ErrorDetail: &status.Status{Code: 3, Message: "bad workload"}})
	got = fetch(statusv3.ConfigStatus_ERROR)
	want = &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: addrType, VersionInfo: "1", ConfigStatus: statusv3.ConfigStatus_ERROR, ClientStatus: adminv3.ClientResourceStatus_NACKED,
		ErrorState: &adminv3.UpdateFailureState{Details: "bad workload", VersionInfo: "2"}}
	if diff := cmp.Diff(want, got, protocmp.Transform(), ignore, ignoreErrTime); diff != "" {
		t.Errorf("after a NACK (-want +got):\n%s", diff)
	}
}

func TestClientStatusRefusesCallers(t *testing.T) {
	tokens := xds.TokenAuthorizer(func() []string { return []string{"op-token"} })
	for _, tc := range []struct {
		name      string
		authorize func(context.Context) error
		ctx       context.Context
		want      codes.Code
	}{
		{name: "no token", authorize: tokens, ctx: context.Background(), want: codes.Unauthenticated},
		{name: "unknown token", authorize: tokens, ctx: withToken("node-token"), want: codes.Unauthenticated},
		{name: "known token", authorize: tokens, ctx: withToken("op-token"), want: codes.OK},
		{name: "nil authorizer", authorize: nil, ctx: withToken("op-token"), want: codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := xds.NewServer(xds.ServerConfig{})
			_, csds := serveDebug(t, srv, xds.DebugConfig{Authorize: tc.authorize})
			_, err := csds.FetchClientStatus(tc.ctx, &statusv3.ClientStatusRequest{})
			if got := grpcstatus.Code(err); got != tc.want {
				t.Errorf("FetchClientStatus() code = %v, want %v (%v)", got, tc.want, err)
			}
		})
	}
}
