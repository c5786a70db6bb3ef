package cluster

// What the soak test (tests/soak) needs beyond the rest of the package:
// istiod-lite as a process of its own (Options.IstiodProcess), so that its
// memory, goroutines and descriptors can be measured apart from the test's;
// a pod at a given address (IP reuse); and each process's RSS and metrics.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// IstiodMetricsAddr is where istiod-lite serves /metrics inside the
// underlay namespace when it runs as a process (Options.IstiodProcess).
const IstiodMetricsAddr = "127.0.0.1:15014"

// IstiodProcess is istiod-lite running as a process of its own inside the
// underlay namespace (Options.IstiodProcess).
type IstiodProcess struct {
	*process
	c *Cluster
}

// IstiodBinary builds istiod-lite once per process and returns its path.
func IstiodBinary() (string, error) {
	istiodOnce.Do(func() {
		var dir string
		dir, istiodErr = build("istiod-lite/cmd/istiod-lite")
		istiodBin = filepath.Join(dir, "istiod-lite")
	})
	return istiodBin, istiodErr
}

// startIstiodProcess starts istiod-lite as a process in the underlay
// namespace (local mode, the cluster's config and state directories, its
// TLS gRPC port on IstiodAddr, metrics on IstiodMetricsAddr) and waits
// until it has applied its configuration.
func (c *Cluster) startIstiodProcess() {
	c.t.Helper()
	if c.opts.Kube != nil {
		c.t.Fatal("cluster: Options.IstiodProcess works in local mode only")
	}
	bin, err := IstiodBinary()
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--config-dir", c.ConfigDir,
		"--state-dir", c.stateDir,
		"--grpc-addr", c.IstiodAddr().String(),
		"--metrics-addr", IstiodMetricsAddr,
		"--log-level", "info",
	)
	proc, err := startProcess(c.Topo.Underlay, "istiod-lite", cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	ip := &IstiodProcess{process: proc, c: c}
	c.istiodProc = ip
	c.stopIst = func() error {
		c.istiodProc = nil
		return proc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		select {
		case <-proc.Done():
			cancel()
		case <-done:
		}
	}()
	_, _, err = proc.WaitLog(ctx, 0, func(l Log) bool { return l.String("msg") == "configuration applied" })
	close(done)
	if err != nil {
		c.t.Fatalf("istiod-lite did not apply its configuration: %v; logs:\n%s", err, proc.tail(20))
	}
	root, err := os.ReadFile(filepath.Join(c.stateDir, "root-cert.pem"))
	if err == nil {
		err = os.WriteFile(c.rootFile, root, 0o644)
	}
	if err != nil {
		c.t.Fatalf("istiod-lite's root certificate: %v", err)
	}
}

// IstiodProcess returns istiod-lite's process when it runs as one
// (Options.IstiodProcess), nil otherwise or while it is stopped.
func (c *Cluster) IstiodProcess() *IstiodProcess { return c.istiodProc }

// Metrics fetches istiod-lite's /metrics (Prometheus text).
func (p *IstiodProcess) Metrics(ctx context.Context) ([]byte, error) {
	return HTTPClient{NS: p.c.Topo.Underlay}.Get(ctx, "http://"+IstiodMetricsAddr+"/metrics")
}

// Goroutines is istiod-lite's goroutine count (its go_goroutines metric).
func (p *IstiodProcess) Goroutines(ctx context.Context) (int, error) {
	b, err := p.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := MetricSum(b, "go_goroutines")
	if !ok {
		return 0, errors.New("istiod-lite: no go_goroutines metric")
	}
	return int(v), nil
}

// Metrics fetches the ztunnel's /metrics (Prometheus text).
func (z *Ztunnel) Metrics(ctx context.Context) ([]byte, error) {
	return HTTPClient{NS: z.Node.NS}.Get(ctx, "http://"+z.addr(MetricsAddr)+"/metrics")
}

// MetricSum adds up the samples of the metric name (exactly that name, no
// _bucket or _sum suffix) in Prometheus text whose labels include every
// one of labels (each as written, e.g. `response_flags="CONNECT"`); ok is
// false when no sample matched.
func MetricSum(text []byte, name string, labels ...string) (sum float64, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		ok = true
	}
	return sum, ok
}

// RSS is the process's resident set size in bytes (VmRSS).
func (p *process) RSS() (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc/<pid>/status")
}

// WorkloadNames returns the namespace/name of every workload in the
// ztunnel's configuration (from /config_dump).
func (z *Ztunnel) WorkloadNames(ctx context.Context) (map[string]bool, error) {
	b, err := z.Admin(ctx, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d struct {
		Workloads []struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"workloads"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("config_dump: %w", err)
	}
	names := map[string]bool{}
	for _, w := range d.Workloads {
		names[w.Namespace+"/"+w.Name] = true
	}
	return names, nil
}

// CertificateSerials returns the serial number of every workload
// certificate the ztunnel holds, by identity (from /config_dump).
func (z *Ztunnel) CertificateSerials(ctx context.Context) (map[string]string, error) {
	b, err := z.Admin(ctx, "/config_dump")
	if err != nil {
		return nil, err
	}
	var d struct {
		Certificates []struct {
			Identity string `json:"identity"`
			Serial   string `json:"serial"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("config_dump: %w", err)
	}
	out := map[string]string{}
	for _, c := range d.Certificates {
		out[c.Identity] = c.Serial
	}
	return out, nil
}

// AddPodAt creates a pod like AddPod, at address ip, which no pod of the
// node may hold any more: a deleted pod's address reused by a new pod, as
// a cluster's IPAM hands it out again. The spec's name must differ from
// the deleted pod's (pod UIDs derive from names). It waits until the
// node's ztunnel knows the new workload by name, so that the CNI ADD's
// acknowledgement means capture is in place.
func (n *Node) AddPodAt(spec PodSpec, ip netip.Addr) (*Pod, error) {
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = spec.Name
	}
	tp, err := n.Node.AddPodAt(spec.Namespace+"-"+spec.Name, ip)
	if err != nil {
		return nil, err
	}
	p := &Pod{Pod: tp, Spec: spec, node: n, UID: fmt.Sprintf("uid-%s-%s-%s", n.Name, spec.Namespace, spec.Name)}
	p.unready.Store(spec.Unready)
	p.file = fmt.Sprintf("pods-%s-%s.yaml", n.Name, spec.Namespace+"-"+spec.Name)
	if err := n.c.write(p.file, p.yaml()); err != nil {
		return nil, errors.Join(err, n.removePods([]*Pod{p}))
	}
	if z := n.Ztunnel(); z != nil {
		if err := z.WaitWorkloads(context.Background(), 10*time.Second, []string{p.Key()}, nil); err != nil {
			return nil, errors.Join(err, n.removePods([]*Pod{p}))
		}
	}
	if err := n.cni("ADD", p); err != nil {
		return nil, errors.Join(fmt.Errorf("CNI ADD of %s: %w", p.Key(), err), n.removePods([]*Pod{p}))
	}
	n.mu.Lock()
	n.pods[p.Key()] = p
	n.mu.Unlock()
	return p, nil
}

// WaitWorkloads waits, for at most timeout, until the ztunnel's
// configuration holds every workload of present and none of absent (each
// namespace/name).
func (z *Ztunnel) WaitWorkloads(ctx context.Context, timeout time.Duration, present, absent []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		names, err := z.WorkloadNames(ctx)
		if err == nil {
			ok := true
			for _, k := range present {
				ok = ok && names[k]
			}
			for _, k := range absent {
				ok = ok && !names[k]
			}
			if ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ztunnel %s: workloads %v present and %v absent not seen within %v (last error %v)", z.Node.Name, present, absent, timeout, err)
		case <-z.done:
			return fmt.Errorf("ztunnel %s exited while waiting for workloads", z.Node.Name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var (
	istiodOnce sync.Once
	istiodBin  string
	istiodErr  error
)
