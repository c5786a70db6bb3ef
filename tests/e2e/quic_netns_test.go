package e2e

// HBONE over QUIC between ztunnels in real network namespaces (issue 16):
// both ztunnels run with --quic prefer; an unmodified client's connection
// must cross the underlay as QUIC on UDP 15008, and, with UDP 15008
// dropped on the source node, still succeed over TCP within the connect
// timeout. They need root; they skip without it.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// udpDatagram is a UDP datagram over IPv4 decoded from a frame.
type udpDatagram struct {
	Src, Dst netip.AddrPort
	Payload  []byte
}

func decodeUDP(f netns.Frame) (udpDatagram, bool) {
	const ethLen = 14
	if len(f) < ethLen+28 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return udpDatagram{}, false
	}
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ip[9] != syscall.IPPROTO_UDP || ihl < 20 || len(ip) < ihl+8 {
		return udpDatagram{}, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	u := ip[ihl:]
	return udpDatagram{
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(u[0:2])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(u[2:4])),
		Payload: u[8:],
	}, true
}

// underlayTraffic counts the pods' HBONE traffic among frames: UDP
// datagrams and TCP segments to or from port 15008.
func underlayTraffic(frames []netns.Frame) (udp15008, tcp15008 int) {
	for _, f := range frames {
		if d, ok := decodeUDP(f); ok && netns.PodsPrefix.Contains(d.Src.Addr()) && (d.Dst.Port() == 15008 || d.Src.Port() == 15008) {
			udp15008++
		}
	}
	for _, s := range cluster.PodSegments(frames) {
		if s.Dst.Port() == 15008 || s.Src.Port() == 15008 {
			tcp15008++
		}
	}
	return udp15008, tcp15008
}

// dropQUIC adds to node's namespace a forward rule dropping (and
// counting) UDP to port 15008, and returns a function reading the count.
func dropQUIC(t *testing.T, n *cluster.Node) func() uint64 {
	t.Helper()
	h, err := n.NS.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "test-drop-quic"})
	policy := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{Name: "forward", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(15008)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables drop rule in %s: %v", n.Name, err)
	}
	t.Cleanup(func() {
		h, err := n.NS.Open()
		if err != nil {
			return
		}
		defer h.Close()
		if c, err := nftables.New(nftables.WithNetNSFd(int(h))); err == nil {
			c.DelTable(table)
			c.Flush()
		}
	})
	return func() uint64 {
		h, err := n.NS.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(h)))
		if err != nil {
			t.Fatal(err)
		}
		rules, err := c.GetRules(table, chain)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					return ctr.Packets
				}
			}
		}
		return 0
	}
}

// metric returns the value of the series of name whose labels include
// all of labels, from the ztunnel's /metrics (0 when absent).
func metric(t *testing.T, z *cluster.Ztunnel, name string, labels ...string) float64 {
	t.Helper()
	b, err := cluster.HTTPClient{NS: z.Node.NS}.Get(t.Context(), "http://"+cluster.MetricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var sum float64
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func TestQUICBetweenZtunnels(t *testing.T) {
	c := cluster.New(t, cluster.Options{ZtunnelArgs: []string{"--quic", "prefer"}})
	c.Namespace("shop", ambient)
	client, err := c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client", Labels: map[string]string{"app": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	client2, err := c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client-2", Labels: map[string]string{"app": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	echo, err := c.Node(2).AddPod(cluster.PodSpec{Namespace: "shop", Name: "echo-0", Labels: map[string]string{"app": "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	startApp(t, echo, 8080)
	echoAddr := netip.AddrPortFrom(echo.IP, 8080)
	z1, z2 := c.Node(1).Ztunnel(), c.Node(2).Ztunnel()

	t.Run("carried over UDP 15008", func(t *testing.T) {
		const marker = "/quic-marker-5f1d"
		from := z2.Mark()
		var got string
		var err error
		frames := c.CaptureUnderlay(t, func() { got, err = client.Get(t.Context(), echoAddr, marker) })
		if err != nil {
			t.Fatal(err)
		}
		want(t, got, "echo-0", client.IP, marker)
		udp, tcp := underlayTraffic(frames)
		if udp == 0 || tcp != 0 {
			t.Errorf("underlay: %d UDP 15008 datagrams and %d TCP 15008 segments of pods; want some UDP and no TCP", udp, tcp)
		}
		if n := netns.Contains(frames, []byte(marker)); n > 0 {
			t.Errorf("the marker is in clear in %d frames on the underlay", n)
		}
		l := waitInbound(t, z2, from, client.IP)
		if l.String(accesslog.KeyTransport) != "quic" || l.String(accesslog.KeySrcIdentity) != clientID {
			t.Errorf("node-2's inbound record: transport %q, src.identity %q; want quic, %s", l.String(accesslog.KeyTransport), l.String(accesslog.KeySrcIdentity), clientID)
		}
		if v := metric(t, z1, "ztunnel_hbone_tunnels_total", `direction="outbound"`, `transport="quic"`); v < 1 {
			t.Errorf("node-1 ztunnel_hbone_tunnels_total{outbound,quic} = %v, want at least 1", v)
		}
	})

	t.Run("UDP 15008 dropped falls back to TCP", func(t *testing.T) {
		dropped := dropQUIC(t, c.Node(1))
		from := z2.Mark()
		start := time.Now()
		// client-2: a new source address, so no pooled QUIC connection.
		got, err := client2.Get(t.Context(), echoAddr, "/fallback")
		if err != nil {
			t.Fatalf("with UDP 15008 dropped: %v (after %v)", err, time.Since(start))
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the connection took %v, want well within the 10 s connect timeout", d)
		}
		want(t, got, "echo-0", client2.IP, "/fallback")
		if l := waitInbound(t, z2, from, client2.IP); l.String(accesslog.KeyTransport) != "tcp" {
			t.Errorf("node-2's inbound record transport %q, want tcp", l.String(accesslog.KeyTransport))
		}
		if n := dropped(); n == 0 {
			t.Error("the drop rule counted no packet: QUIC was not tried")
		}
		if v := metric(t, z1, "ztunnel_hbone_quic_fallbacks_total", `reason="failed"`); v < 1 {
			t.Errorf("node-1 ztunnel_hbone_quic_fallbacks_total{reason=failed} = %v, want at least 1", v)
		}
		// The failure is remembered: the next connection goes over TCP at once.
		start = time.Now()
		if _, err := client2.Get(t.Context(), echoAddr, "/again"); err != nil {
			t.Fatal(err)
		}
		if v := metric(t, z1, "ztunnel_hbone_quic_fallbacks_total", `reason="remembered"`); v < 1 {
			t.Errorf("node-1 ztunnel_hbone_quic_fallbacks_total{reason=remembered} = %v, want at least 1 (took %v)", v, time.Since(start))
		}
	})
}
