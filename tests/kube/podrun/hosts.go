package podrun

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/tests/kube"
)

// serviceHosts is one Service's /etc/hosts entry.
type serviceHosts struct {
	Namespace, Name string
	Addrs           []string
}

// hostsFile is a pod's /etc/hosts: the kubelet's entries, the API server
// (the forwarder on 127.0.0.1), and every Service.
func hostsFile(namespace, hostname, podIP string, services []serviceHosts) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file (tests/kube/podrun: Services stand in for cluster DNS).\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", podIP, hostname)
	b.WriteString("127.0.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default")
	if namespace == metav1.NamespaceDefault {
		b.WriteString(" kubernetes")
	}
	b.WriteString("\n")
	for _, s := range services {
		if s.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes" {
			continue
		}
		names := []string{s.Name + "." + s.Namespace + ".svc.cluster.local", s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace}
		if s.Namespace == namespace {
			names = append(names, s.Name)
		}
		for _, a := range s.Addrs {
			fmt.Fprintf(&b, "%s\t%s\n", a, strings.Join(names, " "))
		}
	}
	return b.String()
}

// serviceAddrs computes the Services' entries: the addresses of their
// EndpointSlices' endpoints, ready ones first, else the ClusterIP (which
// nothing routes in the harness, but a client resolving it gets a clear
// failure rather than a resolver error).
func serviceAddrs(svcs []corev1.Service, slices_ []discoveryv1.EndpointSlice) []serviceHosts {
	type eps struct{ ready, unready []string }
	bySvc := map[string]*eps{}
	for _, s := range slices_ {
		key := s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]
		e := bySvc[key]
		if e == nil {
			e = &eps{}
			bySvc[key] = e
		}
		for _, ep := range s.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			for _, a := range ep.Addresses {
				if ready {
					e.ready = append(e.ready, a)
				} else {
					e.unready = append(e.unready, a)
				}
			}
		}
	}
	var out []serviceHosts
	for _, s := range svcs {
		h := serviceHosts{Namespace: s.Namespace, Name: s.Name}
		if e := bySvc[s.Namespace+"/"+s.Name]; e != nil {
			slices.Sort(e.ready)
			slices.Sort(e.unready)
			for _, a := range append(e.ready, e.unready...) {
				if !slices.Contains(h.Addrs, a) {
					h.Addrs = append(h.Addrs, a)
				}
			}
		}
		if len(h.Addrs) == 0 && s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
			h.Addrs = []string{s.Spec.ClusterIP}
		}
		if len(h.Addrs) > 0 {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b serviceHosts) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// refreshHosts reads Services and EndpointSlices every HostsInterval and
// rewrites the pods' /etc/hosts that changed, until the Runner closes.
func (r *Runner) refreshHosts() {
	kc := r.kc.Load()
	t := time.NewTicker(r.cfg.HostsInterval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
		svcs, err := kc.Clientset.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		var eps *discoveryv1.EndpointSliceList
		if err == nil {
			eps, err = kc.Clientset.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
		}
		cancel()
		if err == nil {
			hosts := serviceAddrs(svcs.Items, eps.Items)
			var vips []serviceHosts
			if r.cfg.ServiceVIPs != nil {
				vips = serviceAddrs(svcs.Items, nil)
			}
			r.hostsMu.Lock()
			r.hosts, r.vips = hosts, vips
			r.hostsMu.Unlock()
			r.mu.Lock()
			pods := make([]*pod, 0, len(r.pods))
			for _, p := range r.pods {
				pods = append(pods, p)
			}
			r.mu.Unlock()
			for _, p := range pods {
				if err := p.writeHosts(p.services(hosts, vips)); err != nil {
					r.log.Warn("writing /etc/hosts failed", "pod", p.key.String(), "err", err)
				}
			}
		} else if r.ctx.Err() == nil {
			r.log.Warn("listing services failed", "err", err)
		}
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// writeNetworkFiles writes the pod's /etc/hosts and /etc/resolv.conf.
func (p *pod) writeNetworkFiles() error {
	p.r.hostsMu.Lock()
	hosts := p.services(p.r.hosts, p.r.vips)
	p.r.hostsMu.Unlock()
	if err := p.writeHosts(hosts); err != nil {
		return err
	}
	resolv := fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", p.obj.Namespace)
	return os.WriteFile(filepath.Join(p.dir, "resolv.conf"), []byte(resolv), 0o644)
}

// services is the Services' entries p's /etc/hosts names: by endpoints,
// or by ClusterIP (vips) if Config.ServiceVIPs says so for p.
func (p *pod) services(hosts, vips []serviceHosts) []serviceHosts {
	if p.r.cfg.ServiceVIPs != nil && p.r.cfg.ServiceVIPs(p.obj) {
		return vips
	}
	return hosts
}

// writeHosts rewrites the pod's /etc/hosts in place (the containers
// bind-mount the file, so it must keep its inode) when it changed.
func (p *pod) writeHosts(services []serviceHosts) error {
	host := p.obj.Name
	if p.obj.Spec.HostNetwork {
		host = p.obj.Spec.NodeName
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.sb.IPs) == 0 || p.dir == "" {
		// No sandbox: not yet (makeSandbox writes the file once it has
		// one) or not any more (released while the refresh ran).
		return nil
	}
	text := hostsFile(p.obj.Namespace, host, p.sb.IPs[0].String(), services)
	if text == p.hostsText {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(p.dir, "hosts"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	// Write the new content over the old, then cut the rest: a reader
	// never sees an empty file.
	if _, err := f.WriteAt([]byte(text), 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(len(text))); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	p.hostsText = text
	return nil
}

// forwarder listens on 127.0.0.1:<the API server's port> inside a network
// namespace and relays every connection to the API server on the host's
// loopback, where the harness runs it: a pod's in-cluster client reaches
// it through KUBERNETES_SERVICE_HOST=127.0.0.1, and the API server's
// certificate is valid for 127.0.0.1.
type forwarder struct {
	ns     string
	port   int
	target string
	ln     net.Listener
	refs   int

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (r *Runner) acquireForwarder(sb Sandbox, kc *kube.Cluster) (*forwarder, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.fwds[sb.NS.Name]; f != nil {
		f.refs++
		return f, nil
	}
	u, err := url.Parse(kc.REST.Host)
	if err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", u.Host, err)
	}
	ln, err := sb.NS.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String())
	if err != nil {
		return nil, err
	}
	f := &forwarder{ns: sb.NS.Name, port: int(ap.Port()), target: u.Host, ln: ln, refs: 1, conns: map[net.Conn]struct{}{}}
	r.fwds[sb.NS.Name] = f
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.serve()
	}()
	return f, nil
}

func (r *Runner) releaseForwarder(f *forwarder) {
	r.mu.Lock()
	f.refs--
	last := f.refs == 0
	if last {
		delete(r.fwds, f.ns)
	}
	r.mu.Unlock()
	if last {
		f.close()
	}
}

func (f *forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			// This goroutine runs in the test's own namespace: the dial
			// reaches the host's loopback.
			up, err := net.DialTimeout("tcp", f.target, 10*time.Second)
			if err != nil {
				return
			}
			if !f.track(up) {
				up.Close()
				return
			}
			defer f.untrack(up)
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *forwarder) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// String names the forwarder for logs.
func (f *forwarder) String() string {
	return f.ns + " 127.0.0.1:" + strconv.Itoa(f.port) + " -> " + f.target
}
