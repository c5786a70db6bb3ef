package server

import (
	"context"
	"maps"
	"slices"

	"k8s.io/client-go/kubernetes"

	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// debugConfig authorizes the xDS debug service (meshctl proxy-status) as
// the access-log relay authorizes its callers: in local mode a meshctl
// token of the config directory (Secret istio-system/meshctl-tokens, see
// relay.go; node tokens are not accepted); in cluster mode a user's token
// reviewed by the API server, for a user who may list pods in every
// namespace.
func (s *Server) debugConfig() xds.DebugConfig {
	if s.cfg.Kube == nil {
		return xds.DebugConfig{Authorize: xds.TokenAuthorizer(func() []string {
			if m := s.logUsers.Load(); m != nil {
				return slices.Collect(maps.Values(*m))
			}
			return nil
		})}
	}
	cs, err := kubernetes.NewForConfig(s.cfg.Kube)
	if err != nil {
		return xds.DebugConfig{Authorize: func(context.Context) error { return err }}
	}
	return xds.DebugConfig{Authorize: xds.KubeAuthorizer(cs)}
}
