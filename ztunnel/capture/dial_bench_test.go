package capture

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
)

// BenchmarkDialerDial: a Dialer's connection to a listener in the pod's
// namespace (over the pod's own address), closed at once.
func BenchmarkDialerDial(b *testing.B) {
	tp := capturetest.NewPair(b)
	l := capturetest.ListenIn(b, tp.Pod, tp.PodIP.String()+":0")
	go closeAccepted(l)
	to := l.Addr().(*net.TCPAddr).AddrPort()
	d := Dialer{Netns: tp.Pod, Timeout: 2 * time.Second}
	b.ReportAllocs()
	for b.Loop() {
		c, err := d.Dial(context.Background(), tp.PodIP, to, true)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
