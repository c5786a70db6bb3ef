// Command waypoint is the mesh's L7 proxy, one Deployment per waypoint
// Gateway (cluster mode) or one process per Gateway of the config
// directory (local mode, started by the demo).
//
// Cluster mode (the Deployment istiod-lite writes):
//
//	waypoint --namespace $POD_NAMESPACE --gateway <gw> --pod-name $POD_NAME --pod-ip $POD_IP \
//	  --xds-address istiod-lite.istio-system.svc:15012 --ca-root /var/run/secrets/istio/root-cert.pem \
//	  --token-file /var/run/secrets/tokens/istio-token
//
// Local mode (the waypoint's pod on a node of the config directory; the
// node's token, and --impersonate so the CA grants the waypoint's identity
// to that node):
//
//	waypoint --namespace default --gateway waypoint --pod-ip 127.0.10.1 \
//	  --xds-address 127.0.0.1:15012 --ca-root <root.pem> --token-file <node token> --impersonate \
//	  --hbone-addr 127.0.10.1:15008 --metrics-addr 127.0.10.1:15020 --readiness-addr 127.0.10.1:15021 \
//	  --admin-addr 127.0.10.1:15000
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ambient-go/mesh/pkg/admin"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/logging"
	"github.com/ambient-go/mesh/waypoint"
	"github.com/ambient-go/mesh/waypoint/proxy"
)

func main() {
	var (
		cfg           waypoint.Config
		caRoot, level string
		podIP         string
		proc          admin.Process
	)
	cmd := &cobra.Command{
		Use:           "waypoint",
		Short:         "L7 proxy (waypoint) of the ambient mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			defLevel := new(slog.LevelVar)
			if err := defLevel.UnmarshalText([]byte(level)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			// One level per component, set at run time through the admin
			// server's /logging (which finds them in cfg.Logger's handler);
			// cfg.LogLevel is the level the access log is written at.
			levels := logging.NewLevels(defLevel)
			cfg.LogLevel = levels.Var(logging.Access)
			logOut := proc.Apply(os.Stderr, cmd.Flags().Changed("worker-threads"))
			defer proc.Close()
			cfg.Logger = slog.New(levels.Handler(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: levels})))
			cfg.AccessLog = logOut
			if podIP != "" {
				a, err := netip.ParseAddr(podIP)
				if err != nil {
					return fmt.Errorf("--pod-ip: %w", err)
				}
				cfg.PodIP = a
			}
			if cfg.TokenFile != "" {
				if _, err := identity.ReadToken(cfg.TokenFile); err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
			}
			if caRoot != "" {
				b, err := os.ReadFile(caRoot)
				if err != nil {
					return fmt.Errorf("--ca-root: %w", err)
				}
				cfg.CARoot = b
			}
			w, err := waypoint.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return w.Start(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the waypoint's Gateway (default $POD_NAMESPACE)")
	f.StringVar(&cfg.Gateway, "gateway", os.Getenv("GATEWAY_NAME"), "name of the waypoint's Gateway (default $GATEWAY_NAME)")
	f.StringVar(&cfg.ServiceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "ServiceAccount the waypoint runs as (default $SERVICE_ACCOUNT, else the Gateway's name)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "trust domain of the mesh")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "DNS domain of Services: the waypoint serves what is bound to <gateway>.<namespace>.svc.<domain>")
	f.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "this pod's name, for the xDS node id (default $POD_NAME, else the Gateway's name)")
	f.StringVar(&podIP, "pod-ip", os.Getenv("INSTANCE_IP"), "this pod's IP, for the xDS node id (default $INSTANCE_IP, else 127.0.0.1)")
	f.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15012", "istiod-lite gRPC address (xDS and CA)")
	f.StringVar(&caRoot, "ca-root", "", "PEM root to verify istiod-lite's TLS; empty: plaintext gRPC (istiod-lite serves it only on loopback, for tests)")
	f.StringVar(&cfg.Token, "token", "", "token that authenticates to istiod-lite (xDS and CA)")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file (read at every use) holding the token that authenticates to istiod-lite: the waypoint's ServiceAccount token (cluster), or its node's token with --impersonate (local)")
	f.BoolVar(&cfg.Impersonate, "impersonate", false, "the token is a node's (local mode): ask the CA for the waypoint's identity by impersonation")
	f.StringVar(&cfg.ClusterID, "cluster-id", "Kubernetes", "cluster id sent to the CA")
	f.DurationVar(&cfg.CertTTL, "cert-ttl", 0, "certificate lifetime to request (default 24h)")
	f.StringVar(&cfg.HBONEAddr, "hbone-addr", ":15008", "HBONE listener")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin address (/config_dump)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics address (/metrics, /stats/prometheus)")
	f.StringVar(&cfg.ReadinessAddr, "readiness-addr", ":15021", "readiness address (/healthz/ready)")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "how long open streams may finish after SIGTERM (default 5s)")
	f.DurationVar(&cfg.SniffTimeout, "sniff-timeout", 0, "wait for a stream's first bytes on ports of undeclared protocol before carrying it as TCP (default 1s)")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", 0, "bound on each request until its response headers (default none)")
	f.StringVar((*string)(&cfg.LB), "lb", string(proxy.LeastRequest), "how a Service's endpoints are picked: least-request (Istio's default: the less busy of two at random) or round-robin")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&proc.LogFlush, "log-flush", admin.LogFlushDefault, "log lines (access log included) are written in batches, at most this late; 0: each line at once")
	f.IntVar(&proc.WorkerThreads, "worker-threads", 1, "OS threads running Go code at once (GOMAXPROCS; the GOMAXPROCS variable wins unless this is given); 0: one per CPU of the container's limit. Default 1: a waypoint scales by replicas, and one thread spends the least CPU per request (the runtime wakes a second thread for every hand-off between goroutines; docs/optimisations.md).")
	f.IntVar(&cfg.AccessLogRing, "access-log-ring", 4096, "access-log records kept for `meshctl logs` (streamed to istiod-lite's relay)")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}
