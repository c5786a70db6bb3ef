package admin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type harness struct {
	srv    *Server
	level  *slog.LevelVar
	ready  atomic.Pointer[error]
	client *http.Client
}

// start runs a Server on loopback ports until the test ends; opts change
// its Config.
func start(t *testing.T, opts ...func(*Config)) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_admin_hits_total", Help: "Test counter."})
	reg.MustRegister(c)
	c.Add(3)

	h := &harness{
		level: new(slog.LevelVar),
		// No keep-alive: no client goroutines outlive a request (goleak).
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true},
		},
	}
	notReady := errors.New("waiting for xds")
	h.ready.Store(&notReady)
	cfg := Config{
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   "127.0.0.1:0",
		ReadinessAddr: "127.0.0.1:0",
		Gatherer:      reg,
		ConfigDump: func() any {
			return map[string]any{"workloads": []string{"default/sleep"}}
		},
		Ready: func() error {
			if p := h.ready.Load(); p != nil {
				return *p
			}
			return nil
		},
		Level: h.level,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	h.srv = srv
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen() error = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve() = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return h
}

func (h *harness) do(t *testing.T, method string, addr net.Addr, path string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr.String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestConfigDump(t *testing.T) {
	h := start(t)
	code, body, hdr := h.do(t, "GET", h.srv.AdminAddr(), "/config_dump")
	want := "{\n  \"workloads\": [\n    \"default/sleep\"\n  ]\n}\n"
	if code != http.StatusOK {
		t.Errorf("GET /config_dump status = %d, want 200", code)
	}
	if diff := cmp.Diff(want, body); diff != "" {
		t.Errorf("GET /config_dump body mismatch (-want +got):\n%s", diff)
	}
	if got := hdr.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
}

func TestLogging(t *testing.T) {
	h := start(t)
	for _, tc := range []struct {
		name      string
		method    string
		path      string
		wantCode  int
		wantBody  string // prefix
		wantLevel slog.Level
	}{
		{name: "show", method: "GET", path: "/logging", wantCode: 200, wantBody: "current log level is info\n", wantLevel: slog.LevelInfo},
		{name: "set debug with POST", method: "POST", path: "/logging?level=debug", wantCode: 200, wantBody: "current log level is debug\n", wantLevel: slog.LevelDebug},
		{name: "set warn with GET", method: "GET", path: "/logging?level=WARN", wantCode: 200, wantBody: "current log level is warn\n", wantLevel: slog.LevelWarn},
		{name: "set error", method: "POST", path: "/logging?level=error", wantCode: 200, wantBody: "current log level is error\n", wantLevel: slog.LevelError},
		{name: "bad level", method: "POST", path: "/logging?level=loud", wantCode: 400, wantBody: "invalid level \"loud\"", wantLevel: slog.LevelError},
		{name: "POST without level", method: "POST", path: "/logging", wantCode: 400, wantBody: "missing level", wantLevel: slog.LevelError},
		{name: "set info", method: "POST", path: "/logging?level=info", wantCode: 200, wantBody: "current log level is info\n", wantLevel: slog.LevelInfo},
		{name: "method not allowed", method: "DELETE", path: "/logging", wantCode: 405, wantBody: "", wantLevel: slog.LevelInfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := h.do(t, tc.method, h.srv.AdminAddr(), tc.path)
			if code != tc.wantCode {
				t.Errorf("%s %s status = %d, want %d", tc.method, tc.path, code, tc.wantCode)
			}
			if !strings.HasPrefix(body, tc.wantBody) {
				t.Errorf("%s %s body = %q, want prefix %q", tc.method, tc.path, body, tc.wantBody)
			}
			if got := h.level.Level(); got != tc.wantLevel {
				t.Errorf("level after %s %s = %v, want %v", tc.method, tc.path, got, tc.wantLevel)
			}
		})
	}
}

func TestLoggingPostForm(t *testing.T) {
	h := start(t)
	resp, err := h.client.PostForm("http://"+h.srv.AdminAddr().String()+"/logging", url.Values{"level": {"debug"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("POST /logging level=debug (form) status = %d, want 200", resp.StatusCode)
	}
	if got := h.level.Level(); got != slog.LevelDebug {
		t.Errorf("level = %v, want DEBUG", got)
	}
}

func TestReadiness(t *testing.T) {
	h := start(t)
	code, body, _ := h.do(t, "GET", h.srv.ReadinessAddr(), "/healthz/ready")
	if code != http.StatusServiceUnavailable || body != "waiting for xds\n" {
		t.Errorf("not ready: GET /healthz/ready = %d %q, want 503 %q", code, body, "waiting for xds\n")
	}
	h.ready.Store(nil)
	code, body, _ = h.do(t, "GET", h.srv.ReadinessAddr(), "/healthz/ready")
	if code != http.StatusOK || body != "ready\n" {
		t.Errorf("ready: GET /healthz/ready = %d %q, want 200 %q", code, body, "ready\n")
	}
}

func TestMetrics(t *testing.T) {
	h := start(t)
	for _, path := range []string{"/metrics", "/stats/prometheus"} {
		t.Run(path, func(t *testing.T) {
			code, body, _ := h.do(t, "GET", h.srv.MetricsAddr(), path)
			if code != http.StatusOK {
				t.Errorf("GET %s status = %d, want 200", path, code)
			}
			if want := "test_admin_hits_total 3"; !strings.Contains(body, want) {
				t.Errorf("GET %s body = %q, want it to contain %q", path, body, want)
			}
		})
	}
}

func TestEndpointsOnTheirServer(t *testing.T) {
	h := start(t)
	for _, tc := range []struct {
		server string
		addr   net.Addr
		path   string
		want   int
	}{
		{server: "admin", addr: h.srv.AdminAddr(), path: "/", want: 200},
		{server: "admin", addr: h.srv.AdminAddr(), path: "/debug/pprof/", want: 200},
		{server: "admin", addr: h.srv.AdminAddr(), path: "/metrics", want: 404},
		{server: "metrics", addr: h.srv.MetricsAddr(), path: "/config_dump", want: 404},
		{server: "readiness", addr: h.srv.ReadinessAddr(), path: "/logging", want: 404},
	} {
		t.Run(tc.server+tc.path, func(t *testing.T) {
			if code, _, _ := h.do(t, "GET", tc.addr, tc.path); code != tc.want {
				t.Errorf("GET %s on %s = %d, want %d", tc.path, tc.server, code, tc.want)
			}
		})
	}
}

func TestNewRequires(t *testing.T) {
	reg := prometheus.NewRegistry()
	dump := func() any { return nil }
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{name: "no Gatherer", cfg: Config{ConfigDump: dump}},
		{name: "no ConfigDump", cfg: Config{Gatherer: reg}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Errorf("New(%s) error = nil, want an error", tc.name)
			}
		})
	}
}

func TestStartListenError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	srv, err := New(Config{
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   busy.Addr().String(),
		ReadinessAddr: "127.0.0.1:0",
		Gatherer:      prometheus.NewRegistry(),
		ConfigDump:    func() any { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listen metrics") {
			t.Errorf("Start() = %v, want a listen metrics error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return a listen error")
	}
	if srv.AdminAddr() != nil {
		t.Errorf("AdminAddr() = %v after a failed listen, want nil", srv.AdminAddr())
	}
}

func TestStartAndListening(t *testing.T) {
	srv, err := New(Config{
		AdminAddr:     "127.0.0.1:0",
		MetricsAddr:   "127.0.0.1:0",
		ReadinessAddr: "127.0.0.1:0",
		Gatherer:      prometheus.NewRegistry(),
		ConfigDump:    func() any { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	select {
	case <-srv.Listening():
	case <-time.After(10 * time.Second):
		t.Fatal("Listening not closed")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + srv.ReadinessAddr().String() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /healthz/ready with nil Ready = %d, want 200", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start() = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return after cancel")
	}
	// The listeners are closed.
	if c, err := net.DialTimeout("tcp", srv.AdminAddr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("admin port still accepts connections after shutdown")
	}
}
