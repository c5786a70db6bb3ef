package proxy

import "testing"

func TestForwardedHost(t *testing.T) {
	tests := []struct{ in, want string }{
		{`for="127.0.0.1:80";host=echo.demo.svc.cluster.local`, "echo.demo.svc.cluster.local"},
		{`for="127.0.0.1:80"`, ""},
		{`Host="a.b"; for=1.2.3.4`, "a.b"},
		{``, ""},
	}
	for _, tc := range tests {
		if got := forwardedHost(tc.in); got != tc.want {
			t.Errorf("forwardedHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
