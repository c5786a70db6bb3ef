package xds

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/hbone/hbonetest"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// TestClientRedialsSilentServer: a connection to istiod-lite whose other
// end goes silent (no FIN, no RST) is noticed by the keepalive and
// redialed; without keepalive the client would wait on it for good.
func TestClientRedialsSilentServer(t *testing.T) {
	if testing.Short() {
		t.Skip("takes gRPC's shortest keepalive (10 s)")
	}
	keepaliveTime = 10 * time.Second // gRPC's floor
	t.Cleanup(func() { keepaliveTime = KeepaliveTime })

	ads, target := startScripted(t)
	// The connection open when blocked goes silent in both directions and
	// stays established (a peer gone without FIN or RST); later ones are
	// forwarded again.
	bh := hbonetest.NewBlackhole(t, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort(target))
	c, err := NewClient(ClientConfig{
		Target: bh.Addr().String(), Node: testNode, TypeURLs: []string{workloadapi.AddressTypeURL}, Handler: &recorder{},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan error, 1)
	go func() { started <- c.Start(ctx) }()
	defer func() {
		cancel()
		<-started
	}()
	ss := ads.accept(t)
	recvRequest(t, ss)
	bh.Block()
	bh.Unblock()
	start := time.Now()
	// The next stream can only come through a new connection: the silenced
	// one carries nothing any more. Ping after 10 s, 10 s to answer.
	select {
	case <-ads.streams:
		t.Logf("redialed %v after the server went silent", time.Since(start).Round(time.Second))
	case <-time.After(KeepaliveTimeout + keepaliveTime + 15*time.Second):
		t.Fatal("the client did not notice that the server went silent")
	}
}
