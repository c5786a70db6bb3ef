package server

import (
	"context"
	"maps"
	"slices"

	"k8s.io/client-go/kubernetes"

	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// debugConfig authorizes the xDS debug service (meshctl proxy-status): in
// local mode a bearer token of the config directory's node tokens; in
// cluster mode a user's token reviewed by the API server, for a user who
// may list pods in every namespace.
func (s *Server) debugConfig() xds.DebugConfig {
	if s.cfg.Kube == nil {
		return xds.DebugConfig{Authorize: xds.TokenAuthorizer(func() []string {
			return slices.Collect(maps.Keys(s.snapshot.Load().tokens))
		})}
	}
	cs, err := kubernetes.NewForConfig(s.cfg.Kube)
	if err != nil {
		return xds.DebugConfig{Authorize: func(context.Context) error { return err }}
	}
	return xds.DebugConfig{Authorize: xds.KubeAuthorizer(cs)}
}
