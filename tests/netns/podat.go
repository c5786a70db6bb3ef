package netns

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddPodAt creates a pod like AddPod but at address ip, one of the node's
// pod addresses that no current pod holds: a pod deleted earlier gives its
// address back this way, as a cluster's IPAM reuses the addresses of
// deleted pods. The pod's veth gets the name AddPod gave the address.
func (n *Node) AddPodAt(name string, ip netip.Addr) (*Pod, error) {
	if !PodPrefix(n.Index).Contains(ip) {
		return nil, fmt.Errorf("netns: %s is not a pod address of node %d", ip, n.Index)
	}
	j := int(ip.As4()[3]) - 10
	if j < 1 || j > maxPods {
		return nil, fmt.Errorf("netns: %s is not a pod address of node %d", ip, n.Index)
	}
	n.mu.Lock()
	if _, ok := n.pods[name]; ok {
		n.mu.Unlock()
		return nil, fmt.Errorf("netns: node %d already has pod %s", n.Index, name)
	}
	for _, q := range n.pods {
		if q.IP == ip {
			n.mu.Unlock()
			return nil, fmt.Errorf("netns: pod %s on node %d holds %s", q.PodName, n.Index, ip)
		}
	}
	if j > n.next {
		n.next = j // AddPod never hands it out again
	}
	p := &Pod{Node: n, PodName: name, HostLink: fmt.Sprintf("p%d", j), IP: ip}
	n.pods[name] = p
	n.mu.Unlock()

	if err := p.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("netns: pod %s on node %d: %w", name, n.Index, err), p.Remove())
	}
	if err := n.forgetNeighbor(ip); err != nil {
		return nil, errors.Join(fmt.Errorf("netns: pod %s on node %d: %w", name, n.Index, err), p.Remove())
	}
	return p, nil
}

// forgetNeighbor deletes the node's neighbour (ARP) entry for ip, which
// still names the MAC address of the veth of the pod that held ip before:
// until it expired, the node would send the new pod's packets to a MAC
// address nobody has. A runtime's bridge plugin announces the new pod
// with a gratuitous ARP; forgetting the entry has the same effect.
func (n *Node) forgetNeighbor(ip netip.Addr) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(bridgeName)
	if err != nil {
		return err
	}
	neighs, err := h.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("neighbours of %s: %w", bridgeName, err)
	}
	for _, nb := range neighs {
		if a, ok := netip.AddrFromSlice(nb.IP); ok && a.Unmap() == ip {
			if err := h.NeighDel(&nb); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("deleting the neighbour entry of %s: %w", ip, err)
			}
		}
	}
	return nil
}
