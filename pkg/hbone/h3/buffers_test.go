//go:build linux

package h3

import (
	"net"
	"os"
	"testing"
)

// TestSizeBuffers: with CAP_NET_ADMIN (root) the buffers reach what
// quic-go asks, whatever net.core.rmem_max says; without, the error says
// why they are short.
func TestSizeBuffers(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rcv, snd, err := SizeBuffers(c)
	if os.Geteuid() != 0 {
		if err == nil && (rcv < BufferSize || snd < BufferSize) {
			t.Errorf("SizeBuffers() = %d, %d, nil; short buffers must come with an error", rcv, snd)
		}
		t.Skipf("not root: SizeBuffers() = %d, %d, %v", rcv, snd, err)
	}
	if err != nil || rcv < BufferSize || snd < BufferSize {
		t.Errorf("SizeBuffers() = %d, %d, %v; want at least %d each, nil", rcv, snd, err, BufferSize)
	}
}
