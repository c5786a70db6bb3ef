package xds

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Keepalive of the connections between the proxies and istiod-lite, as
// Istio's (pkg/keepalive: GRPC_KEEPALIVE_INTERVAL 30 s,
// GRPC_KEEPALIVE_TIMEOUT 10 s, and pilot's enforcement policy of half the
// interval). A client pings a connection that has been quiet for
// KeepaliveTime and closes it when no answer comes within
// KeepaliveTimeout, so a connection whose other end went away without a
// FIN or RST (a node that vanished, a path that drops everything, a
// server that lost the stream) is redialed and the proxy syncs again,
// instead of waiting for pushes that never come.
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 10 * time.Second
)

// keepaliveTime is KeepaliveTime; tests shorten it (gRPC's floor is 10 s).
var keepaliveTime = KeepaliveTime

// KeepaliveDialOption is the client side of the keepalive, for every
// connection a proxy makes to istiod-lite (NewClient adds it to its own).
func KeepaliveDialOption() grpc.DialOption {
	return grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time:    keepaliveTime,
		Timeout: KeepaliveTimeout,
		// Only with streams open: Istio's istiod (pilot's policy, unlike
		// istiod-lite's) answers pings on a connection without streams
		// with GOAWAY too_many_pings. The xDS stream is always open.
		PermitWithoutStream: false,
	})
}

// KeepaliveServerOptions are the server side: istiod-lite accepts the
// clients' pings (at most one per KeepaliveTime/2; grpc's default policy
// would answer a ping every 30 s with GOAWAY too_many_pings) and pings
// quiet clients itself, dropping those that do not answer.
func KeepaliveServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveTime / 2,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    KeepaliveTime,
			Timeout: KeepaliveTimeout,
		}),
	}
}
