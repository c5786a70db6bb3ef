package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// NewJSON's lines decode to what the slog path writes, for every kind of
// record, strings that need escaping included.
func TestNewJSONMatchesSlog(t *testing.T) {
	records := map[string]Record{
		"connection": {
			SrcAddr: netip.MustParseAddrPort("10.0.0.1:41000"), DstAddr: netip.MustParseAddrPort("10.0.0.2:15008"),
			DstHBONEAddr: netip.MustParseAddrPort("10.0.0.2:8080"), SrcWorkload: "sleep-7d9f", SrcNamespace: "default",
			SrcIdentity: "spiffe://cluster.local/ns/default/sa/sleep", DstService: "echo.default.svc.cluster.local",
			DstWorkload: "echo-5c4b", DstNamespace: "default", DstIdentity: "cluster.local/ns/default/sa/echo",
			Direction: Outbound, BytesSent: 120, BytesRecv: 4096, Duration: 12*time.Millisecond + 300*time.Microsecond,
			Transport: "tcp",
		},
		"error": {
			SrcAddr: netip.MustParseAddrPort("[fd00::1]:41000"), DstAddr: netip.MustParseAddrPort("[fd00::2]:8080"),
			Direction: Inbound, Err: errors.New(`dial "10.0.0.9:80": refused` + "\n\ttab"), ResponseFlags: "CONNECT",
			Policy: "ns/deny-all", Duration: time.Second,
		},
		"request": {
			SrcAddr: netip.MustParseAddrPort("10.0.0.1:41000"), Direction: Inbound, Method: "POST",
			Path: `/a?b="c"&d=<e>\f`, Authority: "échø.default:80", Protocol: "HTTP/1.1", ResponseCode: 403,
			UpstreamHost: netip.MustParseAddrPort("10.0.0.3:8080"), TraceID: "0af7651916cd43dd8448eb211c80319c",
			Duration: 1500 * time.Microsecond, Policy: "ns/\x01bad\xffname",
		},
		"empty request fields": {Method: "GET", ResponseCode: 0},
	}
	for name, r := range records {
		t.Run(name, func(t *testing.T) {
			want := logJSON(t, slog.LevelInfo, &r)
			var buf bytes.Buffer
			NewJSON(&buf, slog.LevelInfo).Log(context.Background(), &r)
			if bytes.Count(buf.Bytes(), []byte("\n")) != 1 || !bytes.HasSuffix(buf.Bytes(), []byte("\n")) {
				t.Fatalf("not one line: %q", buf.String())
			}
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("json.Unmarshal(%q) error = %v", buf.String(), err)
			}
			ts, _ := got["time"].(string)
			if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				t.Errorf("time %q: %v", ts, err)
			}
			delete(got, "time")
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("NewJSON line differs from the slog line (-slog +json):\n%s", diff)
			}
		})
	}
}

func TestNewJSONLevel(t *testing.T) {
	var buf bytes.Buffer
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelWarn)
	l := NewJSON(&buf, lv)
	l.Log(context.Background(), &Record{Direction: Inbound})
	if buf.Len() != 0 {
		t.Fatalf("an info record was written at level warn: %q", buf.String())
	}
	l.Log(context.Background(), &Record{Direction: Inbound, Err: errors.New("boom")})
	if !bytes.Contains(buf.Bytes(), []byte(`"level":"ERROR"`)) {
		t.Fatalf("the error record was not written at level warn: %q", buf.String())
	}
	buf.Reset()
	lv.Set(slog.LevelInfo) // as /logging does at run time
	l.Log(context.Background(), &Record{Direction: Inbound})
	if buf.Len() == 0 {
		t.Fatal("an info record was not written after the level went down to info")
	}
}

func BenchmarkLogSlogVsJSON(b *testing.B) {
	r := Record{
		SrcAddr: netip.MustParseAddrPort("10.0.0.1:41000"), DstAddr: netip.MustParseAddrPort("10.0.0.2:15008"),
		SrcIdentity: "spiffe://cluster.local/ns/default/sa/sleep", DstService: "echo.default.svc.cluster.local",
		DstWorkload: "echo-5c4b", DstNamespace: "default", DstIdentity: "cluster.local/ns/default/sa/echo",
		Direction: Inbound, BytesSent: 120, BytesRecv: 4096, Duration: time.Millisecond,
		Method: "POST", Path: "/echo", Authority: "echo:80", Protocol: "HTTP/1.1", ResponseCode: 200,
		UpstreamHost: netip.MustParseAddrPort("10.0.0.3:8080"), TraceID: "0af7651916cd43dd8448eb211c80319c",
	}
	for _, l := range []struct {
		name string
		l    *Logger
	}{
		{"slog", New(slog.New(slog.NewJSONHandler(discard{}, nil)))},
		{"json", NewJSON(discard{}, slog.LevelInfo)},
	} {
		b.Run(l.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l.l.Log(context.Background(), &r)
			}
		})
	}
}
