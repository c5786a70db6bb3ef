package echo

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	suiteecho "sigs.k8s.io/gateway-api/conformance/utils/echo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs a Server for cfg on 127.0.0.1 until the test ends.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Addr = "127.0.0.1"
	s := NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		s.Wait()
	})
	return s
}

// hostsFile writes a hosts file naming "echo" 127.0.0.1, as the harness
// names a Service.
func hostsFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(p, []byte("# comment\n127.0.0.1\techo echo.ns.svc.cluster.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// parsed is what the conformance suite reads of an answer.
type parsed struct {
	Code, Hostname, Version, Host, URL, Method, Protocol, Port string
	RequestHeaders                                             map[string][]string
	ResponseHeaders                                            map[string][]string
}

func parse(out string) parsed {
	r := suiteecho.ParseResponse(out)
	return parsed{r.Code, r.Hostname, r.Version, r.Host, r.URL, r.Method, r.Protocol, r.Port, r.RequestHeaders, r.ResponseHeaders}
}

// TestClientServerParsedBySuite runs the client against the server over
// HTTP/1.1, h2c, TLS and gRPC, and parses its output with the
// conformance suite's own parser: every field the suite compares is
// there, with the value the request carried.
func TestClientServerParsedBySuite(t *testing.T) {
	s := start(t, Config{HTTPPorts: []int{0}, GRPCPorts: []int{0}, Version: "v1", Hostname: "echo-v1-abc"})
	tlsSrv := start(t, Config{HTTPPorts: []int{0}, TLSPorts: []int{0}, Hostname: "echo-tls"})
	hosts := hostsFile(t)
	httpPort, grpcPort, tlsPort := strconv.Itoa(s.Port("http", 0)), strconv.Itoa(s.Port("grpc", 0)), strconv.Itoa(tlsSrv.Port("http", 0))

	tests := []struct {
		name string
		args []string
		want parsed
	}{{
		name: "HTTP/1.1 with headers, method and path",
		args: []string{"http://echo:" + httpPort + "/some/path?q=1", "--method=POST", "-H", "X-Test:one", "-H", "Host:foo.example"},
		want: parsed{Code: "200", Hostname: "echo-v1-abc", Version: "v1", Host: "foo.example", URL: "/some/path?q=1", Method: "POST", Protocol: "HTTP/1.1", Port: httpPort,
			RequestHeaders:  map[string][]string{"X-Test": {"one"}, "User-Agent": nil, "Content-Length": nil, "Accept-Encoding": {"gzip"}},
			ResponseHeaders: map[string][]string{"Content-Type": {"application/text"}, "Date": nil, "Content-Length": nil}},
	}, {
		name: "h2c with prior knowledge",
		args: []string{"http://echo.ns.svc.cluster.local:" + httpPort + "/", "--http2"},
		want: parsed{Code: "200", Hostname: "echo-v1-abc", Version: "v1", Host: "echo.ns.svc.cluster.local:" + httpPort, URL: "/", Method: "GET", Protocol: "HTTP/2.0", Port: httpPort,
			RequestHeaders:  map[string][]string{"User-Agent": {"Go-http-client/2.0"}, "Accept-Encoding": {"gzip"}},
			ResponseHeaders: map[string][]string{"Content-Type": {"application/text"}, "Date": nil, "Content-Length": nil}},
	}, {
		name: "status and response headers asked for",
		args: []string{"http://echo:" + httpPort + "/?codes=503&headers=X-Answer:yes"},
		want: parsed{Code: "503", Hostname: "echo-v1-abc", Version: "v1", Host: "echo:" + httpPort, URL: "/?codes=503&headers=X-Answer:yes", Method: "GET", Protocol: "HTTP/1.1", Port: httpPort,
			RequestHeaders:  map[string][]string{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}},
			ResponseHeaders: map[string][]string{"Content-Type": {"application/text"}, "X-Answer": {"yes"}, "Date": nil, "Content-Length": nil}},
	}, {
		name: "HTTPS, HTTP/2 by ALPN",
		args: []string{"https://echo:" + tlsPort + "/tls"},
		want: parsed{Code: "200", Hostname: "echo-tls", Host: "echo:" + tlsPort, URL: "/tls", Method: "GET", Protocol: "HTTP/2.0", Port: tlsPort,
			RequestHeaders:  map[string][]string{"User-Agent": {"Go-http-client/2.0"}, "Accept-Encoding": {"gzip"}},
			ResponseHeaders: map[string][]string{"Content-Type": {"application/text"}, "Date": nil, "Content-Length": nil}},
	}, {
		name: "gRPC with metadata",
		args: []string{"grpc://echo:" + grpcPort, "-H", "X-Md:v"},
		want: parsed{Code: "200", Hostname: "echo-v1-abc", Version: "v1", Host: "echo:" + grpcPort, URL: "/proto.EchoTestService/Echo", Method: "POST", Protocol: "GRPC", Port: grpcPort,
			RequestHeaders:  map[string][]string{"X-Md": {"v"}, "Content-Type": {"application/grpc"}, "User-Agent": nil},
			ResponseHeaders: map[string][]string{"Content-Type": {"application/grpc"}}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseClientArgs(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			req.HostsFile = hosts
			var out strings.Builder
			if err := Do(t.Context(), req, &out); err != nil {
				t.Fatalf("Do(%q) = %v; output:\n%s", tc.args, err, out.String())
			}
			got := parse(out.String())
			// Values that vary (dates, lengths, user agents) are compared
			// by presence.
			for _, m := range []map[string][]string{got.RequestHeaders, got.ResponseHeaders, tc.want.RequestHeaders, tc.want.ResponseHeaders} {
				for k := range m {
					if k == "Date" || k == "Content-Length" || k == "User-Agent" {
						m[k] = nil
					}
				}
			}
			for _, drop := range []string{"Grpc-Accept-Encoding", "Te"} {
				delete(got.RequestHeaders, drop)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("the suite's ParseResponse of client %q (-want +got):\n%s\noutput:\n%s", tc.args, diff, out.String())
			}
		})
	}
}

// TestClientCount checks that --count=N prints N answers that the suite's
// batch parsing (blank-line separated) counts as N, each on a new
// connection.
func TestClientCount(t *testing.T) {
	s := start(t, Config{HTTPPorts: []int{0}, GRPCPorts: []int{0}, Hostname: "echo-v2-x"})
	hosts := hostsFile(t)
	for _, url := range []string{"http://echo:" + strconv.Itoa(s.Port("http", 0)), "grpc://echo:" + strconv.Itoa(s.Port("grpc", 0))} {
		t.Run(url, func(t *testing.T) {
			req, err := ParseClientArgs([]string{url, "--count=7"})
			if err != nil {
				t.Fatal(err)
			}
			req.HostsFile = hosts
			var out strings.Builder
			if err := Do(t.Context(), req, &out); err != nil {
				t.Fatal(err)
			}
			var hostnames []string
			for sec := range strings.SplitSeq(out.String(), "\n\n") {
				if r := suiteecho.ParseResponse(sec); r.Hostname != "" {
					hostnames = append(hostnames, r.Hostname)
				}
			}
			if want := strings.Fields(strings.Repeat("echo-v2-x ", 7)); !cmp.Equal(want, hostnames) {
				t.Errorf("hostnames of the answers = %q, want %q", hostnames, want)
			}
		})
	}
}

// TestClientFails checks that a request without an answer is an error
// (the exec then exits non-zero and the suite retries), and that a bad
// command line is refused.
func TestClientFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	for _, url := range []string{"http://" + addr + "/", "grpc://" + addr} {
		req, err := ParseClientArgs([]string{url, "--timeout=2s"})
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		if err := Do(t.Context(), req, &out); err == nil {
			t.Errorf("Do(%s) with nothing listening = nil, want an error; output %q", url, out.String())
		}
	}
	for _, args := range [][]string{{}, {"a", "b"}, {"http://x", "-H", "no-colon"}, {"http://x", "--count=0"}, {"http://x", "--bogus"}} {
		if _, err := ParseClientArgs(args); err == nil {
			t.Errorf("ParseClientArgs(%q) = nil error, want one", args)
		}
	}
}

// TestTCP checks the TCP port: a description first, then an echo.
func TestTCP(t *testing.T) {
	s := start(t, Config{TCPPorts: []int{0}, Hostname: "tcp-host"})
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port("tcp", 0)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for range 20 {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		lines = append(lines, strings.TrimSuffix(l, "\n"))
		if l == "ping\n" {
			break
		}
	}
	if got := parse(strings.Join(lines, "\n")); got.Hostname != "tcp-host" || got.Protocol != "TCP" || lines[len(lines)-1] != "ping" {
		t.Errorf("TCP answer %q: hostname %q proto %q, want tcp-host, TCP and the echo of ping last", lines, got.Hostname, got.Protocol)
	}
}

// TestSelfSignedWhenFilesMissing checks that TLS ports serve with a
// generated certificate when --crt/--key name missing files (the suite's
// manifests name /cert.crt and /cert.key).
func TestSelfSignedWhenFilesMissing(t *testing.T) {
	dir := t.TempDir()
	s := start(t, Config{HTTPPorts: []int{0}, TLSPorts: []int{0}, CertFile: filepath.Join(dir, "cert.crt"), KeyFile: filepath.Join(dir, "cert.key")})
	req, err := ParseClientArgs([]string{"https://127.0.0.1:" + strconv.Itoa(s.Port("http", 0)) + "/"})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := Do(t.Context(), req, &out); err != nil {
		t.Fatal(err)
	}
	if got := parse(out.String()); got.Code != "200" {
		t.Errorf("HTTPS answer code %q, want 200; output:\n%s", got.Code, out.String())
	}
}
