package podrun_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-go/mesh/tests/netns"
)

// portCapture records the TCP segments to or from one port seen on every
// interface of a network namespace (an AF_PACKET socket bound to no
// interface), with the time each was read, the interface and its
// direction: the story's record of the xDS and CA connections between
// the pods and istiod-lite, for a failure's report.
type portCapture struct {
	name string
	fd   int
	port uint16
	done chan struct{}

	mu      sync.Mutex
	ifnames map[int]string
	segs    []capturedSegment
}

type capturedSegment struct {
	at       time.Time
	ifname   string
	outgoing bool
	src, dst netip.AddrPort
	flags    uint8
	seq, ack uint32
	win      uint16
	payload  int
}

const portCaptureMax = 100000

// capturePort starts recording in ns until stop is called.
func capturePort(ns netns.NS, port uint16) (*portCapture, error) {
	c := &portCapture{name: ns.Name, fd: -1, port: port, done: make(chan struct{}), ifnames: map[int]string{}}
	err := ns.Do(func() error {
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		return nil, err
	}
	go c.run(ns)
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *portCapture) run(ns netns.NS) {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 256)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				c.mu.Lock()
				stop := c.ifnames == nil
				c.mu.Unlock()
				if stop {
					return
				}
				continue
			}
			return
		}
		at := time.Now()
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok {
			continue
		}
		s, ok := decodeTCP(buf[:min(n, len(buf))])
		if !ok || (s.src.Port() != c.port && s.dst.Port() != c.port) {
			continue
		}
		s.at, s.outgoing = at, ll.Pkttype == unix.PACKET_OUTGOING
		c.mu.Lock()
		if c.ifnames == nil {
			c.mu.Unlock()
			return
		}
		name, ok := c.ifnames[ll.Ifindex]
		if !ok {
			name = fmt.Sprint(ll.Ifindex)
			ns.Do(func() error {
				if ifi, err := net.InterfaceByIndex(ll.Ifindex); err == nil {
					name = ifi.Name
				}
				return nil
			})
			c.ifnames[ll.Ifindex] = name
		}
		s.ifname = name
		if len(c.segs) < portCaptureMax {
			c.segs = append(c.segs, s)
		}
		c.mu.Unlock()
	}
}

// stop ends the capture and returns its report, one line per segment
// whose addresses match keep (nil: all).
func (c *portCapture) stop(keep func(src, dst netip.AddrPort) bool) string {
	c.mu.Lock()
	c.ifnames = nil
	segs := c.segs
	c.mu.Unlock()
	<-c.done
	var b strings.Builder
	fmt.Fprintf(&b, "capture in %s, port %d (%d segments):\n", c.name, c.port, len(segs))
	for _, s := range segs {
		if keep != nil && !keep(s.src, s.dst) {
			continue
		}
		dir := "in "
		if s.outgoing {
			dir = "out"
		}
		fmt.Fprintf(&b, "%s %-6s %s %s > %s %s seq=%d ack=%d win=%d len=%d\n", s.at.UTC().Format("15:04:05.000000"), s.ifname, dir,
			s.src, s.dst, tcpFlags(s.flags), s.seq, s.ack, s.win, s.payload)
	}
	return b.String()
}

func tcpFlags(f uint8) string {
	var b strings.Builder
	for i, n := range "FSRPAU" {
		if f&(1<<i) != 0 {
			b.WriteRune(n)
		}
	}
	return b.String()
}

// decodeTCP decodes an Ethernet frame holding TCP over IPv4 (the frame
// may be truncated after the TCP header).
func decodeTCP(f []byte) (capturedSegment, bool) {
	const ethLen = 14
	var s capturedSegment
	if len(f) < ethLen+40 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return s, false
	}
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ip[9] != syscall.IPPROTO_TCP || ihl < 20 || len(ip) < ihl+20 {
		return s, false
	}
	tcp := ip[ihl:]
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	s.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2]))
	s.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4]))
	s.seq = binary.BigEndian.Uint32(tcp[4:8])
	s.ack = binary.BigEndian.Uint32(tcp[8:12])
	s.flags = tcp[13]
	s.win = binary.BigEndian.Uint16(tcp[14:16])
	s.payload = int(binary.BigEndian.Uint16(ip[2:4])) - ihl - int(tcp[12]>>4)*4
	return s, true
}
