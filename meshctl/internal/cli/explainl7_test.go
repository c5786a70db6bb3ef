package cli

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRequestFlags: the request explain decides at a waypoint, with curl's
// defaults (GET /, Host DST without :80).
func TestRequestFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   requestFlags
		host    string
		port    uint16
		want    *L7Request
		wantErr string
	}{
		{name: "none", host: "echo.demo", port: 80},
		{name: "path only", flags: requestFlags{path: "/admin"}, host: "echo.demo", port: 80,
			want: &L7Request{Method: "GET", Path: "/admin", Host: "echo.demo"}},
		{name: "port in host", flags: requestFlags{method: "POST"}, host: "echo.demo", port: 8080,
			want: &L7Request{Method: "POST", Path: "/", Host: "echo.demo:8080"}},
		{name: "IPv6 host", flags: requestFlags{method: "GET"}, host: "fd00::1", port: 8080,
			want: &L7Request{Method: "GET", Path: "/", Host: "[fd00::1]:8080"}},
		{name: "headers canonical, Host header", flags: requestFlags{headers: []string{"x-user=alice", "X-User=bob", "host=echo", "x-empty="}}, host: "echo.demo", port: 80,
			want: &L7Request{Method: "GET", Path: "/", Host: "echo", Headers: http.Header{"X-User": {"alice", "bob"}, "X-Empty": {""}}}},
		{name: "--host wins over a Host header", flags: requestFlags{host: "a", headers: []string{"Host=b"}}, host: "echo.demo", port: 80,
			want: &L7Request{Method: "GET", Path: "/", Host: "a"}},
		{name: "tcp", flags: requestFlags{tcp: true}, host: "echo.demo", port: 80, want: &L7Request{TCP: true}},
		{name: "tcp with a path", flags: requestFlags{tcp: true, path: "/"}, wantErr: "--tcp takes no"},
		{name: "header without =", flags: requestFlags{headers: []string{"x-user: alice"}}, wantErr: "want NAME=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.flags.request(tc.host, tc.port)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("request() error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("request() error = %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("request() (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExplainRequestFlagErrors: a bad request flag fails the command.
func TestExplainRequestFlagErrors(t *testing.T) {
	addr, _ := serveDump(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tcp", "--path", "/"}, "--tcp takes no"},
		{[]string{"--header", "novalue"}, "want NAME=VALUE"},
	} {
		_, errOut, code := run(t, append([]string{"--istiod", "127.0.0.1:1", "--proxy-admin", "node-a=" + addr, "explain", "demo/client", "echo-l7.demo:80"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("explain %v = exit %d, %q; want an error containing %q", tc.args, code, errOut, tc.want)
		}
	}
}
