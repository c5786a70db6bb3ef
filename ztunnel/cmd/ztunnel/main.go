// Command ztunnel is the mesh's per-node proxy.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/ambient-go/mesh/pkg/admin"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/logging"
	"github.com/ambient-go/mesh/ztunnel"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

func main() {
	var (
		cfg    ztunnel.Config
		caRoot string
		level  string
		proc   admin.Process
	)
	// pflag alone, not cobra: cobra and the text/template it links are
	// 0.24 MB of the binary's loaded segments, for one command
	// (docs/optimisations.md, "Binary size"). The flags are the same.
	f := pflag.NewFlagSet("ztunnel", pflag.ContinueOnError)
	f.Usage = func() {
		fmt.Fprintf(os.Stderr, "Per-node proxy of the ambient mesh\n\nUsage:\n  ztunnel [flags]\n\nFlags:\n%s", f.FlagUsages())
	}
	f.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	f.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15012", "istiod-lite gRPC address (xDS and CA)")
	f.StringVar(&caRoot, "ca-root", "", "PEM root to verify istiod-lite's TLS; empty: plaintext gRPC (istiod-lite serves it only on loopback, for tests)")
	f.StringVar(&cfg.Token, "token", "", "node token that authenticates to istiod-lite (xDS and CA)")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file (read at every use) holding the node token that authenticates to istiod-lite (xDS and CA)")
	f.DurationVar(&cfg.CertTTL, "cert-ttl", 0, "workload certificate lifetime to request (default 24h)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin address (/config_dump, /logging)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics address")
	f.StringVar(&cfg.ReadinessAddr, "readiness-addr", ":15021", "readiness address (/healthz/ready)")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&proc.LogFlush, "log-flush", admin.LogFlushDefault, "log lines (access log included) are written in batches, at most this late; 0: each line at once")
	f.IntVar(&proc.WorkerThreads, "worker-threads", 0, "OS threads running Go code at once (GOMAXPROCS; the GOMAXPROCS variable wins unless this is given); 0: one per CPU of the container's limit")
	f.IntVar(&cfg.AccessLogRing, "access-log-ring", 4096, "access-log records kept for `meshctl logs` (streamed to istiod-lite's relay)")
	f.DurationVar(&cfg.DrainTimeout, "drain-deadline", 5*time.Second, "at shutdown (SIGTERM), how long connections may run on once the listeners are closed (in-pod: handed to a successor ztunnel, waited for at most this long too); then they are closed")
	f.StringVar(&cfg.Mode, "mode", ztunnel.ModeLocal, "local (loopback pods, SOCKS5) or inpod (capture inside each pod's netns; needs root)")
	f.StringVar(&cfg.ZDSSocket, "zds-socket", zds.DefaultSocket, "inpod: unix socket the CNI plugin hands pods to")
	f.StringVar(&cfg.PodStateDir, "pod-state-dir", zds.DefaultStateDir, "inpod: directory of the CNI plugin's pod records, read at start")
	f.DurationVar(&cfg.PodWorkloadTimeout, "pod-workload-timeout", 5*time.Second, "inpod: how long a new pod's CNI ADD waits for its workload from istiod-lite before failing it (keep it below the CNI plugin's 10s ack timeout); negative: do not wait, capture when the workload comes (needed with Istio's istiod, which publishes pods only once they have an IP)")
	f.StringVar(&cfg.QUIC, "quic", "off", "HBONE over QUIC (UDP 15008): off; on (also serve it); prefer (also dial it first, TCP fallback). docs/quic.md")
	f.DurationVar(&cfg.QUICTimeout, "quic-timeout", 0, "prefer: QUIC handshake time before falling back to TCP (default 1s)")
	f.DurationVar(&cfg.QUICHold, "quic-hold", 0, "prefer: how long a failed QUIC destination goes over TCP (default 5m)")
	f.StringSliceVar(&cfg.QUICNamespaces, "quic-namespaces", nil, "prefer: only for source pods of these namespaces (default: all)")
	// Limits (docs/security.md "Limits"); each hit counts in ztunnel_limit_hits_total{limit}.
	l := &cfg.Limits
	f.IntVar(&l.MaxStreamsPerConn, "max-streams-per-conn", 100, "HBONE client: open a new pooled connection once each carries this many streams")
	f.Uint32Var(&l.MaxConcurrentStreams, "max-concurrent-streams", 200, "HBONE server: refuse (REFUSED_STREAM) a CONNECT past this many streams on one connection")
	f.Uint32Var(&l.MaxHeaderListSize, "max-header-list-size", 64<<10, "HBONE: SETTINGS_MAX_HEADER_LIST_SIZE in bytes; a larger request is answered 431")
	f.DurationVar(&l.HandshakeTimeout, "handshake-timeout", 10*time.Second, "HBONE: TLS handshake (server: and HTTP/2 preface) time limit")
	f.DurationVar(&l.ResponseTimeout, "connect-response-timeout", 15*time.Second, "HBONE client: how long a CONNECT waits for its answer")
	f.DurationVar(&l.ProbeTimeout, "hbone-probe-timeout", 3*time.Second, "HBONE client: while CONNECTs wait on a pooled connection quiet for a third of this, a PING is sent; nothing received for this long after it closes the connection as dead and fails those CONNECTs (response_flags CONNECT), so a blocked 15008 shows before a client's timeout; negative: off")
	f.DurationVar(&l.ConnectTimeout, "connect-timeout", 10*time.Second, "TCP connect time limit (to HBONE servers and applications)")
	f.DurationVar(&l.StreamIdleTimeout, "stream-idle-timeout", 0, "close an HBONE tunnel with no byte either way for this long; 0: never")
	f.DurationVar(&l.TCPKeepAlive, "tcp-keepalive", 180*time.Second, "TCP keepalive idle time and probe interval (9 probes) of every socket; negative: off")
	f.DurationVar(&l.TCPUserTimeout, "tcp-user-timeout", 0, "TCP_USER_TIMEOUT of every socket: unacknowledged data this old closes the connection; 0: off")
	f.IntVar(&l.MaxConnsPerPod, "max-conns-per-pod", 10000, "outbound connections of one pod open at once; past it a new one is reset; negative: no limit")
	f.IntVar(&l.MaxPendingHandshakes, "max-pending-handshakes", 1024, "HBONE server: accepted connections still in their TLS handshake; past it a new one is closed")
	if err := f.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
	if err := run(cfg, caRoot, level, &proc, f.Changed("worker-threads")); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

// run starts the ztunnel configured by the flags and returns when it stops.
func run(cfg ztunnel.Config, caRoot, level string, proc *admin.Process, threadsSet bool) error {
	defLevel := new(slog.LevelVar)
	if err := defLevel.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	// One level per component, set at run time through the admin
	// server's /logging (which finds them in cfg.Logger's handler);
	// cfg.LogLevel is the level the access log is written at.
	levels := logging.NewLevels(defLevel)
	cfg.LogLevel = levels.Var(logging.Access)
	logOut := proc.Apply(os.Stderr, threadsSet)
	defer proc.Close()
	cfg.Logger = slog.New(levels.Handler(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: levels})))
	cfg.AccessLog = logOut
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
	z, err := ztunnel.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return z.Start(ctx)
}
