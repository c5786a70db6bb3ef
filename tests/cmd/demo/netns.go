package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
	"github.com/ambient-go/mesh/tests/harness"
	"github.com/ambient-go/mesh/tests/netns"
)

// demoPod is a pod of the example, as a network namespace.
type demoPod struct {
	ns, name string
	node     *netns.Node
	nodeName string
	pod      *netns.Pod
	ports    []int32
}

// runNetns runs the demo on a topology of network namespaces (package
// netns): istiod-lite in the underlay namespace, one ztunnel per node in
// in-pod mode inside the node's namespace, the example's pods as
// namespaces handed to ztunnel by the CNI plugin, and a client that is a
// plain HTTP client inside the client pod: its traffic is captured
// transparently.
func runNetns(ctx context.Context, binDir, configDir, stateDir, logDir, runDir string, snap *localdir.Snapshot, once bool) error {
	for _, b := range []string{"istiod-lite", "ztunnel", "ztunnel-cni", "waypoint"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("%s is missing in %s (run `make build` first): %w", b, binDir, err)
		}
	}
	nodeNames := map[string]bool{}
	for _, p := range snap.Inputs.Pods {
		if p.Spec.NodeName != "" && p.Status.PodIP != "" {
			nodeNames[p.Spec.NodeName] = true
		}
	}
	var nodes []string
	for n := range nodeNames {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	topo, err := netns.Create(netns.Options{Nodes: len(nodes)})
	if err != nil {
		return err
	}
	defer func() {
		if err := topo.Close(); err != nil {
			say("removing the namespaces: %v", err)
			return
		}
		say("removed every namespace and veth (prefix %s)", topo.Prefix)
	}()
	nodeOf := map[string]*netns.Node{}
	for i, n := range nodes {
		nodeOf[n] = topo.Nodes[i]
		say("node %s is netns %s (underlay %s)", n, topo.Nodes[i].Name, topo.Nodes[i].IP)
	}

	// Give each pod a namespace, and each address of the example its
	// counterpart in the topology.
	addrs := map[string]string{}
	var pods []*demoPod
	for _, p := range snap.Inputs.Pods {
		n := nodeOf[p.Spec.NodeName]
		if n == nil || p.Status.PodIP == "" {
			continue
		}
		tp, err := n.AddPod(p.Namespace + "-" + p.Name)
		if err != nil {
			return err
		}
		dp := &demoPod{ns: p.Namespace, name: p.Name, node: n, nodeName: p.Spec.NodeName, pod: tp}
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				dp.ports = append(dp.ports, port.ContainerPort)
			}
		}
		pods = append(pods, dp)
		addrs[p.Status.PodIP] = tp.IP.String()
	}
	for i, s := range snap.Inputs.Services {
		if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != "None" {
			addrs[s.Spec.ClusterIP] = netns.VIP(i).String()
		}
	}
	if err := rewriteAddrs(configDir, addrs); err != nil {
		return err
	}
	say("rewrote the pod and service addresses of %s for the topology", configDir)

	procs := &processes{}
	defer procs.stop()
	records := make(chan logLine, 256)
	if err := procs.startIn(ctx, topo.Underlay, "istiod-lite", filepath.Join(binDir, "istiod-lite"), filepath.Join(logDir, "istiod-lite.log"), nil,
		"--config-dir", configDir, "--state-dir", stateDir,
		"--grpc-addr", netns.UnderlayIP.String()+":15012"); err != nil {
		return err
	}
	rootFile := filepath.Join(stateDir, "root-cert.pem")
	if err := waitFor(ctx, 10*time.Second, func() bool { _, err := os.Stat(rootFile); return err == nil }); err != nil {
		return fmt.Errorf("istiod-lite did not create its CA root: %w (see %s)", err, logDir)
	}
	zdsSocket := func(node string) string { return filepath.Join(runDir, node, "zds.sock") }
	podState := func(node string) string { return filepath.Join(runDir, node, "pods") }
	for _, node := range nodes {
		if err := procs.startIn(ctx, nodeOf[node].NS, "ztunnel "+node, filepath.Join(binDir, "ztunnel"), filepath.Join(logDir, "ztunnel-"+node+".log"), records,
			"--mode", "inpod", "--node", node, "--token", snapTokenOf(snap, node),
			"--xds-address", netns.UnderlayIP.String()+":15012", "--ca-root", rootFile,
			"--zds-socket", zdsSocket(node), "--pod-state-dir", podState(node),
			"--admin-addr", "127.0.0.1:15000", "--metrics-addr", "127.0.0.1:15020", "--readiness-addr", "127.0.0.1:15021"); err != nil {
			return err
		}
	}
	for _, node := range nodes {
		c := nsHTTPClient(nodeOf[node].NS)
		if err := waitFor(ctx, 15*time.Second, func() bool { return httpOKWith(c, "http://127.0.0.1:15021/healthz/ready") }); err != nil {
			return fmt.Errorf("ztunnel %s not ready: %w (see %s)", node, err, logDir)
		}
		say("ztunnel %s is ready in netns %s", node, nodeOf[node].Name)
	}

	// Waypoints: each in its own pod namespace on node-a, not captured (no
	// CNI ADD: its pod is istio.io/dataplane-mode: none), with a route to
	// istiod-lite.
	for i, gw := range waypointGateways(snap) {
		tp, err := nodeOf[nodes[0]].AddPod(gw.Namespace + "-" + gw.Name)
		if err != nil {
			return err
		}
		if err := tp.RouteUnderlay(); err != nil {
			return err
		}
		w := waypointRun{
			spec: harness.WaypointSpec{Namespace: gw.Namespace, Gateway: gw.Name, Node: nodes[0],
				PodIP: tp.IP, VIP: netns.VIP(len(snap.Inputs.Services) + i)},
			launch:   tp.Start,
			bind:     "127.0.0.1",
			readyURL: "http://127.0.0.1:15021/healthz/ready",
			client:   nsHTTPClient(tp.NS),
		}
		if err := startWaypoint(ctx, procs, w, binDir, configDir, logDir, netns.UnderlayIP.String()+":15012", rootFile, snapTokenOf(snap, nodes[0]), records); err != nil {
			return err
		}
		say("waypoint %s/%s runs in netns %s (%s), not captured", gw.Namespace, gw.Name, tp.Name, tp.IP)
	}

	// Play the container runtime: start the apps, then CNI ADD.
	var apps closers
	defer apps.Close()
	var added []*demoPod
	defer func() {
		for _, p := range added {
			if err := cni(binDir, "DEL", p, zdsSocket(p.nodeName), podState(p.nodeName)); err != nil {
				say("CNI DEL %s/%s: %v", p.ns, p.name, err)
			}
		}
	}()
	var client *demoPod
	for _, p := range pods {
		for _, port := range p.ports {
			l, err := p.pod.Listen("tcp", netip.AddrPortFrom(p.pod.IP, uint16(port)).String())
			if err != nil {
				return fmt.Errorf("echo app %s/%s: %w", p.ns, p.name, err)
			}
			name, node := p.ns+"/"+p.name, p.nodeName
			srv := &http.Server{
				ReadHeaderTimeout: 5 * time.Second,
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					// One connection per request, so that each shows up in
					// the access logs at once (the waypoint keeps its
					// upstream connections otherwise).
					w.Header().Set("Connection", "close")
					fmt.Fprintf(w, "hello from %s on %s; you are %s\n", name, node, r.RemoteAddr)
				}),
			}
			go srv.Serve(l)
			apps = append(apps, srv)
		}
		if err := cni(binDir, "ADD", p, zdsSocket(p.nodeName), podState(p.nodeName)); err != nil {
			return fmt.Errorf("CNI ADD %s/%s: %w", p.ns, p.name, err)
		}
		added = append(added, p)
		say("pod %s/%s (%s, netns %s) added by the CNI plugin", p.ns, p.name, p.pod.IP, p.pod.Name)
		if p.ns == "demo" && p.name == "client" {
			client = p
		}
	}
	if client == nil {
		return errors.New("no pod demo/client in the example")
	}
	go printRecords(records)

	var targets []string
	l7 := l7Services(snap)
	for old, ip := range addrs {
		if strings.HasPrefix(ip, "198.18.100.") {
			targets = append(targets, ip+":80/")
			if l7[old] {
				targets = append(targets, ip+":80/admin")
			}
		}
		if old == "127.10.2.10" {
			targets = append(targets, ip+":8080/")
		}
	}
	for _, r := range routedTargets(snap) {
		targets = append(targets, r.target(addrs[r.clusterIP]))
	}
	sort.Strings(targets)
	c := nsHTTPClient(client.pod.NS)
	say("the client pod (demo/client, %s, node-a) calls the echo service with a plain HTTP client; its ztunnel captures it:", client.pod.IP)
	return traffic(ctx, targets, 30, once, func(ctx context.Context, t string) (string, error) {
		return getWith(ctx, c, t)
	}, func() {
		fmt.Printf(`
==> the client is unmodified: its connections are redirected inside its own
    network namespace to ztunnel (nftables rules written by ztunnel when the
    CNI plugin handed it the pod), carried over HBONE (mTLS, port 15008) to
    node-b's ztunnel, and delivered from the client's own address.

    echo-l7's requests go through the waypoint, which applies the
    HTTPRoute demo/echo-l7-canary (route.yaml): the request sent with
    x-canary: true is answered by echo-v2-0, and its [waypoint] record names
    the route.

    Try more, in another terminal:
      ip netns exec %[1]s curl -s http://%[2]s
      ip netns exec %[3]s curl -s http://127.0.0.1:15000/config_dump | head -50
      ip netns exec %[1]s nft list ruleset
      ip netns exec %[4]s bin/meshctl --istiod %[5]s:15012 --istiod-ca _out/demo/state/root-cert.pem \
        --istiod-token demo-meshctl-token logs -f -n demo      (or proxy-status)
    Ctrl-C stops everything and removes every namespace.

`, client.pod.Name, targets[0], nodeOf["node-b"].Name, topo.Underlay.Name, netns.UnderlayIP)
	})
}

var ipRE = regexp.MustCompile(`\b127\.10\.\d{1,3}\.\d{1,3}\b`)

// rewriteAddrs replaces, in every YAML file of dir, each address of addrs
// by its counterpart.
func rewriteAddrs(dir string, addrs map[string]string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out := ipRE.ReplaceAllFunc(b, func(m []byte) []byte {
			if to, ok := addrs[string(m)]; ok {
				return []byte(to)
			}
			return m
		})
		if bytes.Equal(out, b) {
			return nil
		}
		return os.WriteFile(path, out, 0o644)
	})
}

// cni runs the CNI plugin for p in its node's namespace, as a container
// runtime does.
func cni(binDir, command string, p *demoPod, socket, stateDir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	uid := "uid-" + p.ns + "-" + p.name
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ztunnel-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + uid,
		"CNI_NETNS=" + p.pod.Path(),
		"CNI_IFNAME=eth0",
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", p.ns, p.name, uid),
		"CNI_PATH=" + binDir,
	}
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"demo","type":"ztunnel-cni","zdsSocket":%q,"podStateDir":%q,`+
		`"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}],"ips":[{"address":"%s/24","interface":0}]}}`,
		socket, stateDir, p.pod.Path(), p.pod.IP))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := p.node.Start(cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// nsHTTPClient is an HTTP client whose connections are opened inside ns.
func nsHTTPClient(ns netns.NS) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return ns.Dial(ctx, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

func httpOKWith(c *http.Client, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// getWith sends GET http://<target> (host:port/path, then optionally
// " [name: value]", a header to send) and returns the body, prefixed by the
// status code unless it is 200.
func getWith(ctx context.Context, c *http.Client, target string) (string, error) {
	target, header := splitTarget(target)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target, nil)
	if err != nil {
		return "", err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	body := strings.TrimSpace(string(b))
	if resp.StatusCode != http.StatusOK {
		body = fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	return body, err
}
