package ztunnel

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambient-go/mesh/pkg/hbone"
	"github.com/ambient-go/mesh/pkg/identity"
	"github.com/ambient-go/mesh/pkg/identity/identitytest"
	"github.com/ambient-go/mesh/pkg/workloadapi"
	"github.com/ambient-go/mesh/ztunnel/capture"
	"github.com/ambient-go/mesh/ztunnel/capture/capturetest"
	"github.com/ambient-go/mesh/ztunnel/zds"
)

// fakeIstiod is the part of istiod-lite a ztunnel talks to, on a loopback
// port: delta ADS for the Workload API types, whose Address resources the
// test sets when it chooses (Set pushes them at once), and the CA, which
// signs each CSR for the identity ztunnel names with identitytest's root.
type fakeIstiod struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	pb.UnimplementedIstioCertificateServiceServer

	ca   *identitytest.CA
	addr string

	mu        sync.Mutex
	resources map[string]*discoveryv3.Resource // Address resources by name
	subs      map[chan struct{}]bool           // one per open stream
	nonce     int
}

func newFakeIstiod(t *testing.T, ca *identitytest.CA) *fakeIstiod {
	t.Helper()
	f := &fakeIstiod{ca: ca, resources: map[string]*discoveryv3.Resource{}, subs: map[chan struct{}]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	s := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s, f)
	pb.RegisterIstioCertificateServiceServer(s, f)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return f
}

// Set adds or replaces workloads and pushes them to the open streams.
func (f *fakeIstiod) Set(t *testing.T, ws ...*workloadapi.Workload) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range ws {
		a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		if err != nil {
			t.Fatal(err)
		}
		f.nonce++
		f.resources[w.Uid] = &discoveryv3.Resource{Name: w.Uid, Version: fmt.Sprint(f.nonce), Resource: a}
	}
	for sub := range f.subs {
		select {
		case sub <- struct{}{}:
		default:
		}
	}
}

func (f *fakeIstiod) response(typeURL string) *discoveryv3.DeltaDiscoveryResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nonce++
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: fmt.Sprint(f.nonce)}
	if typeURL == workloadapi.AddressTypeURL {
		for _, r := range f.resources {
			resp.Resources = append(resp.Resources, r)
		}
	}
	return resp
}

func (f *fakeIstiod) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	push := make(chan struct{}, 1)
	f.mu.Lock()
	f.subs[push] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, push)
		f.mu.Unlock()
	}()
	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	go func() {
		defer close(reqs)
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- r:
			case <-s.Context().Done():
				return
			}
		}
	}()
	subscribed := map[string]bool{}
	for {
		select {
		case r, ok := <-reqs:
			if !ok {
				return nil
			}
			if r.GetResponseNonce() != "" || subscribed[r.GetTypeUrl()] {
				continue // an ACK
			}
			subscribed[r.GetTypeUrl()] = true
			if err := s.Send(f.response(r.GetTypeUrl())); err != nil {
				return err
			}
		case <-push:
			if subscribed[workloadapi.AddressTypeURL] {
				if err := s.Send(f.response(workloadapi.AddressTypeURL)); err != nil {
					return err
				}
			}
		case <-s.Context().Done():
			return nil
		}
	}
}

func (f *fakeIstiod) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	id, err := spiffeid.FromString(req.GetMetadata().GetFields()[identity.ImpersonatedIdentityKey].GetStringValue())
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, errors.New("no CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{id.URL()},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca.Cert, csr.PublicKey, f.ca.Key)
	if err != nil {
		return nil, err
	}
	enc := func(der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return &pb.IstioCertificateResponse{CertChain: []string{enc(der), enc(f.ca.Cert.Raw)}}, nil
}

// startInpod runs an in-pod ztunnel of node-a against istiod until the end
// of the test, and returns it once its ZDS socket listens.
func startInpod(t *testing.T, istiod *fakeIstiod, podWorkloadTimeout time.Duration) (*Ztunnel, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := testConfig()
	cfg.XDSAddress = istiod.addr
	cfg.Mode = ModeInpod
	cfg.ZDSSocket = filepath.Join(dir, "zds.sock")
	cfg.PodStateDir = filepath.Join(dir, "pods")
	cfg.PodWorkloadTimeout = podWorkloadTimeout
	z, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- z.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ztunnel Start() = %v", err)
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(cfg.ZDSSocket); err == nil {
			return z, cfg.ZDSSocket
		}
		if i == 500 {
			t.Fatal("ztunnel's ZDS socket did not appear within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitKnown waits until ztunnel holds pod p's netns (its AddPod runs).
func waitKnown(t *testing.T, z *Ztunnel, p zds.Pod) {
	t.Helper()
	d := z.dp.(*inpod)
	for i := 0; ; i++ {
		d.mu.Lock()
		ok := d.pods[p.Key()] != nil
		d.mu.Unlock()
		if ok {
			return
		}
		if i == 500 {
			t.Fatalf("ztunnel did not receive pod %s within 5s", p.Key())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listeningPorts lists the TCP ports listening inside ns.
func listeningPorts(t *testing.T, ns *os.File) map[uint16]bool {
	t.Helper()
	var byPort map[uint16][]uint64
	if err := capture.Do(ns, func() (err error) { byPort, err = tcpListeners(); return err }); err != nil {
		t.Fatal(err)
	}
	out := map[uint16]bool{}
	for p := range byPort {
		out[p] = true
	}
	return out
}

func podWorkload(name string, tp workloadapi.TunnelProtocol, node string, ips ...string) *workloadapi.Workload {
	w := &workloadapi.Workload{
		Uid: "Kubernetes//Pod/mesh/" + name, Name: name, Namespace: "mesh", ServiceAccount: name,
		TrustDomain: "cluster.local", Node: node, ClusterId: "Kubernetes", TunnelProtocol: tp,
		WorkloadName: name, WorkloadType: workloadapi.WorkloadType_POD,
		Status: workloadapi.WorkloadStatus_UNHEALTHY,
	}
	for _, s := range ips {
		w.Addresses = append(w.Addresses, netip.MustParseAddr(s).AsSlice())
		w.Status = workloadapi.WorkloadStatus_HEALTHY
	}
	return w
}

// TestAddPodCapturesBeforeIP: the CNI plugin's ADD runs before the
// kubelet writes the pod's IP, so istiod-lite publishes the workload
// without addresses (issue 14). AddPod waits for it and captures an
// ambient pod before acknowledging, with the IP of the CNI result; the
// pod's first connection is tunnelled with its identity although the
// store has no address for it, and its address arriving later keeps the
// capture (same listeners, the connection goes on). A pod whose workload
// never comes fails its ADD; a pod out of the mesh is acknowledged
// uncaptured.
func TestAddPodCapturesBeforeIP(t *testing.T) {
	capturetest.RequireRoot(t)
	ca := identitytest.New(t, "cluster.local")
	istiod := newFakeIstiod(t, ca)
	// The peer, on another node, is known (it is running).
	istiod.Set(t, podWorkload("peer", workloadapi.TunnelProtocol_HBONE, "node-b", "198.18.200.2"))
	const timeout = 3 * time.Second
	z, sock := startInpod(t, istiod, timeout)
	client := &zds.Client{Socket: sock, Timeout: 10 * time.Second}

	// add runs the CNI plugin's request for p in the background, checks
	// that it waits for the workload, then publishes w (if any).
	add := func(t *testing.T, p zds.Pod, w *workloadapi.Workload) error {
		t.Helper()
		res := make(chan error, 1)
		go func() { res <- client.Add(context.Background(), p) }()
		waitKnown(t, z, p)
		select {
		case err := <-res:
			t.Fatalf("ADD of %s returned (%v) before its workload was published", p.Name, err)
		case <-time.After(100 * time.Millisecond):
		}
		if w != nil {
			istiod.Set(t, w)
		}
		select {
		case err := <-res:
			return err
		case <-time.After(timeout + 5*time.Second):
			t.Fatalf("ADD of %s did not return", p.Name)
			return nil
		}
	}

	t.Run("ambient pod: captured before the ack, tunnelled before its IP is known", func(t *testing.T) {
		pair := capturetest.NewPair(t)
		// The peer's ztunnel: an HBONE server that echoes and tells the
		// client's identity.
		peerL := capturetest.ListenIn(t, pair.Server, netip.AddrPortFrom(pair.ServerIP, hbone.Port).String())
		peer := &hbone.Server{
			TLSConfig: ca.ServerTLS(t, ca.ID("/ns/mesh/sa/peer")),
			Handler: hbone.HandlerFunc(func(_ context.Context, req *hbone.Request, tun *hbone.Tunnel) {
				c, err := tun.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", req.PeerID, req.Authority)
				io.Copy(c, c)
			}),
		}
		served := make(chan struct{})
		go func() { defer close(served); peer.Serve(peerL) }()
		t.Cleanup(func() { peer.Close(); <-served })

		p := zds.Pod{UID: "k8s-uid-client-0", Name: "client", Namespace: "mesh", Netns: pair.Pod.Name(), IPs: []netip.Addr{pair.PodIP}}
		if err := add(t, p, podWorkload("client", workloadapi.TunnelProtocol_HBONE, "node-a")); err != nil {
			t.Fatalf("ADD = %v, want nil", err)
		}
		if ok, err := capture.Installed(pair.Pod); err != nil || !ok {
			t.Errorf("capture.Installed(pod) = %v, %v after the ack, want true", ok, err)
		}
		ls := listeningPorts(t, pair.Pod)
		for _, port := range []uint16{capture.OutboundPort, capture.InboundPlaintextPort, hbone.Port} {
			if !ls[port] {
				t.Errorf("after the ack nothing listens on %d in the pod, want ztunnel's listener (listening: %v)", port, ls)
			}
		}
		if w := z.Store().WorkloadByUID("Kubernetes//Pod/mesh/client"); w == nil || len(w.Addrs) != 0 {
			t.Fatalf("store has %v for the pod, want its workload without addresses", w)
		}

		// The application's first connection, right after the ack.
		c, err := capturetest.DialIn(pair.Pod, netip.AddrPortFrom(pair.ServerIP, 8080).String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line := make([]byte, 256)
		n, err := c.Read(line)
		if err != nil {
			t.Fatalf("reading the peer's greeting: %v", err)
		}
		want := "spiffe://cluster.local/ns/mesh/sa/client 198.18.200.2:8080\n"
		if got := string(line[:n]); got != want {
			t.Errorf("peer saw %q, want %q (an HBONE tunnel with the pod's identity)", got, want)
		}

		// The IP reaches istiod-lite: the capture stays as it is.
		d := z.dp.(*inpod)
		d.mu.Lock()
		before := d.pods[p.Key()].listeners
		d.mu.Unlock()
		istiod.Set(t, podWorkload("client", workloadapi.TunnelProtocol_HBONE, "node-a", pair.PodIP.String()))
		for i := 0; z.Store().WorkloadByAddr(pair.PodIP) == nil; i++ {
			if i == 500 {
				t.Fatal("the pod's address did not reach the store within 5s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Whatever the reconcile loop did meanwhile, one more runs now.
		if _, err := z.dp.reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		after := d.pods[p.Key()].listeners
		d.mu.Unlock()
		if len(after) != len(before) || len(after) == 0 || after[0] != before[0] {
			t.Errorf("the pod's listeners changed when its IP arrived (recaptured or uncaptured), want them kept")
		}
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		if n, err := io.ReadFull(c, line[:4]); err != nil || string(line[:n]) != "ping" {
			t.Errorf("the first connection after the IP arrived: read %q, %v, want the echo", line[:n], err)
		}
	})

	t.Run("no workload: ADD fails after the timeout", func(t *testing.T) {
		ns := capturetest.NewNetns(t, nsName("nowl"))
		p := zds.Pod{UID: "k8s-uid-lost", Name: "lost", Namespace: "mesh", Netns: ns.Name(), IPs: []netip.Addr{netip.MustParseAddr("198.18.201.1")}}
		err := add(t, p, nil)
		if err == nil || !strings.Contains(err.Error(), "no workload for pod mesh/lost") {
			t.Fatalf("ADD = %v, want the error that its workload did not come", err)
		}
		if ok, _ := capture.Installed(ns); ok {
			t.Error("capture rules installed in a pod whose ADD failed")
		}
		d := z.dp.(*inpod)
		d.mu.Lock()
		kept := d.pods[p.Key()] != nil
		d.mu.Unlock()
		if kept {
			t.Error("ztunnel kept the pod whose ADD failed")
		}
	})

	t.Run("pod out of the mesh: acked uncaptured", func(t *testing.T) {
		ns := capturetest.NewNetns(t, nsName("plain"))
		p := zds.Pod{UID: "k8s-uid-plain", Name: "plain", Namespace: "mesh", Netns: ns.Name(), IPs: []netip.Addr{netip.MustParseAddr("198.18.201.2")}}
		if err := add(t, p, podWorkload("plain", workloadapi.TunnelProtocol_NONE, "node-a")); err != nil {
			t.Fatalf("ADD = %v, want nil", err)
		}
		if ok, err := capture.Installed(ns); err != nil || ok {
			t.Errorf("capture.Installed(pod) = %v, %v, want false", ok, err)
		}
		if ls := listeningPorts(t, ns); len(ls) != 0 {
			t.Errorf("listening in an uncaptured pod: %v, want nothing", ls)
		}
	})
}

// TestAddPodNoWait: with a negative PodWorkloadTimeout (for Istio's
// istiod, which publishes a pod only once it has an IP) AddPod does not
// wait for the workload; the pod is captured when it arrives.
func TestAddPodNoWait(t *testing.T) {
	capturetest.RequireRoot(t)
	istiod := newFakeIstiod(t, identitytest.New(t, "cluster.local"))
	_, sock := startInpod(t, istiod, -1)
	ns := capturetest.NewNetns(t, nsName("nowait"))
	p := zds.Pod{UID: "k8s-uid-late", Name: "late", Namespace: "mesh", Netns: ns.Name(), IPs: []netip.Addr{netip.MustParseAddr("198.18.201.3")}}
	if err := (&zds.Client{Socket: sock}).Add(context.Background(), p); err != nil {
		t.Fatalf("ADD = %v, want nil without waiting", err)
	}
	if ok, _ := capture.Installed(ns); ok {
		t.Fatal("captured before its workload was known")
	}
	istiod.Set(t, podWorkload("late", workloadapi.TunnelProtocol_HBONE, "node-a", "198.18.201.3"))
	for i := 0; ; i++ {
		if ok, _ := capture.Installed(ns); ok {
			break
		}
		if i == 500 {
			t.Fatal("not captured within 5s of its workload's arrival")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
