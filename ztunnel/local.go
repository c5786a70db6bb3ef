package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// local is local mode's dataplane: every pod IP is a loopback address, and
// ztunnel binds, on each ambient pod's own address, an HBONE listener
// (inbound) and a SOCKS5 listener (outbound). It dials applications from
// the client's pod address, so applications see the real source address
// without capture rules or privileges.
type local struct {
	z *Ztunnel

	mu   sync.Mutex
	pods map[netip.Addr]*podListeners
}

// podListeners are the listeners bound on one local pod's address.
type podListeners struct {
	uid   string
	hbone net.Listener
	socks net.Listener
}

var _ dataplane = (*local)(nil)

func newLocal(z *Ztunnel) *local {
	return &local{z: z, pods: map[netip.Addr]*podListeners{}}
}

func (l *local) runners() []runner { return nil }

// reconcile keeps one set of listeners per address of each ambient
// workload of the node; a workload replaced at the same address (another
// uid) gets new ones.
func (l *local) reconcile(context.Context) (map[spiffeid.ID]bool, error) {
	z := l.z
	want := map[netip.Addr]*state.Workload{}
	for _, w := range z.store.NodeWorkloads(z.cfg.Node) {
		if w.TunnelProtocol != workloadapi.TunnelProtocol_HBONE {
			continue
		}
		for _, a := range w.Addrs {
			want[a] = w
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for a, pl := range l.pods {
		if w := want[a]; w == nil || w.Uid != pl.uid {
			pl.hbone.Close()
			pl.socks.Close()
			delete(l.pods, a)
			z.release(a)
			z.log.Info("pod listeners closed", "addr", a.String(), "uid", pl.uid)
		}
	}
	ids := map[spiffeid.ID]bool{}
	var errs []error
	for a, w := range want {
		ids[w.ID] = true
		if l.pods[a] != nil {
			continue
		}
		pl, err := l.listen(a, w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.pods[a] = pl
		z.log.Info("pod listeners bound", "addr", a.String(), "workload", w.Namespace+"/"+w.Name, "identity", w.ID.String())
	}
	return ids, errors.Join(errs...)
}

// listen binds the listeners of the workload w on its address a and
// serves them until they are closed.
func (l *local) listen(a netip.Addr, w *state.Workload) (*podListeners, error) {
	z := l.z
	hl, err := net.Listen("tcp", netip.AddrPortFrom(a, z.cfg.HBONEPort).String())
	if err != nil {
		return nil, fmt.Errorf("hbone listener for %s/%s: %w", w.Namespace, w.Name, err)
	}
	sl, err := net.Listen("tcp", netip.AddrPortFrom(a, z.cfg.SOCKSPort).String())
	if err != nil {
		hl.Close()
		return nil, fmt.Errorf("socks5 listener for %s/%s: %w", w.Namespace, w.Name, err)
	}
	go func() {
		if err := z.server.Serve(hl); err != nil && !errors.Is(err, net.ErrClosed) {
			z.log.Warn("hbone listener stopped", "addr", hl.Addr().String(), "error", err)
		}
	}()
	go func() {
		if err := z.proxy.ServeSOCKS(sl, a); err != nil {
			z.log.Warn("socks5 listener stopped", "addr", sl.Addr().String(), "error", err)
		}
	}()
	z.quic.listen(nil, a) // UDP 15008 when QUIC is on
	return &podListeners{uid: w.Uid, hbone: hl, socks: sl}, nil
}

func (l *local) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for a, pl := range l.pods {
		pl.hbone.Close()
		pl.socks.Close()
		delete(l.pods, a)
	}
}

func (l *local) finish() {}

func (l *local) listeners() []listenerDump {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]listenerDump, 0, len(l.pods))
	for a, pl := range l.pods {
		out = append(out, listenerDump{
			Address: a.String(), UID: pl.uid,
			HBONE: pl.hbone.Addr().String(), SOCKS5: pl.socks.Addr().String(),
		})
	}
	return out
}
