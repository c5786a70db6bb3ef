package identity

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// recordingCA serves IstioCertificateService with a testSigner, signing for the identity named in the
// request (impersonated, else the one the test set), and records what each request carried.
type recordingCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	signer   *testSigner
	oneElem  bool // answer a chain of one element
	mu       sync.Mutex
	headers  []metadata.MD
	requests []*pb.IstioCertificateRequest
}

func (r *recordingCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	r.headers = append(r.headers, md)
	r.requests = append(r.requests, req)
	r.mu.Unlock()
	chain, err := r.signer.RequestCertificate(ctx, sleepID, []byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if r.oneElem {
		chain = []string{strings.Join(chain, "")}
	}
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func serveCA(t *testing.T, ca *recordingCA) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(s, ca)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	return conn
}

func TestCAClient(t *testing.T) {
	tests := []struct {
		name         string
		client       CAClient
		wantAuth     []string
		wantCluster  []string
		wantImperson string
		wantValidity int64
	}{
		{
			name:         "workload asking for itself",
			client:       CAClient{Token: func(context.Context) (string, error) { return "tok-1", nil }},
			wantAuth:     []string{"Bearer tok-1"},
			wantValidity: 3600,
		},
		{
			name: "node agent impersonating",
			client: CAClient{
				Token:       func(context.Context) (string, error) { return "node-tok", nil },
				Impersonate: true,
				ClusterID:   "Kubernetes",
			},
			wantAuth:     []string{"Bearer node-tok"},
			wantCluster:  []string{"Kubernetes"},
			wantImperson: sleepID.String(),
			wantValidity: 3600,
		},
		{
			name:         "no token",
			client:       CAClient{},
			wantValidity: 3600,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := &recordingCA{signer: newTestSigner(t, "cluster.local")}
			tt.client.Conn = serveCA(t, ca)
			m := NewManager(ManagerConfig{Requester: &tt.client, TTL: time.Hour})
			cert, err := m.Get(t.Context(), sleepID)
			if err != nil {
				t.Fatalf("Get() through CAClient error = %v", err)
			}
			if cert.ID != sleepID || len(cert.Roots) != 1 || !cert.Roots[0].Equal(ca.signer.root) {
				t.Errorf("certificate for %q with %d roots, want %q with the CA's root", cert.ID, len(cert.Roots), sleepID)
			}
			md, req := ca.headers[0], ca.requests[0]
			if diff := cmp.Diff(tt.wantAuth, md.Get("authorization")); diff != "" {
				t.Errorf("authorization header (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCluster, md.Get("clusterid")); diff != "" {
				t.Errorf("clusterid header (-want +got):\n%s", diff)
			}
			if got := req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue(); got != tt.wantImperson {
				t.Errorf("ImpersonatedIdentity = %q, want %q", got, tt.wantImperson)
			}
			if tt.wantImperson == "" && req.GetMetadata() != nil {
				t.Errorf("request metadata = %v, want none", req.GetMetadata())
			}
			if got := req.GetValidityDuration(); got != tt.wantValidity {
				t.Errorf("validity_duration = %d, want %d", got, tt.wantValidity)
			}
		})
	}
}

func TestCAClientErrors(t *testing.T) {
	t.Run("one-element chain", func(t *testing.T) {
		ca := &recordingCA{signer: newTestSigner(t, "cluster.local"), oneElem: true}
		c := &CAClient{Conn: serveCA(t, ca)}
		_, csr, err := NewKeyAndCSR(sleepID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.RequestCertificate(t.Context(), sleepID, csr, time.Hour); err == nil {
			t.Error("RequestCertificate() with a one-element answer = nil error, want error")
		}
	})
	t.Run("token error", func(t *testing.T) {
		ca := &recordingCA{signer: newTestSigner(t, "cluster.local")}
		errNoToken := errors.New("no token yet")
		c := &CAClient{Conn: serveCA(t, ca), Token: func(context.Context) (string, error) { return "", errNoToken }}
		if _, err := c.RequestCertificate(t.Context(), sleepID, []byte("csr"), time.Hour); !errors.Is(err, errNoToken) {
			t.Errorf("RequestCertificate() error = %v, want %v", err, errNoToken)
		}
		if len(ca.requests) != 0 {
			t.Errorf("CA got %d requests, want none", len(ca.requests))
		}
	})
	t.Run("status is kept", func(t *testing.T) {
		ca := &recordingCA{signer: newTestSigner(t, "cluster.local")}
		c := &CAClient{Conn: serveCA(t, ca)}
		_, err := c.RequestCertificate(t.Context(), sleepID, []byte("not a csr"), time.Hour)
		if got := status.Code(err); got != codes.InvalidArgument {
			t.Errorf("status.Code(RequestCertificate() error) = %v, want InvalidArgument (error %v)", got, err)
		}
	})
}

func TestTokenSourceRereadsFile(t *testing.T) {
	ctx := context.Background()
	if got, err := TokenSource("static", "")(ctx); got != "static" || err != nil {
		t.Errorf("TokenSource(static, \"\")() = %q, %v, want static, nil", got, err)
	}
	file := filepath.Join(t.TempDir(), "token")
	src := TokenSource("ignored", file)
	if _, err := src(ctx); err == nil {
		t.Error("TokenSource with a missing file: no error")
	}
	for _, tok := range []string{"first", "rotated"} {
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := src(ctx); got != tok || err != nil {
			t.Errorf("TokenSource(file)() after writing %q = %q, %v, want %q, nil", tok, got, err, tok)
		}
	}
	if err := os.WriteFile(file, []byte("  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src(ctx); err == nil {
		t.Error("TokenSource with an empty file: no error")
	}
}
