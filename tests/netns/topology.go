package netns

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addresses of a topology. Everything is in 198.18.0.0/15 (RFC 2544,
// benchmarking) and nothing is routed out.
var (
	// UnderlayIP is the underlay namespace's own address on its bridge;
	// services that every node reaches (istiod-lite) listen on it.
	UnderlayIP = netip.MustParseAddr("198.18.0.1")
	// UnderlayPrefix is the nodes' shared segment.
	UnderlayPrefix = netip.MustParsePrefix("198.18.0.0/24")
	// VIPPrefix holds service VIPs: pods route it to their node, which has
	// no route for it, so only a capturing proxy can reach a VIP.
	VIPPrefix = netip.MustParsePrefix("198.18.100.0/24")
	// PodsPrefix covers every node's pod prefix.
	PodsPrefix = netip.MustParsePrefix("198.19.0.0/16")
)

// NodeIP is node i's (from 1) address on the underlay: 198.18.0.(10+i).
func NodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}) }

// PodPrefix is node i's pod prefix, 198.19.i.0/24; the node's bridge is
// 198.19.i.1 and pod j (from 1) is 198.19.i.(10+j).
func PodPrefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), 0}), 24)
}

// VIP is the k-th service VIP, 198.18.100.(10+k).
func VIP(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 100, byte(10 + k)}) }

const (
	bridgeName = "br0"
	podIfName  = "eth0"
	maxPods    = 240
)

// Options configure a Topology. The zero value gives two nodes.
type Options struct {
	// Nodes is the number of nodes; default 2, at most 200.
	Nodes int
	// Pods is the number of pods each node starts with (pod names p1,
	// p2...); default none: add them with Node.AddPod.
	Pods int
}

// Topology is a running set of namespaces: an underlay with a bridge, and
// nodes joined to it by veth, each with a bridge for its pods.
type Topology struct {
	// Prefix starts the name of every namespace of this topology.
	Prefix string
	// Underlay is the namespace joining the nodes; it holds UnderlayIP.
	Underlay NS
	// Nodes are the nodes, Nodes[i-1] being node i.
	Nodes []*Node

	mu     sync.Mutex
	closed bool
}

// Node is one node's namespace. It forwards between its pod bridge and the
// underlay, and routes every other node's pod prefix to that node.
type Node struct {
	NS
	// Index numbers the node from 1.
	Index int
	// IP is the node's underlay address, NodeIP(Index).
	IP netip.Addr
	// Gateway is the address of the node's pod bridge, the pods' next hop.
	Gateway netip.Addr
	// UnderlayLink is the name of the node's veth end in the underlay
	// namespace (where a capture sees all the node's traffic).
	UnderlayLink string

	topo *Topology
	mu   sync.Mutex
	next int
	pods map[string]*Pod
}

// Pod is one pod's namespace, attached to its node's bridge by a veth
// whose pod end is eth0.
type Pod struct {
	NS
	// Node is the pod's node.
	Node *Node
	// PodName is the name given to Node.AddPod.
	PodName string
	// IP is the pod's address.
	IP netip.Addr
	// HostLink is the name of the pod's veth end in the node namespace.
	HostLink string
}

// Create builds a topology. It first removes the namespaces left by
// topologies of processes that no longer run. On error, whatever was built
// is removed. Create needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
func Create(opts Options) (*Topology, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes < 0 || opts.Nodes > 200 || opts.Pods < 0 || opts.Pods > maxPods {
		return nil, fmt.Errorf("netns: %d nodes × %d pods is out of range", opts.Nodes, opts.Pods)
	}
	if _, err := RemoveLeftovers(); err != nil {
		return nil, fmt.Errorf("netns: removing leftovers: %w", err)
	}
	t := &Topology{Prefix: fmt.Sprintf("mt%d-%s-", os.Getpid(), randomTag())}
	if err := t.build(opts); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

func randomTag() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 5)
	rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

func (t *Topology) build(opts Options) error {
	var err error
	if t.Underlay, err = create(t.Prefix + "u"); err != nil {
		return err
	}
	disableIPv6(t.Underlay)
	uh, err := t.Underlay.Handle()
	if err != nil {
		return err
	}
	defer uh.Close()
	ubr, err := addBridge(uh, netip.PrefixFrom(UnderlayIP, UnderlayPrefix.Bits()))
	if err != nil {
		return fmt.Errorf("netns: underlay: %w", err)
	}
	for i := 1; i <= opts.Nodes; i++ {
		n, err := t.addNode(uh, ubr, i, opts.Nodes)
		if n != nil {
			t.mu.Lock()
			t.Nodes = append(t.Nodes, n)
			t.mu.Unlock()
		}
		if err != nil {
			return err
		}
		for j := 1; j <= opts.Pods; j++ {
			if _, err := n.AddPod(fmt.Sprintf("p%d", j)); err != nil {
				return err
			}
		}
	}
	return nil
}

func addBridge(h *netlink.Handle, addr netip.Prefix) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("adding bridge: %w", err)
	}
	l, err := h.LinkByName(bridgeName)
	if err != nil {
		return nil, err
	}
	// Fix the bridge's address (as the CNI bridge plugin does): a bridge
	// whose address was never set takes the lowest address of its ports,
	// so a pod joining (or leaving) with a lower one would change the
	// gateway's MAC address under the other pods, whose neighbour caches
	// keep the old one for 15 to 45 s: the node drops every packet they
	// send off the node until then (TestBridgeMACSurvivesNewPods).
	if err := h.LinkSetHardwareAddr(l, l.Attrs().HardwareAddr); err != nil {
		return nil, fmt.Errorf("fixing the bridge's address: %w", err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return nil, fmt.Errorf("bridge address %s: %w", addr, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bridge up: %w", err)
	}
	return l, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addVeth creates a veth pair from h's namespace: local stays there,
// attached to master (if any) and up; peer goes into the namespace at
// peerNS, named peerName, with addr and up. Both ends are created where
// they live: nothing passes through the root namespace.
func addVeth(h *netlink.Handle, local string, master netlink.Link, peerNS NS, peerName string, addr netip.Prefix) (*netlink.Handle, netlink.Link, error) {
	fd, err := peerNS.Open()
	if err != nil {
		return nil, nil, err
	}
	defer fd.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: local},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(fd)),
	}
	if err := h.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("adding veth %s/%s: %w", local, peerName, err)
	}
	l, err := h.LinkByName(local)
	if err != nil {
		return nil, nil, err
	}
	if master != nil {
		if err := h.LinkSetMaster(l, master); err != nil {
			return nil, nil, fmt.Errorf("%s master %s: %w", local, master.Attrs().Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, nil, fmt.Errorf("%s up: %w", local, err)
	}
	ph, err := peerNS.Handle()
	if err != nil {
		return nil, nil, err
	}
	pl, err := ph.LinkByName(peerName)
	if err == nil {
		err = ph.AddrAdd(pl, &netlink.Addr{IPNet: ipNet(addr)})
	}
	if err == nil {
		err = ph.LinkSetUp(pl)
	}
	if err != nil {
		ph.Close()
		return nil, nil, fmt.Errorf("%s in %s: %w", peerName, peerNS.Name, err)
	}
	return ph, pl, nil
}

func (t *Topology) addNode(uh *netlink.Handle, ubr netlink.Link, i, nodes int) (*Node, error) {
	ns, err := create(fmt.Sprintf("%sn%d", t.Prefix, i))
	if err != nil {
		return nil, err
	}
	n := &Node{
		NS:           ns,
		Index:        i,
		IP:           NodeIP(i),
		Gateway:      PodPrefix(i).Addr().Next(),
		UnderlayLink: fmt.Sprintf("n%d", i),
		topo:         t,
		pods:         map[string]*Pod{},
	}
	disableIPv6(ns)
	if err := ns.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return n, fmt.Errorf("netns: node %d: ip_forward: %w", i, err)
	}
	nh, _, err := addVeth(uh, n.UnderlayLink, ubr, ns, podIfName, netip.PrefixFrom(n.IP, UnderlayPrefix.Bits()))
	if err != nil {
		return n, fmt.Errorf("netns: node %d: %w", i, err)
	}
	defer nh.Close()
	if _, err := addBridge(nh, netip.PrefixFrom(n.Gateway, 24)); err != nil {
		return n, fmt.Errorf("netns: node %d: %w", i, err)
	}
	// The underlay answers pods that reach it (a waypoint's xDS and CA
	// connections to istiod-lite; see Pod.RouteUnderlay) through their
	// node.
	if err := uh.RouteAdd(&netlink.Route{Dst: ipNet(PodPrefix(i)), Gw: n.IP.AsSlice()}); err != nil {
		return n, fmt.Errorf("netns: underlay: route to %s: %w", PodPrefix(i), err)
	}
	for k := 1; k <= nodes; k++ {
		if k == i {
			continue
		}
		r := &netlink.Route{Dst: ipNet(PodPrefix(k)), Gw: NodeIP(k).AsSlice()}
		if err := nh.RouteAdd(r); err != nil {
			return n, fmt.Errorf("netns: node %d: route to %s: %w", i, PodPrefix(k), err)
		}
	}
	return n, nil
}

// disableIPv6 keeps IPv6 link-local chatter (router and neighbour
// solicitations) out of captures; a kernel without IPv6 is fine.
func disableIPv6(ns NS) {
	ns.Sysctl("net/ipv6/conf/all/disable_ipv6", "1")
	ns.Sysctl("net/ipv6/conf/default/disable_ipv6", "1")
}

// Node returns node i (from 1), or nil.
func (t *Topology) Node(i int) *Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i < 1 || i > len(t.Nodes) {
		return nil
	}
	return t.Nodes[i-1]
}

// AddPod creates a pod namespace named after name (unique on the node),
// attaches it to the node's bridge with the next free address, and routes
// the other nodes' pods and the service VIPs through the node.
func (n *Node) AddPod(name string) (*Pod, error) {
	n.mu.Lock()
	if _, ok := n.pods[name]; ok {
		n.mu.Unlock()
		return nil, fmt.Errorf("netns: node %d already has pod %s", n.Index, name)
	}
	if n.next >= maxPods {
		n.mu.Unlock()
		return nil, fmt.Errorf("netns: node %d has no address left", n.Index)
	}
	n.next++
	j := n.next
	p := &Pod{Node: n, PodName: name, HostLink: fmt.Sprintf("p%d", j)}
	p.IP = netip.AddrFrom4([4]byte{198, 19, byte(n.Index), byte(10 + j)})
	n.pods[name] = p // registered first, so that Close removes a half-built pod
	n.mu.Unlock()

	if err := p.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("netns: pod %s on node %d: %w", name, n.Index, err), p.Remove())
	}
	return p, nil
}

func (p *Pod) build() error {
	n := p.Node
	ns, err := create(fmt.Sprintf("%sn%d-%s", n.topo.Prefix, n.Index, p.PodName))
	if err != nil {
		return err
	}
	p.NS = ns
	disableIPv6(ns)
	nh, err := n.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	br, err := nh.LinkByName(bridgeName)
	if err != nil {
		return err
	}
	ph, eth, err := addVeth(nh, p.HostLink, br, ns, podIfName, netip.PrefixFrom(p.IP, 24))
	if err != nil {
		return err
	}
	defer ph.Close()
	for _, dst := range []netip.Prefix{PodsPrefix, VIPPrefix} {
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(dst), Gw: n.Gateway.AsSlice()}
		if err := ph.RouteAdd(r); err != nil {
			return fmt.Errorf("route to %s: %w", dst, err)
		}
	}
	return nil
}

// RouteUnderlay routes the underlay's own address (UnderlayIP, where
// istiod-lite listens) from the pod through its node, as a cluster's pod
// network reaches its control plane. Only pods that talk to the control
// plane themselves (a waypoint) need it; application pods have no route
// past the pod and VIP prefixes.
func (p *Pod) RouteUnderlay() error {
	h, err := p.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	eth, err := h.LinkByName(podIfName)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(netip.PrefixFrom(UnderlayIP, 32)), Gw: p.Node.Gateway.AsSlice()}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("netns: pod %s: route to %s: %w", p.PodName, UnderlayIP, err)
	}
	return nil
}

// Pods returns the node's pods.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		ps = append(ps, p)
	}
	return ps
}

// Pod returns the node's pod called name, or nil.
func (n *Node) Pod(name string) *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pods[name]
}

// Remove deletes the pod's veth, then its namespace. Removing a pod twice
// is not an error.
func (p *Pod) Remove() error {
	n := p.Node
	n.mu.Lock()
	if n.pods[p.PodName] != p {
		n.mu.Unlock()
		return nil
	}
	delete(n.pods, p.PodName)
	n.mu.Unlock()
	var errs []error
	if nh, err := n.Handle(); err == nil {
		errs = append(errs, delLink(nh, p.HostLink))
		nh.Close()
	} else {
		errs = append(errs, err)
	}
	if p.Name != "" {
		errs = append(errs, remove(p.Name))
	}
	return errors.Join(errs...)
}

func delLink(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return err
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// Close removes every pod, node and the underlay: veths first, then the
// namespaces. It may be called more than once.
func (t *Topology) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	nodes := t.Nodes
	t.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		for _, p := range n.Pods() {
			errs = append(errs, p.Remove())
		}
	}
	if t.Underlay.Name != "" {
		if uh, err := t.Underlay.Handle(); err == nil {
			for _, n := range nodes {
				errs = append(errs, delLink(uh, n.UnderlayLink))
			}
			uh.Close()
		}
	}
	for _, n := range nodes {
		errs = append(errs, remove(n.Name))
	}
	if t.Underlay.Name != "" {
		errs = append(errs, remove(t.Underlay.Name))
	}
	if left, err := List(t.Prefix); err != nil || len(left) > 0 {
		errs = append(errs, fmt.Errorf("netns: left behind: %v %w", left, err))
	}
	return errors.Join(errs...)
}
