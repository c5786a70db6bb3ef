package ztunnel

import (
	"context"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Modes of Config.Mode.
const (
	// ModeLocal binds HBONE and SOCKS5 on each pod's (loopback) address.
	ModeLocal = "local"
	// ModeInpod captures each ambient pod's traffic inside its network
	// namespace, which the CNI plugin hands over (package zds).
	ModeInpod = "inpod"
)

// dataplane is how ztunnel reaches the ambient workloads of its node, one
// per Config.Mode: local binds listeners on each pod's own loopback
// address (local.go); inpod captures each pod's traffic inside its network
// namespace (inpod.go). Everything else (xDS, certificates, the HBONE
// server and the proxy, draining) is the same in both.
type dataplane interface {
	// reconcile brings the listeners in line with the store, level based:
	// it binds what a workload of the node needs and closes, releasing
	// their connections, what none needs any more. It returns the
	// identities of the workloads it serves, whose certificates ztunnel
	// then keeps, even when some failed (the error).
	reconcile(ctx context.Context) (map[spiffeid.ID]bool, error)
	// runners are what the mode adds to Start's goroutines.
	runners() []runner
	// close closes every listener at shutdown (in-pod: once a successor
	// ztunnel listens next to them, handover.go, and waits for their
	// accept loops; capture rules stay).
	close()
	// finish releases, after the drain, what the drained connections
	// needed (in-pod: the pods' namespaces).
	finish()
	// listeners describes the pod listeners, for /config_dump.
	listeners() []listenerDump
}

// podDialer is a dataplane that opens ztunnel's connections on behalf of
// its pods itself (in-pod: inside the pod's network namespace). Without
// one, ztunnel dials from its own namespace.
type podDialer interface {
	// dialPod is proxy.Config.DialPod.
	dialPod(ctx context.Context, pod, from netip.Addr, to netip.AddrPort) (net.Conn, error)
	// dialHBONE is hbone.PoolConfig.Dialer.
	dialHBONE(ctx context.Context, network, laddr, raddr string) (net.Conn, error)
}

// newDataplane returns the dataplane of z's mode.
func newDataplane(z *Ztunnel) dataplane {
	if z.cfg.Mode == ModeInpod {
		return newInpod(z)
	}
	return newLocal(z)
}
