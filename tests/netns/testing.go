package netns

import (
	"os"
	"testing"
	"time"
)

// RequireRoot skips the test when the process cannot create network
// namespaces (not root), unless CI=true, where it fails instead: CI runs as
// root and must run every test.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const msg = "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; run as root"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// New builds a topology for the test (see Create) and removes it in
// t.Cleanup, failing the test if anything is left behind.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	RequireRoot(t)
	topo, err := Create(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("removing topology: %v", err)
		}
	})
	return topo
}

// CaptureUnderlay captures the frames on every node's underlay link while f
// runs (AF_PACKET), to see what crosses the network between nodes.
func (t *Topology) CaptureUnderlay(tb testing.TB, f func()) []Frame {
	tb.Helper()
	var caps []*Capture
	for _, n := range t.Nodes {
		cp, err := t.Underlay.Capture(n.UnderlayLink, 30*time.Second)
		if err != nil {
			for _, cp := range caps {
				cp.Stop()
			}
			tb.Fatal(err)
		}
		caps = append(caps, cp)
	}
	func() {
		defer func() {
			for _, cp := range caps {
				cp.Stop()
			}
		}()
		f()
	}()
	var frames []Frame
	for _, cp := range caps {
		frames = append(frames, cp.Stop()...)
	}
	return frames
}
