package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
	"github.com/ambient-go/mesh/tests/harness"
)

// Waypoints, as the runtime runs them. In a cluster istiod-lite's deployer
// turns each waypoint Gateway into a ServiceAccount, a Deployment and a
// Service, and the kubelet runs the Deployment's pod; in local mode there
// is neither, so the demo does both: for each Gateway of class
// istio-waypoint in the config directory it writes the ServiceAccount, the
// Service (named after the Gateway) and the pod (labelled
// istio.io/dataplane-mode: none: never captured) into the config
// directory, starts bin/waypoint as that pod, marks the pod Ready once the
// waypoint's /healthz/ready answers, and waits until istiod-lite reports
// the Gateway Programmed.

// waypointGateways returns the example's waypoint Gateways, sorted.
func waypointGateways(snap *localdir.Snapshot) []*gatewayv1.Gateway {
	var gws []*gatewayv1.Gateway
	for _, gw := range snap.Inputs.Gateways {
		if gw.Spec.GatewayClassName == "istio-waypoint" {
			gws = append(gws, gw)
		}
	}
	sort.Slice(gws, func(i, j int) bool {
		return gws[i].Namespace+"/"+gws[i].Name < gws[j].Namespace+"/"+gws[j].Name
	})
	return gws
}

// waypointRun describes how to run one waypoint replica: its objects, how
// to launch a process in its pod, the addresses its flags bind, and an
// HTTP client that reaches its readiness port.
type waypointRun struct {
	spec   harness.WaypointSpec
	launch func(*exec.Cmd) error
	// bind is the address the waypoint's admin, metrics and readiness
	// listen on; readyURL is its /healthz/ready as seen by client.
	bind     string
	readyURL string
	client   *http.Client
}

// startWaypoint runs one waypoint as the runtime would (see above).
func startWaypoint(ctx context.Context, procs *processes, w waypointRun, binDir, configDir, logDir, xdsAddr, rootFile, token string, records chan<- logLine) error {
	s := w.spec
	objFile := filepath.Join(configDir, "zz-runtime-waypoint-"+s.Namespace+"-"+s.Gateway+".yaml")
	write := func(ready bool) error {
		return os.WriteFile(objFile, []byte("# Written by the demo, playing istiod-lite's deployer and the kubelet.\n"+s.ObjectsYAML(ready)), 0o644)
	}
	if err := write(false); err != nil {
		return err
	}
	name := "waypoint " + s.Namespace + "/" + s.Gateway
	if err := procs.startWith(w.launch, name, filepath.Join(binDir, "waypoint"),
		filepath.Join(logDir, "waypoint-"+s.Namespace+"-"+s.Gateway+".log"), records,
		"--namespace", s.Namespace, "--gateway", s.Gateway, "--pod-name", s.PodName(), "--pod-ip", s.PodIP.String(),
		"--xds-address", xdsAddr, "--ca-root", rootFile, "--token", token, "--impersonate",
		"--hbone-addr", netip.AddrPortFrom(s.PodIP, 15008).String(),
		"--admin-addr", w.bind+":15000", "--metrics-addr", w.bind+":15020", "--readiness-addr", w.bind+":15021"); err != nil {
		return err
	}
	if err := waitFor(ctx, 15*time.Second, func() bool { return httpOKWith(w.client, w.readyURL) }); err != nil {
		return fmt.Errorf("%s not ready: %w (see %s)", name, err, logDir)
	}
	// The readiness probe passed: the pod is Ready, and istiod-lite gives
	// the Gateway its addresses.
	if err := write(true); err != nil {
		return err
	}
	istiodLog := filepath.Join(logDir, "istiod-lite.log")
	var addrs []string
	if err := waitFor(ctx, 15*time.Second, func() bool {
		addrs = programmed(istiodLog, s.Namespace, s.Gateway)
		return addrs != nil
	}); err != nil {
		return fmt.Errorf("Gateway %s/%s not Programmed: %w (see %s)", s.Namespace, s.Gateway, err, istiodLog)
	}
	say("waypoint %s/%s is ready on pod %s (node %s); istiod-lite reports the Gateway Programmed with addresses %s",
		s.Namespace, s.Gateway, s.PodIP, s.Node, strings.Join(addrs, ", "))
	return nil
}

// programmed returns the addresses of the last "gateway status" record of
// istiod-lite's log for namespace/name when it says Programmed=True, else
// nil.
func programmed(logFile, namespace, name string) []string {
	f, err := os.Open(logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var last []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var rec struct {
			Msg        string   `json:"msg"`
			Namespace  string   `json:"namespace"`
			Name       string   `json:"name"`
			Addresses  []string `json:"addresses"`
			Conditions []string `json:"conditions"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Msg != "gateway status" || rec.Namespace != namespace || rec.Name != name {
			continue
		}
		last = nil
		for _, c := range rec.Conditions {
			if strings.HasPrefix(c, "Programmed=True") && len(rec.Addresses) > 0 {
				last = rec.Addresses
			}
		}
	}
	return last
}

// l7Services are the Services of the example that carry
// istio.io/use-waypoint, by hostname, with their first port.
func l7Services(snap *localdir.Snapshot) map[string]bool {
	out := map[string]bool{}
	for _, s := range snap.Inputs.Services {
		if v := s.Labels["istio.io/use-waypoint"]; v != "" && v != "none" {
			out[s.Name+"."+s.Namespace+".svc.cluster.local"] = true
			out[s.Spec.ClusterIP] = true
		}
	}
	return out
}
