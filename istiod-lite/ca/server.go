package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the key of the request metadata Struct naming the identity a node agent asks
// for on behalf of a workload.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// Register registers the IstioCertificateService on s.
func (c *CA) Register(s *grpc.Server) {
	pb.RegisterIstioCertificateServiceServer(s, &service{ca: c})
}

type service struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca *CA
}

// CreateCertificate signs the CSR of req for the caller's identity. Errors: Unauthenticated without a
// valid token; PermissionDenied for an identity the caller may not have; InvalidArgument for a bad
// request or CSR.
func (s *service) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	return s.ca.createCertificate(ctx, req)
}

func (c *CA) createCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	caller, err := c.cfg.Authenticator.Authenticate(ctx)
	if err != nil {
		if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
			return nil, err
		}
		return nil, status.Errorf(codes.Unauthenticated, "authenticate: %v", err)
	}
	if caller == nil {
		return nil, status.Error(codes.Unauthenticated, "authenticate: no caller")
	}
	id, err := c.identityFor(caller, req)
	if err != nil {
		return nil, err
	}
	pub, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	if req.GetValidityDuration() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "negative validity_duration %d", req.GetValidityDuration())
	}
	requested := time.Duration(0)
	if secs := req.GetValidityDuration(); secs > 0 {
		requested = time.Duration(min(secs, int64(c.cfg.MaxTTL/time.Second)+1)) * time.Second
	}
	ttl := c.ttl(requested)
	leaf, err := c.sign(id, pub, ttl, nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	c.log.Info("certificate issued", "identity", id.String(), "node", caller.Node, "ttl", ttl,
		"serial", leaf.SerialNumber.Text(16))
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	return &pb.IstioCertificateResponse{CertChain: []string{string(leafPEM), string(c.rootPEM)}}, nil
}

// identityFor decides the identity to issue: the impersonated identity for a node agent that has a pod of
// it on its node, else the caller's own identity.
func (c *CA) identityFor(caller *Caller, req *pb.IstioCertificateRequest) (spiffeid.ID, error) {
	if v, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		if caller.Node == "" {
			return spiffeid.ID{}, status.Error(codes.PermissionDenied, "impersonation is allowed only to node agents")
		}
		id, err := spiffeid.FromString(v.GetStringValue())
		if err != nil {
			return spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "impersonated identity %q: %v", v.GetStringValue(), err)
		}
		if !id.MemberOf(c.td) {
			return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "identity %q is not in trust domain %q", id, c.td.Name())
		}
		if !c.cfg.Authorizer.IdentityOnNode(caller.Node, id) {
			return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "identity %q has no pod on node %q", id, caller.Node)
		}
		return id, nil
	}
	if caller.Identity.IsZero() {
		return spiffeid.ID{}, status.Error(codes.PermissionDenied, "caller has no identity of its own; a node agent must name one in ImpersonatedIdentity")
	}
	if !caller.Identity.MemberOf(c.td) {
		return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "identity %q is not in trust domain %q", caller.Identity, c.td.Name())
	}
	return caller.Identity, nil
}

// parseCSR returns the public key of a PEM CSR whose signature verifies. Its subject and SANs are ignored.
func parseCSR(csrPEM string) (any, error) {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, status.Error(codes.InvalidArgument, "csr: no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr signature: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, status.Errorf(codes.InvalidArgument, "csr: unsupported curve %s", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, status.Errorf(codes.InvalidArgument, "csr: RSA key of %d bits, want at least 2048", k.N.BitLen())
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "csr: unsupported key type %T", csr.PublicKey)
	}
	return csr.PublicKey, nil
}
