package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambient-go/mesh/pkg/telemetry"
)

// failingListener returns err from its first n Accepts, then accepts for
// real, as a listener does while the process is out of file descriptors.
type failingListener struct {
	net.Listener
	mu  sync.Mutex
	n   int
	err error
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.n > 0 {
		l.n--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestAcceptLoopSurvivesTemporaryErrors: with the file-descriptor limit
// reached, every accept loop keeps retrying (it used to stop for good),
// counts the failures and reports not ready until they stop.
func TestAcceptLoopSurvivesTemporaryErrors(t *testing.T) {
	emfile := &os.SyscallError{Syscall: "accept4", Err: syscall.EMFILE}
	tests := []struct {
		listener string
		serve    func(p *Proxy, l net.Listener, pod netip.Addr) error
	}{
		{"socks5", (*Proxy).ServeSOCKS},
		{"outbound", (*Proxy).ServeOutboundCapture},
		{"inbound_plaintext", (*Proxy).ServePlaintextInbound},
	}
	for _, tc := range tests {
		t.Run(tc.listener, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			f := newInboundFixture(t, Config{AcceptErrors: telemetry.NewAcceptErrors(reg)})
			now := time.Now()
			f.Proxy.now = func() time.Time { return now }
			inner, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			// The port is ztunnel's own: a plaintext inbound connection to
			// it is refused instead of dialed (which would loop back here).
			f.Proxy.reserved[uint16(inner.Addr().(*net.TCPAddr).Port)] = true
			const failures = 5
			l := &failingListener{Listener: inner, n: failures, err: &net.OpError{Op: "accept", Net: "tcp", Err: emfile}}
			served := make(chan error, 1)
			go func() { served <- tc.serve(f.Proxy, l, f.Pod) }()

			// A connection is served once the errors are over: the loop
			// closes it (no SOCKS5 greeting, no original destination),
			// which a read sees as EOF or a reset.
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Pod.AsSlice()}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.listener == "socks5" {
				c.Write([]byte{5, 1, 0})
				b := make([]byte, 2)
				if _, err := io.ReadFull(c, b); err != nil {
					t.Errorf("SOCKS5 greeting after %d accept errors: %v", failures, err)
				}
			} else if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read = %v, want the connection served (closed)", err)
			}
			c.Close()

			got := testutil.ToFloat64(f.Proxy.cfg.AcceptErrors.Counter(tc.listener))
			if got != failures {
				t.Errorf("%s{listener=%q} = %v, want %d", telemetry.AcceptErrorsName, tc.listener, got, failures)
			}
			if err := f.Proxy.AcceptHealth(); err == nil || !strings.Contains(err.Error(), "too many open files") {
				t.Errorf("AcceptHealth() = %v, want the accept error", err)
			}
			now = now.Add(AcceptErrorHold + time.Millisecond)
			if err := f.Proxy.AcceptHealth(); err != nil {
				t.Errorf("AcceptHealth() %s after the last error = %v, want nil", AcceptErrorHold, err)
			}

			l.Close()
			if err := <-served; err != nil {
				t.Errorf("serve after Close = %v, want nil", err)
			}
		})
	}
}

// TestAcceptLoopStopsOnPermanentError: an error that is not temporary ends
// the loop with it.
func TestAcceptLoopStopsOnPermanentError(t *testing.T) {
	f := newInboundFixture(t, Config{})
	inner, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	l := &failingListener{Listener: inner, n: 1, err: &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EINVAL}}
	if err := f.Proxy.ServeSOCKS(l, f.Pod); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ServeSOCKS = %v, want EINVAL", err)
	}
}
