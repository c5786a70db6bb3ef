package relay

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"slices"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/istiod-lite/ca"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
)

// Access is what a caller may see.
type Access struct {
	User string
	// All: every namespace. Otherwise only records with an end in one of
	// Namespaces.
	All        bool
	Namespaces []string
}

// allows says whether the caller may see r.
func (a *Access) allows(r *logsv1.Record) bool {
	return a.All || slices.Contains(a.Namespaces, r.GetSource().GetNamespace()) ||
		slices.Contains(a.Namespaces, r.GetDestination().GetNamespace())
}

// An Authorizer authenticates a Watch caller and says what it may see.
// namespaces are those the request asks for (nil: every namespace it may
// read). Errors are gRPC statuses: Unauthenticated without a valid token,
// PermissionDenied when a namespace asked for (or, asking for none, every
// namespace) is not readable.
type Authorizer interface {
	Authorize(ctx context.Context, namespaces []string) (*Access, error)
}

// TokenAuthorizer is local mode's: a bearer token from the config
// directory (Secret istio-system/meshctl-tokens, a key per user) reads
// every namespace.
type TokenAuthorizer struct {
	// Tokens returns the current user → token map.
	Tokens func() map[string]string
}

var _ Authorizer = (*TokenAuthorizer)(nil)

// Authorize implements Authorizer.
func (a *TokenAuthorizer) Authorize(ctx context.Context, _ []string) (*Access, error) {
	tok, err := ca.BearerToken(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "no bearer token")
	}
	var tokens map[string]string
	if a.Tokens != nil {
		tokens = a.Tokens()
	}
	for user, t := range tokens {
		if t != "" && subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			return &Access{User: user, All: true}, nil
		}
	}
	return nil, status.Error(codes.Unauthenticated, "unknown token")
}

// KubeAuthorizer is cluster mode's: the caller's Kubernetes bearer token
// is reviewed (TokenReview, the API server's default audience, as
// kubectl's credentials are), and each namespace is checked with a
// SubjectAccessReview of `get pods/log`, as `kubectl logs` needs.
type KubeAuthorizer struct {
	Client kubernetes.Interface
	// Namespaces lists the cluster's namespaces, for a caller who asks for
	// none in particular.
	Namespaces func() []string
	// CacheTTL is how long reviews are reused; default 10s.
	CacheTTL time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cachedReview
}

type cachedReview struct {
	user    authnv1.UserInfo
	allowed map[string]bool // namespace ("" cluster-wide) → may read
	expires time.Time
}

var _ Authorizer = (*KubeAuthorizer)(nil)

// Authorize implements Authorizer.
func (a *KubeAuthorizer) Authorize(ctx context.Context, namespaces []string) (*Access, error) {
	tok, err := ca.BearerToken(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "no bearer token")
	}
	c, err := a.review(ctx, tok)
	if err != nil {
		return nil, err
	}
	user := c.user.Username
	if namespaces != nil {
		for _, ns := range namespaces {
			ok, err := a.allowed(ctx, tok, c, ns)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, status.Errorf(codes.PermissionDenied, "user %q may not get pods/log in namespace %q", user, ns)
			}
		}
		return &Access{User: user, Namespaces: slices.Clone(namespaces)}, nil
	}
	if ok, err := a.allowed(ctx, tok, c, ""); err != nil {
		return nil, err
	} else if ok {
		return &Access{User: user, All: true}, nil
	}
	var mine []string
	if a.Namespaces != nil {
		for _, ns := range a.Namespaces() {
			ok, err := a.allowed(ctx, tok, c, ns)
			if err != nil {
				return nil, err
			}
			if ok {
				mine = append(mine, ns)
			}
		}
	}
	if len(mine) == 0 {
		return nil, status.Errorf(codes.PermissionDenied, "user %q may not get pods/log in any namespace", user)
	}
	return &Access{User: user, Namespaces: mine}, nil
}

func (a *KubeAuthorizer) ttl() time.Duration {
	if a.CacheTTL > 0 {
		return a.CacheTTL
	}
	return 10 * time.Second
}

// review authenticates tok, from the cache when fresh.
func (a *KubeAuthorizer) review(ctx context.Context, tok string) (*cachedReview, error) {
	key := sha256.Sum256([]byte(tok))
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return &c, nil
	}
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok}}, metav1.CreateOptions{})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "token review: %v", err)
	}
	if !tr.Status.Authenticated {
		return nil, status.Error(codes.Unauthenticated, "token not authenticated")
	}
	c = cachedReview{user: tr.Status.User, allowed: map[string]bool{}, expires: now.Add(a.ttl())}
	a.mu.Lock()
	if a.cache == nil || len(a.cache) > 1024 {
		a.cache = map[[32]byte]cachedReview{}
	}
	a.cache[key] = c
	a.mu.Unlock()
	return &c, nil
}

// allowed asks whether the reviewed user may get pods/log in ns ("" is
// every namespace).
func (a *KubeAuthorizer) allowed(ctx context.Context, tok string, c *cachedReview, ns string) (bool, error) {
	key := sha256.Sum256([]byte(tok))
	a.mu.Lock()
	v, ok := c.allowed[ns]
	a.mu.Unlock()
	if ok {
		return v, nil
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range c.user.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: c.user.Username, Groups: c.user.Groups, UID: c.user.UID, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: "get", Resource: "pods", Subresource: "log"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return false, status.Errorf(codes.Unavailable, "subject access review: %v", err)
	}
	a.mu.Lock()
	if cur, ok := a.cache[key]; ok {
		cur.allowed[ns] = sar.Status.Allowed // the map is shared with c
	}
	a.mu.Unlock()
	return sar.Status.Allowed, nil
}
