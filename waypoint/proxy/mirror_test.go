package proxy

import (
	"log/slog"
	"net/http/httptest"
	"testing"
)

// With maxMirrors copies in flight, a further mirror is dropped at once:
// it picks no endpoint and starts nothing. (The proxy here has no store:
// a mirror that went past the limit would use it and panic.)
func TestMirrorDroppedAtLimit(t *testing.T) {
	p := &Proxy{log: slog.New(slog.DiscardHandler)}
	ms := newMirrors(p)
	defer ms.close()
	for range maxMirrors {
		ms.sem <- struct{}{}
	}
	m := &mirror{backend: &routeBackend{key: "shop/echo.shop.svc.cluster.local", hostname: "echo.shop.svc.cluster.local"}, perMillion: 1_000_000}
	ms.send(httptest.NewRequest("GET", "http://echo/", nil), nil, m, 80)
	if n := len(ms.sem); n != maxMirrors {
		t.Errorf("mirrors in flight = %d, want %d (the limit)", n, maxMirrors)
	}
}
