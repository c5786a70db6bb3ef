package xds

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KubeAuthorizer returns a DebugConfig.Authorize for cluster mode: the
// caller's bearer token (kubectl's credentials) is reviewed by the API
// server (TokenReview, the API server's default audience), and the user
// must be allowed to list pods in every namespace (SubjectAccessReview),
// since the answer names every proxy of the mesh.
func KubeAuthorizer(cs kubernetes.Interface) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		token, err := bearer(ctx)
		if err != nil {
			return status.Error(codes.Unauthenticated, err.Error())
		}
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
		if err != nil {
			return status.Errorf(codes.Unavailable, "xds debug: token review: %v", err)
		}
		if !tr.Status.Authenticated {
			return status.Error(codes.Unauthenticated, "xds debug: token not authenticated by the API server")
		}
		u := tr.Status.User
		extra := make(map[string]authzv1.ExtraValue, len(u.Extra))
		for k, v := range u.Extra {
			extra[k] = authzv1.ExtraValue(v)
		}
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Verb: "list", Resource: "pods"},
		}}, metav1.CreateOptions{})
		if err != nil {
			return status.Errorf(codes.Unavailable, "xds debug: subject access review: %v", err)
		}
		if !sar.Status.Allowed {
			return status.Error(codes.PermissionDenied, fmt.Sprintf("xds debug: %s may not list pods in all namespaces", u.Username))
		}
		return nil
	}
}
