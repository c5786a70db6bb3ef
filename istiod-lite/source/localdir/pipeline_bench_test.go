package localdir_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ambient-go/mesh/istiod-lite/model"
	"github.com/ambient-go/mesh/istiod-lite/source/localdir"
	"github.com/ambient-go/mesh/istiod-lite/xds"
	"github.com/ambient-go/mesh/pkg/workloadapi"
)

// The control-plane figure's cluster (tests/bench): pods in files of 100,
// services in files of 100, every pod selected by one service.
const (
	benchPods, benchServices, benchPerFile = 10000, 2000, 100
)

func writeBenchCluster(tb testing.TB, dir string) {
	tb.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cluster\n  labels:\n    istio.io/dataplane-mode: ambient\n")
	for i := range 10 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-%d\n  namespace: cluster\n", i)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	write("cluster.yaml", b.String())
	for f := 0; f*benchPerFile < benchServices; f++ {
		b.Reset()
		for i := f * benchPerFile; i < min((f+1)*benchPerFile, benchServices); i++ {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-%d\n  namespace: cluster\nspec:\n  clusterIP: 198.19.%d.%d\n  selector:\n    app: svc-%d\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n", i, i/250, i%250+1, i)
		}
		write(fmt.Sprintf("services-%03d.yaml", f), b.String())
	}
	for f := 0; f*benchPerFile < benchPods; f++ {
		write(benchPodFile(f, -1, ""))
	}
}

func benchPodFile(f, changed int, version string) (string, string) {
	var b strings.Builder
	for i := f * benchPerFile; i < min((f+1)*benchPerFile, benchPods); i++ {
		v := "v0"
		if i == changed {
			v = version
		}
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-%d\n  namespace: cluster\n  labels:\n    app: svc-%d\n    version: %s\nspec:\n  nodeName: node-%d\n  serviceAccountName: sa-%d\n  containers:\n  - name: app\n    image: app\n    ports:\n    - containerPort: 8080\nstatus:\n  phase: Running\n  podIP: 198.18.%d.%d\n  conditions:\n  - type: Ready\n    status: \"True\"\n", i, i%benchServices, v, i%100, i%10, i/250, i%250+1)
	}
	return fmt.Sprintf("pods-%03d.yaml", f), b.String()
}

// BenchmarkPipelineChangeOnePod measures what istiod-lite does in local
// mode for one edited pod file: the watcher's reload and snapshot, Build,
// and the xDS server's Set (as server.applyInputs does), with 10,000 pods
// and 2,000 services. Reported per phase. "build" uses model.Build (what
// server.go does today), "builder" a model.Builder that reuses the
// messages of unchanged pods, which Set then does not encode again.
func BenchmarkPipelineChangeOnePod(b *testing.B) {
	b.Run("build", func(b *testing.B) { benchPipeline(b, false) })
	b.Run("builder", func(b *testing.B) { benchPipeline(b, true) })
}

func benchPipeline(b *testing.B, incremental bool) {
	dir := b.TempDir()
	writeBenchCluster(b, dir)
	snaps := make(chan *localdir.Snapshot, 1)
	w, err := localdir.NewWatcher(localdir.Config{Dir: dir, Debounce: time.Millisecond, PollInterval: time.Hour,
		OnUpdate: func(s *localdir.Snapshot) { snaps <- s }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Start(ctx) }()
	defer func() { cancel(); <-done }()
	srv := xds.NewServer(xds.ServerConfig{})
	builder := model.NewBuilder(model.Options{})
	apply := func(snap *localdir.Snapshot) (time.Duration, time.Duration) {
		t0 := time.Now()
		var out *model.Output
		if incremental {
			out = builder.Build(snap.Inputs)
		} else {
			out = model.Build(snap.Inputs, model.Options{})
		}
		_ = model.NodeIdentities(snap.Inputs, model.Options{})
		t1 := time.Now()
		addrs := make(map[string]proto.Message, len(out.Addresses))
		for k, v := range out.Addresses {
			addrs[k] = v
		}
		srv.Set(workloadapi.AddressTypeURL, addrs)
		return t1.Sub(t0), time.Since(t1)
	}
	first := <-snaps
	if n := len(first.Inputs.Pods); n != benchPods {
		b.Fatalf("loaded %d pods, want %d", n, benchPods)
	}
	apply(first)
	var load, build, set time.Duration
	b.ResetTimer()
	for i := range b.N {
		pod := (i * 7919) % benchPods
		name, content := benchPodFile(pod/benchPerFile, pod, fmt.Sprintf("v%d", i+1))
		path := filepath.Join(dir, name)
		t0 := time.Now()
		if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			b.Fatal(err)
		}
		snap := <-snaps
		load += time.Since(t0)
		bd, sd := apply(snap)
		build += bd
		set += sd
	}
	n := float64(b.N)
	b.ReportMetric(float64(load.Microseconds())/n/1000, "load-ms/op")
	b.ReportMetric(float64(build.Microseconds())/n/1000, "build-ms/op")
	b.ReportMetric(float64(set.Microseconds())/n/1000, "set-ms/op")
}
