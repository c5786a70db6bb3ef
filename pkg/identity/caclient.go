package identity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// Requester obtains a signed certificate chain for a CSR.
type Requester interface {
	// RequestCertificate returns the chain as Istio's CA does: leaf first, root last.
	RequestCertificate(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) (chainPEM []string, err error)
}

// ImpersonatedIdentityKey is the key of the request metadata Struct that names the identity a node agent
// asks for on behalf of a workload.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// CAClient is a Requester speaking istio.v1.auth.IstioCertificateService/CreateCertificate over Conn.
type CAClient struct {
	// Conn is the gRPC connection to the CA. Required.
	Conn grpc.ClientConnInterface
	// Token returns the bearer token sent as `authorization: Bearer <token>`; called per request.
	// Nil sends no authorization header.
	Token func(ctx context.Context) (string, error)
	// Impersonate asks for identities other than the caller's own: every request names the identity in
	// the ImpersonatedIdentity metadata. Default false (a workload asking for itself); ztunnel sets true.
	Impersonate bool
	// ClusterID is sent as `clusterid` gRPC metadata when non-empty.
	ClusterID string
}

var _ Requester = (*CAClient)(nil)

// RequestCertificate sends csrPEM to the CA and returns the chain it answers. ttl is rounded down to whole
// seconds; zero lets the CA choose.
func (c *CAClient) RequestCertificate(ctx context.Context, id spiffeid.ID, csrPEM []byte, ttl time.Duration) ([]string, error) {
	if c.Conn == nil {
		return nil, errors.New("identity: ca client without a connection")
	}
	var md []string
	if c.Token != nil {
		tok, err := c.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("identity: ca token: %w", err)
		}
		md = append(md, "authorization", "Bearer "+tok)
	}
	if c.ClusterID != "" {
		md = append(md, "clusterid", c.ClusterID)
	}
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl / time.Second),
	}
	if c.Impersonate {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(id.String()),
		}}
	}
	resp, err := pb.NewIstioCertificateServiceClient(c.Conn).CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("identity: create certificate for %s: %w", id, err)
	}
	if n := len(resp.GetCertChain()); n < 2 {
		return nil, fmt.Errorf("identity: create certificate for %s: chain of %d elements, want the leaf and the root at least", id, n)
	}
	return resp.GetCertChain(), nil
}

// TokenSource returns the bearer token function of the CA and xDS clients:
// with file set, the file is read at every use, so that a projected
// ServiceAccount token the kubelet rotates keeps working; else token.
func TokenSource(token, file string) func(context.Context) (string, error) {
	if file == "" {
		return func(context.Context) (string, error) { return token, nil }
	}
	return func(context.Context) (string, error) {
		t, err := ReadToken(file)
		if err == nil && t == "" {
			err = fmt.Errorf("token file %s is empty", file)
		}
		return t, err
	}
}

// ReadToken reads a bearer token file (a node token, or a projected
// ServiceAccount token), trimming whitespace.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
