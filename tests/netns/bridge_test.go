package netns

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestBridgeMACSurvivesNewPods is the cause of the kube user story's lost
// xDS pushes (tests/kube/podrun): a Linux bridge whose address was never
// set takes the lowest address of its ports, so a pod joining the node
// with a lower veth address changed the node gateway's MAC address. The
// other pods still had the old one in their neighbour cache; the bridge
// took their frames up but IP dropped them (addressed to another host),
// so every packet a pod sent off its node was lost until its neighbour
// entry went stale, 15 to 45 s later. The test gives a new pod's veth the
// lowest possible address, then checks that the bridge kept its own and
// that a pod that talked to the other node before still can.
func TestBridgeMACSurvivesNewPods(t *testing.T) {
	RequireRoot(t)
	topo := New(t, Options{Nodes: 2, Pods: 2})
	n1 := topo.Node(1)
	b := topo.Node(2).Pods()[0]
	before := bridgeMAC(t, n1)
	// The sender is a pod whose own veth does not hold the bridge's
	// address: a frame to the bridge's old address that entered by the
	// port holding it would still be taken for the node.
	var a *Pod
	for _, p := range n1.Pods() {
		if !bytes.Equal(hostLinkMAC(t, p), before) {
			a = p
		}
	}
	if a == nil {
		t.Fatalf("every pod's veth has the bridge's address %v", before)
	}

	// a reaches b through its gateway: a's neighbour cache now holds the
	// gateway's address.
	exchange(t, a, b, 7101)

	newcomer, err := n1.AddPod("newcomer")
	if err != nil {
		t.Fatal(err)
	}
	h, err := n1.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(newcomer.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	// The lowest unicast address: a bridge that follows its ports takes it.
	if err := h.LinkSetHardwareAddr(l, net.HardwareAddr{0, 0, 0, 0, 0, 1}); err != nil {
		t.Fatal(err)
	}

	if got := bridgeMAC(t, n1); !bytes.Equal(got, before) {
		t.Errorf("bridge address after a pod joined = %v, want %v (unchanged)", got, before)
	}
	// Without a fixed bridge address this dial's SYN is dropped at the
	// node (a's cached gateway address is no longer the bridge's).
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	ln, err := b.Listen("tcp", netip.AddrPortFrom(b.IP, 7102).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := a.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("pod %s cannot reach pod %s on the other node after a pod joined its bridge: %v", a.IP, b.IP, err)
	}
	c.Close()
}

func bridgeMAC(t *testing.T, n *Node) net.HardwareAddr {
	t.Helper()
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName(bridgeName)
	if err != nil {
		t.Fatal(err)
	}
	return br.Attrs().HardwareAddr
}

func hostLinkMAC(t *testing.T, p *Pod) net.HardwareAddr {
	t.Helper()
	h, err := p.Node.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}
