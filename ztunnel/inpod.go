package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
}

type inpodPod struct {
	pod   zds.Pod
	netns *os.File
	// Set while captured: the workload's uid and address, and the
	// listeners inside the netns (nil once handed over at shutdown, while
	// uid and addr stay for the drain).
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
	return &inpod{z: z, pods: map[string]*inpodPod{}}
}

// runners: the ZDS server the CNI plugin hands pods to.
func (d *inpod) runners() []runner { return []runner{{"zds", d.start}} }

// listeners: in-pod listeners are inside the pods' namespaces; none is
// listed.
func (d *inpod) listeners() []listenerDump { return nil }

// AddPod implements zds.Handler: it keeps the pod's netns and applies its
// capture state before returning. It waits for the first configuration
// from istiod-lite, so that a running ambient pod handed over again (a
// restart) is never acknowledged uncaptured. A new pod's workload is not
// known yet (its IP reaches the API server after the CNI ADD): it is
// captured when the workload arrives (docs/architecture.md, known gap).
func (d *inpod) AddPod(ctx context.Context, p zds.Pod, netns *os.File) error {
	fd, err := unix.FcntlInt(netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("keeping netns: %w", err)
	}
	d.addPod(p, os.NewFile(uintptr(fd), p.Netns))
	select {
	case <-d.z.xds.Synced():
	case <-ctx.Done():
		return fmt.Errorf("waiting for configuration from istiod-lite: %w", ctx.Err())
	}
	return d.reconcilePods(ctx, p.Key())
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

func (d *inpod) addPod(p zds.Pod, ns *os.File) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.pods[p.Key()]; old != nil {
		d.uncapture(old, true)
		old.netns.Close()
	}
	d.pods[p.Key()] = &inpodPod{pod: p, netns: ns}
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

// workloadOf returns the ambient workload of this node that is the pod, or
// nil when the pod is not to be captured.
func (d *inpod) workloadOf(p zds.Pod) *state.Workload {
	for _, a := range p.IPs {
		w := d.z.store.WorkloadByAddr(a)
		if w == nil || w.Node != d.z.cfg.Node || w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
			continue
		}
		if (p.Name != "" && w.Name != p.Name) || (p.Namespace != "" && w.Namespace != p.Namespace) {
			continue
		}
		return w
	}
	return nil
}

// reconcilePods captures every known pod whose workload is ambient and
// uncaptures the others, level-based. With only set, the returned error
// is that pod's alone.
func (d *inpod) reconcilePods(ctx context.Context, only string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for key, ip := range d.pods {
		w := d.workloadOf(ip.pod)
		var err error
		switch {
		case w == nil:
			if ip.listeners != nil {
				d.uncapture(ip, true)
			}
		case ip.listeners != nil && ip.uid == w.Uid:
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
	addr := w.Addrs[0]
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
	serve("outbound", func() error { return d.z.proxy.ServeOutboundCapture(ls[0], addr) })
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
		if w := d.z.store.WorkloadByAddr(ip.addr); w != nil {
			ids[w.ID] = true
		}
	}
	d.mu.Unlock()
	return ids, err
}
