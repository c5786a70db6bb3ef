package e2e

// `meshctl logs` on the network namespace topology: ztunnel processes in
// in-pod mode on two nodes, istiod-lite's relay in the underlay namespace,
// meshctl run inside the underlay namespace against its TLS port.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
	"github.com/ambient-go/mesh/tests/netns"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// netnsLogsRing is the ztunnels' --access-log-ring in this test: small,
// so that what a stopped reader loses is mostly what its ring overwrote.
const netnsLogsRing = 256

// startLogsIn runs meshctl logs -o json inside ns against the cluster's
// istiod-lite (TLS port, checked with the mesh root).
func startLogsIn(t *testing.T, m *cluster.Cluster, paused bool, args ...string) *meshctlLogs {
	t.Helper()
	bin := buildMeshctl(t)
	root := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(root, m.Istiod.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"--istiod", m.IstiodAddr().String(), "--istiod-ca", root,
		"--istiod-token", logsToken, "logs", "-o", "json"}, args...)...)
	return runLogs(t, cmd, cancel, m.Topo.Underlay.Start, paused)
}

// ztunnelMetric reads one metric of node i's ztunnel.
func ztunnelMetric(t *testing.T, m *cluster.Cluster, i int, re *regexp.Regexp) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	b, err := cluster.HTTPClient{NS: m.Node(i).NS}.Get(ctx, "http://"+cluster.MetricsAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	sub := re.FindSubmatch(b)
	if sub == nil {
		return 0, fmt.Errorf("no %s", re)
	}
	var f float64
	_, err = fmt.Sscan(string(sub[1]), &f)
	return int(f), err
}

func waitWatchersNetns(t *testing.T, m *cluster.Cluster, n int) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		eventually(t, 20*time.Second, fmt.Sprintf("node-%d serving %d log streams", i, n), func() error {
			got, err := ztunnelMetric(t, m, i, watchersRE)
			if err == nil && got != n {
				err = fmt.Errorf("%s = %d", logstream.WatchersName, got)
			}
			return err
		})
	}
}

// TestMeshctlLogsNetns: `meshctl logs -f -n demo`, started before traffic,
// shows every connection from both nodes in time order; a reader that
// stops reading under load makes no connection fail and is told how many
// records it lost.
func TestMeshctlLogsNetns(t *testing.T) {
	netns.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds meshctl")
	}
	m := cluster.New(t, cluster.Options{LogLevel: "info", ZtunnelArgs: []string{"--access-log-ring", fmt.Sprint(netnsLogsRing)}})
	m.Write("meshctl-tokens.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: meshctl-tokens, namespace: istio-system}\nstringData: {admin: "+logsToken+"}\n")
	m.Namespace("demo", ambient)
	// A client and a server on each node; every connection crosses nodes.
	var clients, servers [2]*cluster.Pod
	for i := range 2 {
		var err error
		if clients[i], err = m.Node(i + 1).AddPod(cluster.PodSpec{Namespace: "demo", Name: fmt.Sprintf("client-%d", i+1)}); err != nil {
			t.Fatal(err)
		}
		if servers[i], err = m.Node(i + 1).AddPod(cluster.PodSpec{Namespace: "demo", Name: fmt.Sprintf("echo-%d", i+1), Labels: map[string]string{"app": "echo"}}); err != nil {
			t.Fatal(err)
		}
		startApp(t, servers[i], 8080)
	}
	// conn makes connection k: from node (k%2)+1's client to the other
	// node's server.
	conn := func(ctx context.Context, k int) error {
		src, dst := clients[k%2], servers[(k+1)%2]
		_, err := src.Get(ctx, netip.AddrPortFrom(dst.IP, 8080), "/")
		return err
	}
	for k := range 2 {
		eventually(t, 10*time.Second, "traffic flows", func() error { return conn(t.Context(), k) })
	}
	// Let the warm-up's records leave the relay's merge window first.
	time.Sleep(1500 * time.Millisecond)

	all := startLogsIn(t, m, false, "-f", "-n", "demo")
	waitWatchersNetns(t, m, 1)

	t.Run("every connection from both nodes, in time order", func(t *testing.T) {
		const conns = 20
		for k := range conns {
			if err := conn(t.Context(), k); err != nil {
				t.Fatalf("connection %d: %v", k, err)
			}
		}
		recs, _ := all.records(2*conns, 30*time.Second)
		perNode := map[string]int{}
		ends := map[string][]string{} // client address -> proxies that logged it
		for i, r := range recs {
			perNode[r.GetProxy()]++
			if i > 0 && r.GetTime().AsTime().Before(recs[i-1].GetTime().AsTime()) {
				t.Errorf("record %d (%v) is older than the one before (%v)", i, r.GetTime().AsTime(), recs[i-1].GetTime().AsTime())
			}
			if r.GetVerdict() != logsv1.Verdict_ALLOW || r.GetDestination().GetNamespace() != "demo" {
				t.Errorf("record %v: want ALLOW to namespace demo", r)
			}
			ends[r.GetSource().GetAddr()] = append(ends[r.GetSource().GetAddr()], r.GetProxy())
		}
		if perNode["node-1"] != conns || perNode["node-2"] != conns {
			t.Errorf("records per node = %v, want %d of each", perNode, conns)
		}
		if len(ends) != conns {
			t.Errorf("%d connections in the stream, want %d", len(ends), conns)
		}
		for addr, nodes := range ends {
			slices.Sort(nodes)
			if !slices.Equal(nodes, []string{"node-1", "node-2"}) {
				t.Errorf("connection from %s logged by %q, want node-1 (one end) and node-2 (the other)", addr, nodes)
			}
		}
	})

	// The figure is a reader stopped for 10 s under 5,000
	// connections/s (100,000 records); scaled down, a stopped reader faces
	// 500 connections/s for 8 s (8,000 records, two per connection)
	// against rings of netnsLogsRing: twice what is buffered between the
	// rings and the reader.
	t.Run("a stopped reader slows no connection and is told what it lost", func(t *testing.T) {
		drainLogs(all.out)
		slow := startLogsIn(t, m, true, "-f", "-n", "demo")
		waitWatchersNetns(t, m, 2)
		lostBefore := 0
		for i := 1; i <= 2; i++ {
			n, err := ztunnelMetric(t, m, i, regexp.MustCompile(`(?m)^`+logstream.LostRecordsName+` (\S+)`))
			if err == nil {
				lostBefore += n
			}
		}

		// Load at a capped rate for a fixed time. The ztunnels count a
		// loss only when the stopped reader reads again, so the load is
		// sized beforehand: between the rings and the stopped reader,
		// about 4,000 records wait (the relay's merge window, gRPC flow
		// control windows, meshctl's pipe), and 8 s at 500 connections/s
		// logs 8,000.
		const rate, rounds, workers = 500, 8, 16
		lostMetric := regexp.MustCompile(`(?m)^` + logstream.LostRecordsName + ` (\S+)`)
		lostNow := func() int {
			n := 0
			for i := 1; i <= 2; i++ {
				if v, err := ztunnelMetric(t, m, i, lostMetric); err == nil {
					n += v
				}
			}
			return n
		}
		var failed atomic.Int64
		var mu sync.Mutex
		var latencies []time.Duration
		total := 0
		start := time.Now()
		for range rounds {
			tokens := make(chan int)
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := range tokens {
						s := time.Now()
						if err := conn(t.Context(), k); err != nil {
							failed.Add(1)
							continue
						}
						d := time.Since(s)
						mu.Lock()
						latencies = append(latencies, d)
						mu.Unlock()
					}
				}()
			}
			tick := time.NewTicker(time.Second / rate)
			for range rate {
				<-tick.C
				tokens <- total
				total++
			}
			tick.Stop()
			close(tokens)
			wg.Wait()
		}
		elapsed := time.Since(start)
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		if len(latencies) > 0 {
			t.Logf("%d connections in %v (%.0f/s) while a reader was stopped: p50 %v, p99 %v, %d failed",
				total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(),
				latencies[len(latencies)/2], latencies[len(latencies)*99/100], failed.Load())
		}
		if n := failed.Load(); n > 0 {
			t.Fatalf("%d of %d connections failed while a reader was stopped", n, total)
		}

		// The stopped reader resumes: it gets the rest and is told of the
		// records it lost, which the ztunnels count.
		close(slow.paused)
		var got, lost int
		for got+lost < 2*total {
			r := slow.next(30 * time.Second)
			switch {
			case r.GetRecord() != nil:
				got++
			case r.GetLost() != nil:
				lost += int(r.GetLost().GetCount())
			}
		}
		t.Logf("the stopped reader got %d records and was told of %d lost", got, lost)
		if lost == 0 {
			t.Errorf("records %d, lost 0: want the reader told of lost records", got)
		}
		if counted := lostNow(); counted-lostBefore < lost {
			t.Errorf("%s rose by %d on the ztunnels, want at least the %d the reader was told of", logstream.LostRecordsName, lostNow()-lostBefore, lost)
		}
	})
}
