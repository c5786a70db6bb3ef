package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in       string
		full     bool
		want     protocol
		wantDone bool
	}{
		{in: "GET / HTTP/1.1\r\n", want: protoHTTP, wantDone: true},
		{in: "POST /x?y HTTP/1.0\n", want: protoHTTP, wantDone: true},
		{in: h2Preface, want: protoHTTP, wantDone: true},
		{in: "PRI * HTTP/2.0\r\n", want: protoUnknown},
		{in: "GET / HT", want: protoUnknown},
		{in: "GE", want: protoUnknown},
		{in: "\x16\x03\x01\x02\x00", want: protoTCP, wantDone: true}, // a TLS ClientHello
		{in: "SSH-2.0-OpenSSH\r\n", want: protoTCP, wantDone: true},
		{in: "GET / SPDY/3\r\n", want: protoTCP, wantDone: true},
		{in: " GET / HTTP/1.1\r\n", want: protoTCP, wantDone: true},
		{in: "GET /very-long", full: true, want: protoHTTP, wantDone: true},
		{in: "FOO /very-long", full: true, want: protoTCP, wantDone: true},
		{in: "ABCDEFGHIJKLMNOPQRSTUVWXYZ", want: protoTCP, wantDone: true},
	} {
		got, done := classify([]byte(tc.in), tc.full)
		if got != tc.want || done != tc.wantDone {
			t.Errorf("classify(%q, %v) = %v, %v, want %v, %v", tc.in, tc.full, got, done, tc.want, tc.wantDone)
		}
	}
}

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write string
		want  protocol
	}{
		{name: "http/1.1 in pieces", write: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", want: protoHTTP},
		{name: "h2 preface", write: h2Preface, want: protoHTTP},
		{name: "binary", write: "\x00\x01\x02", want: protoTCP},
		{name: "silent (server-first protocol)", write: "", want: protoTCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < len(tc.write); i += 5 { // in small writes
					b.Write([]byte(tc.write[i:min(i+5, len(tc.write))]))
				}
			}()
			c, got := sniff(a, 200*time.Millisecond)
			if got != tc.want {
				t.Errorf("sniff(%q) = %v, want %v", tc.write, got, tc.want)
			}
			if tc.write != "" && got == protoHTTP {
				// What was read is replayed.
				buf := make([]byte, len(tc.write))
				n, _ := c.Read(buf)
				if string(buf[:n]) != tc.write[:n] || n == 0 {
					t.Errorf("read after sniff = %q, want a prefix of %q", buf[:n], tc.write)
				}
			}
			b.Close()
			<-done
		})
	}
}

func TestServicePortProtocol(t *testing.T) {
	svc := &state.Service{Service: &workloadapi.Service{Ports: []*workloadapi.Port{
		{ServicePort: 80, AppProtocol: workloadapi.AppProtocol_HTTP11},
		{ServicePort: 81, AppProtocol: workloadapi.AppProtocol_HTTP2},
		{ServicePort: 82, AppProtocol: workloadapi.AppProtocol_GRPC},
		{ServicePort: 83, AppProtocol: workloadapi.AppProtocol_TCP},
		{ServicePort: 84, AppProtocol: workloadapi.AppProtocol_TLS},
		{ServicePort: 85},
	}}}
	for port, want := range map[uint16]protocol{80: protoHTTP, 81: protoHTTP2, 82: protoHTTP2, 83: protoTCP, 84: protoTCP, 85: protoUnknown, 86: protoUnknown} {
		if got := servicePortProtocol(svc, port); got != want {
			t.Errorf("servicePortProtocol(port %d) = %v, want %v", port, got, want)
		}
	}
}

func TestTraceID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{in: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", want: "4bf92f3577b34da6a3ce929d0e0e4736", ok: true},
		{in: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", want: "4bf92f3577b34da6a3ce929d0e0e4736", ok: true},
		{in: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"},
		{in: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{in: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
		{in: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{in: "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
		{in: ""},
	} {
		got, ok := traceID(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("traceID(%q) = %q, %v, want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// A request that arrives in one piece is classified from what came, not
// after waiting for more bytes until the timeout.
func TestSniffDecidesOnWhatArrived(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	go b.Write([]byte(req))
	got := make(chan protocol, 1)
	go func() {
		_, p := sniff(a, time.Minute)
		got <- p
	}()
	select {
	case p := <-got:
		if p != protoHTTP {
			t.Errorf("sniff(%q) = %v, want protoHTTP", req, p)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sniff(%q) still waiting for bytes that never come", req)
	}
}
