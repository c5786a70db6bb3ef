//go:build !race

// The race detector's instrumentation enlarges every frame, so the stack
// sizes below hold only without it.

package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// stackBytes is the memory held by goroutine stacks.
func stackBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// parkedIn counts the goroutines blocked on the network whose stack
// holds frame.
func parkedIn(frame string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("[IO wait")) && bytes.Contains(g, []byte(frame)) {
			n++
		}
	}
	return n
}

// TestAcceptLoopStack: an accept loop parked in Accept fits a goroutine's
// initial 2 KiB stack. In in-pod mode every captured pod has two of these
// (outbound and inbound plaintext) waiting on its listeners, and with
// serve's frame a few hundred bytes larger each grew to 4 KiB: 0.4 MB of
// stack for 100 idle pods. Each kind is measured in a process of its own
// (this test binary run again), where no goroutine of another test
// gives its stack back meanwhile.
func TestAcceptLoopStack(t *testing.T) {
	if kind := os.Getenv(stackChildEnv); kind != "" {
		acceptLoopStackChild(t, kind)
		return
	}
	for _, kind := range []string{"outbound", "inbound plaintext", "socks5"} {
		t.Run(kind, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptLoopStack$", "-test.v")
			cmd.Env = append(os.Environ(), stackChildEnv+"="+kind)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			_, after, ok := bytes.Cut(out, []byte("stack per loop: "))
			if !ok {
				t.Fatalf("no figure in the child's output:\n%s", out)
			}
			var perLoop int
			fmt.Sscan(string(after), &perLoop)
			t.Logf("a parked %s accept loop holds %d bytes of stack", kind, perLoop)
			// 2048 and a little of the rest of the process (2.1–2.4 KiB
			// measured); a loop on a 4 KiB stack makes it 4.2–4.5 KiB.
			if perLoop > 3072 {
				t.Errorf("a parked %s accept loop holds %d bytes of stack, want 2 KiB", kind, perLoop)
			}
		})
	}
}

const stackChildEnv = "PROXY_ACCEPT_STACK_CHILD"

// acceptLoopStackChild starts loops accept loops of kind and prints the
// stack memory they added, per loop.
func acceptLoopStackChild(t *testing.T, kind string) {
	const loops = 500
	f := newInboundFixture(t, Config{})
	serve := map[string]func(l net.Listener, pod netip.Addr) error{
		"outbound":          func(l net.Listener, pod netip.Addr) error { return f.Proxy.ServeOutboundCaptureFor(l, pod, "uid") },
		"inbound plaintext": f.Proxy.ServePlaintextInbound,
		"socks5":            f.Proxy.ServeSOCKS,
	}[kind]
	runtime.GC()
	before := stackBytes()
	var ls []net.Listener
	done := make(chan struct{}, loops)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
		for range ls {
			<-done
		}
	}()
	for range loops {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		go func() {
			serve(l, f.Pod)
			done <- struct{}{}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for parkedIn("proxy.(*Proxy).serve(") < loops {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accept loops parked after 10s", parkedIn("proxy.(*Proxy).serve("), loops)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC() // shrinks stacks that could be smaller
	fmt.Printf("stack per loop: %d\n", (int64(stackBytes())-int64(before))/loops)
}
