// Command istiod-lite is the mesh's control plane. In local mode it serves
// a directory of Kubernetes YAML to ztunnels over delta xDS and signs their
// workload certificates.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ambient-go/mesh/istiod-lite/server"
)

func main() {
	var (
		cfg   server.Config
		level string
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
	f.StringVar(&cfg.PlaintextAddr, "grpc-plaintext-addr", "127.0.0.1:15010", `plaintext gRPC address ("off" to disable)`)
	f.StringVar(&cfg.Model.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	f.StringVar(&cfg.Model.ClusterID, "cluster-id", "Kubernetes", "cluster id reported in workloads")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	_ = cmd.MarkFlagRequired("config-dir")
	_ = cmd.MarkFlagRequired("state-dir")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "istiod-lite:", err)
		os.Exit(1)
	}
}
