package server

import (
	"context"
	"log/slog"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/relay"
	"github.com/ambient-go/mesh/istiod-lite/xds"
)

// The Secret of local mode's log readers: each key a user, its value the
// user's token (`meshctl logs --token`, or the file meshctl reads).
const (
	LogTokensNamespace = "istio-system"
	LogTokensName      = "meshctl-tokens"
)

// newRelay builds the access-log relay: proxies authenticate as on their
// xDS stream; callers with a meshctl token (local mode) or a Kubernetes
// bearer token checked with TokenReview and SubjectAccessReview (cluster
// mode, cs set).
func newRelay(s *Server, cs kubernetes.Interface, authn func(context.Context) (xds.Caller, error), log *slog.Logger) (*relay.Relay, error) {
	var az relay.Authorizer = &relay.TokenAuthorizer{Tokens: func() map[string]string {
		if m := s.logUsers.Load(); m != nil {
			return *m
		}
		return nil
	}}
	if cs != nil {
		az = &relay.KubeAuthorizer{Client: cs, Namespaces: func() []string {
			if ns := s.namespaces.Load(); ns != nil {
				return *ns
			}
			return nil
		}}
	}
	return relay.New(relay.Config{
		AuthenticateProxy: func(ctx context.Context) (relay.ProxyCaller, error) {
			c, err := authn(ctx)
			return relay.ProxyCaller{Node: c.Node, Identity: c.Identity}, err
		},
		Authorizer: az,
		Logger:     log,
	})
}

// setLogUsers reads local mode's log readers from the config directory.
func (s *Server) setLogUsers(secrets []*corev1.Secret) {
	users := map[string]string{}
	for _, sec := range secrets {
		if sec.Namespace != LogTokensNamespace || sec.Name != LogTokensName {
			continue
		}
		for u, t := range sec.Data {
			users[u] = strings.TrimSpace(string(t))
		}
		for u, t := range sec.StringData {
			users[u] = strings.TrimSpace(t)
		}
	}
	s.logUsers.Store(&users)
}

// setNamespaces keeps the namespaces' names for the relay.
func (s *Server) setNamespaces(in *model.Inputs) {
	ns := make([]string, 0, len(in.Namespaces))
	for _, n := range in.Namespaces {
		ns = append(ns, n.Name)
	}
	s.namespaces.Store(&ns)
}

// Relay is the access-log relay.
func (s *Server) Relay() *relay.Relay { return s.relay }
