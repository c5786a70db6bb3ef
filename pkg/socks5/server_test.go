package socks5

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		wantAddr  netip.AddrPort
		wantHost  string
		wantErr   bool
		wantReply []byte // what the server writes after the greeting answer
		wantEarly []byte // stream bytes sent without waiting for the reply
	}{
		{
			name:     "IPv4",
			in:       []byte{5, 1, 0, 5, 1, 0, 1, 127, 1, 2, 3, 0x1f, 0x90},
			wantAddr: netip.MustParseAddrPort("127.1.2.3:8080"),
		},
		{
			name:     "IPv6",
			in:       append(append([]byte{5, 1, 0, 5, 1, 0, 4}, netip.MustParseAddr("::1").AsSlice()...), 0, 80),
			wantAddr: netip.MustParseAddrPort("[::1]:80"),
		},
		{
			name:     "host name keeps its port",
			in:       append(append([]byte{5, 1, 0, 5, 1, 0, 3, 4}, "echo"...), 0, 80),
			wantHost: "echo",
			wantAddr: netip.AddrPortFrom(netip.Addr{}, 80),
		},
		{
			name:     "IP literal sent as a name",
			in:       append(append([]byte{5, 1, 0, 5, 1, 0, 3, 8}, "10.0.0.1"...), 0, 80),
			wantAddr: netip.MustParseAddrPort("10.0.0.1:80"),
		},
		{
			name:      "data sent with the request is kept",
			in:        []byte{5, 1, 0, 5, 1, 0, 1, 127, 1, 2, 3, 0, 80, 'h', 'i'},
			wantAddr:  netip.MustParseAddrPort("127.1.2.3:80"),
			wantEarly: []byte("hi"),
		},
		{
			name:      "BIND is refused",
			in:        []byte{5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80},
			wantErr:   true,
			wantReply: []byte{5, CommandNotSupported},
		},
		{
			name:      "scoped address is refused",
			in:        append(append([]byte{5, 1, 0, 5, 1, 0, 3, 12}, "fe80::1%eth0"...), 0, 80),
			wantErr:   true,
			wantReply: []byte{5, AddressTypeNotSupported},
		},
		{
			name:    "only username/password auth offered",
			in:      []byte{5, 1, 2},
			wantErr: true,
		},
		{
			name:    "SOCKS4",
			in:      []byte{4, 1, 0, 80, 127, 0, 0, 1, 0},
			wantErr: true,
		},
		{
			name:    "truncated",
			in:      []byte{5, 1, 0, 5, 1, 0, 1, 127},
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server, client := net.Pipe()
			defer client.Close()
			go func() {
				client.Write(tc.in)
				if tc.name == "truncated" {
					client.Close()
				}
			}()
			var out bytes.Buffer
			done := make(chan struct{})
			go func() { io.Copy(&out, client); close(done) }()
			got, err := ReadRequest(server, time.Second)
			server.Close()
			<-done
			if (err != nil) != tc.wantErr {
				t.Fatalf("ReadRequest() error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantReply != nil && !bytes.Contains(out.Bytes(), tc.wantReply) {
				t.Errorf("server wrote %v, want it to contain %v", out.Bytes(), tc.wantReply)
			}
			if err != nil {
				return
			}
			if got.Addr != tc.wantAddr || got.Host != tc.wantHost || !bytes.Equal(got.Early, tc.wantEarly) {
				t.Errorf("ReadRequest() = %v %q early %q, want %v %q early %q",
					got.Addr, got.Host, got.Early, tc.wantAddr, tc.wantHost, tc.wantEarly)
			}
		})
	}
}
