package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-go/mesh/pkg/hbone"
	wp "github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

// benchPath is answered by the echo application with benchBody, without
// recording the request.
const benchPath = "/echo/1k"

var benchBody = bytes.Repeat([]byte("x"), 1024)

// benchmarkRequest sends 1 KiB POSTs answered with 1 KiB over one
// persistent connection through the whole test mesh (source HBONE client,
// the waypoint with its access log written as JSON, HBONE to the
// endpoint's ztunnel, the echo app): the figures include every part, the
// waypoint's share shows in a CPU profile.
//
// direct skips the waypoint: the client's tunnel goes straight to the
// endpoint's ztunnel (the mesh without waypoint), the baseline whose
// difference to the same benchmark through the waypoint is the waypoint's
// cost. cpu-ns/op is the process's user+system CPU time per request.
func benchmarkRequest(b *testing.B, h2, direct bool) { benchmarkRouted(b, h2, direct, 0) }

// benchmarkRouted is benchmarkRequest with rules HTTPRoute rules on the
// echo Service (0: no routes): rules-1 that do not match (exact paths, a
// header) before the one that sends the request to echo itself, so the
// figures show the cost of the route decision.
func benchmarkRouted(b *testing.B, h2, direct bool, rules int) {
	m := newMeshLogged(b, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if rules > 0 {
		var entries []*wp.HTTPRouteEntry
		for i := range rules - 1 {
			entries = append(entries, &wp.HTTPRouteEntry{Route: "default/r" + strconv.Itoa(i), Port: portHTTP,
				Match:    &wp.HTTPMatch{Path: &wp.StringMatch{Value: "/nomatch/" + strconv.Itoa(i)}, Headers: []*wp.HeaderMatch{{Name: "x-rule", Value: &wp.StringMatch{Value: strconv.Itoa(i)}}}},
				Backends: []*wp.Backend{{Service: "default/" + echoHost, Port: portHTTP, Weight: 1}}})
		}
		entries = append(entries, &wp.HTTPRouteEntry{Route: "default/last", Port: portHTTP,
			Match:    &wp.HTTPMatch{Path: &wp.StringMatch{Type: wp.StringMatch_PREFIX, Value: "/echo"}},
			Retry:    &wp.Retry{Attempts: 2, Codes: []uint32{503}}, // what istiod-lite sends for a rule without retry (Istio's default)
			Backends: []*wp.Backend{{Service: "default/" + echoHost, Port: portHTTP, Weight: 1}}})
		m.routes.Store(CompileRoutes([]*wp.Routes{{Service: "default/" + echoHost, Http: entries}}))
	}
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(b, svc, h2)
	if direct {
		c = m.directClient(b, h2)
	}
	target := url(svc, benchPath)
	do := func() {
		req, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(benchBody))
		if err != nil {
			b.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n != int64(len(benchBody)) {
			b.Fatalf("POST %s = %d with %d bytes, want 200 with %d", benchPath, resp.StatusCode, n, len(benchBody))
		}
	}
	do() // open the connections
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		do()
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime returns the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// directClient returns an HTTP client whose connections are tunnels from
// the client pod straight to the endpoint's ztunnel.
func (m *mesh) directClient(b *testing.B, h2 bool) *http.Client {
	var protos http.Protocols
	if h2 {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return m.srcPool.Dial(ctx, hbone.Target{
				Addr:       netip.AddrPortFrom(echoIP, m.hbonePort),
				Authority:  netip.AddrPortFrom(echoIP, m.httpPort).String(),
				SourceID:   m.clientID,
				DestIDs:    []spiffeid.ID{m.echoID},
				SourceAddr: clientIP,
			})
		},
	}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func BenchmarkHTTP1Request(b *testing.B)         { benchmarkRequest(b, false, false) }
func BenchmarkH2CRequest(b *testing.B)           { benchmarkRequest(b, true, false) }
func BenchmarkHTTP1NoWaypoint(b *testing.B)      { benchmarkRequest(b, false, true) }
func BenchmarkH2CRequestNoWaypoint(b *testing.B) { benchmarkRequest(b, true, true) }
func BenchmarkHTTP1Route1(b *testing.B)          { benchmarkRouted(b, false, false, 1) }
func BenchmarkHTTP1Route100(b *testing.B)        { benchmarkRouted(b, false, false, 100) }
