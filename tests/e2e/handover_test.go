package e2e

// A ztunnel restart that drops nothing (issue 15, item 3): a successor
// ztunnel starts next to the node's ztunnel, listens in every pod with
// SO_REUSEPORT, and the old one, sent SIGTERM, hands its listeners over
// and drains for --drain-deadline. The test plays a DaemonSet rolled out
// with maxSurge (cluster.Node.StartSuccessor, HandOverTo) while a client
// pod opens short connections at a steady rate and holds long streams
// that echo every 100 ms.
//
// By default (make test) it is the short variant: 200 new connections/s,
// a 2 s drain deadline, a few seconds per node. MESH_HANDOVER=full runs
// the size: 500 new connections/s and a 5 s drain deadline.
//
// The outbound side was quarantined once: under load, 1 new connection
// of ~850 was reset in about 1 run of 8 (read: connection reset by peer,
// TcpExtTCPAbortOnClose +1 in the client pod, no access log line), at the
// instant the old ztunnel closed the pod's 15001. The kernel was not at
// fault (tcp_migrate_req is set in each pod's netns; TCPMigrateReq* stayed
// 0 in the failing runs, and when it moves, Success counts, no Failure):
// the old ztunnel had accepted the connection just
// before the close, its HBONE CONNECT finished after Drain began, and the
// drain refused to track the upstream, closing the client's connection
// with its bytes unread (fixed in ztunnel/proxy/drain.go, trackUpstream).
// On a failure the test logs the client pod's TCP counters and every
// ztunnel log line of the failed connections.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/tests/netns/cluster"
)

// handoverLoad is the size of a handover test.
type handoverLoad struct {
	rate      int           // new connections per second
	drain     time.Duration // ztunnel's --drain-deadline
	forever   int           // long streams that outlive the drain deadline
	bounded   int           // long streams that live less than it
	keepAfter time.Duration // traffic after the old ztunnel exited
}

func handoverSize() handoverLoad {
	if os.Getenv("MESH_HANDOVER") == "full" {
		return handoverLoad{rate: 500, drain: 5 * time.Second, forever: 10, bounded: 40, keepAfter: 2 * time.Second}
	}
	return handoverLoad{rate: 200, drain: 2 * time.Second, forever: 10, bounded: 40, keepAfter: time.Second}
}

// streamResult is what one connection saw.
type streamResult struct {
	start, end time.Time
	echoes     int
	err        error
}

// echoServer is a TCP server inside a pod that echoes what it reads.
func echoServer(t *testing.T, p *cluster.Pod, port int) {
	t.Helper()
	l, err := p.Listen("tcp", netip.AddrPortFrom(p.IP, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echoOnce opens a connection from p to addr, sends one line, reads it
// back and closes.
func echoOnce(ctx context.Context, p *cluster.Pod, addr string, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Appendf(nil, "short-%08d\n", i)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("from %s: %w", c.LocalAddr(), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("from %s: %w", c.LocalAddr(), err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// echoStream holds a connection from p to addr that echoes a line every
// 100 ms, for life (0: until ctx is done, which is not an error).
func echoStream(ctx context.Context, p *cluster.Pod, addr string, id int, life time.Duration) (r streamResult) {
	r.start = time.Now()
	defer func() { r.end = time.Now() }()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := p.Dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		r.err = err
		return r
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	got := make([]byte, 20)
	for k := 0; ; k++ {
		if life > 0 && time.Since(r.start) >= life {
			return r
		}
		msg := fmt.Appendf(nil, "long-%04d-%09d\n", id, k) // 20 bytes
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write(msg); err != nil {
			r.err = err
			break
		}
		if _, err := io.ReadFull(c, got); err != nil {
			r.err = err
			break
		}
		if !bytes.Equal(got, msg) {
			r.err = fmt.Errorf("echo %q, want %q", got, msg)
			break
		}
		r.echoes++
		select {
		case <-ctx.Done():
			return r
		case <-tick.C:
		}
	}
	if ctx.Err() != nil {
		r.err = nil // the test ended it
	}
	return r
}

// TestZtunnelHandover: during a handover of the client's node's ztunnel
// (outbound: the pods' 15001) and then of the server's node's (inbound:
// 15008), every new connection succeeds, every long stream that lives
// less than the drain deadline ends cleanly, and the streams that outlive
// it are closed by the old ztunnel once its drain deadline passed, not
// before.
func TestZtunnelHandover(t *testing.T) {
	load := handoverSize()
	c := cluster.New(t, cluster.Options{ZtunnelArgs: []string{"--drain-deadline", load.drain.String()}})
	c.Namespace("shop", ambient)
	client, err := c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	server, err := c.Node(2).AddPod(cluster.PodSpec{Namespace: "shop", Name: "echo-0"})
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, server, 7000)
	addr := netip.AddrPortFrom(server.IP, 7000).String()
	if err := echoOnce(t.Context(), client, addr, 0); err != nil {
		t.Fatalf("before any handover: %v", err)
	}

	for _, tc := range []struct {
		name string
		node int
	}{
		{"outbound side (client's node)", 1},
		{"inbound side (server's node)", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handover(t, load, c.Node(tc.node), client, addr)
		})
	}
}

func handover(t *testing.T, load handoverLoad, node *cluster.Node, client *cluster.Pod, addr string) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Long streams that outlive the drain deadline, all on the old ztunnel.
	forever := make([]streamResult, load.forever)
	for i := range forever {
		wg.Go(func() { forever[i] = echoStream(ctx, client, addr, i, 0) })
	}
	// New connections at load.rate until stopShort (bounded: 60 s worth).
	var (
		mu       sync.Mutex
		attempts int
		failures []string
	)
	shortCtx, stopShort := context.WithCancel(ctx)
	defer stopShort()
	start := time.Now()
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(load.rate))
		defer tick.Stop()
		for i := 1; i <= 60*load.rate; i++ {
			select {
			case <-shortCtx.Done():
				return
			case <-tick.C:
			}
			mu.Lock()
			attempts++
			mu.Unlock()
			wg.Go(func() {
				at := time.Now()
				if err := echoOnce(ctx, client, addr, i); err != nil && ctx.Err() == nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("+%v: %v", at.Sub(start).Round(time.Millisecond), err))
					mu.Unlock()
				}
			})
		}
	})

	old := node.Ztunnel()
	oldMark := old.Mark()
	netstat0 := podNetstat(t, client)
	succ, h, err := node.StartSuccessor()
	if err != nil {
		t.Fatal(err)
	}
	succMark := 0

	// Long streams that live less than the drain deadline, opened while
	// both ztunnels listen, so that they straddle SIGTERM.
	life := load.drain * 3 / 5
	bounded := make([]streamResult, load.bounded)
	var bwg sync.WaitGroup
	for i := range bounded {
		bwg.Go(func() { bounded[i] = echoStream(ctx, client, addr, 1000+i, life) })
		time.Sleep(life / 2 / time.Duration(load.bounded))
	}
	time.Sleep(life / 2)
	if err := node.HandOverTo(succ, &h); err != nil {
		t.Error(err)
	}
	bwg.Wait()
	time.Sleep(load.keepAfter)
	stopShort()
	cancel()
	wg.Wait()

	t.Logf("successor ready %v after start; old ztunnel exited %v after SIGTERM (drain deadline %v)",
		h.Ready.Sub(h.Started).Round(time.Millisecond), h.Exited.Sub(h.Terminated).Round(time.Millisecond), load.drain)
	if l, _, err := waitLog(old, oldMark, "pod listeners handed over", "pods"); err == nil {
		t.Logf("old ztunnel: %v pods handed over in %v", l["pods"], l["duration"])
	} else {
		t.Errorf("old ztunnel did not hand over: %v", err)
	}
	t.Logf("client pod's TCP counters during the handover: %v", netstatDiff(netstat0, podNetstat(t, client)))
	mu.Lock()
	t.Logf("%d new connections at %d/s, %d failed", attempts, load.rate, len(failures))
	if len(failures) > 0 {
		// What the ztunnels said of the failed connections, and their
		// warnings.
		for _, z := range []struct {
			name string
			z    *cluster.Ztunnel
			from int
		}{{"old", old, oldMark}, {"successor", succ, succMark}} {
			for _, l := range z.z.Logs()[z.from:] {
				src := l.String("src.addr")
				mentioned := src != "" && slices.ContainsFunc(failures[:min(5, len(failures))], func(f string) bool { return strings.Contains(f, src+":") })
				if mentioned || l.String("level") == "WARN" || l.String("level") == "ERROR" {
					t.Logf("%s ztunnel: %v", z.name, l)
				}
			}
		}
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d new connections failed during the handover (SIGTERM at +%v), first: %q",
			len(failures), attempts, h.Terminated.Sub(start).Round(time.Millisecond), failures[:min(5, len(failures))])
	}
	mu.Unlock()
	for i, r := range bounded {
		if r.err != nil {
			t.Errorf("stream %d (life %v, opened %v before SIGTERM) broke after %d echoes, %v after SIGTERM: %v",
				i, life, h.Terminated.Sub(r.start).Round(time.Millisecond), r.echoes, r.end.Sub(h.Terminated).Round(time.Millisecond), r.err)
		}
	}
	for i, r := range forever {
		switch {
		case r.err == nil:
			t.Errorf("long stream %d outlived the old ztunnel's drain (%d echoes): want it closed at the deadline", i, r.echoes)
		case r.end.Before(h.Terminated.Add(load.drain)):
			t.Errorf("long stream %d closed %v after SIGTERM, before the drain deadline %v: %v",
				i, r.end.Sub(h.Terminated).Round(time.Millisecond), load.drain, r.err)
		case r.end.After(h.Exited.Add(time.Second)):
			t.Errorf("long stream %d closed %v after the old ztunnel exited", i, r.end.Sub(h.Exited).Round(time.Millisecond))
		}
	}
	// The successor carries the connections now.
	if n := succ.Count(succMark, func(l cluster.Log) bool {
		return l.String("msg") == accesslog.Message && l.String(accesslog.KeyError) == ""
	}); n == 0 {
		t.Errorf("the successor logged no connection")
	}
}

// podNetstat reads the TCP counters of p's network namespace
// (/proc/net/snmp and /proc/net/netstat: Tcp and TcpExt).
func podNetstat(t *testing.T, p *cluster.Pod) map[string]int64 {
	out := map[string]int64{}
	err := p.Do(func() error {
		for _, name := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"} {
			b, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			lines := strings.Split(string(b), "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				if len(keys) != len(vals) || len(keys) == 0 || (keys[0] != "Tcp:" && keys[0] != "TcpExt:") {
					continue
				}
				for j := 1; j < len(keys); j++ {
					v, _ := strconv.ParseInt(vals[j], 10, 64)
					out[keys[0]+keys[j]] = v
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Logf("reading netstat: %v", err)
	}
	return out
}

// netstatDiff is what changed between two podNetstat readings, limited
// to the counters that tell a lost connection.
func netstatDiff(a, b map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for _, k := range []string{"Tcp:OutRsts", "Tcp:AttemptFails", "Tcp:EstabResets", "TcpExt:TCPMigrateReqSuccess", "TcpExt:TCPMigrateReqFailure",
		"TcpExt:ListenOverflows", "TcpExt:ListenDrops", "TcpExt:TCPAbortOnClose", "TcpExt:TCPAbortOnData", "TcpExt:TCPReqQFullDrop"} {
		if d := b[k] - a[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// waitLog waits briefly for z's log line msg that has attribute key.
func waitLog(z *cluster.Ztunnel, from int, msg, key string) (cluster.Log, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l, i, err := z.WaitLog(ctx, from, func(l cluster.Log) bool {
		_, ok := l[key]
		return l.String("msg") == msg && ok
	})
	if err != nil {
		return nil, 0, errors.New("no " + msg + " log line")
	}
	return l, i, nil
}

// TestZtunnelHandoverQUIC: with HBONE over QUIC, UDP 15008 is not shared
// (the kernel would rehash the old ztunnel's QUIC flows to the successor's
// socket): the successor serves the pod over TCP until the old ztunnel has
// exited, then binds UDP 15008 and serves QUIC; no connection fails
// meanwhile (clients fall back to TCP).
func TestZtunnelHandoverQUIC(t *testing.T) {
	c := cluster.New(t, cluster.Options{ZtunnelArgs: []string{
		"--quic", "prefer", "--quic-hold", "500ms", "--drain-deadline", "1s",
	}})
	c.Namespace("shop", ambient)
	client, err := c.Node(1).AddPod(cluster.PodSpec{Namespace: "shop", Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	server, err := c.Node(2).AddPod(cluster.PodSpec{Namespace: "shop", Name: "echo-0"})
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, server, 7000)
	addr := netip.AddrPortFrom(server.IP, 7000).String()
	// overQUIC opens connections until one crosses the underlay as QUIC
	// only (UDP 15008, no TCP 15008; bounded: 20 tries over about 10 s).
	overQUIC := func(when string) {
		t.Helper()
		for i := range 20 {
			var err error
			frames := c.CaptureUnderlay(t, func() { err = echoOnce(t.Context(), client, addr, i) })
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if udp, tcp := underlayTraffic(frames); udp > 0 && tcp == 0 {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Fatalf("%s: no connection went over QUIC only", when)
	}
	overQUIC("before the handover")

	node := c.Node(2)
	z, h, err := node.HandOverZtunnel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("old ztunnel exited %v after SIGTERM", h.Exited.Sub(h.Terminated).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := z.WaitLog(ctx, 0, func(l cluster.Log) bool {
		return l.String("msg") == "serving quic after the previous ztunnel exited" && l.String("addr") == netip.AddrPortFrom(server.IP, 15008).String()
	}); err != nil {
		t.Fatalf("the successor did not take UDP 15008 over: %v", err)
	}
	overQUIC("after the handover")
}
