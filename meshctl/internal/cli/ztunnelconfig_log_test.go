package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/admin"
	"github.com/ambient-go/mesh/pkg/logging"
)

// lockedLog is a proxy's log output, shared by its loggers and the test.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// take returns what was written since the last take.
func (l *lockedLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// TestZtunnelConfigLogComponents: meshctl sets one component's level through
// a real admin server whose proxy logs as ztunnel's main wires it
// (pkg/logging's handler; the access log written at Var(access)); only that
// component's debug records are written afterwards.
func TestZtunnelConfigLogComponents(t *testing.T) {
	var out lockedLog
	def := new(slog.LevelVar)
	levels := logging.NewLevels(def)
	root := slog.New(levels.Handler(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: levels})))
	accessLog := accesslog.NewJSON(&out, levels.Var(logging.Access))
	access := root.With("component", "proxy").With("scope", logging.Access)
	proxy := root.With("component", "proxy")
	xds := root.With("component", "xds-client")

	srv, err := admin.New(admin.Config{
		AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
		Gatherer: prometheus.NewRegistry(), ConfigDump: func() any { return struct{}{} },
		Level: levels.Var(logging.Access), Logger: root,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	flags := []string{"--istiod", "127.0.0.1:1", "--proxy-admin", "node-a=" + srv.AdminAddr().String(), "ztunnel-config", "log"}

	record := &accesslog.Record{Start: time.Now(), SrcAddr: netip.MustParseAddrPort("127.0.0.1:1000"), DstAddr: netip.MustParseAddrPort("127.0.0.2:80"), Direction: "inbound"}
	emit := func() {
		access.Debug("access debug")
		proxy.Debug("proxy debug")
		xds.Debug("xds-client debug")
		proxy.Info("proxy info")
		accessLog.Log(context.Background(), record)
	}
	for _, tc := range []struct {
		name      string
		args      []string
		wantOut   string // prefix
		want, not []string
	}{
		{
			name:    "show",
			wantOut: "node-a: current log level is info\ncomponents: access, admin, proxy, xds-client\n",
			want:    []string{"proxy info", `"msg":"connection complete"`},
			not:     []string{"access debug", "proxy debug", "xds-client debug"},
		},
		{
			name:    "access:debug writes the access component's debug records only",
			args:    []string{"--level", "access:debug"},
			wantOut: "node-a: current log level is info,access:debug\n",
			want:    []string{"access debug", "proxy info", `"msg":"connection complete"`},
			not:     []string{"proxy debug", "xds-client debug"},
		},
		{
			name:    "a default of warn leaves access at its own level and silences the rest",
			args:    []string{"--level", "warn"},
			wantOut: "node-a: current log level is warn,access:debug\n",
			want:    []string{"access debug", `"msg":"connection complete"`},
			not:     []string{"proxy debug", "xds-client debug", "proxy info"},
		},
		{
			name:    "access:off silences the access log",
			args:    []string{"--level", "access:off,xds-client:debug"},
			wantOut: "node-a: current log level is warn,access:off,xds-client:debug\n",
			want:    []string{"xds-client debug"},
			not:     []string{"access debug", "proxy debug", "proxy info", "connection complete"},
		},
		{
			name:    "reset",
			args:    []string{"--reset"},
			wantOut: "node-a: current log level is info\n",
			want:    []string{"proxy info", `"msg":"connection complete"`},
			not:     []string{"access debug", "proxy debug", "xds-client debug"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errOut, code := run(t, append(flags, tc.args...)...)
			if code != 0 || !strings.HasPrefix(got, tc.wantOut) {
				t.Fatalf("meshctl ztunnel-config log %s = exit %d, %q, %q; want %q...", strings.Join(tc.args, " "), code, got, errOut, tc.wantOut)
			}
			out.take()
			emit()
			log := out.take()
			for _, w := range tc.want {
				if !strings.Contains(log, w) {
					t.Errorf("log after %v =\n%s\nwant %s", tc.args, log, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(log, n) {
					t.Errorf("log after %v =\n%s\nwant no %s", tc.args, log, n)
				}
			}
		})
	}

	t.Run("an unknown component is refused, naming the known ones", func(t *testing.T) {
		_, errOut, code := run(t, append(flags, "--level", "xds:debug")...)
		if code == 0 || !strings.Contains(errOut, `unknown component "xds": known components are access, admin, proxy, xds-client`) {
			t.Errorf("log --level xds:debug = exit %d, %q; want the known components", code, errOut)
		}
	})
}
