package ztunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/ztunnel/capture"
)

// Handover: a ztunnel restart that drops nothing (in-pod mode; docs/security.md
// "Restarts"). As in Istio's ztunnel, a new ztunnel process on the node (a
// DaemonSet rolled with maxSurge) opens every captured pod's listeners next
// to the old one's with SO_REUSEPORT, and the old one, on SIGTERM, hands
// over:
//
//  1. It keeps accepting until the successor's listeners exist on every port
//     of the pod (15001, 15006, 15008), read from the pod's
//     /proc/net/tcp{,6}; at most Config.DrainTimeout. With no successor on
//     the node (the ZDS socket still its own) it closes at once.
//  2. It closes its listeners. The kernel spreads SYNs over both sockets of a
//     SO_REUSEPORT group, so the old socket's accept queue may hold
//     connections no one has accepted; closing it would reset them. With
//     net.ipv4.tcp_migrate_req=1 (Linux 5.14+, a per-netns sysctl ztunnel
//     sets in each pod it captures) the kernel moves them, and the
//     handshakes in flight, to the successor's socket instead.
//  3. It drains what it carries for Config.DrainTimeout (GOAWAY on HBONE
//     connections, the others run on), then closes what remains. A
//     connection accepted just before step 2 is carried even if its
//     upstream (an HBONE CONNECT) is only connected once the drain began
//     (proxy's trackUpstream; refusing it reset about one connection per
//     handover under load).
//
// Pods come to the successor from the CNI plugin's records (PodStateDir) at
// start and over its own ZDS socket, which replaces the old one's.

// handoverPoll is how often the old ztunnel looks for its successor's
// listeners.
const handoverPoll = 20 * time.Millisecond

// reusePort returns control followed by setting SO_REUSEPORT.
func reusePort(control func(network, address string, c syscall.RawConn) error) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if control != nil {
			if err := control(network, address, c); err != nil {
				return err
			}
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("SO_REUSEPORT: %w", serr)
		}
		return nil
	}
}

// listenShared opens a TCP listener on addr inside ns as capture.Listen
// does (SO_MARK, IP_TRANSPARENT if transparent), with SO_REUSEPORT so that
// a successor ztunnel can listen next to it.
func listenShared(ns *os.File, addr netip.AddrPort, transparent bool) (net.Listener, error) {
	var l net.Listener
	err := capture.Do(ns, func() error {
		lc := net.ListenConfig{Control: reusePort(capture.Control(transparent))}
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// migrateSysctl is the per-netns switch that makes a closing SO_REUSEPORT
// listener hand its queued connections to another socket of its group.
const migrateSysctl = "/proc/sys/net/ipv4/tcp_migrate_req"

// enableMigration sets net.ipv4.tcp_migrate_req=1 inside ns (/proc/sys/net
// is the calling thread's namespace).
func enableMigration(ns *os.File) error {
	return capture.Do(ns, func() error {
		b, err := os.ReadFile(migrateSysctl)
		if err == nil && string(bytes.TrimSpace(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(migrateSysctl, []byte("1"), 0); err != nil {
			return fmt.Errorf("setting tcp_migrate_req: %w", err)
		}
		return nil
	})
}

// socketInode is the inode of the socket behind l (as /proc/net/tcp lists
// it), or 0.
func socketInode(l net.Listener) uint64 {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return 0
	}
	return st.Ino
}

// listenPort is the port l listens on.
func listenPort(l net.Listener) uint16 {
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		return uint16(ta.Port)
	}
	return 0
}

// tcpListeners returns, per port, the inodes of the TCP sockets in LISTEN
// state of the calling thread's network namespace (/proc/thread-self/net,
// IPv4 and IPv6).
func tcpListeners() (map[uint16][]uint64, error) {
	out := map[uint16][]uint64{}
	for _, name := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		err = parseListeners(f, out)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
	}
	return out, nil
}

// parseListeners adds the listening sockets of a /proc/net/tcp{,6} table
// to out: fields are sl, local_address (hex ip:port), rem_address, st (0A
// is LISTEN), tx:rx queues, tr:when, retrnsmt, uid, timeout, inode. The
// kernel lists listening sockets first: reading stops at the first other
// one, so that a pod's thousands of connections (TIME_WAIT included) are
// not even formatted.
func parseListeners(table io.Reader, out map[uint16][]uint64) error {
	sc := bufio.NewScanner(table)
	sc.Scan() // header
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 10 {
			continue
		}
		if string(f[3]) != "0A" {
			break
		}
		_, port, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(string(port), 16, 16)
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(string(f[9]), 10, 64)
		if err != nil {
			continue
		}
		out[uint16(p)] = append(out[uint16(p)], ino)
	}
	return sc.Err()
}

// successorListening reports whether, inside ns, another socket listens on
// the port of every one of ls: a successor ztunnel has opened the pod's
// listeners next to ours.
func successorListening(ns *os.File, ls []net.Listener) (bool, error) {
	var byPort map[uint16][]uint64
	if err := capture.Do(ns, func() error {
		var err error
		byPort, err = tcpListeners()
		return err
	}); err != nil {
		return false, err
	}
	return hasOthers(byPort, ls), nil
}

// hasOthers reports whether byPort lists, for the port of every listener
// of ls, a socket other than it.
func hasOthers(byPort map[uint16][]uint64, ls []net.Listener) bool {
	for _, l := range ls {
		own := socketInode(l)
		found := false
		for _, ino := range byPort[listenPort(l)] {
			if ino != own {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return len(ls) > 0
}

// fileInode is the inode of the file at path, or 0.
func fileInode(path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// handOver closes the listeners of every captured pod, each once a
// successor ztunnel listens next to it (or at deadline), and returns how
// many pods were handed over and how many closed without a successor.
// Connections stay: the drain that follows ends them.
func (d *inpod) handOver(deadline time.Time) (handed, alone int) {
	// Only the listeners change here (under d.mu); the pods and their
	// namespaces stay for the drain's dials. The runners that change pods
	// (ZDS, reconcile) have stopped.
	d.mu.Lock()
	waiting := map[*inpodPod][]net.Listener{}
	for _, ip := range d.pods {
		if ip.listeners != nil {
			waiting[ip] = ip.listeners
		}
	}
	d.mu.Unlock()
	if len(waiting) == 0 {
		return 0, 0
	}
	if !d.successorStarted() {
		d.z.log.Info("no successor ztunnel on the node; closing pod listeners", "pods", len(waiting))
		for ip := range waiting {
			d.closeListeners(ip)
		}
		return 0, len(waiting)
	}
	start := time.Now()
	d.z.log.Info("successor ztunnel on the node; handing pod listeners over", "pods", len(waiting), "deadline", time.Until(deadline).String())
	for {
		for ip, ls := range waiting {
			ok, err := successorListening(ip.netns, ls)
			if err != nil {
				d.z.log.Warn("looking for the successor's listeners", "pod", ip.name(), "error", err)
			}
			if ok {
				d.closeListeners(ip)
				delete(waiting, ip)
				handed++
				d.z.log.Debug("pod listeners handed over", "pod", ip.name())
			}
		}
		if len(waiting) == 0 || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(handoverPoll)
	}
	for ip := range waiting {
		d.z.log.Warn("successor did not listen in pod before the deadline; closing its listeners", "pod", ip.name())
		d.closeListeners(ip)
		alone++
	}
	d.z.log.Info("pod listeners handed over", "pods", handed, "without_successor", alone, "duration", time.Since(start).String())
	return handed, alone
}

// successorStarted reports whether another ztunnel took over the ZDS
// socket: a successor started on the node.
func (d *inpod) successorStarted() bool {
	own, cur := d.zdsInode.Load(), fileInode(d.z.cfg.ZDSSocket)
	return own != 0 && cur != 0 && cur != own
}

// closeListeners closes ip's listeners; its connections, its netns and
// its capture rules stay.
func (d *inpod) closeListeners(ip *inpodPod) {
	d.mu.Lock()
	ls := ip.listeners
	ip.listeners = nil
	d.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
}
