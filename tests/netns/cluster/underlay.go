package cluster

import (
	"net/netip"
	"testing"

	"github.com/ambient-go/mesh/tests/netns"
)

// CaptureUnderlay captures the frames on every node's underlay link while f
// runs (AF_PACKET), to see what crosses the network between nodes.
func (c *Cluster) CaptureUnderlay(t testing.TB, f func()) []netns.Frame {
	t.Helper()
	return c.Topo.CaptureUnderlay(t, f)
}

// PodSegments are the TCP segments among frames that pods exchange: not
// a node's own traffic, nor a pod's with istiod-lite (a waypoint's xDS and
// CA connections, TLS on IstiodTLSPort), which is the control plane's.
func PodSegments(frames []netns.Frame) []netns.Segment {
	istiod := netip.AddrPortFrom(netns.UnderlayIP, IstiodTLSPort)
	var out []netns.Segment
	for _, s := range netns.Segments(frames) {
		if !netns.PodsPrefix.Contains(s.Src.Addr()) && !netns.PodsPrefix.Contains(s.Dst.Addr()) {
			continue // a node's own traffic (xDS, CA)
		}
		if s.Src == istiod || s.Dst == istiod {
			continue
		}
		out = append(out, s)
	}
	return out
}

// IsTLSHandshake reports whether the segment carries a TLS handshake
// record (a ClientHello, a ServerHello...).
func IsTLSHandshake(s netns.Segment) bool {
	return len(s.Payload) > 1 && s.Payload[0] == 0x16 && s.Payload[1] == 0x03
}

// AssertOnlyHBONE checks that the pods' traffic on the underlay is TLS to port
// 15008 and nothing else, and that the marker never shows.
func AssertOnlyHBONE(t testing.TB, frames []netns.Frame, marker string) {
	t.Helper()
	if n := netns.Contains(frames, []byte(marker)); n > 0 {
		t.Errorf("the marker %q is in clear in %d frames on the underlay", marker, n)
	}
	var hbone, handshakes int
	for _, s := range PodSegments(frames) {
		if s.Dst.Port() != 15008 && s.Src.Port() != 15008 {
			t.Errorf("pod traffic on the underlay not to 15008: %v", s)
			continue
		}
		hbone++
		if IsTLSHandshake(s) {
			handshakes++
		}
	}
	if hbone == 0 {
		t.Errorf("no HBONE (port 15008) segment among %d frames captured on the underlay", len(frames))
	}
	if handshakes == 0 {
		t.Error("no TLS handshake seen on 15008")
	}
}
