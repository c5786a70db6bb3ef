// Package cli holds meshctl's commands: one file per command, all built on
// the Options of the root command.
package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// Options are the flags and streams every command shares.
type Options struct {
	// Kube holds --kubeconfig, --context, -n/--namespace and the other
	// kubectl connection flags.
	Kube *genericclioptions.ConfigFlags
	// AllNamespaces is -A/--all-namespaces.
	AllNamespaces bool
	// Istiod is --istiod ADDR: istiod-lite's gRPC address (xDS, debug and
	// relay services). It selects local mode; in a cluster it may also name
	// an istiod-lite reachable from here, otherwise meshctl port-forwards to
	// an istiod-lite pod.
	Istiod string
	// IstiodCA is --istiod-ca FILE: the mesh root (PEM) that istiod-lite's
	// TLS certificate chains to. Empty: plaintext, which istiod-lite serves
	// only on loopback (--plaintext-addr).
	IstiodCA string
	// Token and TokenFile (--istiod-token, --istiod-token-file) are the bearer token sent
	// to istiod-lite: in local mode a token of the config directory; in a
	// cluster, default the kubeconfig's credentials.
	Token, TokenFile string
	// ProxyAdmin (--proxy-admin NAME=ADDR, repeatable) maps a node (for its
	// ztunnel) or a waypoint's namespace/name to the address of its admin
	// server (:15000), for local mode, where no API server knows the pods.
	ProxyAdmin map[string]string
	// Out and ErrOut are where commands write; os.Stdout/os.Stderr in main.
	Out, ErrOut io.Writer
}

// NewOptions returns Options with kubectl's defaults writing to out and errOut.
func NewOptions(out, errOut io.Writer) *Options {
	return &Options{
		Kube:   genericclioptions.NewConfigFlags(true),
		Out:    out,
		ErrOut: errOut,
	}
}

// Local reports whether meshctl runs in local mode (--istiod given).
func (o *Options) Local() bool { return o.Istiod != "" }

// NewRoot returns the meshctl command with every subcommand registered.
func NewRoot(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "meshctl",
		Short: "Operate and inspect the ambient mesh",
		Long: `meshctl inspects and operates the ambient mesh: the configuration of each
ztunnel, the xDS state of every proxy, the path a connection takes, the health
of an installation and the access logs of every ztunnel and waypoint.

It also manages waypoints (meshctl waypoint) and the proxies' log levels.

It works against a Kubernetes cluster (kubectl's --kubeconfig, --context and
-n/-A flags) or, with --istiod ADDR, against a local mesh started from a
config directory.`,
		Example: `  meshctl check
  meshctl proxy-status
  meshctl ztunnel-config workload --node node-a
  meshctl explain demo/client echo.demo:80
  meshctl waypoint apply -n demo --enroll-namespace --wait
  meshctl --istiod 127.10.0.1:15012 --istiod-ca _out/demo/state/root-cert.pem --istiod-token TOKEN proxy-status`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetOut(o.Out)
	cmd.SetErr(o.ErrOut)
	o.Kube.AddFlags(cmd.PersistentFlags())
	cmd.PersistentFlags().BoolVarP(&o.AllNamespaces, "all-namespaces", "A", false, "all namespaces instead of -n")
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.Istiod, "istiod", "", "istiod-lite's gRPC address (host:port); selects local mode")
	pf.StringVar(&o.IstiodCA, "istiod-ca", "", "root certificate (PEM) of istiod-lite's TLS listener; empty: plaintext to --istiod, or, through a port-forward, the root of ConfigMap istio-system/istio-ca-root-cert")
	pf.StringVar(&o.Token, "istiod-token", "", "bearer token for istiod-lite (local mode: a value of Secret istio-system/meshctl-tokens)")
	pf.StringVar(&o.TokenFile, "istiod-token-file", "", "file holding the bearer token for istiod-lite")
	pf.StringToStringVar(&o.ProxyAdmin, "proxy-admin", nil, "local mode: admin address of a proxy, NODE=ADDR for a ztunnel or NS/NAME=ADDR for a waypoint (repeatable)")

	cmd.AddCommand(newZtunnelConfigCmd(o))
	cmd.AddCommand(newProxyStatusCmd(o))
	cmd.AddCommand(newExplainCmd(o))
	cmd.AddCommand(newCheckCmd(o))
	cmd.AddCommand(newLogsCmd(o))
	cmd.AddCommand(newWaypointCmd(o))

	return cmd
}

// exitError carries a process exit code without a message of its own (the
// command already printed what went wrong, as check does).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs meshctl with args and returns the process exit code.
func Main(args []string, out, errOut io.Writer) int {
	o := NewOptions(out, errOut)
	cmd := NewRoot(o)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		fmt.Fprintln(errOut, "Error:", err)
		return 1
	}
	return 0
}

// clock is time.Now; tests set a fixed time for golden output.
var clock = time.Now
