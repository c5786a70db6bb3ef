package accesslog

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLogJSONRequest(t *testing.T) {
	rec := Record{
		SrcAddr:       netip.MustParseAddrPort("10.0.0.1:41000"),
		SrcIdentity:   "spiffe://cluster.local/ns/default/sa/sleep",
		DstAddr:       netip.MustParseAddrPort("10.96.0.10:80"),
		DstService:    "echo.default.svc.cluster.local",
		DstIdentity:   "spiffe://cluster.local/ns/default/sa/echo",
		Direction:     Inbound,
		BytesSent:     12,
		BytesRecv:     3,
		Duration:      2 * time.Millisecond,
		ResponseFlags: "-",
		Policy:        "default/deny-admin",
		Method:        "GET",
		Path:          "/admin?x=1",
		Authority:     "echo.default.svc.cluster.local",
		Protocol:      "HTTP/1.1",
		ResponseCode:  403,
		UpstreamHost:  netip.MustParseAddrPort("10.0.0.2:8080"),
		TraceID:       "4bf92f3577b34da6a3ce929d0e0e4736",
	}
	want := map[string]any{
		"level":          "INFO",
		"msg":            "request complete",
		"scope":          "access",
		"src.addr":       "10.0.0.1:41000",
		"src.identity":   "spiffe://cluster.local/ns/default/sa/sleep",
		"dst.addr":       "10.96.0.10:80",
		"dst.service":    "echo.default.svc.cluster.local",
		"dst.identity":   "spiffe://cluster.local/ns/default/sa/echo",
		"direction":      "inbound",
		"bytes_sent":     float64(12),
		"bytes_recv":     float64(3),
		"duration":       "2ms",
		"response_flags": "-",
		"policy":         "default/deny-admin",
		"method":         "GET",
		"path":           "/admin?x=1",
		"authority":      "echo.default.svc.cluster.local",
		"protocol":       "HTTP/1.1",
		"response_code":  float64(403),
		"upstream_host":  "10.0.0.2:8080",
		"trace_id":       "4bf92f3577b34da6a3ce929d0e0e4736",
	}
	if diff := cmp.Diff(want, logJSON(t, slog.LevelInfo, &rec)); diff != "" {
		t.Errorf("Log(request record) mismatch (-want +got):\n%s", diff)
	}
	// Per-request fields without Method are not written: connection
	// records keep their output.
	rec.Method = ""
	got := logJSON(t, slog.LevelInfo, &rec)
	for _, k := range []string{KeyPath, KeyAuthority, KeyProtocol, KeyResponseCode, KeyUpstreamHost, KeyTraceID} {
		if _, ok := got[k]; ok {
			t.Errorf("Log(record without Method) wrote %q", k)
		}
	}
	if got["msg"] != Message {
		t.Errorf("Log(record without Method) msg = %v, want %q", got["msg"], Message)
	}
}
