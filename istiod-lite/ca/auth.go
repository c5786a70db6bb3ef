package ca

import (
	"context"
	"crypto/subtle"
	"errors"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"
)

// Caller is who sent a request, as the Authenticator established it.
type Caller struct {
	// Node is set when the caller is a node agent (ztunnel) allowed to impersonate workloads on this node.
	Node string
	// Identity is set when the caller is a workload asking for its own identity.
	Identity spiffeid.ID
}

// Authenticator establishes the caller of a request, usually from the gRPC metadata
// `authorization: Bearer <token>`.
type Authenticator interface {
	Authenticate(ctx context.Context) (*Caller, error)
}

// Authorizer says whether an identity has a pod on a node.
type Authorizer interface {
	IdentityOnNode(node string, id spiffeid.ID) bool
}

// Errors of the authenticators in this package.
var (
	// ErrNoToken means the request carried no bearer token.
	ErrNoToken = errors.New("ca: no bearer token")
	// ErrBadToken means the bearer token is not known.
	ErrBadToken = errors.New("ca: unknown bearer token")
)

// BearerToken returns the token of the `authorization: Bearer <token>` metadata of an incoming gRPC
// request, or ErrNoToken.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
		if ok && strings.EqualFold(scheme, "bearer") {
			if token = strings.TrimSpace(token); token != "" {
				return token, nil
			}
		}
	}
	return "", ErrNoToken
}

// TokenAuthenticator authenticates node agents by a static per-node token (local mode).
type TokenAuthenticator struct {
	// Tokens returns the current token → node map; it is called per request, so it may change at
	// runtime. Nil accepts no token.
	Tokens func() map[string]string
}

var _ Authenticator = (*TokenAuthenticator)(nil)

// Authenticate returns a node Caller for a known token, comparing tokens in constant time.
func (a *TokenAuthenticator) Authenticate(ctx context.Context) (*Caller, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return nil, err
	}
	if a.Tokens == nil {
		return nil, ErrBadToken
	}
	var node string
	for known, n := range a.Tokens() {
		// Visit every entry so the time taken does not depend on where the match is.
		if subtle.ConstantTimeCompare([]byte(known), []byte(token)) == 1 {
			node = n
		}
	}
	if node == "" {
		return nil, ErrBadToken
	}
	return &Caller{Node: node}, nil
}
