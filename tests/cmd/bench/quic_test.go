package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/bench"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// TestQUICSetup checks -only quic's harness, not its figures: mesh-quic
// goes over QUIC and mesh over TCP, and the netem underlay can be set and
// removed. Root only.
func TestQUICSetup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s, err := setupQUIC(ctx, options{out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	tunnels := func(transport string) string {
		b, err := cluster.HTTPClient{NS: s.c.Node(1).Ztunnel().Node.NS}.Get(ctx, "http://"+cluster.MetricsAddr+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "ztunnel_hbone_tunnels_total{") && strings.Contains(l, `direction="outbound"`) && strings.Contains(l, `transport="`+transport+`"`) {
				return l[strings.LastIndexByte(l, ' ')+1:]
			}
		}
		return "0"
	}
	for _, phase := range []string{"clean", "lossy"} {
		if phase == "lossy" {
			if err := setNetem(ctx, s.c, true); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range s.variants {
			if _, err := bench.Throughput(ctx, v.dial, 1<<20, time.Second); err != nil {
				t.Fatalf("%s, %s underlay: throughput: %v", v.name, phase, err)
			}
			res, err := bench.OpenLoop(ctx, v.dial, 2, 100, 300*time.Millisecond)
			if err != nil || res.Requests == 0 || res.Errors > 0 {
				t.Fatalf("%s, %s underlay: requests: %+v, %v", v.name, phase, res, err)
			}
		}
	}
	if err := setNetem(ctx, s.c, false); err != nil {
		t.Fatal(err)
	}
	// mesh-quic: one tunnel per throughput run and per request connection.
	if got := tunnels("quic"); got == "0" {
		t.Error("node-1 opened no QUIC tunnel: mesh-quic is not over QUIC")
	}
	if got := tunnels("tcp"); got == "0" {
		t.Error("node-1 opened no TCP tunnel: mesh is not over TCP")
	}
}
