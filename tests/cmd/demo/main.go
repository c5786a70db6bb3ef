// Command demo runs the mesh in local mode on this machine: istiod-lite on
// the bundled example directory, one ztunnel per node, small echo apps as
// pods, and a client that talks to them through the mesh. It prints who
// talked to whom, over which identity, and the access log records, then
// waits for Ctrl-C (or exits after one round with -once).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
	"github.com/ambient-go/mesh/tests/harness"
	"github.com/ambient-go/mesh/tests/netns"
)

const (
	istiodAddr = "127.10.0.1"
	socksPort  = 15080
)

// nodeAdmin is where each node's ztunnel serves admin, metrics and
// readiness: the .1 address of the node's pod range.
var nodeAdmin = map[string]string{"node-a": "127.10.1.1", "node-b": "127.10.2.1"}

func main() {
	var (
		binDir  = flag.String("bin", "bin", "directory holding the istiod-lite and ztunnel binaries")
		example = flag.String("config", "examples/local", "example configuration to copy and serve")
		outDir  = flag.String("out", "_out/demo", "working directory (config copy, CA state, logs)")
		once    = flag.Bool("once", false, "send one round of traffic, print it and exit")
		mode    = flag.String("mode", "local", "local (loopback pods, SOCKS5), netns (network namespaces and transparent capture; needs root) or auto (netns when root)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *binDir, *example, *outDir, *once, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, binDir, example, outDir string, once bool, mode string) error {
	switch mode {
	case "local", "netns":
	case "auto":
		mode = "local"
		if os.Geteuid() == 0 {
			mode = "netns"
		} else {
			say("not root: running in local mode (loopback pods, SOCKS5); as root the demo runs in network namespaces with transparent capture")
		}
	default:
		return fmt.Errorf("-mode %q: want local, netns or auto", mode)
	}
	configDir := filepath.Join(outDir, "config")
	stateDir := filepath.Join(outDir, "state")
	logDir := filepath.Join(outDir, "logs")
	if err := os.RemoveAll(outDir); err != nil {
		return err
	}
	for _, d := range []string{configDir, stateDir, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.CopyFS(configDir, os.DirFS(example)); err != nil {
		return fmt.Errorf("copying %s: %w", example, err)
	}
	snap, errs := localdir.Load(configDir)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if mode == "netns" {
		say("serving %s (a copy of %s) with istiod-lite; pods are network namespaces", configDir, example)
		return runNetns(ctx, binDir, configDir, stateDir, logDir, filepath.Join(outDir, "run"), snap, once)
	}
	say("serving %s (a copy of %s) with istiod-lite in local mode", configDir, example)

	procs := &processes{}
	defer procs.stop()
	records := make(chan logLine, 256)

	if err := procs.start(ctx, "istiod-lite", filepath.Join(binDir, "istiod-lite"), filepath.Join(logDir, "istiod-lite.log"), nil,
		"--config-dir", configDir, "--state-dir", stateDir,
		"--grpc-addr", istiodAddr+":15012"); err != nil {
		return err
	}
	rootFile := filepath.Join(stateDir, "root-cert.pem")
	if err := waitFor(ctx, 10*time.Second, func() bool { _, err := os.Stat(rootFile); return err == nil }); err != nil {
		return fmt.Errorf("istiod-lite did not create its CA root: %w (see %s)", err, logDir)
	}
	nodes := make([]string, 0, len(nodeAdmin))
	for n := range nodeAdmin {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, node := range nodes {
		token := snapTokenOf(snap, node)
		admin := nodeAdmin[node]
		if err := procs.start(ctx, "ztunnel "+node, filepath.Join(binDir, "ztunnel"), filepath.Join(logDir, "ztunnel-"+node+".log"), records,
			"--node", node, "--token", token,
			"--xds-address", istiodAddr+":15012", "--ca-root", rootFile,
			"--admin-addr", admin+":15000", "--metrics-addr", admin+":15020", "--readiness-addr", admin+":15021"); err != nil {
			return err
		}
	}
	for _, node := range nodes {
		url := "http://" + nodeAdmin[node] + ":15021/healthz/ready"
		if err := waitFor(ctx, 15*time.Second, func() bool { return httpOK(url) }); err != nil {
			return fmt.Errorf("ztunnel %s not ready: %w (see %s)", node, err, logDir)
		}
		say("ztunnel %s is ready (admin http://%s:15000/config_dump)", node, nodeAdmin[node])
	}

	for i, gw := range waypointGateways(snap) {
		// The waypoint's pod is on node-a, after the example's pods.
		ip := netip.AddrFrom4([4]byte{127, 10, 1, byte(200 + i)})
		w := waypointRun{
			spec: harness.WaypointSpec{Namespace: gw.Namespace, Gateway: gw.Name, Node: "node-a",
				PodIP: ip, VIP: netip.AddrFrom4([4]byte{127, 10, 100, byte(200 + i)})},
			launch:   (*exec.Cmd).Start,
			bind:     ip.String(),
			readyURL: "http://" + ip.String() + ":15021/healthz/ready",
			client:   &http.Client{Timeout: time.Second},
		}
		if err := startWaypoint(ctx, procs, w, binDir, configDir, logDir, istiodAddr+":15012", rootFile, snapTokenOf(snap, "node-a"), records); err != nil {
			return err
		}
	}

	apps, err := startEchoApps(snap)
	if err != nil {
		return err
	}
	defer apps.Close()

	client, err := podIP(snap, "demo", "client")
	if err != nil {
		return err
	}
	go printRecords(records)

	targets := []string{"echo.demo.svc.cluster.local:80/", "127.10.100.10:80/", "127.10.2.10:8080/"}
	for _, s := range snap.Inputs.Services {
		if l7Services(snap)[s.Spec.ClusterIP] {
			h := s.Name + "." + s.Namespace + ".svc.cluster.local:80"
			targets = append(targets, h+"/", h+"/admin")
		}
	}
	for _, r := range routedTargets(snap) {
		targets = append(targets, r.target(r.host))
	}
	say("the client pod (demo/client, %s, node-a) calls the echo service through its ztunnel (SOCKS5 %s:%d):", client, client, socksPort)
	return traffic(ctx, targets, 40, once, func(ctx context.Context, t string) (string, error) {
		return get(ctx, client, t)
	}, func() { explain(client) })
}

// traffic sends one GET to each target per round, every 10 s, printing
// each answer; after the first round it calls explain. It returns after one
// round with once, else when ctx is done.
func traffic(ctx context.Context, targets []string, width int, once bool, get func(context.Context, string) (string, error), explain func()) error {
	// Records of the shutdown (connections cut as processes stop) are
	// left to the log files.
	defer quiet.Store(true)
	for round := 0; ; round++ {
		for _, t := range targets {
			body, err := get(ctx, t)
			if err != nil {
				fmt.Printf("    GET http://%-*s -> error: %v\n", width, t, err)
				continue
			}
			fmt.Printf("    GET http://%-*s -> %s\n", width, t, body)
		}
		time.Sleep(300 * time.Millisecond) // let the access log lines arrive
		if round == 0 {
			explain()
		}
		if once {
			return nil
		}
		select {
		case <-ctx.Done():
			say("stopping")
			return nil
		case <-time.After(10 * time.Second):
		}
	}
}

func explain(client netip.Addr) {
	fmt.Printf(`
==> each [node-a]/[node-b] line above is an access log record as that ztunnel
    wrote it: the source and destination SPIFFE identities that the two ends
    presented to each other over mutual TLS (HBONE on port 15008), and the
    addresses. The echo app's answer shows the client address it saw: the
    client pod's own. Traffic repeats every 10 s.

    The echo-l7 service carries istio.io/use-waypoint: waypoint, so node-a's
    ztunnel sends its traffic to the waypoint (an L7 proxy, the Gateway
    demo/waypoint of waypoint.yaml): each [waypoint demo/waypoint] line is one
    HTTP request it handled; it forwards allowed requests to an echo pod
    under its own identity (node-b's inbound record shows sa/waypoint), and
    answers 403 to GET /admin, denied by the AuthorizationPolicy deny-admin
    (targetRefs: Service echo-l7) at the waypoint.

    The waypoint also routes: the HTTPRoute demo/echo-l7-canary of
    route.yaml (parentRef: Service echo-l7) sends requests carrying
    x-canary: true to the Service echo-v2 (pod echo-v2-0) and the rest to
    echo-l7's own pods; the waypoint's record of such a request names the
    route.

    Try more, in another terminal:
      curl --interface %[1]s --socks5-hostname %[1]s:%[2]d http://echo.demo.svc.cluster.local/
      curl --interface %[1]s --socks5-hostname %[1]s:%[2]d -H 'x-canary: true' http://echo-l7.demo.svc.cluster.local/
      curl -s http://127.10.2.1:15000/config_dump | head -50
      curl -s http://127.10.2.1:15020/metrics | grep istio_tcp
      bin/meshctl --istiod 127.10.0.1:15012 --istiod-ca _out/demo/state/root-cert.pem \
        --istiod-token demo-meshctl-token logs -f -n demo      (or proxy-status)
      edit _out/demo/config/demo.yaml (add a pod, change a label): the ztunnels
      pick it up within a second; bad YAML is reported with file and line in
      _out/demo/logs/istiod-lite.log and the last good state stays served.
    Ctrl-C stops everything.

`, client, socksPort)
}

// get sends one HTTP request from the client pod's address through its
// ztunnel's SOCKS5 listener.
func get(ctx context.Context, client netip.Addr, target string) (string, error) {
	d, err := proxy.SOCKS5("tcp", netip.AddrPortFrom(client, socksPort).String(), nil,
		&net.Dialer{LocalAddr: &net.TCPAddr{IP: client.AsSlice()}, Timeout: 5 * time.Second})
	if err != nil {
		return "", err
	}
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       d.(proxy.ContextDialer).DialContext,
			DisableKeepAlives: true,
		},
	}
	return getWith(ctx, c, target)
}

// startEchoApps runs an HTTP echo server on every declared container port
// of every pod, bound to the pod's address.
func startEchoApps(snap *localdir.Snapshot) (io.Closer, error) {
	var servers closers
	for _, p := range snap.Inputs.Pods {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			continue
		}
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				l, err := net.Listen("tcp", netip.AddrPortFrom(ip, uint16(port.ContainerPort)).String())
				if err != nil {
					servers.Close()
					return nil, fmt.Errorf("echo app %s/%s: %w", p.Namespace, p.Name, err)
				}
				name := p.Namespace + "/" + p.Name
				node := p.Spec.NodeName
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
				servers = append(servers, srv)
			}
		}
	}
	return servers, nil
}

type closers []io.Closer

func (cs closers) Close() error {
	for _, c := range cs {
		c.Close()
	}
	return nil
}

func podIP(snap *localdir.Snapshot, ns, name string) (netip.Addr, error) {
	for _, p := range snap.Inputs.Pods {
		if p.Namespace == ns && p.Name == name {
			return netip.ParseAddr(p.Status.PodIP)
		}
	}
	return netip.Addr{}, fmt.Errorf("no pod %s/%s in the example", ns, name)
}

func snapTokenOf(snap *localdir.Snapshot, node string) string {
	for token, n := range snap.NodeTokens {
		if n == node {
			return token
		}
	}
	return ""
}

// processes are the child processes of the demo; stop ends them all.
type processes struct {
	mu    sync.Mutex
	cmds  []*exec.Cmd
	waits []chan struct{}
}

type logLine struct {
	node string
	rec  map[string]any
}

func (p *processes) start(ctx context.Context, name, bin, logFile string, records chan<- logLine, args ...string) error {
	return p.startWith((*exec.Cmd).Start, name, bin, logFile, records, args...)
}

// startIn starts the process inside the network namespace ns.
func (p *processes) startIn(ctx context.Context, ns netns.NS, name, bin, logFile string, records chan<- logLine, args ...string) error {
	return p.startWith(ns.Start, name, bin, logFile, records, args...)
}

func (p *processes) startWith(launch func(*exec.Cmd) error, name, bin, logFile string, records chan<- logLine, args ...string) error {
	f, err := os.Create(logFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = f
	if err := launch(cmd); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w (run `make build` first)", name, err)
	}
	say("started %s (pid %d, log %s)", name, cmd.Process.Pid, logFile)
	done := make(chan struct{})
	node := strings.TrimPrefix(name, "ztunnel ")
	go func() {
		defer close(done)
		defer f.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			f.Write(append(line, '\n'))
			if records == nil {
				continue
			}
			var rec map[string]any
			if json.Unmarshal(line, &rec) == nil && (rec["msg"] == "connection complete" || rec["msg"] == "request complete") {
				select {
				case records <- logLine{node, rec}:
				default:
				}
			}
		}
		cmd.Wait()
	}()
	p.mu.Lock()
	p.cmds = append(p.cmds, cmd)
	p.waits = append(p.waits, done)
	p.mu.Unlock()
	return nil
}

// stop sends SIGTERM to every child, waits up to five seconds, then kills
// what is left.
func (p *processes) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cmds {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for i, w := range p.waits {
		select {
		case <-w:
		case <-deadline:
			_ = syscall.Kill(-p.cmds[i].Process.Pid, syscall.SIGKILL)
			<-w
		}
	}
	say("all processes stopped")
}

// quiet stops printRecords once the demo's traffic is over.
var quiet atomic.Bool

func printRecords(records <-chan logLine) {
	for l := range records {
		if quiet.Load() {
			continue
		}
		r := l.rec
		s := func(k string) string { v, _ := r[k].(string); return v }
		if r["msg"] == "request complete" {
			line := fmt.Sprintf("    [%s] %s %s -> %v from %s (%s) for %s", l.node, s("method"), s("path"), r["response_code"],
				s("src.identity"), s("src.addr"), s("dst.service"))
			if u := s("upstream_host"); u != "" {
				line += " sent to " + u + " as " + s("dst.identity")
			}
			if p := s("policy"); p != "" {
				line += " policy " + p
			}
			if rt := s("route_name"); rt != "" {
				line += " route " + rt
			}
			fmt.Println(line)
			continue
		}
		// Istio's fields: outbound, dst.hbone_addr is the target and
		// dst.addr the HBONE port it went to; inbound, both are the target.
		target, via := s("dst.addr"), ""
		if h := s("dst.hbone_addr"); h != "" && h != target {
			target, via = h, target
		}
		line := fmt.Sprintf("    [%s] %-8s %s (%s) -> %s (%s)", l.node, s("direction"),
			s("src.identity"), s("src.addr"), s("dst.identity"), target)
		if via != "" {
			line += " via HBONE " + via
		}
		line += fmt.Sprintf(" sent=%v recv=%v %v", r["bytes_sent"], r["bytes_recv"], r["duration"])
		if e := s("error"); e != "" {
			line += " error=" + strconv.Quote(e)
		}
		fmt.Println(line)
	}
}

func httpOK(url string) bool {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func waitFor(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}
