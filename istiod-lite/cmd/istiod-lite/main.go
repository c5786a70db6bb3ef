// Command istiod-lite is the mesh's control plane. In local mode it serves
// a directory of Kubernetes YAML to ztunnels over delta xDS and signs their
// workload certificates. With --mode=kube (the default without
// --config-dir) it watches a Kubernetes API server instead (--kubeconfig,
// or the in-cluster configuration).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ambient-go/mesh/istiod-lite/deployer"
	"github.com/ambient-go/mesh/istiod-lite/server"
)

func main() {
	var (
		cfg        server.Config
		level      string
		mode       string
		kubeconfig string
	)
	cmd := &cobra.Command{
		Use:           "istiod-lite",
		Short:         "Control plane of the ambient mesh: xDS server and CA",
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lv slog.LevelVar
			if err := lv.UnmarshalText([]byte(level)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &lv}))
			if mode == "" {
				mode = "kube"
				if cfg.ConfigDir != "" {
					mode = "local"
				}
			}
			switch mode {
			case "local":
				if cfg.ConfigDir == "" {
					return fmt.Errorf("--config-dir is required in local mode")
				}
			case "kube":
				// client-go and controller-runtime log through the same handler.
				klog.SetSlogLogger(cfg.Logger)
				ctrllog.SetLogger(logr.FromSlogHandler(cfg.Logger.Handler()))
				rc, err := rest.InClusterConfig()
				if kubeconfig != "" {
					rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
				}
				if err != nil {
					return fmt.Errorf("kube mode (no --config-dir): kubernetes configuration: %w", err)
				}
				cfg.Kube = rc
			default:
				return fmt.Errorf(`--mode: %q is neither "local" nor "kube"`, mode)
			}
			s, err := server.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return s.Start(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of Kubernetes YAML to serve (local mode)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory for the CA's root key and certificate")
	f.StringVar(&cfg.Addr, "grpc-addr", ":15012", "TLS gRPC address for xDS and the CA")
	f.StringVar(&cfg.PlaintextAddr, "grpc-plaintext-addr", "", "plaintext gRPC address for tests, e.g. 127.0.0.1:15010; loopback only (unencrypted transport, callers still need a token); default off")
	f.StringVar(&cfg.Model.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	f.StringVar(&cfg.Model.ClusterID, "cluster-id", "Kubernetes", "cluster id reported in workloads")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&mode, "mode", "", `"local" (serve --config-dir) or "kube" (watch the Kubernetes API server); default local with --config-dir, kube without`)
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (kube mode); default: in-cluster configuration")
	f.StringVar(&cfg.Cluster.LeaderElectionNamespace, "leader-election-namespace", "istio-system", "namespace of the status writer's leader election Lease (kube mode)")
	f.StringSliceVar(&cfg.Cluster.NodeAgents, "node-agent", []string{"istio-system/ztunnel"}, "namespace/name of the node agents' service accounts (kube mode)")
	f.StringVar(&cfg.Cluster.WaypointImage, "waypoint-image", "", "image of the waypoint Deployments deployed for Gateways of class istio-waypoint (kube mode); default "+deployer.DefaultImage)
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "Prometheus /metrics address (Istio's istiod uses :15014); default off")
	f.Float64Var(&cfg.RateLimits.CARate, "ca-rate", 20, "CreateCertificate requests per second per authenticated caller (token bucket); negative: no limit")
	f.IntVar(&cfg.RateLimits.CABurst, "ca-burst", 200, "CreateCertificate requests one caller may send at once")
	f.Float64Var(&cfg.RateLimits.XDSRate, "xds-rate", 50, "xDS requests (stream opens and DiscoveryRequests) per second per authenticated caller; negative: no limit")
	f.IntVar(&cfg.RateLimits.XDSBurst, "xds-burst", 500, "xDS requests one caller may send at once")
	_ = cmd.MarkFlagRequired("state-dir")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}
