package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// istiodConn is a gRPC connection to istiod-lite and the context that
// carries the caller's bearer token.
type istiodConn struct {
	*grpc.ClientConn
	stop func() // ends a port-forward, if any
}

func (c *istiodConn) Close() error {
	err := c.ClientConn.Close()
	if c.stop != nil {
		c.stop()
	}
	return err
}

// dialIstiod connects to istiod-lite: at --istiod, or in a cluster through
// a port-forward to an istiod-lite pod.
func (o *Options) dialIstiod(ctx context.Context) (*istiodConn, error) {
	addr, stop := o.Istiod, func() {}
	var rootPEM []byte // the mesh root istiod-lite's TLS port is checked with
	if addr == "" {
		kc, err := o.kube()
		if err != nil {
			return nil, fmt.Errorf("no --istiod and no cluster: %w", err)
		}
		pod, err := kc.findPod(ctx, istioSystem, "app=istiod-lite", "")
		if err != nil {
			return nil, err
		}
		if o.IstiodCA == "" {
			// The port-forward reaches the TLS port: check it with the
			// root istiod-lite publishes to every namespace.
			if rootPEM, err = kc.meshRoot(ctx); err != nil {
				return nil, err
			}
		}
		local, s, err := kc.portForward(ctx, pod, 15012)
		if err != nil {
			return nil, err
		}
		addr, stop = local, s
	}
	creds := insecure.NewCredentials()
	if o.IstiodCA != "" {
		pem, err := os.ReadFile(o.IstiodCA)
		if err != nil {
			stop()
			return nil, fmt.Errorf("reading --istiod-ca: %w", err)
		}
		rootPEM = pem
	}
	if rootPEM != nil {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(rootPEM) {
			stop()
			return nil, errors.New("the mesh root (--istiod-ca or ConfigMap istio-ca-root-cert) holds no PEM certificate")
		}
		// istiod-lite's serving certificate names its service; a local
		// address may not be among its names, so check the chain only.
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "istiod-lite.istio-system.svc"})
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		stop()
		return nil, fmt.Errorf("connecting to istiod-lite at %s: %w", addr, err)
	}
	return &istiodConn{ClientConn: cc, stop: stop}, nil
}

// istiodContext returns ctx carrying `authorization: Bearer <token>`: the
// --istiod-token(-file), else the kubeconfig's bearer token.
func (o *Options) istiodContext(ctx context.Context) (context.Context, error) {
	token := o.Token
	if o.TokenFile != "" {
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading --istiod-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	// Cluster credentials go to istiod-lite only in cluster mode, or when
	// a kubeconfig or context was named explicitly.
	explicitKube := set(o.Kube.KubeConfig) || set(o.Kube.Context) || set(o.Kube.BearerToken)
	if token == "" && (!o.Local() || explicitKube) {
		rc, err := o.Kube.ToRESTConfig()
		if err == nil {
			token = rc.BearerToken
			if token == "" && rc.BearerTokenFile != "" {
				if b, err := os.ReadFile(rc.BearerTokenFile); err == nil {
					token = strings.TrimSpace(string(b))
				}
			}
		}
	}
	if token == "" {
		return nil, errors.New("no bearer token for istiod-lite: give --istiod-token or --istiod-token-file (local mode), or a kubeconfig with a token")
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), nil
}

func set(p *string) bool { return p != nil && *p != "" }
