// Package cni is ztunnel's chained CNI plugin (CNI spec 1.x, through
// github.com/containernetworking/cni's skel): it runs after the network
// plugin that gave the pod its addresses, and hands the pod's network
// namespace to the node's ztunnel over the zds protocol, so that the pod is
// captured before its containers start.
//
// ADD reads the pod's name, namespace and UID from CNI_ARGS
// (K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_UID) and its addresses from
// prevResult, writes the pod's record to the state directory (so that a
// restarted ztunnel finds the pod), then sends the pod and its netns to
// ztunnel and waits for its acknowledgement. If ztunnel does not
// acknowledge (it is down, or refuses), ADD fails and the record is
// removed: the runtime tears the sandbox down and retries, and no pod
// starts while ztunnel is down. ztunnel acknowledges once it has applied
// the pod's capture state: it waits for the pod's workload from
// istiod-lite (published once the pod is scheduled, before it has an IP)
// and captures an ambient pod before answering, so the pod is captured from
// its first packet; when the workload does not come in time it refuses,
// and ADD fails (docs/architecture.md, In-pod mode). ADD then prints
// prevResult unchanged.
// Invocations without K8S_POD_NAME are not pods, and pods of the
// configuration's excludeNamespaces are not captured: they pass through.
//
// DEL tells ztunnel the pod is gone (best effort: a ztunnel that is not
// running is not an error, DEL is idempotent) and removes the record.
// CHECK succeeds; GC and STATUS are not implemented.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambient-go/mesh/ztunnel/zds"
)

// Config is the plugin's network configuration, as the runtime passes it
// on stdin.
type Config struct {
	types.PluginConf
	// ZDSSocket is ztunnel's socket; default zds.DefaultSocket.
	ZDSSocket string `json:"zdsSocket,omitempty"`
	// PodStateDir holds the pod records; default zds.DefaultStateDir.
	PodStateDir string `json:"podStateDir,omitempty"`
	// ExcludeNamespaces are namespaces whose pods pass through without
	// ztunnel, e.g. istio-system: ztunnel's own pod must start while no
	// ztunnel runs on the node (the plugin cannot read the pod's labels).
	// Default none.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// K8sArgs are the CNI_ARGS that Kubernetes runtimes pass.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// Plugin implements the CNI commands. The zero value works; Stdout is where
// ADD prints its result (default os.Stdout), Stderr where warnings go
// (default os.Stderr).
type Plugin struct {
	Stdout, Stderr io.Writer
	// Timeout bounds the exchange with ztunnel; default 10s.
	Timeout time.Duration
}

// About is printed when the binary runs without CNI_COMMAND.
const About = "ztunnel-cni: chained CNI plugin handing pods to ztunnel for in-pod traffic capture"

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check}
}

// Versions are the CNI spec versions the plugin supports.
var Versions = version.All

// ParseConfig decodes the configuration on stdin, and prevResult into
// PrevResult.
func ParseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("ztunnel-cni: parsing network configuration: %w", err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, fmt.Errorf("ztunnel-cni: parsing prevResult: %w", err)
	}
	if conf.ZDSSocket == "" {
		conf.ZDSSocket = zds.DefaultSocket
	}
	if conf.PodStateDir == "" {
		conf.PodStateDir = zds.DefaultStateDir
	}
	return conf, nil
}

// pod builds the zds.Pod of the invocation; ok is false for a sandbox that
// is not a Kubernetes pod.
func pod(args *skel.CmdArgs, conf *Config) (zds.Pod, bool, error) {
	var k K8sArgs
	if err := types.LoadArgs(args.Args, &k); err != nil {
		return zds.Pod{}, false, fmt.Errorf("ztunnel-cni: parsing CNI_ARGS: %w", err)
	}
	if k.K8S_POD_NAME == "" || slices.Contains(conf.ExcludeNamespaces, string(k.K8S_POD_NAMESPACE)) {
		return zds.Pod{}, false, nil
	}
	p := zds.Pod{
		UID:       string(k.K8S_POD_UID),
		Name:      string(k.K8S_POD_NAME),
		Namespace: string(k.K8S_POD_NAMESPACE),
		Netns:     args.Netns,
	}
	if conf.PrevResult != nil {
		res, err := types100.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return p, true, fmt.Errorf("ztunnel-cni: converting prevResult: %w", err)
		}
		for _, ip := range res.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
				p.IPs = append(p.IPs, a.Unmap())
			}
		}
	}
	return p, true, nil
}

func (p *Plugin) client(conf *Config) *zds.Client {
	return &zds.Client{Socket: conf.ZDSSocket, Timeout: p.Timeout}
}

func (p *Plugin) stdout() io.Writer {
	if p.Stdout != nil {
		return p.Stdout
	}
	return os.Stdout
}

func (p *Plugin) stderr() io.Writer {
	if p.Stderr != nil {
		return p.Stderr
	}
	return os.Stderr
}

// Add hands the pod to ztunnel and prints prevResult.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("ztunnel-cni: no prevResult: the plugin must be chained after the plugin that sets up the pod's network")
	}
	pd, isPod, err := pod(args, conf)
	if err != nil {
		return err
	}
	if isPod {
		if err := zds.WriteRecord(conf.PodStateDir, pd); err != nil {
			return fmt.Errorf("ztunnel-cni: %w", err)
		}
		if err := p.client(conf).Add(context.Background(), pd); err != nil {
			return errors.Join(fmt.Errorf("ztunnel-cni: pod %s/%s not captured, failing ADD: %w", pd.Namespace, pd.Name, err),
				zds.RemoveRecord(conf.PodStateDir, pd))
		}
	}
	return p.print(conf)
}

func (p *Plugin) print(conf *Config) error {
	res, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fmt.Errorf("ztunnel-cni: converting prevResult to %s: %w", conf.CNIVersion, err)
	}
	return res.PrintTo(p.stdout())
}

// Del releases the pod from ztunnel (best effort) and removes its record.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pd, isPod, err := pod(args, conf)
	if err != nil || !isPod {
		return err
	}
	if err := p.client(conf).Del(context.Background(), pd); err != nil && !errors.Is(err, zds.ErrNoServer) {
		fmt.Fprintf(p.stderr(), "ztunnel-cni: releasing %s/%s: %v\n", pd.Namespace, pd.Name, err)
	}
	if err := zds.RemoveRecord(conf.PodStateDir, pd); err != nil {
		return fmt.Errorf("ztunnel-cni: %w", err)
	}
	return nil
}

// Check succeeds: capture state is ztunnel's, which reconciles it.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	_, err := ParseConfig(args.StdinData)
	return err
}
