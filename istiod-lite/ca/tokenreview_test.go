package ca

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestServiceAccountOf(t *testing.T) {
	tests := []struct {
		user     string
		ns, name string
		ok       bool
	}{
		{user: "system:serviceaccount:istio-system:ztunnel", ns: "istio-system", name: "ztunnel", ok: true},
		{user: "system:serviceaccount:demo:default", ns: "demo", name: "default", ok: true},
		{user: "system:serviceaccount:demo"},
		{user: "system:serviceaccount::x"},
		{user: "system:serviceaccount:a:b:c"},
		{user: "system:node:node-a"},
		{user: "admin"},
	}
	for _, tt := range tests {
		ns, name, ok := ServiceAccountOf(tt.user)
		if ns != tt.ns || name != tt.name || ok != tt.ok {
			t.Errorf("ServiceAccountOf(%q) = %q, %q, %v, want %q, %q, %v", tt.user, ns, name, ok, tt.ns, tt.name, tt.ok)
		}
	}
}

// TestTokenReviewAuthenticatorMapping checks how review results map to
// callers, with canned TokenReview answers (the real API server is
// exercised by tests/kubectl).
func TestTokenReviewAuthenticatorMapping(t *testing.T) {
	ztunnelPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-x", Namespace: "istio-system", UID: "uid-1"},
		Spec:       corev1.PodSpec{NodeName: "node-c"},
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tests := []struct {
		name    string
		status  authnv1.TokenReviewStatus
		want    *Caller
		wantErr error
	}{
		{
			name: "ztunnel with node-name extra",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra:    map[string]authnv1.ExtraValue{ExtraNodeName: {"node-a"}, ExtraPodName: {"ztunnel-x"}},
			}},
			want: &Caller{Node: "node-a", Identity: spiffeid.RequireFromSegments(td, "ns", "istio-system", "sa", "ztunnel")},
		},
		{
			name: "ztunnel node from its bound pod",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra:    map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x"}, ExtraPodUID: {"uid-1"}},
			}},
			want: &Caller{Node: "node-c", Identity: spiffeid.RequireFromSegments(td, "ns", "istio-system", "sa", "ztunnel")},
		},
		{
			name: "ztunnel bound to a replaced pod",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
				Extra:    map[string]authnv1.ExtraValue{ExtraPodName: {"ztunnel-x"}, ExtraPodUID: {"uid-0"}},
			}},
			wantErr: ErrNotAuthenticated,
		},
		{
			name: "ztunnel token not bound to a pod: own identity only",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:istio-system:ztunnel",
			}},
			want: &Caller{Identity: spiffeid.RequireFromSegments(td, "ns", "istio-system", "sa", "ztunnel")},
		},
		{
			name: "workload: own identity even with a node",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:demo:echo",
				Extra:    map[string]authnv1.ExtraValue{ExtraNodeName: {"node-a"}},
			}},
			want: &Caller{Identity: spiffeid.RequireFromSegments(td, "ns", "demo", "sa", "echo")},
		},
		{
			name:    "not authenticated",
			status:  authnv1.TokenReviewStatus{Error: "token expired"},
			wantErr: ErrNotAuthenticated,
		},
		{
			name: "other audience",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"other"}, User: authnv1.UserInfo{
				Username: "system:serviceaccount:demo:echo",
			}},
			wantErr: ErrNotAuthenticated,
		},
		{
			name: "not a service account",
			status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, User: authnv1.UserInfo{
				Username: "system:node:node-a",
			}},
			wantErr: ErrNotAuthenticated,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(ztunnelPod)
			reviews := 0
			cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				reviews++
				tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
				if diff := cmp.Diff([]string{"istio-ca"}, tr.Spec.Audiences); diff != "" {
					t.Errorf("review audiences (-want +got):\n%s", diff)
				}
				return true, &authnv1.TokenReview{Status: tt.status}, nil
			})
			a := &TokenReviewAuthenticator{Client: cs}
			for range 2 { // the second call is answered from the cache, or reviewed again after an error
				got, err := a.AuthenticateToken(t.Context(), "tok")
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("AuthenticateToken() error = %v, want %v", err, tt.wantErr)
				}
				if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
					t.Errorf("AuthenticateToken() (-want +got):\n%s", diff)
				}
			}
			wantReviews := 1
			if tt.wantErr != nil {
				wantReviews = 2
			}
			if reviews != wantReviews {
				t.Errorf("reviews = %d, want %d", reviews, wantReviews)
			}
		})
	}
}

// TestTokenReviewAuthenticatorMalformed: a malformed trust domain (from
// configuration) or service account name (from the review) is an error,
// never a panic.
func TestTokenReviewAuthenticatorMalformed(t *testing.T) {
	tests := []struct {
		name        string
		trustDomain string
		username    string
	}{
		{name: "trust domain with upper case and spaces", trustDomain: "Not A Domain!", username: "system:serviceaccount:demo:echo"},
		{name: "trust domain with a path", trustDomain: "cluster.local/ns", username: "system:serviceaccount:demo:echo"},
		{name: "namespace with a slash", trustDomain: "cluster.local", username: "system:serviceaccount:a/b:echo"},
		{name: "service account with a dot segment", trustDomain: "cluster.local", username: "system:serviceaccount:demo:.."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset()
			cs.PrependReactor("create", "tokenreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, &authnv1.TokenReview{Status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
					User: authnv1.UserInfo{Username: tt.username}}}, nil
			})
			a := &TokenReviewAuthenticator{Client: cs, TrustDomain: tt.trustDomain}
			got, err := a.AuthenticateToken(t.Context(), "tok")
			if err == nil {
				t.Errorf("AuthenticateToken() = %+v, nil; want an error", got)
			}
		})
	}
}
