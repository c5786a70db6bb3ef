package capture

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
)

// TestQUICAllowed: with capture installed, a UDP datagram to the pod's
// port 15008 (HBONE over QUIC) reaches ztunnel's socket in the pod's netns
// and is counted by the rule that lets it in; other UDP is not counted.
func TestQUICAllowed(t *testing.T) {
	tp := capturetest.NewPair(t)
	if err := Install(tp.Pod); err != nil {
		t.Fatalf("Install: %v", err)
	}
	t.Cleanup(func() { Remove(tp.Pod) })
	pc, err := ListenUDP(tp.Pod, netip.AddrPortFrom(tp.PodIP, HBONEPort))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	other, err := ListenUDP(tp.Pod, netip.AddrPortFrom(tp.PodIP, 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	send := func(to uint16) {
		t.Helper()
		err := Do(tp.Server, func() error {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(tp.PodIP, to)))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("quic?"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	recv := func(c *net.UDPConn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 16)
		n, err := c.Read(b)
		if err != nil || string(b[:n]) != "quic?" {
			t.Fatalf("Read() = %q, %v; want the datagram", b[:n], err)
		}
	}
	send(HBONEPort)
	recv(pc)
	send(5353)
	recv(other)
	n, ok, err := QUICPackets(tp.Pod)
	if err != nil || !ok || n != 1 {
		t.Errorf("QUICPackets() = %d, %v, %v; want 1, true, nil", n, ok, err)
	}
}
