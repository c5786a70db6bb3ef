package socks5

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestConnect runs Connect against ReadRequest over a pipe: what the
// client asks for is what the server reads, and the server's reply code
// reaches the client as a *ReplyError.
func TestConnect(t *testing.T) {
	tests := []struct {
		name     string
		target   string
		reply    []byte // the server's answer to the request; default WriteReply(Succeeded)
		wantReq  Request
		wantCode byte // reply code Connect reports; 0: success
	}{
		{
			name:    "IPv4",
			target:  "127.1.2.3:8080",
			wantReq: Request{Addr: netip.MustParseAddrPort("127.1.2.3:8080")},
		},
		{
			name:    "IPv6",
			target:  "[::1]:80",
			wantReq: Request{Addr: netip.MustParseAddrPort("[::1]:80")},
		},
		{
			name:    "host name",
			target:  "echo.demo.svc.cluster.local:80",
			wantReq: Request{Host: "echo.demo.svc.cluster.local", Addr: netip.AddrPortFrom(netip.Addr{}, 80)},
		},
		{
			name:     "not allowed",
			target:   "127.1.2.3:80",
			reply:    []byte{5, NotAllowed, 0, 1, 0, 0, 0, 0, 0, 0},
			wantReq:  Request{Addr: netip.MustParseAddrPort("127.1.2.3:80")},
			wantCode: NotAllowed,
		},
		{
			name:    "bound address IPv6",
			target:  "127.1.2.3:80",
			reply:   append(append([]byte{5, 0, 0, 4}, netip.MustParseAddr("::1").AsSlice()...), 0, 80),
			wantReq: Request{Addr: netip.MustParseAddrPort("127.1.2.3:80")},
		},
		{
			name:     "bound address a name",
			target:   "127.1.2.3:80",
			reply:    append(append([]byte{5, HostUnreachable, 0, 3, 2}, "ab"...), 0, 80),
			wantReq:  Request{Addr: netip.MustParseAddrPort("127.1.2.3:80")},
			wantCode: HostUnreachable,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer client.Close()
			client.SetDeadline(time.Now().Add(5 * time.Second))
			got := make(chan Request, 1)
			go func() {
				defer server.Close()
				req, err := ReadRequest(server, 5*time.Second)
				got <- req
				if err != nil {
					return
				}
				if tc.reply != nil {
					server.Write(tc.reply)
				} else {
					WriteReply(server, Succeeded)
				}
			}()
			err := Connect(client, tc.target)
			var re *ReplyError
			switch {
			case tc.wantCode == 0 && err != nil:
				t.Errorf("Connect(%q) = %v, want success", tc.target, err)
			case tc.wantCode != 0 && (!errors.As(err, &re) || re.Code != tc.wantCode):
				t.Errorf("Connect(%q) = %v, want reply %d", tc.target, err, tc.wantCode)
			}
			if diff := cmp.Diff(tc.wantReq, <-got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("request read (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConnectBadTarget: a target that no request can carry fails before
// anything is written.
func TestConnectBadTarget(t *testing.T) {
	for _, target := range []string{
		"echo",                           // no port
		"echo:http",                      // port not a number
		"echo:65536",                     // port out of range
		":80",                            // empty host
		strings.Repeat("a", 256) + ":80", // host longer than a request holds
		"[fe80::1%" + strings.Repeat("e", 250) + "]:80", // scoped address sent as a name, too long
	} {
		server, client := net.Pipe()
		err := Connect(client, target)
		server.Close()
		client.Close()
		if err == nil || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "closed pipe") {
			t.Errorf("Connect(%q) = %v, want an error about the target", target, err)
		}
	}
}

// TestConnectGreetingRefused: a server that accepts none of the offered
// methods fails the handshake.
func TestConnectGreetingRefused(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		defer server.Close()
		var b [3]byte
		if _, err := server.Read(b[:]); err == nil {
			server.Write([]byte{5, 0xff})
		}
	}()
	err := Connect(client, "127.0.0.1:80")
	if err == nil || !strings.Contains(err.Error(), "greeting answered") {
		t.Errorf("Connect() = %v, want the greeting refused", err)
	}
}
