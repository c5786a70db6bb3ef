package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/summerwind/h2spec/config"
	"github.com/summerwind/h2spec/generic"
	"github.com/summerwind/h2spec/hpack"
	h2spechttp2 "github.com/summerwind/h2spec/http2"
	"github.com/summerwind/h2spec/spec"

	"github.com/ambient-go/mesh/pkg/identity/identitytest"
)

// h2specNotPassing lists the h2spec cases that do not pass against the
// HBONE server, each with the reason. Every other case must pass; a
// listed case that passes fails the test (unless flaky), so that the
// list stays true.
//
// The server is CONNECT-only (ISTIO-FACTS: the inbound answers 400 to
// anything but a CONNECT to ip:port) and its responses never carry a
// body, while h2spec's requests are GETs and POSTs to "/": each
// well-formed one is answered at once with a 400 HEADERS frame that ends
// the stream (and a RST_STREAM NO_ERROR if the request had not ended);
// malformed ones are reset with PROTOCOL_ERROR, as x/net's server does.
// Frames h2spec sends on a stream after that RST_STREAM are ignored
// (RFC 9113 §5.1). Cases that need a response body or a stream that
// stays open are rerun with CONNECT in TestConformanceServer. No
// protocol bug is listed now; bug marks one if it comes back.
var h2specNotPassing = map[string]struct {
	reason string
	bug    bool // a protocol bug, not a consequence of CONNECT-only
	flaky  bool // may pass
}{
	"generic/2/2":     {reason: "connect-only: expects DATA in the response to a POST; the 400 has no body"},
	"generic/2/3":     {reason: "connect-only: expects DATA in the response to a POST; the 400 has no body"},
	"http2/4.2/3":     {reason: "not applicable: h2spec's 20 KB HEADERS frame exceeds 16 KiB, but the server advertises SETTINGS_MAX_FRAME_SIZE 1 MiB (ISTIO-FACTS); a frame past 1 MiB is refused with FRAME_SIZE_ERROR (TestConformanceServerContinuationFlood, x/net's Framer)"},
	"http2/5.1/8":     {reason: "connect-only: the GET's stream is answered 400 and reset (NO_ERROR) before h2spec's RST_STREAM and DATA arrive, and RFC 9113 §5.1 says to ignore frames on a stream one reset; with CONNECT: TestConformanceServer/DATA_after_RST_STREAM"},
	"http2/5.1/9":     {reason: "connect-only: as 5.1/8, with HEADERS after the RST_STREAM; with CONNECT: TestConformanceServer/HEADERS_after_RST_STREAM"},
	"http2/5.1.2/1":   {reason: "connect-only: h2spec opens MAX_CONCURRENT_STREAMS+1 streams with GETs, each answered 400 and closed at once, so none counts against the limit"},
	"http2/6.9.1/3":   {reason: "connect-only: the GET's stream is answered 400 and reset before h2spec's WINDOW_UPDATEs arrive, so there is no open stream to overflow; with CONNECT: TestConformanceServer/stream_window_overflow"},
	"http2/8.1/1":     {reason: "connect-only: the second HEADERS arrives on a stream the server already answered 400 and reset, so it is ignored (RFC 9113 §5.1); with CONNECT: TestConformanceServer/second_HEADERS_without_END_STREAM"},
	"http2/8.1.2.1/3": {reason: "connect-only: the trailers arrive on a stream the server already answered 400 and reset, so they are ignored (RFC 9113 §5.1); with CONNECT: TestConformanceServer/pseudo-header_field_in_trailers"},
	"http2/8.1.2.6/1": {reason: "connect-only: a POST whose content-length does not match its DATA is answered 400 when its HEADERS arrive, before the body is counted"},
	"http2/8.1.2.6/2": {reason: "connect-only: a POST whose content-length does not match its DATA is answered 400 when its HEADERS arrive, before the body is counted"},
}

// h2specSkipped lists the cases h2spec skips itself (spec.ErrSkipped),
// with its reason.
var h2specSkipped = map[string]string{
	"http2/6.5.3/1": "needs a response with a body (h2spec's ServerDataLength); the 400 has none",
	"http2/6.9.1/1": "needs a response with a body; the 400 has none",
	"http2/6.9.2/1": "needs a response with a body; the 400 has none",
	"http2/6.9.2/2": "needs a response with a body; the 400 has none",
}

// h2specCase is one h2spec test case with its section ID as h2spec's
// command line names it (such as "http2/6.5.3/1").
type h2specCase struct {
	id     string
	strict bool
	tc     *spec.TestCase
}

// h2specCases returns every case of the groups, strict ones included.
func h2specCases(groups ...*spec.TestGroup) []h2specCase {
	var out []h2specCase
	var walk func(g *spec.TestGroup)
	walk = func(g *spec.TestGroup) {
		for i, tc := range append(append([]*spec.TestCase{}, g.Tests...), g.StrictTests...) {
			out = append(out, h2specCase{id: fmt.Sprintf("%s/%d", g.ID(), i+1), strict: g.Strict || tc.Strict, tc: tc})
		}
		for _, sub := range g.Groups {
			walk(sub)
		}
	}
	for _, g := range groups {
		walk(g)
	}
	return out
}

// TestH2Spec runs h2spec's generic, http2 and hpack groups (the
// conformance suite of RFC 7540/9113 and RFC 7541) in-process against a
// Server over mutual TLS.
func TestH2Spec(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	srv := &Server{
		TLSConfig: ca.ServerTLS(t, ca.ID("/ns/b/sa/server")),
		Handler: HandlerFunc(func(_ context.Context, _ *Request, tun *Tunnel) {
			tun.Reject(http.StatusNotFound, "h2spec sends no CONNECT")
		}),
	}
	addr := confServe(t, srv)

	// h2spec takes its client certificate from files.
	svid := ca.SVID(t, ca.ID("/ns/a/sa/h2spec"))
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &config.Config{
		Host:         addr.Addr().String(),
		Port:         int(addr.Port()),
		Path:         "/",
		Timeout:      3 * time.Second, // h2spec's default is 2 s
		MaxHeaderLen: 4000,
		TLS:          true,
		Insecure:     true, // the server's SPIFFE certificate has no host name; the chain is not what is tested
		Strict:       true,
		CertFile:     filepath.Join(dir, "cert.pem"),
		CertKeyFile:  filepath.Join(dir, "key.pem"),
	}
	if err := os.WriteFile(c.CertFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.CertKeyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	var passed, failed, skipped []string
	// Run the cases concurrently (the 18 that end by h2spec's timeout
	// wait c.Timeout each), then report each in its own subtest.
	cases := h2specCases(generic.Spec(), h2spechttp2.Spec(), hpack.Spec())
	results := make([]error, len(cases))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, hc := range cases {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// c.Timeout bounds h2spec's waits for frames; the dial (TLS
			// handshakes under -race, with other tests running) gets more.
			dc := *c
			dc.Timeout = confTimeout
			conn, err := spec.Dial(&dc)
			if err != nil {
				results[i] = fmt.Errorf("h2spec dial: %w", err)
				return
			}
			defer conn.Close()
			conn.Timeout = c.Timeout
			results[i] = hc.tc.Run(c, conn)
		}()
	}
	wg.Wait()
	// A case whose answer did not come within c.Timeout is run again,
	// alone, with a longer one: on a loaded machine 16 concurrent cases
	// under -race can miss 3 s (6 of ~150 once, with load 25 on 2 cores).
	// A server that does not answer at all still fails, after 15 s.
	for i, hc := range cases {
		var te *spec.TestError
		timedOut := errors.Is(results[i], spec.ErrTimeout) || (errors.As(results[i], &te) && te.Actual == (spec.TimeoutEvent{}).String())
		if _, listed := h2specNotPassing[hc.id]; listed || !timedOut {
			continue
		}
		slow := *c
		slow.Timeout = 15 * time.Second
		dc := slow
		dc.Timeout = confTimeout
		conn, err := spec.Dial(&dc)
		if err != nil {
			results[i] = fmt.Errorf("h2spec dial: %w", err)
			continue
		}
		conn.Timeout = slow.Timeout
		results[i] = hc.tc.Run(&slow, conn)
		conn.Close()
		t.Logf("%s timed out after %v with 16 cases at once; alone with %v: %v", hc.id, c.Timeout, slow.Timeout, results[i])
	}
	t.Run("cases", func(t *testing.T) {
		for i, hc := range cases {
			t.Run(hc.id, func(t *testing.T) {
				err := results[i]
				np, listed := h2specNotPassing[hc.id]
				skipReason, skipListed := h2specSkipped[hc.id]
				switch {
				case errors.Is(err, spec.ErrSkipped):
					skipped = append(skipped, hc.id)
					if !skipListed {
						t.Errorf("h2spec skipped %s (%s), which is not in h2specSkipped", hc.id, hc.tc.Desc)
					}
					t.Skipf("skipped by h2spec: %s", skipReason)
				case skipListed:
					t.Errorf("%s (%s) is in h2specSkipped but h2spec ran it: %v", hc.id, hc.tc.Desc, err)
				case err == nil && listed && !np.flaky:
					t.Errorf("%s (%s) passes: remove it from h2specNotPassing (%s)", hc.id, hc.tc.Desc, np.reason)
				case err == nil:
					passed = append(passed, hc.id)
				case listed:
					failed = append(failed, hc.id)
					kind := "connect-only"
					if np.bug {
						kind = "bug"
					}
					t.Skipf("%s, listed as %s: %s", hc.tc.Desc, kind, np.reason)
				default:
					failed = append(failed, hc.id)
					t.Errorf("h2spec %s: %s\nrequirement: %s\n%v", hc.id, hc.tc.Desc, hc.tc.Requirement, err)
				}
			})
		}
	})
	sort.Strings(passed)
	sort.Strings(failed)
	sort.Strings(skipped)
	t.Logf("h2spec: %d passed, %d not passing (listed with reasons), %d skipped by h2spec", len(passed), len(failed), len(skipped))
	if testing.Verbose() {
		t.Logf("passed: %s", strings.Join(passed, " "))
	}
}

// confServe runs srv on a loopback listener until the test ends.
func confServe(t *testing.T, srv *Server) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve() = %v, want ErrServerClosed", err)
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}
