// Command install-cni chains ztunnel's CNI plugin into the node's network
// configuration and keeps it there (package
// github.com/ambient-go/mesh/ztunnel/cni/install). It runs beside ztunnel
// in the DaemonSet's pod as a sidecar with the host's /opt/cni/bin and
// /etc/cni/net.d mounted under /host.
//
//	install-cni [--conf-dir /host/etc/cni/net.d] [--bin-dir /host/opt/cni/bin] [--daemonset istio-system/ztunnel]
//	install-cni --uninstall
//
// On SIGTERM it removes the plugin only when --daemonset is being deleted
// (not on a rolling update, when the next pod keeps it chained), so a node
// is never left with a plugin whose ztunnel will not come back.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-go/mesh/ztunnel/cni/install"
)

func main() {
	var (
		cfg                      install.Config
		zdsSocket, podStateDir   string
		daemonSet, exclude       string
		uninstall, uninstallExit bool
	)
	flag.StringVar(&cfg.PluginBinary, "plugin-binary", "/usr/local/bin/ztunnel-cni", "plugin binary to install")
	flag.StringVar(&cfg.BinDir, "bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory")
	flag.StringVar(&cfg.ConfDir, "conf-dir", "/host/etc/cni/net.d", "the host's CNI configuration directory")
	flag.StringVar(&cfg.ConfName, "conf-name", "", "configuration file to chain into (default: the lexically first)")
	flag.StringVar(&zdsSocket, "zds-socket", "/var/run/ztunnel/zds.sock", "ztunnel's ZDS socket, as the plugin sees it on the host")
	flag.StringVar(&podStateDir, "pod-state-dir", "/var/run/ztunnel/pods", "the plugin's pod records, on the host")
	flag.StringVar(&exclude, "exclude-namespaces", "istio-system,kube-system", "comma-separated namespaces whose pods the plugin lets through without ztunnel (ztunnel's own must start while no ztunnel runs)")
	flag.StringVar(&daemonSet, "daemonset", "", "namespace/name of the DaemonSet; on exit the plugin is removed if it is being deleted")
	flag.BoolVar(&uninstall, "uninstall", false, "remove the plugin and exit")
	flag.BoolVar(&uninstallExit, "uninstall-on-exit", false, "always remove the plugin on exit")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg.Log = log
	cfg.Plugin = map[string]any{"zdsSocket": zdsSocket, "podStateDir": podStateDir}
	if exclude != "" {
		cfg.Plugin["excludeNamespaces"] = strings.Split(exclude, ",")
	}
	in := install.New(cfg)
	if uninstall {
		if err := in.Uninstall(); err != nil {
			log.Error("uninstall failed", "err", err)
			os.Exit(1)
		}
		return
	}
	if err := os.MkdirAll("/host"+podStateDir, 0o755); err != nil && !os.IsNotExist(err) {
		log.Warn("creating the pod state directory failed", "err", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_ = in.Watch(ctx, func(path string) { log.Info("watching", "file", path) })

	remove := uninstallExit
	if ns, name, ok := strings.Cut(daemonSet, "/"); ok && !remove {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gone, err := install.DaemonSetGone(ctx, ns, name)
		cancel()
		if err != nil {
			log.Warn("cannot tell whether the DaemonSet is being deleted; leaving the plugin chained", "err", err)
		}
		remove = gone
	}
	if !remove {
		log.Info("stopping; the plugin stays chained")
		return
	}
	if err := in.Uninstall(); err != nil {
		log.Error("uninstall failed", "err", err)
		os.Exit(1)
	}
}
