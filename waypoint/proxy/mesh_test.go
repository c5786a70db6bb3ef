package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/authz"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/waypoint"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// The test mesh, all on loopback: a client pod (played by a real HBONE
// client, as its source ztunnel), the waypoint, and one endpoint pod whose
// ztunnel (a real HBONE server) relays to echo applications on the pod's
// address.
var (
	clientIP   = netip.MustParseAddr("127.0.1.1")
	waypointIP = netip.MustParseAddr("127.0.2.1")
	echoIP     = netip.MustParseAddr("127.0.3.1")

	echoVIP    = netip.MustParseAddr("127.0.9.1") // bound to the waypoint
	otherVIP   = netip.MustParseAddr("127.0.9.2") // no waypoint
	emptyVIP   = netip.MustParseAddr("127.0.9.3") // bound, no endpoint
	unknownVIP = netip.MustParseAddr("127.0.9.99")
)

// Service ports of echo.
const (
	portHTTP = 80
	portGRPC = 9090
	portTCP  = 7000
)

const echoHost = "echo.default.svc.cluster.local"

// Paths the echo application answers without recording the request.
const (
	echoBodyPath = "/echo-body" // answers with the request's body
	hangupPath   = "/hangup"    // answers, then closes the connection without Connection: close
	trailerPath  = "/trailers"  // records the request; hop-by-hop headers, chunked body, trailers
)

type mesh struct {
	ca                           *identitytest.CA
	clientID, waypointID, echoID spiffeid.ID
	store                        *state.Store
	policies                     *authz.L7Policies
	proxy                        *Proxy
	reg                          *prometheus.Registry
	access                       *accesslog.Logger
	waypointAddr                 netip.AddrPort
	srcPool                      *hbone.Pool
	httpPort, grpcPort, tcpPort  uint16
	connects                     chan *hbone.Request // CONNECTs the endpoint's ztunnel received
	appRequests                  chan appRequest
	policiesMu                   sync.Mutex
	routes                       atomic.Pointer[Routes] // route_mesh_test.go
	hbonePort                    uint16
	baggage                      string
	closeFns                     []func()
}

// appRequest is what the echo application saw.
type appRequest struct {
	Method, Path, Host, Proto string
	Header                    http.Header
	RemoteAddr                string
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s (loopback range not usable here): %v", addr, err)
	}
	return l
}

func newMesh(t testing.TB) *mesh { return newMeshLogged(t, nil) }

// newMeshLogged is newMesh whose waypoint writes its access log to l (nil:
// discarded).
func newMeshLogged(t testing.TB, l *slog.Logger) *mesh {
	t.Helper()
	ca := identitytest.New(t, "cluster.local")
	m := &mesh{
		ca:          ca,
		clientID:    ca.ID("/ns/default/sa/sleep"),
		waypointID:  ca.ID("/ns/default/sa/waypoint"),
		echoID:      ca.ID("/ns/default/sa/echo"),
		store:       state.NewStore(),
		reg:         prometheus.NewRegistry(),
		access:      accesslog.New(l),
		connects:    make(chan *hbone.Request, 64),
		appRequests: make(chan appRequest, 64),
		baggage:     "k8s.namespace.name=default,k8s.deployment.name=waypoint,service.name=waypoint,service.version=latest",
	}
	t.Cleanup(func() {
		for i := len(m.closeFns) - 1; i >= 0; i-- {
			m.closeFns[i]()
		}
	})

	// The echo applications on the endpoint pod's address.
	httpLn := listen(t, netip.AddrPortFrom(echoIP, 0).String())
	m.httpPort = uint16(httpLn.Addr().(*net.TCPAddr).Port)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	app := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case echoBodyPath: // the body back, and nothing recorded
			b, _ := io.ReadAll(r.Body) // all first: net/http's HTTP/1 server is not full duplex
			w.Header().Set("X-Request-Length", strconv.FormatInt(r.ContentLength, 10))
			w.Write(b)
			return
		case hangupPath: // a complete answer, then the connection closed without notice
			io.Copy(io.Discard, r.Body)
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			brw.Flush()
			c.Close()
			return
		}
		if r.URL.Path == trailerPath { // hop-by-hop headers, a streamed body and trailers
			m.appRequests <- appRequest{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), RemoteAddr: r.RemoteAddr}
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "dropped")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("X-Kept", "1")
			w.Header().Set("Trailer", "X-Sum")
			w.Write([]byte("part one,"))
			http.NewResponseController(w).Flush()
			w.Write([]byte("part two"))
			w.Header().Set("X-Sum", "42")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
			return
		}
		if r.URL.Path == benchPath {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Length", strconv.Itoa(len(benchBody)))
			w.Write(benchBody)
			return
		}
		io.Copy(io.Discard, r.Body)
		m.appRequests <- appRequest{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), RemoteAddr: r.RemoteAddr}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path})
	})}
	go app.Serve(httpLn)
	m.closeFns = append(m.closeFns, func() { app.Close() })

	grpcLn := listen(t, netip.AddrPortFrom(echoIP, 0).String())
	m.grpcPort = uint16(grpcLn.Addr().(*net.TCPAddr).Port)
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("echo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(grpcLn)
	m.closeFns = append(m.closeFns, gs.Stop)

	tcpLn := listen(t, netip.AddrPortFrom(echoIP, 0).String())
	m.tcpPort = uint16(tcpLn.Addr().(*net.TCPAddr).Port)
	var tcpWG sync.WaitGroup
	tcpWG.Go(func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			tcpWG.Go(func() {
				defer c.Close()
				io.Copy(c, c) // echo until the client half-closes
			})
		}
	})
	m.closeFns = append(m.closeFns, func() { tcpLn.Close(); tcpWG.Wait() })

	// The endpoint pod's ztunnel: HBONE with the pod's certificate,
	// relaying to the application at the CONNECT's authority.
	zLn := listen(t, netip.AddrPortFrom(echoIP, 0).String())
	m.hbonePort = uint16(zLn.Addr().(*net.TCPAddr).Port)
	m.serveZtunnel(t, zLn, func(req *hbone.Request) { m.connects <- req })

	m.fillStore(t)

	// The waypoint.
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	p, err := New(Config{
		Store:     m.store,
		Policies:  m.currentPolicies,
		Routes:    m.routes.Load,
		Pool:      pool,
		Identity:  m.waypointID,
		Gateway:   "waypoint",
		Namespace: "default",
		Baggage:   m.baggage,
		Metrics:   telemetry.NewMetrics(m.reg),
		Requests:  telemetry.NewRequests(m.reg),
		AccessLog: m.access,
		HBONEPort: m.hbonePort,
	})
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	m.proxy = p
	wpLn := listen(t, netip.AddrPortFrom(waypointIP, 0).String())
	m.waypointAddr = wpLn.Addr().(*net.TCPAddr).AddrPort()
	wpSrv := &hbone.Server{TLSConfig: ca.ServerTLS(t, m.waypointID), Handler: p}
	go wpSrv.Serve(wpLn)
	m.closeFns = append(m.closeFns, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() { wpSrv.Shutdown(ctx) })
		wg.Go(func() { p.Drain(ctx) })
		wg.Wait()
		pool.Close()
	})

	// The client's source ztunnel.
	m.srcPool = hbone.NewPool(hbone.PoolConfig{TLSConfig: ca.PoolTLS(t, nil)})
	m.closeFns = append(m.closeFns, func() { m.srcPool.Close() })
	return m
}

func (m *mesh) currentPolicies() *authz.L7Policies {
	m.policiesMu.Lock()
	defer m.policiesMu.Unlock()
	return m.policies
}

func (m *mesh) setPolicies(ps ...*waypoint.Authorization) {
	m.policiesMu.Lock()
	defer m.policiesMu.Unlock()
	m.policies = authz.CompileL7(ps)
}

func resource(t testing.TB, name string, msg proto.Message) *adspb.Resource {
	t.Helper()
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	return &adspb.Resource{Name: name, Version: "1", Resource: a}
}

func waypointRef() *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: "waypoint.default.svc.cluster.local"}},
		HboneMtlsPort: 15008,
	}
}

// serveZtunnel serves HBONE on ln as an endpoint pod's ztunnel does: with
// the pod's certificate, each CONNECT relayed to the application at its
// authority. seen, if not nil, is told of each CONNECT first.
func (m *mesh) serveZtunnel(t testing.TB, ln net.Listener, seen func(*hbone.Request)) {
	ztunnel := &hbone.Server{TLSConfig: m.ca.ServerTLS(t, m.echoID), Handler: hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request, tun *hbone.Tunnel) {
		if seen != nil {
			seen(req)
		}
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", req.Authority.String())
		if err != nil {
			tun.Reject(http.StatusServiceUnavailable, err.Error())
			return
		}
		down, err := tun.Accept()
		if err != nil {
			up.Close()
			return
		}
		hbone.Relay(down, up)
	})}
	go ztunnel.Serve(ln)
	m.closeFns = append(m.closeFns, func() { ztunnel.Close() })
}

func (m *mesh) fillStore(t testing.TB) {
	t.Helper()
	svc := func(name string, vip netip.Addr, wp *workloadapi.GatewayAddress, ports ...*workloadapi.Port) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
			Name: name, Namespace: "default", Hostname: name + ".default.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}},
			Ports:     ports,
			Waypoint:  wp,
		}}}
	}
	ports := []*workloadapi.Port{
		{ServicePort: portHTTP, TargetPort: uint32(m.httpPort)},
		{ServicePort: portGRPC, TargetPort: uint32(m.grpcPort)},
		{ServicePort: portTCP, TargetPort: uint32(m.tcpPort)},
	}
	wl := func(uid, name, sa string, ip netip.Addr, services map[string]*workloadapi.PortList) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: uid, Name: name, Namespace: "default", ServiceAccount: sa, WorkloadName: name, CanonicalName: name, CanonicalRevision: "v1",
			Addresses: [][]byte{ip.AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Services: services,
		}}}
	}
	updated := []*adspb.Resource{
		resource(t, "default/"+echoHost, svc("echo", echoVIP, waypointRef(), ports...)),
		resource(t, "default/other.default.svc.cluster.local", svc("other", otherVIP, nil, ports...)),
		resource(t, "default/empty.default.svc.cluster.local", svc("empty", emptyVIP, waypointRef(), ports...)),
		resource(t, "echo-1", wl("echo-1", "echo", "echo", echoIP, map[string]*workloadapi.PortList{"default/" + echoHost: {Ports: ports}})),
		resource(t, "sleep-1", wl("sleep-1", "sleep", "sleep", clientIP, nil)),
	}
	if err := m.store.OnUpdate(workloadapi.AddressTypeURL, updated, nil); err != nil {
		t.Fatalf("store.OnUpdate() error = %v", err)
	}
}

// dial opens a tunnel from the client pod to the waypoint with authority,
// as the client's source ztunnel does.
func (m *mesh) dial(ctx context.Context, authority netip.AddrPort) (net.Conn, error) {
	c, err := m.srcPool.Dial(ctx, hbone.Target{
		Addr:       m.waypointAddr,
		Authority:  authority.String(),
		SourceID:   m.clientID,
		DestIDs:    []spiffeid.ID{m.waypointID},
		SourceAddr: clientIP,
		Header: http.Header{
			"Forwarded": {`for="` + netip.AddrPortFrom(clientIP, 40000).String() + `";host=` + echoHost},
		},
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// client returns an HTTP client whose connections are tunnels to the
// waypoint with authority (h2: HTTP/2 with prior knowledge).
func (m *mesh) client(t testing.TB, authority netip.AddrPort, h2 bool) *http.Client {
	t.Helper()
	var protos http.Protocols
	if h2 {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		Protocols:   &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return m.dial(ctx, authority) },
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func url(authority netip.AddrPort, path string) string {
	return "http://" + echoHost + ":" + strconv.Itoa(int(authority.Port())) + path
}

func get(t *testing.T, c *http.Client, authority netip.AddrPort, path string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url(authority, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s via %v: %v", path, authority, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	var zero T
	return zero
}

func statusOf(err error) int {
	var se *hbone.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// wantMetric checks that the series of metric name whose labels include
// labels add up to want (a counter's value, a histogram's count).
func wantMetric(t *testing.T, m *mesh, name string, labels map[string]string, want float64) {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	var got float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range s.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch {
			case s.GetCounter() != nil:
				got += s.GetCounter().GetValue()
			case s.GetHistogram() != nil:
				got += float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}
