package proxy

import (
	"strings"
	"testing"
)

// FuzzForwardedHost checks forwardedHost on any Forwarded header value.
// Property: the host is a substring of the header holding no double
// quote, and a header with no host= parameter gives "".
func FuzzForwardedHost(f *testing.F) {
	for _, s := range []string{
		`for="127.0.0.1:80";host=echo.demo.svc.cluster.local`,
		`for="127.0.0.1:80"`,
		`Host="a.b"; for=1.2.3.4`,
		`host="a"b"`,
		`host="a\"b"`,
		`for="[::1]:80";host="x;y"`,
		`host=a, for=b;host=c`,
		`host==`,
		`"`,
		``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got := forwardedHost(h)
		if !strings.Contains(h, got) {
			t.Errorf("forwardedHost(%q) = %q, not part of the header", h, got)
		}
		if strings.Contains(got, `"`) {
			t.Errorf("forwardedHost(%q) = %q, which holds a quote", h, got)
		}
		if got != "" && !strings.Contains(strings.ToLower(h), "host=") {
			t.Errorf("forwardedHost(%q) = %q from a header without host=", h, got)
		}
	})
}
