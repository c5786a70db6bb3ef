package netns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records the frames seen on one interface, in both directions,
// with an AF_PACKET socket opened inside the interface's namespace.
type Capture struct {
	fd   int
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	frames []Frame
}

// Frame is one captured Ethernet frame.
type Frame []byte

const (
	captureMaxFrames = 200000
	captureRcvBuf    = 8 << 20
)

// Capture starts recording the frames on the interface ifname of the
// namespace. It stops by itself after max (default 30s) or 200000 frames;
// Stop ends it earlier and returns the frames.
func (n NS) Capture(ifname string, max time.Duration) (*Capture, error) {
	if max <= 0 {
		max = 30 * time.Second
	}
	fd := -1
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		s, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, int(htons(syscall.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := syscall.Bind(s, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			syscall.Close(s)
			return fmt.Errorf("binding to %s: %w", ifname, err)
		}
		fd = s
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", ifname, n.Name, err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureRcvBuf)
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture: SO_RCVTIMEO: %w", err)
	}
	c := &Capture{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run(time.Now().Add(max))
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) run(deadline time.Time) {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 1<<16+128)
	stopping := false
	for {
		if !stopping {
			select {
			case <-c.stop:
				// Drain what is already queued, then stop.
				stopping = true
			default:
			}
			if time.Now().After(deadline) {
				return
			}
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				if stopping {
					return
				}
				continue
			}
			return
		}
		c.mu.Lock()
		c.frames = append(c.frames, Frame(bytes.Clone(buf[:n])))
		full := len(c.frames) >= captureMaxFrames
		c.mu.Unlock()
		if full {
			return
		}
	}
}

// Stop ends the capture (after reading what the socket already holds) and
// returns every frame seen.
func (c *Capture) Stop() []Frame {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

// Segment is a TCP segment over IPv4 decoded from a frame.
type Segment struct {
	Src, Dst netip.AddrPort
	// Flags are the TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
	// ACK 0x10).
	Flags   uint8
	Payload []byte
}

func (s Segment) String() string {
	return fmt.Sprintf("%s > %s flags=%#02x len=%d", s.Src, s.Dst, s.Flags, len(s.Payload))
}

// TCP decodes the frame as an Ethernet frame holding a TCP segment over
// IPv4; ok is false for anything else.
func (f Frame) TCP() (s Segment, ok bool) {
	const ethLen = 14
	if len(f) < ethLen+20 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
		return s, false
	}
	ip := f[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 != 4 || ip[9] != syscall.IPPROTO_TCP || ihl < 20 || len(ip) < ihl+20 {
		return s, false
	}
	if total == 0 || total > len(ip) { // GSO frames may carry 0 or more than the frame
		total = len(ip)
	}
	tcp := ip[ihl:total]
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return s, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	return Segment{
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
		Flags:   tcp[13],
		Payload: tcp[off:],
	}, true
}

// Segments decodes the TCP segments among frames.
func Segments(frames []Frame) []Segment {
	var segs []Segment
	for _, f := range frames {
		if s, ok := f.TCP(); ok {
			segs = append(segs, s)
		}
	}
	return segs
}

// Contains reports how many frames contain marker anywhere.
func Contains(frames []Frame, marker []byte) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			n++
		}
	}
	return n
}
