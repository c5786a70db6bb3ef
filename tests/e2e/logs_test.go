package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/logstream"
	"github.com/ambient-go/mesh/pkg/logstream/logsv1"
	"github.com/ambient-go/mesh/tests/harness"
)

const logsToken = "logs-reader-token"

// meshctlLogs is a running `meshctl logs -o json`, its stdout parsed
// line by line into responses.
type meshctlLogs struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    chan *logsv1.WatchResponse
	stdout io.ReadCloser
	paused chan struct{} // closed: reading resumes
}

var (
	meshctlOnce sync.Once
	meshctlBin  string
	meshctlErr  error
)

// buildMeshctl builds bin/meshctl once per test binary.
func buildMeshctl(t *testing.T) string {
	t.Helper()
	meshctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshctl-e2e")
		if err != nil {
			meshctlErr = err
			return
		}
		meshctlBin = filepath.Join(dir, "meshctl")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", meshctlBin, "github.com/ambient-go/mesh/meshctl/cmd/meshctl").CombinedOutput()
		if err != nil {
			meshctlErr = fmt.Errorf("go build meshctl: %v\n%s", err, out)
		}
	})
	if meshctlErr != nil {
		t.Fatal(meshctlErr)
	}
	return meshctlBin
}

// startLogs runs meshctl logs against the mesh's istiod-lite (local mode,
// plaintext loopback port) with args; paused starts it without reading
// its output.
func startLogs(t *testing.T, istiod string, paused bool, args ...string) *meshctlLogs {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, buildMeshctl(t), append([]string{"--istiod", istiod, "--istiod-token", logsToken, "logs", "-o", "json"}, args...)...)
	return runLogs(t, cmd, cancel, (*exec.Cmd).Start, paused)
}

// runLogs starts cmd, a meshctl logs -o json made with a context that
// cancel cancels, with start, and decodes what it prints; paused starts it
// without reading its output. The test's end stops it.
func runLogs(t *testing.T, cmd *exec.Cmd, cancel context.CancelFunc, start func(*exec.Cmd) error, paused bool) *meshctlLogs {
	t.Helper()
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := start(cmd); err != nil {
		cancel()
		t.Fatal(err)
	}
	m := &meshctlLogs{t: t, cmd: cmd, out: make(chan *logsv1.WatchResponse, 1<<16), stdout: stdout, paused: make(chan struct{})}
	if !paused {
		close(m.paused)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(m.out)
		<-m.paused
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			r := &logsv1.WatchResponse{}
			if err := protojson.Unmarshal(sc.Bytes(), r); err != nil {
				t.Errorf("meshctl logs printed %q: %v", sc.Text(), err)
				continue
			}
			m.out <- r
		}
	}()
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		select {
		case <-m.paused:
		default:
			close(m.paused)
		}
		<-done
	})
	return m
}

// next returns the next response, failing after timeout.
func (m *meshctlLogs) next(timeout time.Duration) *logsv1.WatchResponse {
	m.t.Helper()
	select {
	case r, ok := <-m.out:
		if !ok {
			m.t.Fatalf("meshctl logs ended")
		}
		return r
	case <-time.After(timeout):
		m.t.Fatalf("no output from meshctl logs within %s", timeout)
	}
	return nil
}

// records collects n records (and the events among them).
func (m *meshctlLogs) records(n int, timeout time.Duration) (recs []*logsv1.Record, events []*logsv1.WatchResponse) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for len(recs) < n {
		r := m.next(time.Until(deadline))
		if rec := r.GetRecord(); rec != nil {
			recs = append(recs, rec)
		} else {
			events = append(events, r)
		}
	}
	return recs, events
}

var watchersRE = regexp.MustCompile(`(?m)^` + logstream.WatchersName + ` (\d+)`)

// waitWatchers waits until node's ztunnel serves n log streams: a
// follower started then misses nothing.
func waitWatchers(t *testing.T, a *authzMesh, node string, n int) {
	t.Helper()
	url := "http://" + a.Ztunnel(node).Admin().MetricsAddr().String() + "/metrics"
	eventually(t, 20*time.Second, node+" serving "+strconv.Itoa(n)+" log streams", func() error {
		got, err := scrapeMetric(url, watchersRE)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("%s = %d", logstream.WatchersName, got)
		}
		return nil
	})
}

func scrapeMetric(url string, re *regexp.Regexp) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no %s in %s", re, url)
	}
	f, err := strconv.ParseFloat(string(m[1]), 64)
	return int(f), err
}

func newLogsMesh(t *testing.T) *authzMesh {
	a := newAuthzMesh(t)
	writeLogsToken(t, a.Mesh)
	return a
}

// writeLogsToken gives meshctl a token of the config directory, and waits
// until istiod-lite took it: a meshctl started before then is refused
// (Unauthenticated), which happened whenever meshctl was already built.
func writeLogsToken(t *testing.T, m *harness.Mesh) {
	t.Helper()
	m.Write("meshctl-tokens.yaml", `apiVersion: v1
kind: Secret
metadata:
  name: meshctl-tokens
  namespace: istio-system
stringData:
  admin: `+logsToken+"\n")
	bin := buildMeshctl(t)
	eventually(t, 10*time.Second, "istiod-lite accepting meshctl's token", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, "--istiod", m.IstiodAddr(), "--istiod-token", logsToken, "logs", "--last", "1", "-o", "json").CombinedOutput()
		if err != nil {
			return fmt.Errorf("meshctl logs --last 1: %v: %s", err, out)
		}
		return nil
	})
}

// TestMeshctlLogs: `meshctl logs -f -n demo`, started before traffic,
// shows every connection from both nodes in time order; --verdict deny
// shows only denied ones; a ztunnel restarted mid-stream rejoins; a
// reader that stops reading is told how many records it lost.
func TestMeshctlLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshctl")
	}
	a := newLogsMesh(t)
	all := startLogs(t, a.IstiodAddr(), false, "-f", "-n", "demo")
	waitWatchers(t, a, "node-a", 1)
	waitWatchers(t, a, "node-b", 1)

	// Every connection, at both ends.
	const conns = 5
	var srcs []netip.Addr
	for range conns {
		srcs = append(srcs, a.foo, a.bar)
	}
	for _, src := range srcs {
		if err := a.try(src); err != nil {
			t.Fatalf("connection from %s: %v", src, err)
		}
	}
	recs, _ := all.records(2*len(srcs), 30*time.Second)
	perNode := map[string]int{}
	for i, r := range recs {
		perNode[r.GetProxy()]++
		if i > 0 && r.GetTime().AsTime().Before(recs[i-1].GetTime().AsTime()) {
			t.Errorf("record %d (%v) is older than the one before (%v)", i, r.GetTime().AsTime(), recs[i-1].GetTime().AsTime())
		}
		if r.GetVerdict() != logsv1.Verdict_ALLOW || r.GetDestination().GetNamespace() != "demo" {
			t.Errorf("record %v: want ALLOW to namespace demo", r)
		}
	}
	if perNode["node-a"] != len(srcs) || perNode["node-b"] != len(srcs) {
		t.Errorf("records per node = %v, want %d of each", perNode, len(srcs))
	}
	// Each connection has its outbound (node-a) and inbound (node-b)
	// record, both with the client's address.
	ends := map[string][]string{}
	for _, r := range recs {
		ends[r.GetSource().GetAddr()] = append(ends[r.GetSource().GetAddr()], r.GetProxy())
	}
	for addr, nodes := range ends {
		slices.Sort(nodes)
		if !slices.Equal(nodes, []string{"node-a", "node-b"}) {
			t.Errorf("connection from %s logged by %q, want node-a and node-b", addr, nodes)
		}
	}
	if len(ends) != len(srcs) {
		t.Errorf("%d connections in the stream, want %d", len(ends), len(srcs))
	}

	// --verdict deny after a DENY policy: only the denied connections.
	a.Write("policy.yaml", denyFoo)
	eventually(t, 10*time.Second, "foo denied", func() error { return denied(a.try(a.foo)) })
	// Drain what the wait produced from the first stream.
	time.Sleep(1500 * time.Millisecond)
	drainLogs(all.out)
	deny := startLogs(t, a.IstiodAddr(), false, "-f", "-n", "demo", "--verdict", "DENY")
	waitWatchers(t, a, "node-a", 2)
	waitWatchers(t, a, "node-b", 2)
	for range 3 {
		if err := a.try(a.bar); err != nil {
			t.Fatalf("bar: %v", err)
		}
	}
	for range 3 {
		if err := denied(a.try(a.foo)); err != nil {
			t.Fatalf("foo: %v", err)
		}
	}
	denies, _ := deny.records(6, 30*time.Second)
	for _, r := range denies {
		if r.GetVerdict() != logsv1.Verdict_DENY || r.GetSource().GetNamespace() != "foo" && r.GetSource().GetIdentity() != "spiffe://cluster.local/ns/foo/sa/client" {
			t.Errorf("--verdict DENY printed %v", r)
		}
	}
	// bar's allowed connections came first; the merge is in time order,
	// so none of them was among what --verdict DENY printed.

	// A ztunnel restarted mid-stream rejoins the stream.
	drainLogs(all.out)
	a.StopZtunnel("node-b")
	a.StartZtunnel("node-b")
	eventually(t, 20*time.Second, "bar reaches echo after node-b's restart", func() error { return a.try(a.bar) })
	var states []string
	deadline := time.Now().Add(30 * time.Second)
	sawNodeB := false
	for !sawNodeB {
		r := all.next(time.Until(deadline))
		if s := r.GetProxyStatus(); s != nil && s.GetProxy() == "node-b" {
			states = append(states, s.GetState().String())
		}
		if rec := r.GetRecord(); rec != nil && rec.GetProxy() == "node-b" && len(states) > 0 {
			sawNodeB = true
		}
	}
	if want := "DISCONNECTED CONNECTED"; strings.Join(states, " ") != want {
		t.Errorf("node-b's states in the stream = %q, want %q", strings.Join(states, " "), want)
	}

	// A reader that stops reading loses records, and is told how many;
	// the data path (the access logger's Log) never waits for it.
	slow := startLogs(t, a.IstiodAddr(), true, "-f", "-n", "demo", "--to-workload", "synthetic")
	waitWatchers(t, a, "node-a", 3)
	const injected = 50000
	z := a.Ztunnel("node-a")
	start := time.Now()
	for i := range injected {
		z.AccessLog().Log(context.Background(), &accesslog.Record{
			Direction: accesslog.Outbound, SrcNamespace: "foo", SrcWorkload: "client", DstNamespace: "demo", DstWorkload: "synthetic",
			SrcAddr: netip.AddrPortFrom(a.foo, uint16(1024+i%60000)), Start: time.Now(),
		})
	}
	t.Logf("%d records logged in %v while a reader did not read", injected, time.Since(start))
	close(slow.paused)
	var got, lost int
	for got+lost < injected {
		r := slow.next(30 * time.Second)
		switch {
		case r.GetRecord() != nil:
			got++
		case r.GetLost() != nil:
			lost += int(r.GetLost().GetCount())
		}
	}
	if lost == 0 {
		t.Errorf("records %d, lost 0: want the reader told of lost records", got)
	}
	n, err := scrapeMetric("http://"+z.Admin().MetricsAddr().String()+"/metrics", regexp.MustCompile(`(?m)^`+logstream.LostRecordsName+` (\S+)`))
	if err != nil || n < lost {
		t.Errorf("%s = %d (%v), want at least %d", logstream.LostRecordsName, n, err, lost)
	}
	t.Logf("the stopped reader got %d records and was told of %d lost", got, lost)
}

func drainLogs(ch <-chan *logsv1.WatchResponse) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
