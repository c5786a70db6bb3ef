package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestL7PeerOnLoopback runs the peer variants on loopback with the real
// binaries (skipped when stunnel4 or haproxy is not installed): HTTP
// through the stunnel pair (L4), and through stunnel client → HAProxy →
// stunnel server (L7). HAProxy must route by path: HTTPPath reaches the
// application, another prefix gets HAProxy's own 404, and a client
// without the bench's certificate is refused.
func TestL7PeerOnLoopback(t *testing.T) {
	for _, bin := range []string{"stunnel4", "haproxy"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := netip.AddrFrom4([4]byte{127, byte(30 + rand.IntN(190)), byte(150 + rand.IntN(50)), 0})
	addr := func(d byte) netip.Addr { b := base.As4(); b[3] = d; return netip.AddrFrom4(b) }
	backend := addr(10)
	apps, err := StartApps(backend.String())
	if err != nil {
		t.Fatalf("StartApps(%s): %v", backend, err)
	}
	defer apps.Close()
	dir := t.TempDir()
	pcfg := PeerConfig{Dir: dir, Client: addr(1), Server: addr(2), Backend: backend,
		L7: netip.AddrPortFrom(addr(3), 8443)}
	peer, err := StartPeer(ctx, pcfg)
	if err != nil {
		t.Fatalf("StartPeer: %v", err)
	}
	defer peer.Stop()
	l7, err := StartL7(ctx, L7Config{Dir: dir, Listen: pcfg.L7, Backend: pcfg.L7Backend()})
	if err != nil {
		t.Fatalf("StartL7: %v", err)
	}
	defer l7.Stop()

	for _, tc := range []struct {
		name string
		dial Dialer
	}{{"stunnel pair", peer.Dial}, {"through HAProxy", peer.DialL7}} {
		if err := HTTPCheck(ctx, tc.dial); err != nil {
			t.Errorf("%s: HTTPCheck() = %v, want a 1 KiB answer", tc.name, err)
		}
		res, err := HTTPOpenLoop(ctx, tc.dial, 2, 200, 250*time.Millisecond)
		if err != nil || res.Requests != 50 {
			t.Errorf("%s: HTTPOpenLoop(200 rps, 250ms) = %d requests, %v; want 50", tc.name, res.Requests, err)
		}
	}

	// Routing: another path prefix never reaches the application.
	c, err := peer.DialL7(ctx, HTTPPort)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /other HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(c)
	c.Close()
	if !strings.HasPrefix(string(b), "HTTP/1.1 404") || !strings.Contains(string(b), "no route") {
		t.Errorf("GET /other through HAProxy = %q, want HAProxy's 404 \"no route\"", b)
	}

	// mTLS: a plain TCP client gets no HTTP answer from the frontend.
	c, err = net.DialTimeout("tcp", pcfg.L7.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", HTTPPath)
	b, _ = io.ReadAll(c)
	c.Close()
	if strings.HasPrefix(string(b), "HTTP/") {
		t.Errorf("plaintext to HAProxy's frontend answered %q, want a TLS refusal", b)
	}
}

// TestHaproxyConf pins what makes the L7 peer comparable to a waypoint:
// mTLS in (verify required), routing by path prefix, mTLS out with a
// client certificate, TLS 1.3 only.
func TestHaproxyConf(t *testing.T) {
	conf := haproxyConf(L7Config{Dir: "/d", Listen: netip.MustParseAddrPort("10.0.0.3:8443"),
		Backend: netip.MustParseAddrPort("10.0.0.2:8080")})
	for _, want := range []string{
		"bind 10.0.0.3:8443 ssl crt /d/haproxy-server.pem ca-file /d/ca.pem verify required",
		"use_backend app if { path_beg /echo }",
		"server app 10.0.0.2:8080 ssl verify required ca-file /d/ca.pem crt /d/haproxy-client.pem",
		"ssl-default-bind-options ssl-min-ver TLSv1.3",
		"ssl-default-server-options ssl-min-ver TLSv1.3",
		"mode http",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("haproxyConf() lacks %q; got:\n%s", want, conf)
		}
	}
}
