package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-go/mesh/pkg/accesslog"
	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/socks5"
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/pkg/workloadapi/security"
	"github.com/ambient-go/mesh/pkg/xds/adspb"
)

// connectInfo is what a fake HBONE server saw of one CONNECT.
type connectInfo struct {
	Server    string // the fake server's name
	Authority string
	Peer      string // the client's SPIFFE ID
	Forwarded string
}

// fakeHBONE is a real HBONE server with its own certificate that records
// each CONNECT and echoes the tunnel: a destination ztunnel or a waypoint.
type fakeHBONE struct {
	Addr netip.AddrPort
}

func startFakeHBONE(t *testing.T, ca *identitytest.CA, name string, id spiffeid.ID, at netip.AddrPort, seen chan<- connectInfo) *fakeHBONE {
	t.Helper()
	l, err := net.Listen("tcp", at.String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &hbone.Server{
		TLSConfig: ca.ServerTLS(t, id),
		Handler: hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request, tun *hbone.Tunnel) {
			seen <- connectInfo{Server: name, Authority: req.Authority.String(), Peer: req.PeerID.String(), Forwarded: req.Header.Get("Forwarded")}
			c, err := tun.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(c, c)
		}),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return &fakeHBONE{Addr: l.Addr().(*net.TCPAddr).AddrPort()}
}

// waypointMesh is a proxy (the source ztunnel) with, in namespace demo:
//   - client (.1) and other (.2), plain client pods;
//   - echo-0 (.10), endpoint of echo and plain (80 → its echo ztunnel's
//     port), bound to the waypoint as a workload waypoint;
//   - wp-0 (.20), the waypoint's pod, endpoint of waypoint (15008 → its
//     HBONE port);
//   - Services waypoint (.100), echo (.101, waypoint bound) and plain
//     (.102, no waypoint).
//
// echo-0's ztunnel and the waypoint are fake HBONE servers that report
// what they see on Seen.
type waypointMesh struct {
	CA    *identitytest.CA
	Store *state.Store
	Proxy *Proxy
	Reg   *prometheus.Registry
	Recs  <-chan accesslog.Record
	Seen  chan connectInfo

	Client, Other, Echo, WP, WPVIP, EchoVIP, PlainVIP netip.Addr
	WPServer                                          *fakeHBONE

	ClientID, EchoID, WPID spiffeid.ID

	wg sync.WaitGroup
}

const (
	echoHost     = "echo.demo.svc.cluster.local"
	plainHost    = "plain.demo.svc.cluster.local"
	waypointHost = "waypoint.demo.svc.cluster.local"
)

func meshWorkload(uid, sa string, ip netip.Addr, services map[string]uint32, waypoint *workloadapi.GatewayAddress) *workloadapi.Address {
	w := &workloadapi.Workload{
		Uid: uid, Name: uid, Namespace: "demo", ServiceAccount: sa, Node: "n1",
		WorkloadName: sa, CanonicalName: sa, WorkloadType: workloadapi.WorkloadType_DEPLOYMENT,
		Addresses:      [][]byte{ip.AsSlice()},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Status:         workloadapi.WorkloadStatus_HEALTHY,
		Waypoint:       waypoint,
		Services:       map[string]*workloadapi.PortList{},
	}
	for key, target := range services {
		// Every service port of these tests is 80, but the waypoint's.
		port := uint32(80)
		if key == "demo/"+waypointHost {
			port = 15008
		}
		w.Services[key] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: port, TargetPort: target}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func meshService(name string, vip netip.Addr, port uint32, waypoint *workloadapi.GatewayAddress) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: name, Namespace: "demo", Hostname: name + ".demo.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: port}}, // target ports per endpoint
		Waypoint:  waypoint,
	}}}
}

func waypointRef(host string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "demo", Hostname: host}},
		HboneMtlsPort: 15008,
	}
}

func (m *waypointMesh) apply(t *testing.T, addrs ...*workloadapi.Address) {
	t.Helper()
	var rs []*adspb.Resource
	for _, a := range addrs {
		name := a.GetWorkload().GetUid()
		if s := a.GetService(); s != nil {
			name = s.Namespace + "/" + s.Hostname
		}
		r, err := anypb.New(a)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, &adspb.Resource{Name: name, Resource: r})
	}
	if err := m.Store.OnUpdate(workloadapi.AddressTypeURL, rs, nil); err != nil {
		t.Fatal(err)
	}
}

func newWaypointMesh(t *testing.T) *waypointMesh {
	t.Helper()
	base := testAddrBase(t)
	ip := func(n byte) netip.Addr { return netip.AddrFrom4([4]byte{base[0], base[1], base[2], n}) }
	m := &waypointMesh{
		CA: identitytest.New(t, "cluster.local"), Store: state.NewStore(), Reg: prometheus.NewRegistry(),
		Seen:   make(chan connectInfo, 10),
		Client: ip(1), Other: ip(2), Echo: ip(10), WP: ip(20), WPVIP: ip(100), EchoVIP: ip(101), PlainVIP: ip(102),
	}
	m.ClientID, m.EchoID, m.WPID = m.CA.ID("/ns/demo/sa/client"), m.CA.ID("/ns/demo/sa/echo"), m.CA.ID("/ns/demo/sa/waypoint")

	// echo-0's ztunnel listens on HBONEPort, the waypoint on the target
	// port of its Service's 15008.
	echoZ := startFakeHBONE(t, m.CA, "echo", m.EchoID, netip.AddrPortFrom(m.Echo, 0), m.Seen)
	m.WPServer = startFakeHBONE(t, m.CA, "waypoint", m.WPID, netip.AddrPortFrom(m.WP, 0), m.Seen)
	m.apply(t,
		meshService("waypoint", m.WPVIP, 15008, nil),
		meshService("echo", m.EchoVIP, 80, waypointRef(waypointHost)),
		meshService("plain", m.PlainVIP, 80, nil),
		meshWorkload("client", "client", m.Client, nil, nil),
		meshWorkload("other", "other", m.Other, nil, nil),
		meshWorkload("echo-0", "echo", m.Echo, map[string]uint32{"demo/" + echoHost: 8080, "demo/" + plainHost: 8080}, waypointRef(waypointHost)),
		meshWorkload("wp-0", "waypoint", m.WP, map[string]uint32{"demo/" + waypointHost: uint32(m.WPServer.Addr.Port())}, nil),
	)

	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: m.CA.PoolTLS(t, nil)})
	access := accesslog.New(slog.New(slog.DiscardHandler))
	recs, unsub := access.Subscribe(10)
	m.Recs = recs
	p, err := New(Config{
		Store: m.Store, Pool: pool, Metrics: telemetry.NewMetrics(m.Reg), AccessLog: access,
		HBONEPort: echoZ.Addr.Port(),
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Proxy = p
	t.Cleanup(func() {
		p.Close()
		m.wg.Wait()
		pool.Close()
		unsub()
	})
	return m
}

// open connects, as the local workload at src, to target through the
// proxy's outbound path, and returns the client's end once the proxy has
// connected upstream (or the error it failed with).
func (m *waypointMesh) open(t *testing.T, src netip.Addr, target netip.AddrPort) (net.Conn, error) {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(src, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	client, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w := m.Store.WorkloadByAddr(src)
	ready := make(chan error, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer server.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Proxy.Outbound(ctx, server, w, target, "", func(err error) error { ready <- err; return nil })
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("outbound never connected nor failed")
	}
	if err != nil {
		client.Close()
		return nil, err
	}
	return client, nil
}

func (m *waypointMesh) nextSeen(t *testing.T) connectInfo {
	t.Helper()
	select {
	case s := <-m.Seen:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no CONNECT arrived")
		return connectInfo{}
	}
}

func (m *waypointMesh) noneSeen(t *testing.T) {
	t.Helper()
	select {
	case s := <-m.Seen:
		t.Errorf("a CONNECT arrived: %+v, want none", s)
	default:
	}
}

// loggedDst is the destination half of an access log record.
type loggedDst struct {
	Addr, HBONEAddr                        string
	Service, Workload, Namespace, Identity string
	Src                                    string
	Err                                    bool
}

func dstOf(r accesslog.Record) loggedDst {
	s := func(a netip.AddrPort) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	return loggedDst{
		Addr: s(r.DstAddr), HBONEAddr: s(r.DstHBONEAddr), Service: r.DstService, Workload: r.DstWorkload,
		Namespace: r.DstNamespace, Identity: r.DstIdentity, Src: r.SrcIdentity, Err: r.Err != nil,
	}
}

// TestOutboundThroughWaypoint: what the source ztunnel sends where, when
// services and pods have waypoints (Istio's outbound.rs build_request).
func TestOutboundThroughWaypoint(t *testing.T) {
	m := newWaypointMesh(t)
	wpHBONE := m.WPServer.Addr.String()
	echoHBONE := netip.AddrPortFrom(m.Echo, m.Proxy.cfg.HBONEPort).String()
	tests := []struct {
		name   string
		src    netip.Addr
		target netip.AddrPort
		want   connectInfo
		log    loggedDst
		// metric labels the source reports for the connection
		labels map[string]string
	}{
		{
			name:   "a service with a waypoint: to the waypoint, authority VIP:port",
			src:    m.Client,
			target: netip.AddrPortFrom(m.EchoVIP, 80),
			want: connectInfo{Server: "waypoint", Authority: netip.AddrPortFrom(m.EchoVIP, 80).String(), Peer: m.ClientID.String(),
				Forwarded: `for="` + m.Client.String() + `:PORT";host=` + echoHost},
			log: loggedDst{Addr: wpHBONE, HBONEAddr: netip.AddrPortFrom(m.EchoVIP, 80).String(), Service: echoHost,
				Workload: "wp-0", Namespace: "demo", Identity: m.WPID.String(), Src: m.ClientID.String()},
			labels: map[string]string{"destination_service": echoHost, "destination_service_name": "echo", "destination_workload": "waypoint",
				"destination_principal": m.WPID.String(), "source_principal": m.ClientID.String(), "connection_security_policy": "mutual_tls"},
		},
		{
			name:   "a service with a waypoint takes any port",
			src:    m.Client,
			target: netip.AddrPortFrom(m.EchoVIP, 9999),
			want: connectInfo{Server: "waypoint", Authority: netip.AddrPortFrom(m.EchoVIP, 9999).String(), Peer: m.ClientID.String(),
				Forwarded: `for="` + m.Client.String() + `:PORT";host=` + echoHost},
			log: loggedDst{Addr: wpHBONE, HBONEAddr: netip.AddrPortFrom(m.EchoVIP, 9999).String(), Service: echoHost,
				Workload: "wp-0", Namespace: "demo", Identity: m.WPID.String(), Src: m.ClientID.String()},
		},
		{
			name:   "a pod with a workload waypoint: to the waypoint, authority podIP:port",
			src:    m.Client,
			target: netip.AddrPortFrom(m.Echo, 8080),
			want: connectInfo{Server: "waypoint", Authority: netip.AddrPortFrom(m.Echo, 8080).String(), Peer: m.ClientID.String(),
				Forwarded: `for="` + m.Client.String() + `:PORT"`},
			log: loggedDst{Addr: wpHBONE, HBONEAddr: netip.AddrPortFrom(m.Echo, 8080).String(),
				Workload: "wp-0", Namespace: "demo", Identity: m.WPID.String(), Src: m.ClientID.String()},
			labels: map[string]string{"destination_service": "unknown", "destination_workload": "waypoint", "destination_principal": m.WPID.String()},
		},
		{
			name:   "a service without a waypoint: to the endpoint, even though it has a workload waypoint",
			src:    m.Client,
			target: netip.AddrPortFrom(m.PlainVIP, 80),
			want: connectInfo{Server: "echo", Authority: netip.AddrPortFrom(m.Echo, 8080).String(), Peer: m.ClientID.String(),
				Forwarded: `for="` + m.Client.String() + `:PORT";host=` + plainHost},
			log: loggedDst{Addr: echoHBONE, HBONEAddr: netip.AddrPortFrom(m.Echo, 8080).String(), Service: plainHost,
				Workload: "echo-0", Namespace: "demo", Identity: m.EchoID.String(), Src: m.ClientID.String()},
		},
		{
			// Istio skips the waypoint only for pod-addressed traffic
			// (outbound.rs: check_from_waypoint is consulted only when
			// the target is no service); its waypoints are not captured.
			name:   "the waypoint itself to a service bound to it: to the waypoint, as Istio",
			src:    m.WP,
			target: netip.AddrPortFrom(m.EchoVIP, 80),
			want: connectInfo{Server: "waypoint", Authority: netip.AddrPortFrom(m.EchoVIP, 80).String(), Peer: m.WPID.String(),
				Forwarded: `for="` + m.WP.String() + `:PORT";host=` + echoHost},
			log: loggedDst{Addr: wpHBONE, HBONEAddr: netip.AddrPortFrom(m.EchoVIP, 80).String(), Service: echoHost,
				Workload: "wp-0", Namespace: "demo", Identity: m.WPID.String(), Src: m.WPID.String()},
		},
		{
			name:   "the waypoint itself to the pod: direct",
			src:    m.WP,
			target: netip.AddrPortFrom(m.Echo, 8080),
			want: connectInfo{Server: "echo", Authority: netip.AddrPortFrom(m.Echo, 8080).String(), Peer: m.WPID.String(),
				Forwarded: `for="` + m.WP.String() + `:PORT"`},
			log: loggedDst{Addr: echoHBONE, HBONEAddr: netip.AddrPortFrom(m.Echo, 8080).String(),
				Workload: "echo-0", Namespace: "demo", Identity: m.EchoID.String(), Src: m.WPID.String()},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := m.open(t, tc.src, tc.target)
			if err != nil {
				t.Fatalf("open(%v → %v) = %v", tc.src, tc.target, err)
			}
			defer c.Close()
			echoRoundTrip(t, c, "through")
			got := m.nextSeen(t)
			// The client's port is ephemeral.
			if fwd, ok := (&hbone.Request{Header: http.Header{"Forwarded": {got.Forwarded}}}).ForwardedFor(); ok && fwd.Addr() == tc.src {
				got.Forwarded = strings.Replace(got.Forwarded, fwd.String(), tc.src.String()+":PORT", 1)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("CONNECT seen (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.log, dstOf(nextRecord(t, m.Recs))); diff != "" {
				t.Errorf("access log (-want +got):\n%s", diff)
			}
			if tc.labels != nil {
				tc.labels["reporter"] = "source"
				if n := countOpened(t, m.Reg, tc.labels); n < 1 {
					t.Errorf("%s%v = %v, want at least 1", telemetry.ConnectionsOpenedName, tc.labels, n)
				}
			}
		})
	}
}

// TestOutboundWaypointFailures: a waypoint that cannot be reached fails
// the connection, with the reason in the access log; it never goes
// direct.
func TestOutboundWaypointFailures(t *testing.T) {
	tests := []struct {
		name    string
		change  func(m *waypointMesh) []*workloadapi.Address
		target  func(m *waypointMesh) netip.AddrPort
		wantErr []error
	}{
		{
			name: "the service's waypoint does not exist",
			change: func(m *waypointMesh) []*workloadapi.Address {
				return []*workloadapi.Address{meshService("echo", m.EchoVIP, 80, waypointRef("gone.demo.svc.cluster.local"))}
			},
			target:  func(m *waypointMesh) netip.AddrPort { return netip.AddrPortFrom(m.EchoVIP, 80) },
			wantErr: []error{state.ErrUnknownWaypoint},
		},
		{
			name: "the service's waypoint has no healthy pod",
			change: func(m *waypointMesh) []*workloadapi.Address {
				wp := meshWorkload("wp-0", "waypoint", m.WP, map[string]uint32{"demo/" + waypointHost: uint32(m.WPServer.Addr.Port())}, nil)
				wp.GetWorkload().Status = workloadapi.WorkloadStatus_UNHEALTHY
				return []*workloadapi.Address{wp}
			},
			target:  func(m *waypointMesh) netip.AddrPort { return netip.AddrPortFrom(m.EchoVIP, 80) },
			wantErr: []error{state.ErrUnknownWaypoint, state.ErrNoEndpoints},
		},
		{
			name: "the pod's waypoint does not exist",
			change: func(m *waypointMesh) []*workloadapi.Address {
				return []*workloadapi.Address{meshWorkload("echo-0", "echo", m.Echo, nil, waypointRef("gone.demo.svc.cluster.local"))}
			},
			target:  func(m *waypointMesh) netip.AddrPort { return netip.AddrPortFrom(m.Echo, 8080) },
			wantErr: []error{state.ErrUnknownWaypoint},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newWaypointMesh(t)
			m.apply(t, tc.change(m)...)
			c, err := m.open(t, m.Client, tc.target(m))
			if err == nil {
				c.Close()
				t.Fatal("connection through an unreachable waypoint succeeded")
			}
			r := nextRecord(t, m.Recs)
			for _, want := range tc.wantErr {
				if !errors.Is(err, want) || !errors.Is(r.Err, want) {
					t.Errorf("error = %v, logged %v; want %v", err, r.Err, want)
				}
			}
			if r.ResponseFlags != "CONNECT" {
				t.Errorf("response flags = %q, want CONNECT", r.ResponseFlags)
			}
			m.noneSeen(t)
		})
	}

	t.Run("a waypoint presenting another identity", func(t *testing.T) {
		m := newWaypointMesh(t)
		// An impostor with a valid mesh certificate for another identity
		// takes the waypoint pod's place.
		imp := startFakeHBONE(t, m.CA, "impostor", m.CA.ID("/ns/demo/sa/impostor"), netip.AddrPortFrom(m.WP.Next(), 0), m.Seen)
		m.apply(t, meshWorkload("wp-0", "waypoint", imp.Addr.Addr(), map[string]uint32{"demo/" + waypointHost: uint32(imp.Addr.Port())}, nil))
		c, err := m.open(t, m.Client, netip.AddrPortFrom(m.EchoVIP, 80))
		if err == nil {
			c.Close()
			t.Fatal("connection to a waypoint with the wrong identity succeeded")
		}
		r := nextRecord(t, m.Recs)
		if r.Err == nil || r.DstIdentity != m.WPID.String() {
			t.Errorf("record = err %v, dst.identity %q; want an error, %s", r.Err, r.DstIdentity, m.WPID)
		}
		m.noneSeen(t)
	})
}

// TestSOCKSThroughWaypoint: local mode's SOCKS5 front end takes the same
// path, for an IP and for a service's name (authority: its VIP).
func TestSOCKSThroughWaypoint(t *testing.T) {
	m := newWaypointMesh(t)
	l, err := net.Listen("tcp", netip.AddrPortFrom(m.Client, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- m.Proxy.ServeSOCKS(l, m.Client) }()
	defer func() {
		l.Close()
		if err := <-served; err != nil {
			t.Errorf("ServeSOCKS: %v", err)
		}
	}()
	for _, tc := range []struct {
		name   string
		target string
	}{
		{"by VIP", netip.AddrPortFrom(m.EchoVIP, 80).String()},
		{"by name", echoHost + ":80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: m.Client.AsSlice()}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if err := socks5.Connect(c, tc.target); err != nil {
				t.Fatalf("socks5.Connect(%s) = %v, want success", tc.target, err)
			}
			echoRoundTrip(t, c, "socks")
			got := m.nextSeen(t)
			if want := netip.AddrPortFrom(m.EchoVIP, 80).String(); got.Server != "waypoint" || got.Authority != want || got.Peer != m.ClientID.String() {
				t.Errorf("CONNECT seen = %+v, want at the waypoint for %s from %s", got, want, m.ClientID)
			}
			nextRecord(t, m.Recs)
		})
	}
}

// TestInboundAuthorityMismatch: the destination ztunnel accepts a CONNECT
// whose :authority is not the local workload's address only when the
// local workload is the waypoint of what the authority names (Istio's
// validate_destination); the tunnel then goes to the authority's port on
// the local workload.
func TestInboundAuthorityMismatch(t *testing.T) {
	m := newWaypointMesh(t)
	// The workloads whose ztunnel this proxy is: wp-0 and other, each with
	// its HBONE listener and an application on one port.
	type local struct {
		ip     netip.Addr
		id     spiffeid.ID
		server netip.AddrPort
		app    uint16
	}
	locals := map[string]*local{"wp-0": {ip: m.WP, id: m.WPID}, "other": {ip: m.Other, id: m.CA.ID("/ns/demo/sa/other")}}
	for _, lw := range locals {
		l, err := net.Listen("tcp", netip.AddrPortFrom(lw.ip, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		srv := &hbone.Server{TLSConfig: m.CA.ServerTLS(t, lw.id), Handler: m.Proxy}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(l) }()
		t.Cleanup(func() { srv.Close(); <-served })
		lw.server = l.Addr().(*net.TCPAddr).AddrPort()
		app, err := net.Listen("tcp", netip.AddrPortFrom(lw.ip, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		lw.app = app.Addr().(*net.TCPAddr).AddrPort().Port()
		go func() {
			for {
				c, err := app.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		t.Cleanup(func() { app.Close() })
	}
	// A second waypoint, whose pod is not local, for a service of its own.
	otherWP := m.Other.Next()
	m.apply(t,
		meshService("waypoint2", m.PlainVIP.Next(), 15008, nil),
		meshWorkload("wp2-0", "waypoint2", otherWP, map[string]uint32{"demo/waypoint2.demo.svc.cluster.local": 15008}, nil),
		meshService("bound2", m.PlainVIP.Next().Next(), 80, waypointRef("waypoint2.demo.svc.cluster.local")),
	)
	pool := hbone.NewPool(hbone.PoolConfig{TLSConfig: m.CA.PoolTLS(t, nil)})
	defer pool.Close()

	tests := []struct {
		name      string
		local     string
		authority netip.Addr // with the local application's port
		wantCode  int        // 0: accepted
	}{
		{"to the waypoint, for a service bound to it", "wp-0", m.EchoVIP, 0},
		{"to the waypoint, for a pod bound to it", "wp-0", m.Echo, 0},
		{"to the waypoint, for its own address", "wp-0", m.WP, 0},
		{"to the waypoint, for a service without a waypoint", "wp-0", m.PlainVIP, http.StatusBadRequest},
		{"to the waypoint, for a service bound to another waypoint", "wp-0", m.PlainVIP.Next().Next(), http.StatusBadRequest},
		{"to the waypoint, for a pod without a waypoint", "wp-0", m.Client, http.StatusBadRequest},
		{"to the waypoint, for an unknown address", "wp-0", m.WP.Next().Next(), http.StatusBadRequest},
		{"to a pod that is no waypoint, for a service with a waypoint", "other", m.EchoVIP, http.StatusBadRequest},
		{"to a pod that is no waypoint, for a pod with a waypoint", "other", m.Echo, http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lw := locals[tc.local]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			authority := netip.AddrPortFrom(tc.authority, lw.app)
			c, err := pool.Dial(ctx, hbone.Target{
				Addr: lw.server, Authority: authority.String(),
				SourceID: m.ClientID, DestIDs: []spiffeid.ID{lw.id}, SourceAddr: m.Client,
			})
			if tc.wantCode != 0 {
				r := nextRecord(t, m.Recs)
				var se *hbone.StatusError
				if !errors.As(err, &se) || se.Code != tc.wantCode {
					if err == nil {
						c.Close()
					}
					t.Fatalf("CONNECT %s at %s = %v, want status %d", authority, tc.local, err, tc.wantCode)
				}
				if !errors.Is(r.Err, errAuthorityMis) {
					t.Errorf("logged error %v, want %v", r.Err, errAuthorityMis)
				}
				return
			}
			if err != nil {
				t.Fatalf("CONNECT %s at %s = %v, want accepted", authority, tc.local, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
				t.Fatalf("echo from the waypoint's application = %q, %v", buf, err)
			}
			closeCleanly(t, c)
			if r := nextRecord(t, m.Recs); r.Err != nil || r.DstWorkload != tc.local || r.DstAddr != authority {
				t.Errorf("record = err %v, dst.workload %q, dst.addr %v; want no error, %s, %v", r.Err, r.DstWorkload, r.DstAddr, tc.local, authority)
			}
		})
	}
}

// TestInboundFromWaypoint: the waypoint's own connection to the
// destination pod (authority podIP:targetPort, the waypoint's identity)
// is ordinary inbound traffic: policy and the access log see the
// waypoint's identity.
func TestInboundFromWaypoint(t *testing.T) {
	f := newInboundFixture(t, Config{})
	wpID := spiffeid.RequireFromPath(f.EchoID.TrustDomain(), "/ns/demo/sa/waypoint")
	recs, unsub := f.Proxy.cfg.AccessLog.Subscribe(10)
	defer unsub()
	// Only the waypoint may reach echo.
	pol, err := anypb.New(&security.Authorization{
		Name: "only-waypoint", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Rules: []*security.Rule{{Clauses: []*security.Clause{{Matches: []*security.Match{{
			Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/demo/sa/waypoint"}}},
		}}}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Proxy.cfg.Store.OnUpdate(workloadapi.AuthorizationTypeURL, []*adspb.Resource{{Name: "demo/only-waypoint", Resource: pol}}, nil); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(f.Pod, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	peer := echo(t, l)
	app := l.Addr().(*net.TCPAddr).AddrPort()

	dial := func(src spiffeid.ID) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := f.Pool.Dial(ctx, hbone.Target{Addr: f.Server, Authority: app.String(), SourceID: src, DestIDs: []spiffeid.ID{f.EchoID}})
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	var se *hbone.StatusError
	if c, err := dial(f.ClientID); !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		if err == nil {
			c.Close()
		}
		t.Fatalf("CONNECT from the client = %v, want 401", err)
	}
	if r := nextRecord(t, recs); r.SrcIdentity != f.ClientID.String() || r.ResponseFlags != "DENY" {
		t.Errorf("record = src.identity %q, flags %q; want %s, DENY", r.SrcIdentity, r.ResponseFlags, f.ClientID)
	}
	c, err := dial(wpID)
	if err != nil {
		t.Fatalf("CONNECT from the waypoint = %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	<-peer
	closeCleanly(t, c)
	if r := nextRecord(t, recs); r.SrcIdentity != wpID.String() || r.Err != nil || r.DstAddr != app {
		t.Errorf("record = src.identity %q, err %v, dst.addr %v; want %s, none, %v", r.SrcIdentity, r.Err, r.DstAddr, wpID, app)
	}
}

// closeCleanly half-closes a tunnel and reads it to EOF, so that both
// ends see a clean end of stream.
func closeCleanly(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading to EOF: %v", err)
	}
	c.Close()
}
