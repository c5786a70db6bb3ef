package ztunnel

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/ztunnel/proxy"
)

// TestLimitsPlumbing: every field of Limits reaches the pool, the HBONE
// server or the proxy (the tests of pkg/hbone and ztunnel/proxy check
// what each does when hit).
func TestLimitsPlumbing(t *testing.T) {
	l := Limits{
		MaxStreamsPerConn: 7, MaxConcurrentStreams: 8, MaxHeaderListSize: 9000,
		HandshakeTimeout: 1 * time.Second, ResponseTimeout: 2 * time.Second, ConnectTimeout: 3 * time.Second,
		StreamIdleTimeout: 4 * time.Second, TCPKeepAlive: 5 * time.Second, TCPUserTimeout: 6 * time.Second,
		MaxConnsPerPod: 10, MaxPendingHandshakes: 11, ProbeTimeout: 12 * time.Second,
	}
	hits := proxy.NewLimitHits(prometheus.NewRegistry())
	sock := hbone.SocketOptions{KeepAliveIdle: 5 * time.Second, KeepAliveInterval: 5 * time.Second, UserTimeout: 6 * time.Second}
	ignoreFuncs := cmpopts.IgnoreTypes(func(string) {})

	var pool hbone.PoolConfig
	l.applyPool(&pool, hits)
	wantPool := hbone.PoolConfig{MaxStreamsPerConn: 7, MaxHeaderListSize: 9000, HandshakeTimeout: time.Second, ResponseTimeout: 2 * time.Second, ProbeTimeout: 12 * time.Second, DialTimeout: 3 * time.Second, SocketOptions: sock}
	if diff := cmp.Diff(wantPool, pool, ignoreFuncs, cmpopts.IgnoreFields(hbone.PoolConfig{}, "TLSConfig", "Dialer", "Logger")); diff != "" {
		t.Errorf("applyPool() mismatch (-want +got):\n%s", diff)
	}
	if pool.OnLimit == nil {
		t.Error("applyPool() left OnLimit nil")
	}

	var srv hbone.Server
	l.applyServer(&srv, hits)
	got := []any{srv.MaxConcurrentStreams, srv.MaxHeaderListSize, srv.HandshakeTimeout, srv.MaxPendingHandshakes, srv.SocketOptions, srv.OnLimit != nil}
	want := []any{uint32(8), uint32(9000), time.Second, 11, sock, true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("applyServer() mismatch (-want +got):\n%s", diff)
	}

	pc := l.proxyConfig(proxy.Config{}, hits)
	got = []any{pc.Limits == hits, pc.ConnectTimeout, pc.MaxConnsPerPod, pc.StreamIdleTimeout, pc.SocketOptions}
	want = []any{true, 3 * time.Second, 10, 4 * time.Second, sock}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("proxyConfig() mismatch (-want +got):\n%s", diff)
	}
}
