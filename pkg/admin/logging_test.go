package admin

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/ambient-go/mesh/pkg/logging"
)

// syncBuffer is a bytes.Buffer the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestComponentLogging: with a Logger on pkg/logging's handler, /logging
// shows and sets one level per component, and the records written follow.
func TestComponentLogging(t *testing.T) {
	var out syncBuffer
	levels := logging.NewLevels(nil)
	log := slog.New(levels.Handler(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: levels})))
	proxy := log.With("component", "proxy")
	xds := log.With("component", "xds-client")
	h := start(t, func(c *Config) { c.Logger = log })

	for _, tc := range []struct {
		name, method, path string
		wantCode           int
		wantBody           string // prefix
	}{
		{"show", "GET", "/logging", 200, "current log level is info\ncomponents: admin, proxy, xds-client\n"},
		{"one component", "POST", "/logging?level=proxy:debug", 200, "current log level is info,proxy:debug\n"},
		{"unknown component", "POST", "/logging?level=xds:debug", 400, `unknown component "xds": known components are admin, proxy, xds-client`},
		{"bad level", "POST", "/logging?level=proxy:loud", 400, `invalid level "loud"`},
		{"POST without level", "POST", "/logging", 400, "missing level"},
		{"default and component", "GET", "/logging?level=warn,xds-client:error", 200, "current log level is warn,proxy:debug,xds-client:error\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := h.do(t, tc.method, h.srv.AdminAddr(), tc.path)
			if code != tc.wantCode || !strings.HasPrefix(body, tc.wantBody) {
				t.Errorf("%s %s = %d %q, want %d %q...", tc.method, tc.path, code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
	proxy.Debug("proxy debug")
	xds.Warn("xds warn")
	xds.Error("xds error")
	for _, want := range []string{`"msg":"proxy debug"`, `"msg":"xds error"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log =\n%s\nwant a line with %s", out.String(), want)
		}
	}
	if strings.Contains(out.String(), "xds warn") {
		t.Errorf("log =\n%s\nwant no xds-client warning at xds-client:error", out.String())
	}

	code, body, _ := h.do(t, "POST", h.srv.AdminAddr(), "/logging?reset")
	if code != http.StatusOK || !strings.HasPrefix(body, "current log level is info\n") {
		t.Errorf("POST /logging?reset = %d %q, want 200 current log level is info", code, body)
	}
}
