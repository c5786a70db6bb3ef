package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

// Modes of Config.Mode.
const (
	// ModeLocal binds HBONE and SOCKS5 on each pod's (loopback) address.
	ModeLocal = "local"
	// ModeInpod captures each ambient pod's traffic inside its network
	// namespace, which the CNI plugin hands over (package zds).
	ModeInpod = "inpod"
)

// inpod is the state of in-pod mode: every pod of the node the CNI plugin
// announced, with its network namespace, captured or not.
type inpod struct {
	mu   sync.Mutex
	pods map[string]*inpodPod // by zds.Pod.Key()
	wg   sync.WaitGroup       // listener goroutines
}

type inpodPod struct {
	pod   zds.Pod
	netns *os.File
	// Set while captured: the workload's uid and address, and the
	// listeners inside the netns.
	uid       string
	addr      netip.Addr
	listeners []net.Listener
}

// AddPod implements zds.Handler: it keeps the pod's netns and applies its
// capture state before returning. It waits for the first configuration
// from istiod-lite, so that an ambient pod is never acknowledged
// uncaptured.
func (z *Ztunnel) AddPod(ctx context.Context, p zds.Pod, netns *os.File) error {
	fd, err := unix.FcntlInt(netns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("keeping netns: %w", err)
	}
	z.addPod(p, os.NewFile(uintptr(fd), p.Netns))
	select {
	case <-z.xds.Synced():
	case <-ctx.Done():
		return fmt.Errorf("waiting for configuration from istiod-lite: %w", ctx.Err())
	}
	return z.reconcilePods(ctx, p.Key())
}

// DelPod implements zds.Handler: it uncaptures the pod and forgets it.
func (z *Ztunnel) DelPod(ctx context.Context, p zds.Pod) error {
	z.inpod.mu.Lock()
	defer z.inpod.mu.Unlock()
	ip := z.inpod.pods[p.Key()]
	if ip == nil {
		return nil
	}
	delete(z.inpod.pods, p.Key())
	z.uncapture(ip, true)
	ip.netns.Close()
	return nil
}

func (z *Ztunnel) addPod(p zds.Pod, ns *os.File) {
	z.inpod.mu.Lock()
	defer z.inpod.mu.Unlock()
	if old := z.inpod.pods[p.Key()]; old != nil {
		z.uncapture(old, true)
		old.netns.Close()
	}
	z.inpod.pods[p.Key()] = &inpodPod{pod: p, netns: ns}
}

// loadRecords re-opens the netns of every pod the CNI plugin recorded, so
// a restarted ztunnel captures running pods again.
func (z *Ztunnel) loadRecords() {
	pods, err := zds.Records(z.cfg.PodStateDir)
	if err != nil {
		z.log.Warn("reading pod records", "dir", z.cfg.PodStateDir, "error", err)
	}
	for _, p := range pods {
		ns, err := os.Open(p.Netns)
		if err != nil {
			z.log.Warn("pod netns gone; skipping", "pod", p.Namespace+"/"+p.Name, "netns", p.Netns, "error", err)
			continue
		}
		z.addPod(p, ns)
		z.log.Info("pod found at start", "pod", p.Namespace+"/"+p.Name, "netns", p.Netns)
	}
}

// workloadOf returns the ambient workload of this node that is the pod, or
// nil when the pod is not to be captured.
func (z *Ztunnel) workloadOf(p zds.Pod) *state.Workload {
	for _, a := range p.IPs {
		w := z.store.WorkloadByAddr(a)
		if w == nil || w.Node != z.cfg.Node || w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
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
func (z *Ztunnel) reconcilePods(ctx context.Context, only string) error {
	z.inpod.mu.Lock()
	defer z.inpod.mu.Unlock()
	var errs []error
	for key, ip := range z.inpod.pods {
		w := z.workloadOf(ip.pod)
		var err error
		switch {
		case w == nil:
			if ip.listeners != nil {
				z.uncapture(ip, true)
			}
		case ip.listeners != nil && ip.uid == w.Uid:
		default:
			if ip.listeners != nil {
				z.uncapture(ip, false)
			}
			err = z.capture(ip, w)
		}
		if err != nil && (only == "" || only == key) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// capture installs the rules and opens the listeners of one pod.
func (z *Ztunnel) capture(ip *inpodPod, w *state.Workload) error {
	name := ip.pod.Namespace + "/" + ip.pod.Name
	if err := capture.Install(ip.netns); err != nil {
		return fmt.Errorf("capturing %s: %w", name, err)
	}
	addr := w.Addrs[0]
	var ls []net.Listener
	for _, a := range []struct {
		addr        netip.AddrPort
		transparent bool
	}{
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), capture.OutboundPort), false},
		{netip.AddrPortFrom(netip.IPv4Unspecified(), capture.InboundPlaintextPort), true},
		{netip.AddrPortFrom(netip.IPv4Unspecified(), z.cfg.HBONEPort), true},
	} {
		l, err := capture.Listen(ip.netns, a.addr, a.transparent)
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
		z.inpod.wg.Add(1)
		go func() {
			defer z.inpod.wg.Done()
			if err := f(); err != nil && !errors.Is(err, net.ErrClosed) {
				z.log.Warn("pod listener stopped", "listener", what, "pod", name, "error", err)
			}
		}()
	}
	serve("outbound", func() error { return z.proxy.ServeOutboundCapture(ls[0], addr) })
	serve("inbound plaintext", func() error { return z.proxy.ServePlaintextInbound(ls[1], addr) })
	serve("hbone", func() error { return z.server.Serve(ls[2]) })
	z.log.Info("pod captured", "pod", name, "addr", addr.String(), "identity", w.ID.String())
	return nil
}

// uncapture closes the pod's listeners and, if removeRules, deletes its
// capture rules so that its traffic is plain again.
func (z *Ztunnel) uncapture(ip *inpodPod, removeRules bool) {
	name := ip.pod.Namespace + "/" + ip.pod.Name
	for _, l := range ip.listeners {
		l.Close()
	}
	wasCaptured := ip.listeners != nil
	if wasCaptured {
		z.release(ip.addr)
	}
	ip.listeners, ip.uid, ip.addr = nil, "", netip.Addr{}
	if removeRules {
		if err := capture.Remove(ip.netns); err != nil {
			z.log.Warn("removing capture rules", "pod", name, "error", err)
		}
	}
	if wasCaptured {
		z.log.Info("pod uncaptured", "pod", name, "rules_removed", removeRules)
	}
}

// closePods closes every listener and netns at shutdown. Capture rules
// stay: until ztunnel is back, the pods' TCP fails closed.
func (z *Ztunnel) closePods() {
	z.inpod.mu.Lock()
	for key, ip := range z.inpod.pods {
		z.uncapture(ip, false)
		ip.netns.Close()
		delete(z.inpod.pods, key)
	}
	z.inpod.mu.Unlock()
	z.inpod.wg.Wait()
}

// podNetns returns the netns of the captured pod with address a.
func (z *Ztunnel) podNetns(a netip.Addr) *os.File {
	z.inpod.mu.Lock()
	defer z.inpod.mu.Unlock()
	for _, ip := range z.inpod.pods {
		if ip.listeners != nil && ip.addr == a {
			return ip.netns
		}
	}
	return nil
}

// dialPod opens ztunnel's connection for a local pod inside its netns (the
// proxy's DialPod).
func (z *Ztunnel) dialPod(ctx context.Context, pod, from netip.Addr, to netip.AddrPort) (net.Conn, error) {
	ns := z.podNetns(pod)
	if ns == nil {
		return nil, fmt.Errorf("pod %s is not captured by this ztunnel", pod)
	}
	d := capture.Dialer{Netns: ns}
	return d.Dial(ctx, from, to, from != pod)
}

// dialHBONE opens an outbound HBONE connection inside the source pod's
// netns, from its address (the pool's Dialer).
func (z *Ztunnel) dialHBONE(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	from, err := netip.ParseAddrPort(laddr)
	if err != nil {
		return nil, fmt.Errorf("hbone source %q: %w", laddr, err)
	}
	to, err := netip.ParseAddrPort(raddr)
	if err != nil {
		return nil, fmt.Errorf("hbone destination %q: %w", raddr, err)
	}
	return z.dialPod(ctx, from.Addr(), from.Addr(), to)
}

// startInpod reads the pod records and serves the CNI plugin until ctx is
// done.
func (z *Ztunnel) startInpod(ctx context.Context) error {
	z.loadRecords()
	s := &zds.Server{Socket: z.cfg.ZDSSocket, Handler: z, Logger: z.log}
	return s.Start(ctx)
}

var _ zds.Handler = (*Ztunnel)(nil)

// reconcileInpod is reconcile for in-pod mode: capture follows the store,
// and certificates are fetched for captured workloads ahead of their first
// connection and forgotten when none is left.
func (z *Ztunnel) reconcileInpod(ctx context.Context) error {
	err := z.reconcilePods(ctx, "")
	ids := map[spiffeid.ID]bool{}
	z.inpod.mu.Lock()
	for _, ip := range z.inpod.pods {
		if ip.listeners == nil {
			continue
		}
		if w := z.store.WorkloadByAddr(ip.addr); w != nil {
			ids[w.ID] = true
		}
	}
	z.inpod.mu.Unlock()
	for id := range ids {
		go func() {
			if _, err := z.certs.Get(ctx, id); err != nil && ctx.Err() == nil {
				z.log.Warn("fetching certificate", "identity", id.String(), "error", err)
			}
		}()
	}
	for _, c := range z.certs.Certificates() {
		if !ids[c.ID] {
			z.certs.Forget(c.ID)
		}
	}
	return err
}
