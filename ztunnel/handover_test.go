package ztunnel

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

func TestParseListeners(t *testing.T) {
	// /proc/net/tcp: 127.0.0.1:15001 and 0.0.0.0:15008 (twice)
	// listening (0A), then an established connection to 15001 (01): the
	// kernel lists listeners first, so nothing after it is read.
	table := strings.Join([]string{
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
		"   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0",
		"   1: 00000000:3AA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0",
		"   2: garbage",
		"   3: 00000000:3AA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0",
		"   4: 0100007F:3A99 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1",
		"   5: 00000000:3AA1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 100 0 0 10 0",
	}, "\n")
	got := map[uint16][]uint64{}
	if err := parseListeners(strings.NewReader(table), got); err != nil {
		t.Fatal(err)
	}
	want := map[uint16][]uint64{15001: {1001}, 15008: {1002, 1004}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseListeners() (-want +got):\n%s", diff)
	}
}

// TestSuccessorListening: another socket on the same port, in the same
// netns, is a successor; our own socket alone is not.
func TestSuccessorListening(t *testing.T) {
	capturetest.RequireRoot(t)
	ns := capturetest.NewNetns(t, nsName("succ"))
	at := netip.MustParseAddrPort("127.0.0.1:15001")
	old := listen(t, ns, at)
	if got, err := successorListening(ns, []net.Listener{old}); err != nil || got {
		t.Fatalf("successorListening(own listener only) = %v, %v, want false", got, err)
	}
	listen(t, ns, at)
	if got, err := successorListening(ns, []net.Listener{old}); err != nil || !got {
		t.Fatalf("successorListening(with a second listener) = %v, %v, want true", got, err)
	}
}

// TestCloseMigratesQueuedConnections: connections the kernel queued on the
// old listener of a SO_REUSEPORT group, not yet accepted when it closes,
// reach the successor's listener when ztunnel enabled migration in the pod
// (enableMigration); without it the kernel resets them, which is what the
// second case shows so that the first can fail.
func TestCloseMigratesQueuedConnections(t *testing.T) {
	capturetest.RequireRoot(t)
	tests := []struct {
		name    string
		migrate bool
	}{
		{"migration enabled: every connection reaches the successor", true},
		{"migration off: queued connections are lost", false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := capturetest.NewNetns(t, nsName(fmt.Sprint("mig", i)))
			if tc.migrate {
				if err := enableMigration(ns); err != nil {
					t.Fatal(err)
				}
			}
			at := netip.MustParseAddrPort("127.0.0.1:15001")
			old := listen(t, ns, at)
			succ := listen(t, ns, at)
			const n = 32 // the kernel hashes each to one of the two listeners
			var clients []net.Conn
			for range n {
				c, err := capturetest.DialIn(ns, at.String(), 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				clients = append(clients, c)
			}
			old.Close() // nothing accepted on it: its queue holds about half
			accepted := 0
			for range n {
				succ.(*net.TCPListener).SetDeadline(time.Now().Add(500 * time.Millisecond))
				c, err := succ.Accept()
				if err != nil {
					break
				}
				c.Close()
				accepted++
			}
			if tc.migrate && accepted != n {
				t.Errorf("successor accepted %d of %d connections, want all", accepted, n)
			}
			if !tc.migrate && accepted == n {
				t.Errorf("successor accepted all %d connections without migration; the kernel spread none to the old listener?", n)
			}
		})
	}
}

// TestHandOver: the old ztunnel keeps its listeners until the successor's
// listen on every port of the pod, closes them at once when no successor
// started, and at the deadline when the successor never listens.
func TestHandOver(t *testing.T) {
	capturetest.RequireRoot(t)
	ports := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:15001"),
		netip.MustParseAddrPort("0.0.0.0:15006"),
		netip.MustParseAddrPort("0.0.0.0:15008"),
	}
	tests := []struct {
		name       string
		successor  bool // a successor took the ZDS socket
		listens    bool // and opens the pod's listeners
		wantHanded int
		wantAlone  int
	}{
		{"successor listens: handed over", true, true, 1, 0},
		{"no successor: closed at once", false, false, 0, 1},
		{"successor never listens: closed at the deadline", true, false, 0, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := capturetest.NewNetns(t, nsName(fmt.Sprint("ho", i)))
			if err := enableMigration(ns); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			sock := filepath.Join(dir, "zds.sock")
			writeFile(t, sock)
			z := &Ztunnel{cfg: Config{ZDSSocket: sock}, log: slog.New(slog.DiscardHandler)}
			d := newInpod(z)
			d.zdsInode.Store(fileInode(sock))
			if tc.successor { // the successor's ZDS socket replaces ours (ours is still open: another inode)
				writeFile(t, sock+".new")
				if err := os.Rename(sock+".new", sock); err != nil {
					t.Fatal(err)
				}
			}
			ip := &inpodPod{pod: zds.Pod{Namespace: "ns", Name: "a"}, netns: ns, uid: "uid-a", addr: netip.MustParseAddr("198.18.0.10")}
			for _, at := range ports {
				ip.listeners = append(ip.listeners, listen(t, ns, at))
			}
			old := ip.listeners
			d.pods["a"] = ip

			const deadline = 2 * time.Second
			type result struct{ Handed, Alone int }
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				h, a := d.handOver(start.Add(deadline))
				done <- result{Handed: h, Alone: a}
			}()
			if tc.listens {
				// The old listeners still take connections while the
				// successor is not there.
				time.Sleep(3 * handoverPoll)
				c, err := capturetest.DialIn(ns, ports[0].String(), time.Second)
				if err != nil {
					t.Fatalf("dial before the successor listens: %v", err)
				}
				c.Close()
				old[0].(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
				if c, err := old[0].Accept(); err != nil {
					t.Fatalf("old listener closed before the successor listened: %v", err)
				} else {
					c.Close()
				}
				for _, at := range ports {
					listen(t, ns, at)
				}
			}
			var got result
			select {
			case got = <-done:
			case <-time.After(deadline + 5*time.Second):
				t.Fatal("handOver did not return")
			}
			if diff := cmp.Diff(result{tc.wantHanded, tc.wantAlone}, got); diff != "" {
				t.Errorf("handOver() (-want +got):\n%s", diff)
			}
			if tc.successor && !tc.listens && time.Since(start) < deadline {
				t.Errorf("handOver returned after %v, before the deadline %v, with no successor listening", time.Since(start), deadline)
			}
			if ip.listeners != nil {
				t.Errorf("pod listeners not cleared after handOver")
			}
			if _, err := old[0].Accept(); err == nil {
				t.Errorf("old listener still accepts after handOver")
			}
			if d.podNetns(ip.addr) == nil {
				t.Errorf("podNetns(%s) = nil after handOver, want the pod's netns until finish (the drain dials in it)", ip.addr)
			}
		})
	}
}

func listen(t *testing.T, ns *os.File, at netip.AddrPort) net.Listener {
	t.Helper()
	l, err := listenShared(ns, at, at.Addr().IsUnspecified())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// nsName names a test netns as capturetest does (zcap-<pid>-...), so that
// leftovers of a killed run are removed by the next.
func nsName(s string) string { return fmt.Sprintf("zcap-%d-ho-%s", os.Getpid(), s) }
