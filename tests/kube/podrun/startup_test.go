package podrun

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"sync/atomic"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambient-go/mesh/tests/netns"
)

// TestStartupProbe runs startup probes against an HTTP endpoint in a pod's
// network namespace that fails its first requests: the probe is retried
// every period until it succeeds (then a container without a readiness
// probe is ready), or the container's process is killed after
// failureThreshold failures; without a startup probe the container counts
// as started at once.
func TestStartupProbe(t *testing.T) {
	netns.RequireRoot(t)
	topo := netns.New(t, netns.Options{Nodes: 1})
	pn, err := topo.Node(1).AddPod("startup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pn.Remove() })
	ln, err := pn.Listen("tcp", netip.AddrPortFrom(pn.IP, 15021).String())
	if err != nil {
		t.Fatal(err)
	}
	var calls, failFirst atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) <= failFirst.Load() {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
		}
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("serving: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close(); <-done })

	httpProbe := func(failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(15021)}},
			PeriodSeconds: 1, FailureThreshold: failures,
		}
	}
	for _, tc := range []struct {
		name      string
		probe     *corev1.Probe
		failFirst int32
		wantOK    bool
		wantCalls int32
		wantKill  bool
	}{
		{name: "no startup probe", wantOK: true},
		{name: "succeeds after two failures", probe: httpProbe(5), failFirst: 2, wantOK: true, wantCalls: 3},
		{name: "killed after failureThreshold failures", probe: httpProbe(2), failFirst: 100, wantCalls: 2, wantKill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls.Store(0)
			failFirst.Store(tc.failFirst)
			proc := exec.Command("sleep", "60")
			if err := proc.Start(); err != nil {
				t.Fatal(err)
			}
			defer proc.Process.Kill()
			p := &pod{
				sb:     Sandbox{NS: pn.NS, IPs: []netip.Addr{pn.IP}},
				log:    slog.New(slog.DiscardHandler),
				notify: make(chan struct{}, 1),
			}
			c := &container{p: p, spec: corev1.Container{Name: "c", StartupProbe: tc.probe}}
			ok := p.startup(t.Context(), c, proc.Process)
			if ok != tc.wantOK || calls.Load() != tc.wantCalls {
				t.Errorf("startup = %v after %d probes, want %v after %d", ok, calls.Load(), tc.wantOK, tc.wantCalls)
			}
			if tc.probe != nil && c.ready != tc.wantOK {
				t.Errorf("container ready = %v, want %v (it has no readiness probe)", c.ready, tc.wantOK)
			}
			if !tc.wantKill {
				return
			}
			err := proc.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("the process ended with %v, want killed by SIGKILL", err)
			}
		})
	}
}
