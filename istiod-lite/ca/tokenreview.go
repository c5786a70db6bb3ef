package ca

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Defaults of TokenReviewAuthenticator.
const (
	// DefaultAudience is the audience ztunnels request for their CA token,
	// as in Istio.
	DefaultAudience = "istio-ca"
	// DefaultNodeAgent is the service account of ztunnel.
	DefaultNodeAgent = "istio-system/ztunnel"
	// DefaultReviewCacheTTL is how long a successful review is reused.
	DefaultReviewCacheTTL = 30 * time.Second
)

// Keys of a service account token's user extra that name the pod the token is bound to
// (k8s.io/apiserver/pkg/authentication/serviceaccount).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
)

// ErrNotAuthenticated means the API server did not authenticate the token (expired, revoked, bound to
// a deleted object, wrong audience, or not a service account token).
var ErrNotAuthenticated = errors.New("ca: token not authenticated by the API server")

// TokenReviewAuthenticator authenticates callers in a Kubernetes cluster: the bearer token is a
// service account token that the API server reviews (TokenReview, audience Audience).
//
// A token of a node agent service account (ztunnel) that is bound to a pod makes the caller a node
// agent for that pod's node: the node is the token's node-name extra when present, otherwise the
// spec.nodeName of the bound pod (whose uid must match). Any other token gives the caller only its
// own identity, spiffe://<TrustDomain>/ns/<namespace>/sa/<service account>.
type TokenReviewAuthenticator struct {
	// Client reviews tokens and reads bound pods. Required.
	Client kubernetes.Interface
	// Audience the token must be issued for; default DefaultAudience.
	Audience string
	// NodeAgents are the "namespace/name" of the service accounts allowed to act for their node;
	// default [DefaultNodeAgent].
	NodeAgents []string
	// TrustDomain of callers' own identities; default "cluster.local".
	TrustDomain string
	// CacheTTL is how long a successful review is reused for the same token; default
	// DefaultReviewCacheTTL, negative disables the cache. Failures are never cached.
	CacheTTL time.Duration

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedCaller
}

type cachedCaller struct {
	caller  Caller
	expires time.Time
}

// maxCachedReviews bounds the cache; when full, expired entries are dropped, then all.
const maxCachedReviews = 4096

var _ Authenticator = (*TokenReviewAuthenticator)(nil)

// Authenticate reviews the request's bearer token with the API server.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context) (*Caller, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return nil, err
	}
	return a.AuthenticateToken(ctx, token)
}

// AuthenticateToken reviews one token (see Authenticate).
func (a *TokenReviewAuthenticator) AuthenticateToken(ctx context.Context, token string) (*Caller, error) {
	if a.Client == nil {
		return nil, errors.New("ca: TokenReviewAuthenticator.Client is nil")
	}
	key := sha256.Sum256([]byte(token))
	ttl := a.CacheTTL
	if ttl == 0 {
		ttl = DefaultReviewCacheTTL
	}
	now := time.Now()
	if ttl > 0 {
		a.mu.Lock()
		c, ok := a.cache[key]
		a.mu.Unlock()
		if ok && now.Before(c.expires) {
			caller := c.caller
			return &caller, nil
		}
	}
	caller, err := a.review(ctx, token)
	if err != nil {
		return nil, err
	}
	if ttl > 0 {
		a.mu.Lock()
		if a.cache == nil || len(a.cache) >= maxCachedReviews {
			for k, c := range a.cache {
				if !now.Before(c.expires) {
					delete(a.cache, k)
				}
			}
			if a.cache == nil || len(a.cache) >= maxCachedReviews {
				a.cache = map[[sha256.Size]byte]cachedCaller{}
			}
		}
		a.cache[key] = cachedCaller{caller: *caller, expires: now.Add(ttl)}
		a.mu.Unlock()
	}
	return caller, nil
}

func (a *TokenReviewAuthenticator) review(ctx context.Context, token string) (*Caller, error) {
	aud := a.Audience
	if aud == "" {
		aud = DefaultAudience
	}
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("ca: token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		if st.Error != "" {
			return nil, fmt.Errorf("%w: %s", ErrNotAuthenticated, st.Error)
		}
		return nil, ErrNotAuthenticated
	}
	if !slices.Contains(st.Audiences, aud) {
		return nil, fmt.Errorf("%w: audiences %q do not include %q", ErrNotAuthenticated, st.Audiences, aud)
	}
	ns, sa, ok := ServiceAccountOf(st.User.Username)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a service account", ErrNotAuthenticated, st.User.Username)
	}
	tdName := a.TrustDomain
	if tdName == "" {
		tdName = "cluster.local"
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain %q: %w", tdName, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", ns, "sa", sa)
	if err != nil {
		return nil, fmt.Errorf("ca: identity of %s/%s: %w", ns, sa, err)
	}
	caller := &Caller{Identity: id}
	agents := a.NodeAgents
	if len(agents) == 0 {
		agents = []string{DefaultNodeAgent}
	}
	if !slices.Contains(agents, ns+"/"+sa) {
		return caller, nil
	}
	node, err := a.boundNode(ctx, ns, st.User.Extra)
	if err != nil {
		return nil, err
	}
	caller.Node = node
	return caller, nil
}

// boundNode returns the node of the pod a node agent's token is bound to, or "" when the token is
// not bound to a pod (the agent then has only its own identity).
func (a *TokenReviewAuthenticator) boundNode(ctx context.Context, ns string, extra map[string]authnv1.ExtraValue) (string, error) {
	first := func(k string) string {
		if v := extra[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if node := first(ExtraNodeName); node != "" {
		return node, nil
	}
	name, uid := first(ExtraPodName), first(ExtraPodUID)
	if name == "" {
		return "", nil
	}
	pod, err := a.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("ca: pod %s/%s the token is bound to: %w", ns, name, err)
	}
	if uid != "" && string(pod.UID) != uid {
		return "", fmt.Errorf("%w: pod %s/%s the token is bound to was replaced", ErrNotAuthenticated, ns, name)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("%w: pod %s/%s the token is bound to is not scheduled", ErrNotAuthenticated, ns, name)
	}
	return pod.Spec.NodeName, nil
}

// ServiceAccountOf parses a service account user name,
// "system:serviceaccount:<namespace>:<name>".
func ServiceAccountOf(username string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return namespace, name, true
}
