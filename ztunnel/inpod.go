package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

// inpod is in-pod mode's dataplane: the CNI plugin hands ztunnel the
// network namespace of every pod of the node (package zds); ztunnel
// installs capture rules in those of ambient pods and listens inside them
// (outbound 15001, inbound plaintext 15006, HBONE 15008), and opens its
// connections for a pod inside the pod's namespace. It keeps every pod
// announced, captured or not, so that capture follows the store.
type inpod struct {
	z *Ztunnel

	mu   sync.Mutex
	pods map[string]*inpodPod // by zds.Pod.Key()
	wg   sync.WaitGroup       // listener goroutines

	// zdsInode is the inode of the ZDS socket this ztunnel created (0
	// before): when the path holds another, a successor started
	// (handover.go).
	zdsInode atomic.Uint64

	// changed is closed and replaced after every store update: AddPod
	// waits on it for a new pod's workload (waitWorkload).
	changedMu sync.Mutex
	changed   chan struct{}
}

type inpodPod struct {
	pod   zds.Pod
	netns *os.File
	// Set while captured: the workload's uid and the pod's address (from
	// its CNI result: the workload may not have it yet), and the
	// listeners inside the netns (nil once handed over at shutdown, while
	// uid and addr stay for the drain). The pod is found in the store by
	// uid, never by addr.
	uid       string
	addr      netip.Addr
	listeners []net.Listener
}

func (ip *inpodPod) name() string { return ip.pod.Namespace + "/" + ip.pod.Name }

var (
	_ dataplane   = (*inpod)(nil)
	_ podDialer   = (*inpod)(nil)
	_ zds.Handler = (*inpod)(nil)
)

func newInpod(z *Ztunnel) *inpod {
	d := &inpod{z: z, pods: map[string]*inpodPod{}, changed: make(chan struct{})}
	if z.store != nil {
		z.store.OnChange(d.storeChanged)
	}
	return d
}

// storeChanged wakes the AddPods waiting for a workload.
func (d *inpod) storeChanged() {
	d.changedMu.Lock()
	close(d.changed)
	d.changed = make(chan struct{})
	d.changedMu.Unlock()
}

// nextChange returns a channel closed by the next store update.
func (d *inpod) nextChange() <-chan struct{} {
	d.changedMu.Lock()
	defer d.changedMu.Unlock()
	return d.changed
}

// runners: the ZDS server the CNI plugin hands pods to.
func (d *inpod) runners() []runner { return []runner{{"zds", d.start}} }

// listeners: in-pod listeners are inside the pods' namespaces; none is
// listed.
func (d *inpod) listeners() []listenerDump { return nil }

// AddPod implements zds.Handler: it keeps the pod's netns and applies its
// capture state before returning, so that the CNI plugin's ADD, which
// waits for this, never lets an ambient pod start uncaptured.
//
// It waits for the first configuration from istiod-lite, then for the
// pod's workload, at most Config.PodWorkloadTimeout: istiod-lite publishes
// a pod's workload once the pod is scheduled, before it has an IP (the
// kubelet writes the IP after the ADD returns), and whether the pod is
// ambient is known only from it (TunnelProtocol HBONE). An ambient pod is
// captured with the IPs of its CNI result; another pod is acknowledged
// without capture. When the workload does not come in time (istiod-lite
// unreachable or slow), AddPod fails and forgets the pod: the ADD fails
// with that error and the kubelet retries the sandbox later. Running pods
// are not affected. With a negative PodWorkloadTimeout (Istio's istiod)
// AddPod does not wait: a new pod is captured when its workload arrives.
func (d *inpod) AddPod(ctx context.Context, p zds.Pod, netns *os.File) error {
	fd, err := unix.FcntlInt(netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("keeping netns: %w", err)
	}
	ip := d.addPod(p, os.NewFile(uintptr(fd), p.Netns))
	select {
	case <-d.z.xds.Synced():
	case <-ctx.Done():
		d.forget(p.Key(), ip)
		return fmt.Errorf("waiting for configuration from istiod-lite: %w", ctx.Err())
	}
	if err := d.waitWorkload(ctx, p); err != nil {
		d.forget(p.Key(), ip)
		return err
	}
	if err := d.reconcilePods(ctx, p.Key()); err != nil {
		return err
	}
	// Ztunnel's reconcile fetches the certificate of the pod's identity
	// ahead of its first connection.
	select {
	case d.z.kick <- struct{}{}:
	default:
	}
	return nil
}

// waitWorkload returns once the store holds pod p's workload (workloadOf),
// or an error after Config.PodWorkloadTimeout.
func (d *inpod) waitWorkload(ctx context.Context, p zds.Pod) error {
	if d.z.cfg.PodWorkloadTimeout < 0 {
		return nil // not waiting (Istio's istiod): captured when it comes
	}
	ctx, cancel := context.WithTimeout(ctx, d.z.cfg.PodWorkloadTimeout)
	defer cancel()
	for {
		next := d.nextChange() // before the lookup: no update is missed
		if d.workloadOf(p, d.nodeWorkloads()) != nil {
			return nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return fmt.Errorf("no workload for pod %s/%s on node %s from istiod-lite after %v, cannot tell whether to capture it: %w",
				p.Namespace, p.Name, d.z.cfg.Node, d.z.cfg.PodWorkloadTimeout, ctx.Err())
		}
	}
}

// forget drops ip, pod key's entry, unless another add replaced it.
func (d *inpod) forget(key string, ip *inpodPod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pods[key] != ip {
		return
	}
	delete(d.pods, key)
	d.uncapture(ip, ip.listeners != nil)
	ip.netns.Close()
}

// DelPod implements zds.Handler: it uncaptures the pod and forgets it.
func (d *inpod) DelPod(ctx context.Context, p zds.Pod) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ip := d.pods[p.Key()]
	if ip == nil {
		return nil
	}
	delete(d.pods, p.Key())
	d.uncapture(ip, true)
	ip.netns.Close()
	return nil
}

func (d *inpod) addPod(p zds.Pod, ns *os.File) *inpodPod {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.pods[p.Key()]; old != nil {
		d.uncapture(old, true)
		old.netns.Close()
	}
	ip := &inpodPod{pod: p, netns: ns}
	d.pods[p.Key()] = ip
	return ip
}

// loadRecords re-opens the netns of every pod the CNI plugin recorded, so
// a restarted ztunnel captures running pods again.
func (d *inpod) loadRecords() {
	pods, err := zds.Records(d.z.cfg.PodStateDir)
	if err != nil {
		d.z.log.Warn("reading pod records", "dir", d.z.cfg.PodStateDir, "error", err)
	}
	for _, p := range pods {
		ns, err := os.Open(p.Netns)
		if err != nil {
			d.z.log.Warn("pod netns gone; skipping", "pod", p.Namespace+"/"+p.Name, "netns", p.Netns, "error", err)
			continue
		}
		d.addPod(p, ns)
		d.z.log.Info("pod found at start", "pod", p.Namespace+"/"+p.Name, "netns", p.Netns)
	}
}

// nodeWorkloads returns the workloads of this node by namespace/name.
func (d *inpod) nodeWorkloads() map[string][]*state.Workload {
	m := map[string][]*state.Workload{}
	for _, w := range d.z.store.NodeWorkloads(d.z.cfg.Node) {
		k := w.Namespace + "/" + w.Name
		m[k] = append(m[k], w)
	}
	return m
}

// workloadOf returns pod p's workload among this node's (nodeWorkloads),
// ambient or not, or nil when the store has none (yet).
//
// A pod is matched by namespace and name, not by IP: its workload is
// published before its IP is known (the uid, "<cluster>//Pod/<ns>/<name>",
// names the pod too; the Kubernetes UID is not in the Workload API). A
// workload whose addresses do not include the pod's IPs (from its CNI
// result) belongs to an earlier pod of that name — a StatefulSet's pod
// recreated on this node before the old pod's removal reached ztunnel —
// and does not match: the new pod waits for its own. Among several
// matching, one holding the pod's IP comes first, then one without
// addresses, then the lowest uid. A pod without a name (not from
// Kubernetes) is matched by IP only.
func (d *inpod) workloadOf(p zds.Pod, node map[string][]*state.Workload) *state.Workload {
	if p.Name == "" {
		for _, a := range p.IPs {
			if w := d.z.store.WorkloadByAddr(a); w != nil && w.Node == d.z.cfg.Node {
				return w
			}
		}
		return nil
	}
	rank := func(w *state.Workload) int {
		switch {
		case len(w.Addrs) == 0:
			return 1
		case len(p.IPs) == 0 || slices.ContainsFunc(p.IPs, func(a netip.Addr) bool { return slices.Contains(w.Addrs, a) }):
			return 0
		}
		return -1 // an earlier pod's
	}
	var best *state.Workload
	for _, w := range node[p.Namespace+"/"+p.Name] { // sorted by uid
		if r := rank(w); r >= 0 && (best == nil || r < rank(best)) {
			best = w
		}
	}
	return best
}

// podAddr is the address a captured pod is served as: its first IP from
// its CNI result that the workload has (the first one if the workload has
// none yet), else the workload's first.
func podAddr(p zds.Pod, w *state.Workload) (netip.Addr, bool) {
	for _, a := range p.IPs {
		if len(w.Addrs) == 0 || slices.Contains(w.Addrs, a) {
			return a, true
		}
	}
	if len(w.Addrs) > 0 {
		return w.Addrs[0], true
	}
	return netip.Addr{}, false
}

// reconcilePods captures every known pod whose workload is ambient and
// uncaptures the others, level-based. With only set, the returned error
// is that pod's alone.
func (d *inpod) reconcilePods(ctx context.Context, only string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	node := d.nodeWorkloads()
	var errs []error
	for key, ip := range d.pods {
		w := d.workloadOf(ip.pod, node)
		if w != nil && w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
			w = nil // not ambient: not captured
		}
		var err error
		switch {
		case w == nil:
			if ip.listeners != nil {
				d.uncapture(ip, true)
			}
		case ip.listeners != nil && ip.uid == w.Uid:
			// Captured already; the workload's addresses arriving after
			// the capture (or changing) change nothing.
		default:
			if ip.listeners != nil {
				d.uncapture(ip, false)
			}
			err = d.capture(ip, w)
		}
		if err != nil && (only == "" || only == key) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// capture installs the rules and opens the listeners of one pod.
func (d *inpod) capture(ip *inpodPod, w *state.Workload) error {
	name := ip.pod.Namespace + "/" + ip.pod.Name
	if err := capture.Install(ip.netns); err != nil {
		return fmt.Errorf("capturing %s: %w", name, err)
	}
	if err := enableMigration(ip.netns); err != nil {
		// Without it a handover may reset connections that were queued on
		// the old ztunnel's listeners when it closed them.
		d.z.log.Warn("no lossless handover for pod", "pod", name, "error", err)
	}
	addr, ok := podAddr(ip.pod, w)
	if !ok {
		return fmt.Errorf("capturing %s: the pod has no IP, neither in its CNI result nor in its workload", name)
	}
	var ls []net.Listener
	for _, a := range []struct {
		addr        netip.AddrPort
		transparent bool
	}{
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), capture.OutboundPort), false},
		{netip.AddrPortFrom(netip.IPv4Unspecified(), capture.InboundPlaintextPort), true},
		{netip.AddrPortFrom(netip.IPv4Unspecified(), d.z.cfg.HBONEPort), true},
	} {
		l, err := listenShared(ip.netns, a.addr, a.transparent)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("capturing %s: %w", name, err)
		}
		ls = append(ls, l)
	}
	ip.uid, ip.addr, ip.listeners = w.Uid, addr, ls
	serve := func(what string, f func() error) {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := f(); err != nil && !errors.Is(err, net.ErrClosed) {
				d.z.log.Warn("pod listener stopped", "listener", what, "pod", name, "error", err)
			}
		}()
	}
	// Outbound finds the pod's workload by uid, so that it works while
	// istiod-lite does not know the pod's IP yet. Inbound (plaintext and
	// HBONE) looks the destination up by address: until the workload has
	// it, inbound connections are refused (fail closed); a peer cannot
	// know the pod's IP before the store does anyway.
	serve("outbound", func() error { return d.z.proxy.ServeOutboundCaptureFor(ls[0], addr, w.Uid) })
	serve("inbound plaintext", func() error { return d.z.proxy.ServePlaintextInbound(ls[1], addr) })
	serve("hbone", func() error { return d.z.server.Serve(ls[2]) })
	d.z.quic.listen(ip.netns, addr) // UDP 15008 when QUIC is on
	d.z.log.Info("pod captured", "pod", name, "addr", addr.String(), "identity", w.ID.String())
	return nil
}

// uncapture closes the pod's listeners and, if removeRules, deletes its
// capture rules so that its traffic is plain again.
func (d *inpod) uncapture(ip *inpodPod, removeRules bool) {
	name := ip.pod.Namespace + "/" + ip.pod.Name
	for _, l := range ip.listeners {
		l.Close()
	}
	wasCaptured := ip.listeners != nil
	if wasCaptured {
		d.z.release(ip.addr)
	}
	ip.listeners, ip.uid, ip.addr = nil, "", netip.Addr{}
	if removeRules {
		if err := capture.Remove(ip.netns); err != nil {
			d.z.log.Warn("removing capture rules", "pod", name, "error", err)
		}
	}
	if wasCaptured {
		d.z.log.Info("pod uncaptured", "pod", name, "rules_removed", removeRules)
	}
}

// close hands every pod's listeners over to a successor ztunnel, or
// closes them when none started (handover.go), and waits for their accept
// loops. Connections, namespaces and capture rules stay: the drain ends
// the connections, finish closes the namespaces, and the rules stay so
// that until a ztunnel is back the pods' TCP fails closed.
func (d *inpod) close() {
	d.handOver(time.Now().Add(d.z.cfg.DrainTimeout))
	d.wg.Wait()
}

// finish closes the pods' namespaces after the drain.
func (d *inpod) finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, ip := range d.pods {
		ip.netns.Close()
		delete(d.pods, key)
	}
}

// podNetns returns the netns of the captured pod with address a.
func (d *inpod) podNetns(a netip.Addr) *os.File {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ip := range d.pods {
		if ip.uid != "" && ip.addr == a {
			return ip.netns
		}
	}
	return nil
}

// dialPod opens ztunnel's connection for a local pod inside its netns (the
// proxy's DialPod).
func (d *inpod) dialPod(ctx context.Context, pod, from netip.Addr, to netip.AddrPort) (net.Conn, error) {
	ns := d.podNetns(pod)
	if ns == nil {
		return nil, fmt.Errorf("pod %s is not captured by this ztunnel", pod)
	}
	dialer := capture.Dialer{Netns: ns}
	return dialer.Dial(ctx, from, to, from != pod)
}

// dialHBONE opens an outbound HBONE connection inside the source pod's
// netns, from its address (the pool's Dialer).
func (d *inpod) dialHBONE(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	from, err := netip.ParseAddrPort(laddr)
	if err != nil {
		return nil, fmt.Errorf("hbone source %q: %w", laddr, err)
	}
	to, err := netip.ParseAddrPort(raddr)
	if err != nil {
		return nil, fmt.Errorf("hbone destination %q: %w", raddr, err)
	}
	return d.dialPod(ctx, from.Addr(), from.Addr(), to)
}

// start reads the pod records and serves the CNI plugin until ctx is
// done. The socket replaces an older ztunnel's (which then hands over,
// handover.go), and is removed at the end only while it is still this
// ztunnel's.
func (d *inpod) start(ctx context.Context) error {
	d.loadRecords()
	s := &zds.Server{Socket: d.z.cfg.ZDSSocket, Handler: d, Logger: d.z.log}
	l, err := s.Listen()
	if err != nil {
		return err
	}
	l.SetUnlinkOnClose(false)
	own := fileInode(d.z.cfg.ZDSSocket)
	d.zdsInode.Store(own)
	err = s.Serve(ctx, l)
	if own != 0 && fileInode(d.z.cfg.ZDSSocket) == own {
		os.Remove(d.z.cfg.ZDSSocket)
	}
	return err
}

// reconcile captures what the store says is ambient and uncaptures the
// rest; the identities served are those of the captured workloads.
func (d *inpod) reconcile(ctx context.Context) (map[spiffeid.ID]bool, error) {
	err := d.reconcilePods(ctx, "")
	ids := map[spiffeid.ID]bool{}
	d.mu.Lock()
	for _, ip := range d.pods {
		if ip.listeners == nil {
			continue
		}
		if w := d.z.store.WorkloadByUID(ip.uid); w != nil {
			ids[w.ID] = true
		}
	}
	d.mu.Unlock()
	return ids, err
}
