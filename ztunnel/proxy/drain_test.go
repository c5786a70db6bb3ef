package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/socks5"
)

// TestDrainCarriesConnectionsAcceptedBeforeIt: a connection the proxy
// accepted before its listener closed, still dialing its upstream when
// Drain begins (a ztunnel handover: the old ztunnel closes the pod's
// listeners, then drains), is carried to the end, not reset. The dial is
// held (Config.DialPod) until the proxy drains, so the order is the one
// that lost a connection per handover under load.
func TestDrainCarriesConnectionsAcceptedBeforeIt(t *testing.T) {
	tests := []struct {
		name string
		// serve runs the listener's accept loop for the pod at pod.
		serve func(p *Proxy, l net.Listener, pod netip.Addr) error
		// hello is what the client does before its bytes (SOCKS5: the
		// CONNECT to app).
		hello func(c net.Conn, app netip.AddrPort) error
	}{
		{
			name:  "outbound (SOCKS5 listener, destination outside the mesh)",
			serve: (*Proxy).ServeSOCKS,
			hello: func(c net.Conn, app netip.AddrPort) error { return socks5.Connect(c, app.String()) },
		},
		{
			name:  "plaintext inbound (15006)",
			serve: (*Proxy).ServePlaintextInbound,
			hello: func(net.Conn, netip.AddrPort) error { return nil },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dialing := make(chan struct{}, 1)
			release := make(chan struct{})
			var f *outboundFixture
			f = newOutboundFixture(t, Config{
				// Every upstream of the test goes to the echo application,
				// once the test releases it.
				DialPod: func(ctx context.Context, _, _ netip.Addr, _ netip.AddrPort) (net.Conn, error) {
					dialing <- struct{}{}
					select {
					case <-release:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					var d net.Dialer
					return d.DialContext(ctx, "tcp", f.App.String())
				},
			}, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })

			l, err := net.Listen("tcp", netip.AddrPortFrom(f.Client, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- tc.serve(f.Proxy, l, f.Client) }()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Client.AsSlice()}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			helloDone := make(chan error, 1)
			go func() {
				err := tc.hello(c, f.App)
				if err == nil {
					_, err = c.Write([]byte("ping"))
				}
				helloDone <- err
			}()

			select {
			case <-dialing:
			case <-time.After(10 * time.Second):
				t.Fatal("the proxy never dialed the upstream")
			}
			// The handover: the listener closes, then the drain begins.
			l.Close()
			if err := <-served; err != nil {
				t.Errorf("accept loop: %v", err)
			}
			drainCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			drained := make(chan struct{})
			go func() { f.Proxy.Drain(drainCtx); close(drained) }()
			for i := 0; ; i++ {
				f.Proxy.mu.Lock()
				draining := f.Proxy.draining
				f.Proxy.mu.Unlock()
				if draining {
					break
				}
				if i == 1000 {
					t.Fatal("Drain did not start within 10 s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			close(release)

			if err := <-helloDone; err != nil {
				t.Fatalf("client: %v", err)
			}
			got := make([]byte, 4)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
				t.Errorf("echo through a connection accepted before the drain = %q, %v; want %q", got, err, "ping")
			}
			c.Close()
			select {
			case <-drained:
			case <-time.After(15 * time.Second):
				t.Fatal("Drain did not return")
			}
			if rec := nextRec(t, f.Recs); rec.Err != nil {
				t.Errorf("access log record of the connection: error %v, want none", rec.Err)
			}
		})
	}
}
