package capture

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
)

// ListenUDP opens a UDP socket on addr (an IP literal; port 0: any) inside
// ns, with SO_MARK Mark: HBONE over QUIC's server socket on the pod's
// address and port 15008, or the pod's client socket. In-pod capture lets
// UDP 15008 in (rules.go); the pod's other UDP is not captured.
func ListenUDP(ns *os.File, addr netip.AddrPort) (*net.UDPConn, error) {
	var pc net.PacketConn
	err := Do(ns, func() error {
		lc := net.ListenConfig{Control: Control(false)}
		var err error
		pc, err = lc.ListenPacket(context.Background(), "udp4", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture: listen on udp %s: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}
