package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/hbone"
)

// TestInboundRefusesReservedPorts: a CONNECT to one of ztunnel's own ports
// on a local pod's address is refused with 400, even when something listens
// there (the SOCKS5 listener, say), so that no tunnel reaches ztunnel
// itself.
func TestInboundRefusesReservedPorts(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		ports []uint16
	}{
		{"defaults", Config{}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}},
		{"configured", Config{ReservedPorts: []uint16{16008, 16080}}, []uint16{16008, 16080}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newInboundFixture(t, tc.cfg)
			for _, port := range tc.ports {
				// Something listens there, as ztunnel's own listener would.
				l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, port).String())
				if err != nil {
					t.Fatal(err)
				}
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						c.Close()
					}
				}()
				c, err := f.connect(netip.AddrPortFrom(f.Pod, port))
				l.Close()
				var se *hbone.StatusError
				if !errors.As(err, &se) || se.Code != http.StatusBadRequest {
					if c != nil {
						c.Close()
					}
					t.Errorf("CONNECT %s:%d = %v, want status 400", f.Pod, port, err)
				}
			}
			// An ordinary port still goes through.
			l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			peer := echo(t, l)
			c, err := f.connect(l.Addr().(*net.TCPAddr).AddrPort())
			if err != nil {
				t.Fatalf("CONNECT to the app: %v", err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
				t.Fatalf("echo through the tunnel = %q, %v", buf, err)
			}
			<-peer
		})
	}
}

// TestSOCKSServesOnlyItsPod: the SOCKS5 listener of a pod acts with the
// pod's identity, so it serves only connections from the pod's own
// address; one from any other address (ztunnel's inbound path dialing
// from a client's address, for one) is closed unanswered.
func TestSOCKSServesOnlyItsPod(t *testing.T) {
	f := newInboundFixture(t, Config{})
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.Proxy.ServeSOCKS(l, f.Pod) }()
	defer func() {
		l.Close()
		if err := <-served; err != nil {
			t.Errorf("ServeSOCKS: %v", err)
		}
	}()
	greet := func(from netip.Addr) ([]byte, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{5, 1, 0}); err != nil {
			return nil, err
		}
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	other := f.Pod.Next()
	if b, err := greet(other); err == nil {
		t.Errorf("greeting from %s answered %v, want the connection closed", other, b)
	}
	if b, err := greet(f.Pod); err != nil || fmt.Sprint(b) != "[5 0]" {
		t.Errorf("greeting from the pod = %v, %v; want [5 0]", b, err)
	}
}
