package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHTTP1ThroughWaypoint(t *testing.T) {
	m := newMesh(t)
	logs, cancel := m.access.Subscribe(16)
	defer cancel()
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(t, svc, false)

	code, _ := get(t, c, svc, "/hello?x=1", http.Header{"X-Forwarded-For": {"203.0.113.7"}})
	if code != http.StatusOK {
		t.Fatalf("GET /hello = %d, want 200", code)
	}
	connect := recv(t, m.connects, "CONNECT at the endpoint")
	if want := netip.AddrPortFrom(echoIP, m.httpPort); connect.Authority != want {
		t.Errorf("endpoint CONNECT :authority = %v, want %v (podIP:targetPort)", connect.Authority, want)
	}
	if connect.PeerID != m.waypointID {
		t.Errorf("endpoint CONNECT peer = %v, want the waypoint's own identity %v", connect.PeerID, m.waypointID)
	}
	if got := connect.Header.Get("Baggage"); got != m.baggage {
		t.Errorf("endpoint CONNECT baggage = %q, want %q", got, m.baggage)
	}
	app := recv(t, m.appRequests, "request at the app")
	if want := "203.0.113.7, " + clientIP.String(); app.Header.Get("X-Forwarded-For") != want {
		t.Errorf("app X-Forwarded-For = %q, want %q (client's value, then the original client)", app.Header.Get("X-Forwarded-For"), want)
	}
	if app.Path != "/hello?x=1" || app.Proto != "HTTP/1.1" || !strings.HasPrefix(app.Host, echoHost) {
		t.Errorf("app saw %s %s host %s, want HTTP/1.1 /hello?x=1 host %s", app.Proto, app.Path, app.Host, echoHost)
	}
	tid, ok := traceID(app.Header.Get("Traceparent"))
	if !ok {
		t.Errorf("app traceparent = %q, want a new valid one", app.Header.Get("Traceparent"))
	}

	rec := recv(t, logs, "access log record")
	want := accesslog.Record{
		Direction: accesslog.Inbound, SrcAddr: netip.AddrPortFrom(clientIP, 40000), SrcWorkload: "sleep", SrcNamespace: "default",
		SrcIdentity: m.clientID.String(), DstAddr: svc, DstService: echoHost, DstWorkload: "echo", DstNamespace: "default",
		DstIdentity: m.echoID.String(), DstHBONEAddr: netip.AddrPortFrom(echoIP, m.hbonePort),
		Method: "GET", Path: "/hello?x=1", Protocol: "HTTP/1.1", ResponseCode: 200,
		UpstreamHost: netip.AddrPortFrom(echoIP, m.httpPort), TraceID: tid,
	}
	if diff := cmp.Diff(want, rec, cmpRecord); diff != "" {
		t.Errorf("access log record mismatch (-want +got):\n%s", diff)
	}

	// A second request reuses the upstream connection (pooled per endpoint).
	get(t, c, svc, "/again", nil)
	select {
	case r := <-m.connects:
		t.Errorf("second request opened a new CONNECT %v, want the pooled one reused", r.Authority)
	default:
	}

	wantMetric(t, m, "istio_requests_total", map[string]string{
		"reporter": "waypoint", "response_code": "200", "request_protocol": "http", "source_principal": m.clientID.String(),
		"destination_service": echoHost, "destination_principal": m.echoID.String(), "source_workload": "sleep", "destination_workload": "echo",
	}, 2)
	wantMetric(t, m, "istio_request_duration_milliseconds", map[string]string{"reporter": "waypoint", "response_code": "200"}, 2)
}

// cmpRecord ignores what varies between runs.
var cmpRecord = cmp.Options{
	cmp.FilterPath(func(p cmp.Path) bool {
		switch p.Last().String() {
		case ".Start", ".Duration", ".BytesSent", ".BytesRecv", ".Authority":
			return true
		}
		return false
	}, cmp.Ignore()),
	cmp.Comparer(func(a, b error) bool { return (a == nil) == (b == nil) }),
	cmpopts.EquateComparable(netip.AddrPort{}),
}

func TestH2CThroughWaypoint(t *testing.T) {
	m := newMesh(t)
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(t, svc, true)
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	code, _ := get(t, c, svc, "/h2", http.Header{"Traceparent": {tp}})
	if code != http.StatusOK {
		t.Fatalf("GET /h2 over h2c = %d, want 200", code)
	}
	app := recv(t, m.appRequests, "request at the app")
	if app.Proto != "HTTP/2.0" {
		t.Errorf("app request proto = %q, want HTTP/2.0 (h2c upstream for an h2c client)", app.Proto)
	}
	if got := app.Header.Get("Traceparent"); got != tp {
		t.Errorf("app traceparent = %q, want %q passed through", got, tp)
	}
	if got := app.Header.Get("X-Forwarded-For"); got != clientIP.String() {
		t.Errorf("app X-Forwarded-For = %q, want %q", got, clientIP)
	}
}

func TestGRPCThroughWaypoint(t *testing.T) {
	m := newMesh(t)
	svc := netip.AddrPortFrom(echoVIP, portGRPC)
	cc, err := grpc.NewClient("passthrough:///"+echoHost+":9090",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.dial(ctx, svc) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"})
	if err != nil {
		t.Fatalf("Check(echo) error = %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check(echo) = %v, want SERVING", resp.GetStatus())
	}
	// The status of a failed call travels in trailers.
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check(nope) error = %v, want NotFound", err)
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "5", "response_code": "200"}, 1)
	wantMetric(t, m, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "0", "response_code": "200"}, 1)
}

func TestTCPOnSniffedPort(t *testing.T) {
	m := newMesh(t)
	logs, cancel := m.access.Subscribe(16)
	defer cancel()
	svc := netip.AddrPortFrom(echoVIP, portTCP)
	ctx, cancelCtx := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelCtx()
	c, err := m.dial(ctx, svc)
	if err != nil {
		t.Fatalf("dial %v: %v", svc, err)
	}
	defer c.Close()
	msg := "\x00\x01\x02 not http\r\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("echo over TCP = %q, %v, want %q", got, err, msg)
	}
	rec := recv(t, logs, "access log record")
	if rec.Method != "" || rec.UpstreamHost != netip.AddrPortFrom(echoIP, m.tcpPort) || rec.BytesRecv != int64(len(msg)) {
		t.Errorf("TCP record = method %q upstream %v bytes_recv %d, want a connection record to %v with %d bytes",
			rec.Method, rec.UpstreamHost, rec.BytesRecv, netip.AddrPortFrom(echoIP, m.tcpPort), len(msg))
	}
	wantMetric(t, m, "istio_tcp_connections_opened_total", map[string]string{"reporter": "waypoint", "request_protocol": "tcp", "destination_workload": "echo"}, 1)
}

func TestDenyPolicy(t *testing.T) {
	m := newMesh(t)
	m.setPolicies(&waypoint.Authorization{
		Name: "deny-admin", Namespace: "default", Action: waypoint.Action_DENY,
		Targets: []*waypoint.Target{{Kind: &waypoint.Target_Service{Service: "default/" + echoHost}}},
		Rules:   []*waypoint.Rule{{To: []*waypoint.Operation{{Paths: []string{"/admin"}}}}},
	})
	logs, cancel := m.access.Subscribe(16)
	defer cancel()
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	c := m.client(t, svc, false)

	for _, tc := range []struct {
		path     string
		wantCode int
		wantBody string
	}{
		{path: "/admin", wantCode: http.StatusForbidden, wantBody: DeniedBody},
		{path: "/", wantCode: http.StatusOK},
		// Judged (and forwarded) after Envoy's normalization.
		{path: "/public/../admin", wantCode: http.StatusForbidden, wantBody: DeniedBody},
		{path: "/%61dmin", wantCode: http.StatusForbidden, wantBody: DeniedBody},
		{path: "/admin?x=1", wantCode: http.StatusForbidden, wantBody: DeniedBody},
		{path: "/a%00b", wantCode: http.StatusBadRequest},
	} {
		code, body := get(t, c, svc, tc.path, nil)
		if code != tc.wantCode || (tc.wantBody != "" && body != tc.wantBody) {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, code, body, tc.wantCode, tc.wantBody)
		}
		rec := recv(t, logs, "access log record")
		if tc.wantCode == http.StatusForbidden && (rec.Policy != "default/deny-admin" || rec.ResponseFlags != "DENY" || rec.ResponseCode != 403) {
			t.Errorf("record of a denied request: policy %q flags %q code %d, want default/deny-admin DENY 403", rec.Policy, rec.ResponseFlags, rec.ResponseCode)
		}
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"response_code": "403", "response_flags": "DENY"}, 4)

	// An absolute-form request line is judged on its path, not on the
	// whole URI.
	ctx, cancelDial := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelDial()
	conn, err := m.dial(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET http://echo/admin HTTP/1.1\r\nHost: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET http://echo/admin (absolute form) = %d, want 403", resp.StatusCode)
	}
}

func TestRefusedTargets(t *testing.T) {
	m := newMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name      string
		authority netip.AddrPort
		want      int
	}{
		{name: "unknown", authority: netip.AddrPortFrom(unknownVIP, portHTTP), want: http.StatusServiceUnavailable},
		{name: "service without this waypoint", authority: netip.AddrPortFrom(otherVIP, portHTTP), want: http.StatusBadRequest},
		{name: "workload without this waypoint", authority: netip.AddrPortFrom(echoIP, m.httpPort), want: http.StatusBadRequest},
		{name: "no such service port", authority: netip.AddrPortFrom(echoVIP, 81), want: http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := m.dial(ctx, tc.authority)
			if err == nil {
				c.Close()
			}
			if got := statusOf(err); got != tc.want {
				t.Errorf("CONNECT %v = %v, want status %d", tc.authority, err, tc.want)
			}
		})
	}
}

func TestNoEndpoint(t *testing.T) {
	m := newMesh(t)
	svc := netip.AddrPortFrom(emptyVIP, portHTTP)
	c := m.client(t, svc, false)
	code, body := get(t, c, svc, "/", nil)
	if code != http.StatusServiceUnavailable || body != noHealthyUpstreamBody {
		t.Errorf("GET / of a service without endpoints = %d %q, want 503 %q", code, body, noHealthyUpstreamBody)
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"response_code": "503", "response_flags": "UH"}, 1)
}

func TestUpstreamDialFailure(t *testing.T) {
	m := newMesh(t)
	svc := netip.AddrPortFrom(echoVIP, portHTTP)
	// The endpoint's ztunnel refuses: its application port is gone.
	m.closeFns[0]()
	c := m.client(t, svc, false)
	code, _ := get(t, c, svc, "/", nil)
	if code != http.StatusServiceUnavailable {
		t.Errorf("GET / with the endpoint refusing = %d, want 503", code)
	}
	wantMetric(t, m, "istio_requests_total", map[string]string{"response_code": "503", "response_flags": "UF"}, 1)
}
