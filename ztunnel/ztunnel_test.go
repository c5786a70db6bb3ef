package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/ambient-go/mesh/ztunnel/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReservedPorts(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []uint16
	}{
		{"defaults", Config{HBONEPort: 15008, SOCKSPort: 15080}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}},
		{"configured ports are added", Config{
			HBONEPort: 16008, SOCKSPort: 16080,
			AdminAddr: "127.0.0.1:16000", MetricsAddr: ":16020", ReadinessAddr: "[::]:16021",
		}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080, 16000, 16008, 16020, 16021, 16080}},
		{"kernel-picked ports are unknown", Config{
			HBONEPort: 15008, SOCKSPort: 15080,
			AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		}, []uint16{15000, 15001, 15006, 15008, 15020, 15021, 15080}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, reservedPorts(tc.cfg)); diff != "" {
				t.Errorf("reservedPorts() (-want +got):\n%s", diff)
			}
		})
	}
}

// testConfig is a local-mode ztunnel whose admin servers bind loopback
// ports of the kernel's choosing; nothing else is contacted until Start.
func testConfig() Config {
	return Config{
		Node: "node-a", Token: "token", XDSAddress: "127.0.0.1:1",
		AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		DrainTimeout: 100 * time.Millisecond,
	}
}

// TestStartReturnsEveryRunnerError: when more runners fail than in-pod
// mode has (5), Start neither hangs nor drops an error.
func TestStartReturnsEveryRunnerError(t *testing.T) {
	z, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var want []error
	runners := z.runners[:1] // the admin server, which stops with the context
	for i := range 6 {
		err := fmt.Errorf("failure %d", i)
		want = append(want, err)
		runners = append(runners, runner{fmt.Sprintf("runner-%d", i), func(context.Context) error { return err }})
	}
	z.runners = runners
	done := make(chan error, 1)
	go func() { done <- z.Start(context.Background()) }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return within 10s of its runners failing")
	}
	for i, w := range want {
		if !errors.Is(err, w) {
			t.Errorf("Start() = %v, want it to carry %q", err, w)
		}
		if name := fmt.Sprintf("runner-%d: ", i); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Start() = %v, want it to name %s", err, name)
		}
	}
}

// TestStartAdminListenError: an admin address that cannot be bound fails
// Start at once.
func TestStartAdminListenError(t *testing.T) {
	cfg := testConfig()
	cfg.MetricsAddr = "127.0.0.1:-1"
	z, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- z.Start(context.Background()) }()
	select {
	case err = <-done:
		if err == nil || !strings.Contains(err.Error(), "metrics") {
			t.Errorf("Start() = %v, want the metrics listen error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return within 10s")
	}
}

// TestNotReadyWhileAcceptsFail: /healthz/ready reports an accept loop
// that is failing (out of file descriptors) with the reason.
func TestNotReadyWhileAcceptsFail(t *testing.T) {
	z, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer z.conn.Close()
	z.readyOnce.Do(func() { close(z.ready) })
	if err := z.readyErr(); err != nil {
		t.Fatalf("readyErr() = %v before any accept error, want nil", err)
	}
	z.server.OnAcceptError(&os.SyscallError{Syscall: "accept4", Err: syscall.EMFILE})
	if err := z.readyErr(); err == nil || !strings.Contains(err.Error(), proxy.ListenerHBONE) || !strings.Contains(err.Error(), "too many open files") {
		t.Errorf("readyErr() = %v, want the HBONE accept error", err)
	}
}
