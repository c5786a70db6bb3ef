package e2e

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/tests/harness"
)

// vmRSS is the process's resident set size in MiB (/proc/self/status).
func vmRSS(b *testing.B) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkRSSAfterLoad measures, once (run it with -benchtime=1x), the
// resident memory of an in-process mesh (istiod-lite, two ztunnels, the
// client and echo app) idle, holding 3,000 connections from the client on
// node-a to echo-0 on node-b, and at times after they all closed. 3,000
// because each costs at least four file descriptors in this one process
// (client, SOCKS5, upstream dial, app) and the limit here is 20,000.
func BenchmarkRSSAfterLoad(b *testing.B) {
	const conns = 3000
	m := harness.New(b, harness.Options{})
	client, echo0 := m.PodIP(0, 0), m.PodIP(1, 0)
	target := netip.AddrPortFrom(echo0, 9000).String()
	harness.StartEcho(b, "echo-0", netip.AddrPortFrom(echo0, 9000))
	m.Write("demo.yaml", strings.Join([]string{
		"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n",
		pod("demo", "client", "client", "node-a", client, "app: client"),
		pod("demo", "echo-0", "echo", "node-b", echo0, "app: echo"),
	}, "---\n"))
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := harness.Dial(ctx, client, target)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, _, _, err := harness.Hello(c); err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dial()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("echo-0 not reachable: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	runtime.GC()
	time.Sleep(time.Second)
	idle := vmRSS(b)
	b.ResetTimer()
	for b.Loop() {
		held := make([]net.Conn, conns)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < conns; i += 8 {
					c, err := dial()
					if err != nil {
						errs <- err
						return
					}
					held[i] = c
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatalf("opening %d connections: %v", conns, err)
		}
		peak := vmRSS(b)
		fds, _ := os.ReadDir("/proc/self/fd")
		b.Logf("holding %d connections: RSS %.0f MiB (idle %.0f), %d file descriptors", conns, peak, idle, len(fds))
		for _, c := range held {
			c.Close()
		}
		closed := time.Now()
		b.ReportMetric(idle, "idle-MiB")
		b.ReportMetric(peak, "held-MiB")
		b.ReportMetric((peak-idle)*1024/conns, "KiB/conn")
		for _, at := range []time.Duration{time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second} {
			time.Sleep(time.Until(closed.Add(at)))
			rss := vmRSS(b)
			b.ReportMetric(rss, "after-"+strconv.Itoa(int(at.Seconds()))+"s-MiB")
			b.Logf("%v after closing: RSS %.0f MiB (idle %.0f, held %.0f)", at, rss, idle, peak)
		}
	}
}
